package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/sitebridge/sitebridge/config"
	"github.com/sitebridge/sitebridge/ha"
	"github.com/sitebridge/sitebridge/tunnel"
)

// routeRecheck is how often a client waiting for a route looks again at
// what the live tunnels offer.
const routeRecheck = 50 * time.Millisecond

// errNoPath: no live tunnel offers the service within the open deadline.
var errNoPath = errors.New("no live tunnel offers the service")

// acceptLoop accepts clients of one accept service until ln is closed. At
// most limits.max-pending-per-port of them wait for a route at once; the
// excess is closed at once (a flood must not grow memory without bound).
func (in *Instance) acceptLoop(ctx context.Context, svc config.Service, ln net.Listener) {
	service := svc.ID()
	log := in.log.With("service", service)
	pending := make(chan struct{}, in.conf().Limits.MaxPendingPerPort)
	var refused int
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: wait, keep serving.
			log.Error("accept failed", "err", err)
			sleep(ctx, 100*time.Millisecond)
			continue
		}
		select {
		case pending <- struct{}{}:
		default:
			refused++
			if refused == 1 || refused%1000 == 0 {
				log.Warn("client connection refused", "client", c.RemoteAddr().String(),
					"reason", "too many connections waiting for a route (limits.max-pending-per-port)", "refused_so_far", refused)
			}
			in.m.refused(service, "accept", "pending_limit")
			c.Close()
			continue
		}
		max := in.live().maxConns(service)
		if in.limits.acquire(service, "", max) != "" {
			<-pending
			refused++
			if refused == 1 || refused%1000 == 0 {
				log.Warn("client connection refused", "client", c.RemoteAddr().String(),
					"reason", fmt.Sprintf("service at its limit of %d connections (services[].max-connections)", max),
					"refused_so_far", refused)
			}
			in.m.refused(service, "accept", "connection_limit")
			c.Close()
			continue
		}
		in.conns.Go(func() {
			defer in.limits.release(service, "")
			in.handleClient(ctx, svc, c, func() { <-pending })
		})
	}
}

// handleClient forwards one client connection over a tunnel.
// routed is called once the connection has a route or has been refused.
func (in *Instance) handleClient(ctx context.Context, svc config.Service, c net.Conn, routed func()) {
	defer c.Close()
	service := svc.ID()
	octx, cancel := context.WithTimeout(ctx, in.conf().Limits.OpenTimeout.D())
	start := time.Now()
	// Early data (services[].early-data): what the client has sent by now
	// leaves with the stream header, which saves a tunnel round trip before
	// the first byte reaches the target when the client speaks first. A
	// client that waits for the server to speak loses nothing: nothing is
	// there, nothing is waited for.
	var eb *[]byte
	var early []byte
	if in.live().early[service] {
		eb = earlyBufs.Get().(*[]byte)
		early = (*eb)[:tunnel.ReadNow(c, *eb)]
	}
	st, p, failed, err := in.open(octx, svc.Tenant, svc.Name, true, early)
	sent := len(early)
	if eb != nil {
		earlyBufs.Put(eb) // sent: not held for the connection's life
	}
	cancel()
	routed()
	if err != nil {
		in.m.refused(service, "accept", "no_route")
		in.log.Warn("client connection refused", "service", service, "client", c.RemoteAddr().String(), "reason", err.Error())
		return
	}
	in.m.opened(service, "accept")
	in.m.openTook(service, time.Since(start).Seconds(), failed, p == nil)
	if sent > 0 {
		in.m.earlyData(service, sent)
		in.log.Debug("client bytes sent with the stream header (early data)", "service", service, "bytes", sent)
	}
	in.forward(ctx, service, c, st, p, sent)
}

// earlyMax bounds the early data sent with a stream header: one read of
// what a client sent before the stream opened, kept until the far end
// answers (see handleClient).
const earlyMax = 16 << 10

var earlyBufs = sync.Pool{New: func() any { b := make([]byte, earlyMax); return &b }}

// forward splices a client (or relayed) connection with its stream.
// early is how many bytes of c already went with the stream header.
func (in *Instance) forward(ctx context.Context, service string, c, st net.Conn, p *peer, early int) {
	if p != nil {
		defer p.active.Add(-1) // counted by open (registry.reserve)
	}
	stop := context.AfterFunc(ctx, func() { c.Close(); st.Close() })
	defer stop()
	var activity func()
	if idle := in.conf().Limits.IdleTimeout.D(); idle > 0 {
		g := newIdleGuard(idle, func() {
			in.log.Info("client connection closed", "service", service, "client", c.RemoteAddr().String(), "reason", "idle timeout")
			c.Close()
			st.Close()
		})
		defer g.stop()
		activity = g.touch
	}
	done := in.m.conn(service, "accept")
	toPeer, fromPeer := tunnel.SpliceActivity(c, st, activity)
	done(toPeer+int64(early), fromPeer)
}

