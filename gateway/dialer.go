package gateway

import (
	"context"
	"slices"
	"sync"

	"github.com/sitebridge/sitebridge/config"
)

// dialSet keeps tunnel.connections dial loops (one tunnel each) running
// for every tunnel URL this instance should hold: the configured peers[].urls plus the URLs the peer sites
// announce (discovery). A discovered URL that a site stops announcing has
// its loop stopped; configured URLs are dialled for the instance's life.
type dialSet struct {
	in  *Instance
	ctx context.Context

	mu         sync.Mutex
	configured map[string]string             // url -> site
	discovered map[string][]string           // site -> latest announced urls
	loops      map[string]context.CancelFunc // url -> cancel of its loops
	wg         sync.WaitGroup
}

func newDialSet(ctx context.Context, in *Instance) *dialSet {
	d := &dialSet{in: in, ctx: ctx, configured: map[string]string{}, discovered: map[string][]string{}, loops: map[string]context.CancelFunc{}}
	for _, p := range in.conf().Peers {
		for _, u := range p.URLs {
			d.configured[u] = p.Site
		}
	}
	d.mu.Lock()
	d.syncLocked()
	d.mu.Unlock()
	return d
}

// announce records the member list a site announced and adjusts the loops.
func (d *dialSet) announce(site string, urls []string) {
	if !d.in.dialsSite(site) {
		return // we only accept tunnels from that site
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if slices.Equal(d.discovered[site], urls) {
		return
	}
	d.discovered[site] = slices.Clone(urls)
	d.syncLocked()
}

func (d *dialSet) syncLocked() {
	want := map[string]string{}
	for u, site := range d.configured {
		want[u] = site
	}
	for site, urls := range d.discovered {
		for _, u := range urls {
			want[u] = site
		}
	}
	for u, cancel := range d.loops {
		if _, ok := want[u]; !ok {
			d.in.log.Info("tunnel url no longer announced; stopping its dialer", "url", u)
			cancel()
			delete(d.loops, u)
		}
	}
	if d.ctx.Err() != nil {
		return
	}
	for u, site := range want {
		if _, ok := d.loops[u]; ok {
			continue
		}
		ctx, cancel := context.WithCancel(d.ctx)
		d.loops[u] = cancel
		for range max(d.in.cfg.Tunnel.Connections, 1) {
			d.wg.Go(func() { d.in.dialLoop(ctx, site, u) })
		}
	}
}

// configure replaces the configured URLs (a reload): loops of URLs no
// longer configured or announced stop, new ones start, and what sites no
// longer dialled announced is forgotten.
func (d *dialSet) configure(peers []config.Peer) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.configured = map[string]string{}
	dialled := map[string]bool{}
	for _, p := range peers {
		for _, u := range p.URLs {
			d.configured[u] = p.Site
		}
		dialled[p.Site] = len(p.URLs) > 0
	}
	for site := range d.discovered {
		if !dialled[site] {
			delete(d.discovered, site)
		}
	}
	d.syncLocked()
}

// wait stops nothing by itself: it waits for every loop after the run
// context has ended.
func (d *dialSet) wait() { d.wg.Wait() }

// dialsSite reports whether this instance dials site (has URLs for it).
func (in *Instance) dialsSite(site string) bool {
	for _, p := range in.conf().Peers {
		if p.Site == site && len(p.URLs) > 0 {
			return true
		}
	}
	return false
}
