package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/sitebridge/sitebridge/tunnel"
)

var (
	// errDuplicate: a dialled session reached an instance this instance
	// already holds a session to (same instance, same epoch).
	errDuplicate = errors.New("duplicate tunnel to an instance already connected")
	// errStale: a session from an older epoch of an instance than one
	// already registered.
	errStale = errors.New("stale epoch: a newer session from that instance is registered")
)

// peer is one registered tunnel session.
type peer struct {
	sess   *tunnel.Session
	hello  tunnel.Hello
	url    string       // the URL we dialled, or "" for an accepted tunnel
	active atomic.Int64 // client connections currently forwarded over it
}

func (p *peer) key() string { return p.hello.Site + "/" + p.hello.Instance }

func (p *peer) sessOrNil() *tunnel.Session {
	if p == nil {
		return nil
	}
	return p.sess
}

// registry holds the live tunnel sessions of an instance, keyed by remote
// instance, and fences older epochs.
type registry struct {
	log     *slog.Logger
	tenant  string // this instance's tenant
	want    int    // tunnels to keep to each remote instance (tunnel.connections)
	mu      sync.Mutex
	byKey   map[string][]*peer
	changed chan struct{} // closed and replaced whenever a session is added or removed
}

func newRegistry(log *slog.Logger, tenant string, want int) *registry {
	return &registry{log: log, tenant: tenant, want: max(want, 1), byKey: map[string][]*peer{}, changed: make(chan struct{})}
}

// add registers s. A session from a newer epoch of an instance closes the
// older ones at once (fencing); one from an older epoch is refused.
func (r *registry) add(s *tunnel.Session, url string) (*peer, error) {
	p := &peer{sess: s, hello: s.Remote(), url: url}
	r.mu.Lock()
	defer r.mu.Unlock()
	var keep []*peer
	dialled, other := 0, "" // dialled sessions kept, and a URL of theirs other than url
	for _, old := range r.byKey[p.key()] {
		switch {
		case old.hello.Epoch > p.hello.Epoch:
			return nil, fmt.Errorf("%w (have epoch %d, got %d)", errStale, old.hello.Epoch, p.hello.Epoch)
		case old.hello.Epoch < p.hello.Epoch:
			r.log.Info("tunnel fenced", "peer", old.hello.Instance, "old_epoch", old.hello.Epoch, "new_epoch", p.hello.Epoch)
			old.sess.Close()
			continue
		}
		keep = append(keep, old)
		if old.url != "" {
			dialled++
			if old.url != url {
				other = old.url
			}
		}
	}
	// Another URL (a load balancer, a discovered address) reaching an
	// instance already held through tunnel.connections dialled tunnels is
	// a duplicate; below that, it helps make up the count.
	if url != "" && other != "" && dialled >= r.want {
		r.byKey[p.key()] = keep // without the fenced ones
		return nil, fmt.Errorf("%w: %s already reached through %s", errDuplicate, p.hello.Instance, other)
	}
	r.byKey[p.key()] = append(keep, p)
	r.notifyLocked()
	return p, nil
}

func (r *registry) notifyLocked() {
	close(r.changed)
	r.changed = make(chan struct{})
}

// changes returns a channel closed at the next add or remove.
func (r *registry) changes() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.changed
}

// waitGone returns when fewer sessions to the instance h names are
// registered than tunnel.connections asks for (none, by default), or ctx
// ends.
func (r *registry) waitGone(ctx context.Context, h tunnel.Hello) {
	key := h.Site + "/" + h.Instance
	for {
		r.mu.Lock()
		n, ch := len(r.byKey[key]), r.changed
		r.mu.Unlock()
		if n < r.want {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-ch:
		}
	}
}

// remove unregisters p if it is still registered.
func (r *registry) remove(p *peer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	list := slices.DeleteFunc(r.byKey[p.key()], func(q *peer) bool { return q == p })
	if len(list) == 0 {
		delete(r.byKey, p.key())
	} else {
		r.byKey[p.key()] = list
	}
	r.notifyLocked()
}

// candidates lists the live sessions that serve tenant and whose peer
// offers service (see serves), in no particular order (reserve picks among
// them), and a channel closed on the next add.
func (r *registry) candidates(tenant, service string) ([]*peer, <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*peer
	for _, list := range r.byKey {
		for _, p := range list {
			if r.serves(p, tenant, service) {
				out = append(out, p)
			}
		}
	}
	return out, r.changed
}

// serves reports whether session p carries service of tenant: its peer
// offers the service, and the session serves the peer's tenant or, when
// the peer is shared (no tenant), this instance's.
func (r *registry) serves(p *peer, tenant, service string) bool {
	t := p.hello.Tenant
	if t == "" {
		t = r.tenant
	}
	return t == tenant && p.sess.Offers(service)
}

// reserve picks, among the live sessions that serve tenant and offer
// service and that skip does not rule out, the one with the fewest
// forwarded connections (ties at random), and counts one more connection
// on it at once, so that clients arriving together spread over the
// tunnels. It returns nil when there is none. The caller gives the count
// back (active.Add(-1)) when the connection ends or the open fails.
func (r *registry) reserve(tenant, service string, skip func(*peer) bool) *peer {
	r.mu.Lock()
	defer r.mu.Unlock()
	var best *peer
	ties := 0
	for _, list := range r.byKey {
		for _, p := range list {
			if !r.serves(p, tenant, service) || skip(p) {
				continue
			}
			switch {
			case best == nil || p.active.Load() < best.active.Load():
				best, ties = p, 1
			case p.active.Load() == best.active.Load():
				ties++
				if rand.IntN(ties) == 0 {
					best = p
				}
			}
		}
	}
	if best != nil {
		best.active.Add(1)
	}
	return best
}

// all returns every registered session.
func (r *registry) all() []*peer {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*peer
	for _, list := range r.byKey {
		out = append(out, list...)
	}
	slices.SortFunc(out, func(a, b *peer) int {
		if c := cmpString(a.key(), b.key()); c != 0 {
			return c
		}
		return cmpString(a.url, b.url)
	})
	return out
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// closeAll closes every registered session.
func (r *registry) closeAll() {
	for _, p := range r.all() {
		p.sess.Close()
	}
}