// route is one way to reach a service: a tunnel of this instance, or a
// relay through another member of this site.
type route struct {
	p     *peer     // a direct tunnel, or nil
	relay ha.Member // else: the member to relay through
}

// key identifies the route among the attempts of one open.
func (r route) key() any {
	if r.p != nil {
		return r.p
	}
	return "relay:" + r.relay.Name
}

func (r route) String() string {
	if r.p != nil {
		return r.p.hello.Instance
	}
	return "relay " + r.relay.Name
}

// routes lists the ways to reach service of tenant in the order to try
// them: live tunnels of that tenant whose far end offers it (open takes the
// least busy of them, see registry.reserve); then, if relay is allowed,
// members of this site that reach it.
// The channels are closed at the next change of tunnels or membership.
func (in *Instance) routes(tenant, service string, relay bool) ([]route, <-chan struct{}, <-chan struct{}) {
	peers, changed := in.peers.candidates(tenant, service)
	id := config.ServiceID(tenant, service)
	out := make([]route, 0, len(peers))
	for _, p := range peers {
		out = append(out, route{p: p})
	}
	var members <-chan struct{}
	if relay && in.cluster != nil {
		members = in.cluster.Changed()
		for _, m := range in.cluster.Members() {
			if m.Name == in.cfg.Instance || m.Meta.Site != in.cfg.Site || m.Meta.Relay == "" {
				continue
			}
			if m.Meta.ReachTruncated || slices.Contains(m.Meta.Reach, id) {
				out = append(out, route{relay: m})
			}
		}
	}
	return out, changed, members
}

// open opens a stream for service on the best route, trying the next one
// when opening fails or the far side refuses, and waiting for a route to
// appear when there is none, all within ctx's deadline. The peer is nil
// for a relayed stream.
// It also returns how many routes failed before the one that worked.
// early goes with the stream header on every route tried (see
// tunnel.Session.OpenServiceEarly).
//
// A direct route's peer comes back with one more active connection counted
// on it (see registry.reserve); forward, or the caller on failure, gives
// it back.
func (in *Instance) open(ctx context.Context, tenant, service string, relay bool, early []byte) (net.Conn, *peer, int, error) {
	tried := map[any]bool{}
	// Instances that refused or did not answer: their other tunnels
	// (tunnel.connections) would do the same.
	failed := map[string]bool{}
	skip := func(r route) bool { return tried[r.key()] || r.p != nil && failed[r.p.key()] }
	var errs []error
	for {
		routes, changed, members := in.routes(tenant, service, relay)
		var r *route
		more := false // another untried route remains after r
		for i := range routes {
			if skip(routes[i]) {
				continue
			}
			if r != nil {
				more = true
				break
			}
			r = &routes[i]
		}
		if r == nil {
			// Wait for a tunnel or member to come, or for a peer to start
			// offering the service (a services update, which does not
			// change the registry: look again shortly).
			recheck := time.NewTimer(routeRecheck)
			select {
			case <-changed:
				recheck.Stop()
				continue
			case <-members:
				recheck.Stop()
				continue
			case <-recheck.C:
				continue
			case <-ctx.Done():
				recheck.Stop()
				if len(errs) == 0 {
					return nil, nil, 0, fmt.Errorf("%w %q", errNoPath, service)
				}
				return nil, nil, len(errs), fmt.Errorf("every route failed: %w", errors.Join(errs...))
			}
		}
		if r.p != nil {
			// The least busy direct route right now, counted at once.
			p := in.peers.reserve(tenant, service, func(p *peer) bool { return skip(route{p: p}) })
			if p == nil {
				continue // it went away meanwhile: look again
			}
			r = &route{p: p}
		}
		tried[r.key()] = true
		st, err := in.openOn(ctx, *r, tenant, service, more, early)
		if err == nil {
			if r.p == nil {
				in.log.Debug("client relayed", "service", service, "via", r.relay.Name)
			}
			return st, r.p, len(errs), nil
		}
		if r.p != nil {
			r.p.active.Add(-1)
			var refused *tunnel.RefusedError
			var ne net.Error
			if errors.As(err, &refused) || errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout() {
				failed[r.p.key()] = true
			}
		}
		in.log.Debug("stream open failed, trying next route", "service", service, "route", r.String(), "err", err)
		errs = append(errs, fmt.Errorf("via %s: %w", r, err))
	}
}

