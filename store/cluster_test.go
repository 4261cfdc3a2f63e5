package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// memCluster is an in-process site: members, their membership views and a
// transport between them that fails for dead members.
type memCluster struct {
	t       testing.TB
	site    string
	fed     *memFed // the other sites, for federation
	mu      sync.Mutex
	members map[string]*memMember
	changed chan struct{}
	epoch   int
	opts    Options
}

type memMember struct {
	name   string
	epoch  int
	live   bool // in the membership view
	up     bool // the process runs
	store  *Store
	cancel context.CancelFunc
	done   chan struct{}
}

func newMemCluster(t testing.TB, o Options) *memCluster {
	return &memCluster{t: t, members: map[string]*memMember{}, changed: make(chan struct{}), opts: o}
}

func (c *memCluster) notify() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// start starts (or restarts, empty) member name.
func (c *memCluster) start(name string) *Store {
	c.t.Helper()
	o := c.opts
	o.Self, o.Site = name, c.site
	if o.Site == "" {
		o.Site = "site"
	}
	if c.fed != nil {
		o.Fed.Transport = &memFedTransport{f: c.fed, from: o.Site}
	}
	o.Membership = &memView{c: c, self: name}
	o.Transport = &memTransport{c: c, self: name}
	if os.Getenv("STORE_DEBUG") != "" {
		o.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("member", name, "site", o.Site)
	}
	st, err := New(o)
	if err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.mu.Lock()
	c.epoch++
	m := &memMember{name: name, epoch: c.epoch, live: true, up: true, store: st, cancel: cancel, done: make(chan struct{})}
	c.members[name] = m
	c.notify()
	c.mu.Unlock()
	go func() { st.Run(ctx); close(m.done) }()
	return st
}

// kill stops member name abruptly; the others notice after detect.
func (c *memCluster) kill(name string, detect time.Duration) {
	c.mu.Lock()
	m := c.members[name]
	m.up = false
	c.mu.Unlock()
	m.cancel()
	<-m.done
	time.AfterFunc(detect, func() {
		c.mu.Lock()
		if c.members[name] == m {
			m.live = false
			c.notify()
		}
		c.mu.Unlock()
	})
}

func (c *memCluster) stopAll() {
	c.mu.Lock()
	var ms []*memMember
	for _, m := range c.members {
		ms = append(ms, m)
	}
	c.mu.Unlock()
	for _, m := range ms {
		m.cancel()
		<-m.done
	}
}

func (c *memCluster) store(name string) *Store {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.members[name].store
}

type memView struct {
	c    *memCluster
	self string
}

func (v *memView) Self() string { return v.self }
func (v *memView) Members() []string {
	v.c.mu.Lock()
	defer v.c.mu.Unlock()
	var out []string
	for n, m := range v.c.members {
		if m.live {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}
func (v *memView) Senior() string {
	v.c.mu.Lock()
	defer v.c.mu.Unlock()
	best, be := "", 0
	for n, m := range v.c.members {
		if m.live && (best == "" || m.epoch < be) {
			best, be = n, m.epoch
		}
	}
	return best
}
func (v *memView) Changed() <-chan struct{} {
	v.c.mu.Lock()
	defer v.c.mu.Unlock()
	return v.c.changed
}

var closedCh = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func (v *memView) Ready() <-chan struct{} { return closedCh }

type memTransport struct {
	c    *memCluster
	self string
}

var errDown = errors.New("member down")

func (t *memTransport) Call(ctx context.Context, member string, b []byte) ([]byte, error) {
	t.c.mu.Lock()
	from, to := t.c.members[t.self], t.c.members[member]
	ok := from != nil && to != nil && from.up && to.up
	t.c.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("call %s: %w", member, errDown)
	}
	out := to.store.Serve(ctx, slices.Clone(b))
	// The caller may have died while the callee worked.
	t.c.mu.Lock()
	up := from.up
	t.c.mu.Unlock()
	if !up {
		return nil, errDown
	}
	return out, ctx.Err()
}

// waitSettled polls until the senior's table is settled for the live
// members.
func (c *memCluster) waitSettled(t testing.TB, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		var live []string
		var senior *memMember
		for n, m := range c.members {
			if m.live && m.up {
				live = append(live, n)
				if senior == nil || m.epoch < senior.epoch {
					senior = m
				}
			}
		}
		c.mu.Unlock()
		slices.Sort(live)
		ok := senior != nil
		if ok {
			for _, s := range senior.store.services {
				tb, _ := s.currentTable()
				if tb == nil || !tb.settled(live, s.backups) {
					ok = false
				}
			}
		}
		if ok {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("store did not settle within %v", within)
}

// memFed connects in-process sites for federation; cut stops all traffic.
type memFed struct {
	mu    sync.Mutex
	sites map[string]*memCluster
	cut   bool
	calls int
}

type memFedTransport struct {
	f    *memFed
	from string
}

func (t *memFedTransport) Ship(ctx context.Context, site string, b []byte) ([]byte, error) {
	t.f.mu.Lock()
	c := t.f.sites[site]
	cut := t.f.cut
	t.f.calls++
	n := t.f.calls
	t.f.mu.Unlock()
	if c == nil || cut {
		return nil, fmt.Errorf("no tunnel to %s", site)
	}
	c.mu.Lock()
	var up []*memMember
	for _, m := range c.members {
		if m.up {
			up = append(up, m)
		}
	}
	c.mu.Unlock()
	if len(up) == 0 {
		return nil, fmt.Errorf("no live instance of %s", site)
	}
	slices.SortFunc(up, func(a, b *memMember) int { return strings.Compare(a.name, b.name) })
	return up[n%len(up)].store.ServeFed(ctx, t.from, slices.Clone(b)), nil
}
