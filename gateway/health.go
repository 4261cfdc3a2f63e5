package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/sitebridge/sitebridge/tunnel"
)

// health tracks which connect targets answer. Peers are told the services
// this instance can reach now, so they skip it for a service whose target
// is down instead of learning that from a refused stream.
type health struct {
	mu      sync.Mutex
	healthy []string // sorted IDs of the services whose target accepted a TCP connection
	// failed counts each target's consecutive failed checks (health
	// loop only): a target is withdrawn after downAfter of them, so one
	// slow answer on a loaded host does not make it flap.
	failed map[string]int
}

// downAfter is how many consecutive failed checks withdraw a target.
const downAfter = 2

// healthy lists the IDs of the connect services whose targets answer now.
func (in *Instance) healthy() []string {
	in.health.mu.Lock()
	defer in.health.mu.Unlock()
	return slices.Clone(in.health.healthy)
}

// offered lists the services this instance offers now over a tunnel to a
// peer of peerTenant: the names of the healthy services of the tenant that
// tunnel serves, and no other tenant's.
func (in *Instance) offered(peerTenant string) []string {
	return in.offerOf(in.healthy(), peerTenant)
}

func (in *Instance) offerOf(healthy []string, peerTenant string) []string {
	t := in.tunnelTenant(tunnel.Hello{Tenant: peerTenant})
	out := []string{}
	for _, id := range healthy {
		if svc, ok := in.live().connect[id]; ok && svc.Tenant == t {
			out = append(out, svc.Name)
		}
	}
	return out
}

// checkOffers logs the services a peer offers that belong to another
// tenant here: the tunnel never carries them, since services are only
// matched within the tenant the tunnel serves.
func (in *Instance) checkOffers(log *slog.Logger, r tunnel.Hello, offers []string) {
	t := in.tunnelTenant(r)
	for _, name := range offers {
		if in.serviceOf(t, name) {
			continue
		}
		for _, svc := range in.conf().Services {
			if svc.Name == name && svc.Tenant != t {
				log.Warn("peer offers a service of another tenant; ignored", "tenant", t, "service", name, "owner", svc.Tenant,
					"reason", fmt.Sprintf("service %q here belongs to tenant %q; this tunnel serves tenant %q", name, svc.Tenant, t))
				in.m.refused(svc.ID(), "offer", "forbidden")
				break
			}
		}
	}
}

// serviceOf reports whether this instance has a service name of tenant.
func (in *Instance) serviceOf(tenant, name string) bool {
	for _, svc := range in.conf().Services {
		if svc.Name == name && svc.Tenant == tenant {
			return true
		}
	}
	return false
}

// healthInterval is the time between checks of the connect targets.
func (in *Instance) healthInterval() time.Duration {
	if in.cfg.Mode == "prod" {
		return 5 * time.Second
	}
	return time.Second
}

// healthLoop checks every connect target once per interval until ctx ends,
// and announces each change to every peer.
func (in *Instance) healthLoop(ctx context.Context) {
	t := time.NewTicker(in.healthInterval())
	defer t.Stop()
	for {
		in.checkTargets(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-in.check:
		}
	}
}

func (in *Instance) checkTargets(ctx context.Context) {
	type result struct {
		name string
		err  error
	}
	lc := in.live()
	results := make(chan result, len(lc.connect))
	var wg sync.WaitGroup
	for name, svc := range lc.connect {
		wg.Go(func() {
			dctx, cancel := context.WithTimeout(ctx, min(svc.DialTimeout.D(), time.Second))
			defer cancel()
			c, err := (&net.Dialer{}).DialContext(dctx, "tcp", svc.Connect)
			if err == nil {
				c.Close()
			}
			results <- result{name, err}
		})
	}
	wg.Wait()
	close(results)
	if ctx.Err() != nil {
		return
	}
	if in.health.failed == nil {
		in.health.failed = map[string]int{}
	}
	was := in.healthy()
	var healthy []string
	for r := range results {
		if r.err == nil {
			healthy = append(healthy, r.name)
			delete(in.health.failed, r.name)
			continue
		}
		in.health.failed[r.name]++
		in.log.Debug("service target check failed", "service", r.name, "target", lc.connect[r.name].Connect,
			"consecutive", in.health.failed[r.name], "err", r.err)
		if in.health.failed[r.name] < downAfter && slices.Contains(was, r.name) {
			healthy = append(healthy, r.name) // not withdrawn yet
		}
	}
	slices.Sort(healthy)
	in.health.mu.Lock()
	if in.live() != lc {
		// A reload changed the services meanwhile; it asked for a new check.
		in.health.mu.Unlock()
		return
	}
	old := in.health.healthy
	in.health.healthy = healthy
	in.health.mu.Unlock()
	if slices.Equal(old, healthy) {
		return
	}
	for name, svc := range lc.connect {
		was, is := slices.Contains(old, name), slices.Contains(healthy, name)
		switch {
		case was && !is:
			in.log.Warn("service target down; peers will route around this instance", "service", name, "target", svc.Connect)
		case !was && is:
			in.log.Info("service target up", "service", name, "target", svc.Connect)
		}
	}
	in.announceServices(healthy)
}

// announceServices tells every peer what this instance offers it now.
func (in *Instance) announceServices(healthy []string) {
	for _, p := range in.peers.all() {
		if err := p.sess.SendServices(in.offerOf(healthy, p.hello.Tenant)); err != nil {
			in.log.Debug("send services", "peer", p.hello.Instance, "err", err)
		}
	}
}
