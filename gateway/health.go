package gateway

import (
	"context"
	"net"
	"slices"
	"sync"
	"time"
)

// health tracks which connect targets answer. Peers are told the services
// this instance can reach now, so they skip it for a service whose target
// is down instead of learning that from a refused stream.
type health struct {
	mu      sync.Mutex
	healthy []string // sorted service names whose target accepted a TCP connection
}

// offered lists the services this instance offers now.
func (in *Instance) offered() []string {
	in.health.mu.Lock()
	defer in.health.mu.Unlock()
	return slices.Clone(in.health.healthy)
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
		}
	}
}

func (in *Instance) checkTargets(ctx context.Context) {
	type result struct {
		name string
		err  error
	}
	results := make(chan result, len(in.connect))
	var wg sync.WaitGroup
	for name, svc := range in.connect {
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
	var healthy []string
	for r := range results {
		if r.err == nil {
			healthy = append(healthy, r.name)
		} else {
			in.log.Debug("service target check failed", "service", r.name, "target", in.connect[r.name].Connect, "err", r.err)
		}
	}
	slices.Sort(healthy)
	in.health.mu.Lock()
	old := in.health.healthy
	in.health.healthy = healthy
	in.health.mu.Unlock()
	if slices.Equal(old, healthy) {
		return
	}
	for name, svc := range in.connect {
		was, is := slices.Contains(old, name), slices.Contains(healthy, name)
		switch {
		case was && !is:
			in.log.Warn("service target down; peers will route around this instance", "service", name, "target", svc.Connect)
		case !was && is:
			in.log.Info("service target up", "service", name, "target", svc.Connect)
		}
	}
	for _, p := range in.peers.all() {
		if err := p.sess.SendServices(healthy); err != nil {
			in.log.Debug("send services", "peer", p.hello.Instance, "err", err)
		}
	}
}