// openOn opens a stream on one route. While other routes remain, one
// attempt may use only half of the time left, so a far end that hangs (a
// black-holed target) still leaves time to try the next route.
func (in *Instance) openOn(ctx context.Context, r route, tenant, service string, more bool, early []byte) (net.Conn, error) {
	if d, ok := ctx.Deadline(); ok && more {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Until(d)/2)
		defer cancel()
	}
	sess := r.p.sessOrNil()
	if sess == nil {
		var err error
		if sess, err = in.relaySession(ctx, r.relay); err != nil {
			return nil, err
		}
	}
	return sess.OpenServiceEarly(ctx, tenant, service, early)
}

// serveInbound serves a stream a peer opened: it connects the named
// service's target from this instance's own config, or refuses.
func (in *Instance) serveInbound(ctx context.Context, s *tunnel.Session, st *tunnel.Inbound) {
	if st.Header.Kind == tunnel.KindFederation {
		in.serveFed(ctx, s, st)
		return
	}
	h := st.Header
	r := s.Remote()
	tenant := in.tunnelTenant(r)
	id := config.ServiceID(h.Tenant, h.Service)
	log := in.log.With("peer", r.Instance, "peer_site", r.Site, "peer_tenant", r.Tenant, "service", h.Service)
	if h.Tenant != tenant {
		in.m.refused(id, "connect", tunnel.CodeForbidden.String())
		log.Warn("stream refused", "code", tunnel.CodeForbidden.String(), "tenant", h.Tenant,
			"reason", fmt.Sprintf("the stream names tenant %q, but this tunnel serves tenant %q", h.Tenant, tenant))
		st.Refuse(tunnel.CodeForbidden, fmt.Sprintf("tenant %q may not be used by this tunnel", h.Tenant))
		return
	}
	lc := in.live()
	svc, ok := lc.connect[id]
	if !ok {
		for _, other := range lc.cfg.Services {
			if other.Name == h.Service && other.Tenant != tenant {
				in.m.refused(id, "connect", tunnel.CodeForbidden.String())
				log.Warn("stream refused", "code", tunnel.CodeForbidden.String(), "tenant", tenant, "owner", other.Tenant,
					"reason", fmt.Sprintf("service %q belongs to tenant %q; this tunnel serves tenant %q", h.Service, other.Tenant, tenant))
				st.Refuse(tunnel.CodeForbidden, fmt.Sprintf("service %q is not a service of tenant %q", h.Service, tenant))
				return
			}
		}
		in.m.refused(id, "connect", tunnel.CodeUnknownService.String())
		log.Warn("stream refused", "code", tunnel.CodeUnknownService.String())
		st.Refuse(tunnel.CodeUnknownService, fmt.Sprintf("instance %s does not connect service %q", in.cfg.Instance, h.Service))
		return
	}
	h.Service = id // metrics and limits count by ID
	if full := in.limits.acquire(h.Service, "tenant/"+r.Tenant, svc.MaxConnections); full != "" {
		msg := fmt.Sprintf("service %q is at its limit of %d connections (services[].max-connections)", h.Service, svc.MaxConnections)
		if full == fullTenant {
			msg = fmt.Sprintf("tenant %q is at its limit of %d streams (limits.max-streams-per-tenant)", r.Tenant, lc.cfg.Limits.MaxStreamsPerTenant)
		}
		in.m.refused(h.Service, "connect", tunnel.CodeOverloaded.String())
		log.Warn("stream refused", "code", tunnel.CodeOverloaded.String(), "reason", msg, "tenant", r.Tenant)
		st.Refuse(tunnel.CodeOverloaded, msg)
		return
	}
	defer in.limits.release(h.Service, "tenant/"+r.Tenant)
	dctx, cancel := context.WithTimeout(ctx, svc.DialTimeout.D())
	target, err := (&net.Dialer{}).DialContext(dctx, "tcp", svc.Connect)
	cancel()
	if err != nil {
		in.m.refused(h.Service, "connect", tunnel.CodeTargetUnreachable.String())
		log.Warn("stream refused", "code", tunnel.CodeTargetUnreachable.String(), "err", err)
		st.Refuse(tunnel.CodeTargetUnreachable, fmt.Sprintf("instance %s cannot reach service %q", in.cfg.Instance, h.Service))
		return
	}
	if err := st.Accept(); err != nil {
		target.Close()
		st.Close()
		return
	}
	in.m.opened(h.Service, "connect")
	done := in.m.conn(h.Service, "connect")
	fromPeer, toPeer := tunnel.Splice(st, target)
	done(toPeer, fromPeer)
}
