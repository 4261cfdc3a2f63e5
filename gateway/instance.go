// Package gateway is the instance runtime: it wires one instance's config
// into a running gateway, with its tunnel listener or dialers, the accept
// ports of its services, the routing of client connections over tunnels,
// and the admin endpoint.
package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sitebridge/sitebridge/config"
	"github.com/sitebridge/sitebridge/ha"
	"github.com/sitebridge/sitebridge/internal/backoff"
	"github.com/sitebridge/sitebridge/store"
	"github.com/sitebridge/sitebridge/tlsgen"
	"github.com/sitebridge/sitebridge/tunnel"
)

// Instance is one running gateway instance. Create it with [New] and run it
// with [Instance.Run].
type Instance struct {
	cfg   *config.Config
	log   *slog.Logger
	epoch uint64
	tls   *tlsgen.Reloader // nil when insecure
	tcfg  tunnel.Config

	// cur holds the parts of the config that a reload may change
	// (services, peers, connection limits); read them through it, never
	// through cfg.
	cur     atomic.Pointer[liveConfig]
	reloads sync.Mutex // serializes reloads
	peers   *registry

	// Listeners bound by Run before anything is served.
	tunnelLn net.Listener
	// adminAddr is the supervisor's admin address, for cluster metadata.
	adminAddr string
	acceptMu  sync.Mutex
	acceptLn  map[string]net.Listener // by service ID; changed by reloads under acceptMu
	acceptEnd bool                    // set under acceptMu when the listeners are closed for good

	conns sync.WaitGroup  // client connection handlers
	loops sync.WaitGroup  // accept loops, which reloads start and stop
	run   context.Context // Run's context, for what a reload starts
	check chan struct{}   // asks the health loop for a check now

	dials   *dialSet    // set by Run
	cluster *ha.Cluster // nil when clustering is off
	relayLn net.Listener
	relays  relayPool
	health  health
	store   *store.Store // this instance's part of the site store
	storeTr *storeTransport
	fedTr   *streamPool // federation streams; nil without federation
	m       *metrics    // set by the supervisor; nil records nothing
	limits  *connLimits
}

// New prepares an instance from a validated config: it loads the TLS
// material, but binds nothing.
func New(cfg *config.Config, log *slog.Logger) (*Instance, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("instance", cfg.Instance, "site", cfg.Site)
	in := &Instance{
		cfg:      cfg,
		log:      log,
		epoch:    uint64(time.Now().UnixNano()),
		acceptLn: map[string]net.Listener{},
		check:    make(chan struct{}, 1),
	}
	lc := newLiveConfig(cfg)
	in.cur.Store(lc)
	in.peers = newRegistry(log, cfg.Tenant, cfg.Tunnel.Connections)
	in.limits = &connLimits{tenantMax: cfg.Limits.MaxStreamsPerTenant, svc: map[string]int{}, tenant: map[string]int{}}
	// Optimistic until the first health check says otherwise.
	in.health.healthy = slices.Sorted(maps.Keys(lc.connect))
	if cfg.TLS.Insecure {
		log.Warn("TLS is disabled (tls.insecure: true): tunnels are plaintext and unauthenticated")
	} else {
		r, err := tlsgen.NewReloader(cfg.TLS.CA, cfg.TLS.Cert, cfg.TLS.Key, log.With("component", "tls"))
		if err != nil {
			return nil, fmt.Errorf("tls: %w", err)
		}
		id := r.Identity()
		if id.Instance != cfg.Instance || id.Site != cfg.Site || id.Tenant != cfg.Tenant || id.TrustDomain != cfg.TrustDomain {
			return nil, fmt.Errorf("tls: certificate %s is %s, which does not match this instance (instance %q, site %q, tenant %q, trust domain %q)",
				cfg.TLS.Cert, id, cfg.Instance, cfg.Site, cfg.Tenant, cfg.TrustDomain)
		}
		in.tls = r
	}
	in.tcfg = tunnel.Config{
		Local: tunnel.Hello{
			Instance:  cfg.Instance,
			Site:      cfg.Site,
			Tenant:    cfg.Tenant,
			Epoch:     in.epoch,
			Advertise: cfg.Tunnel.Advertise,
		},
		Keepalive:      cfg.Tunnel.Keepalive.D(),
		DeadAfter:      cfg.Tunnel.DeadAfter.D(),
		HelloTimeout:   cfg.Limits.HelloTimeout.D(),
		HeaderTimeout:  cfg.Limits.HelloTimeout.D(),
		MaxMessageSize: int64(cfg.Limits.MaxMessageSize),
		MaxStreams:     cfg.Limits.MaxStreamsPerTunnel,
		WindowSize:     uint32(cfg.Tunnel.WindowSize),
		Log:            log.With("component", "tunnel"),
		Services:       in.offered,
		Kinds:          []tunnel.Kind{tunnel.KindFederation},
		OnMembers: func(s *tunnel.Session, urls []string) {
			in.dials.announce(s.Remote().Site, urls)
		},
	}
	if cfg.Accepting() {
		in.tcfg.Members = in.memberURLs
	}
	st, err := in.newStore()
	if err != nil {
		return nil, err
	}
	in.store = st
	return in, nil
}

// Epoch is this start's epoch, carried in every hello.
func (in *Instance) Epoch() uint64 { return in.epoch }

// bind opens every listener, so a taken port fails the start at once and
// clearly, before any tunnel is dialled.
func (in *Instance) bind() error {
	var errs []error
	listen := func(what, addr string) net.Listener {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", what, err))
		}
		return ln
	}
	if in.cfg.Tunnel.Listen != "" {
		in.tunnelLn = listen("tunnel.listen", in.cfg.Tunnel.Listen)
	}
	for _, s := range in.conf().Services {
		if s.IsAccept() {
			if ln := listen("service "+s.ID()+" accept", s.Accept); ln != nil {
				in.acceptLn[s.ID()] = ln
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		in.closeListeners()
		return err
	}
	if in.cfg.Cluster.Enabled() {
		if err := in.startCluster(); err != nil {
			in.closeListeners()
			return err
		}
	}
	return nil
}

func (in *Instance) closeListeners() {
	if in.tunnelLn != nil {
		in.tunnelLn.Close()
	}
	in.acceptMu.Lock()
	for _, ln := range in.acceptLn {
		ln.Close()
	}
	in.acceptEnd = true
	in.acceptMu.Unlock()
	if in.relayLn != nil {
		in.relayLn.Close()
	}
}

// AcceptAddr is the bound client address of an accept service (by ID:
// "tenant/name", or the name of a service without a tenant), or "".
func (in *Instance) AcceptAddr(service string) string {
	in.acceptMu.Lock()
	defer in.acceptMu.Unlock()
	return addrOf(in.acceptLn[service])
}

// ClusterAddr is the gossip address of this member, or "" without a cluster.
func (in *Instance) ClusterAddr() string {
	if in.cluster == nil {
		return ""
	}
	return in.cluster.Addr()
}

// TunnelAddr is the bound tunnel listener address, or "".
func (in *Instance) TunnelAddr() string { return addrOf(in.tunnelLn) }

func addrOf(ln net.Listener) string {
	if ln == nil {
		return ""
	}
	return ln.Addr().String()
}

// Run binds every listener, then serves until ctx is cancelled. It returns
// an error at once if a listener cannot be bound; after a clean stop it
// returns nil. Every goroutine it starts has ended when it returns.
func (in *Instance) Run(ctx context.Context, ready func()) error {
	if err := in.bind(); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	in.log.Info("instance starting", "epoch", in.epoch, "mode", in.cfg.Mode,
		"tunnel_listen", in.TunnelAddr())

	// A reload waits until the dialers and accept loops run.
	in.reloads.Lock()
	in.run = ctx
	in.dials = newDialSet(ctx, in)
	var servers []*http.Server
	if in.relayLn != nil {
		srv := in.relayServer(ctx)
		servers = append(servers, srv)
		wg.Go(func() { in.serveHTTP(srv, in.relayLn, in.tls != nil) })
	}
	if in.tunnelLn != nil {
		srv := in.tunnelServer(ctx)
		servers = append(servers, srv)
		wg.Go(func() { in.serveHTTP(srv, in.tunnelLn, in.tls != nil) })
	}
	in.acceptMu.Lock()
	for _, svc := range in.conf().Services {
		if ln := in.acceptLn[svc.ID()]; ln != nil {
			in.loops.Go(func() { in.acceptLoop(ctx, svc, ln) })
		}
	}
	in.acceptMu.Unlock()
	in.reloads.Unlock()
	wg.Go(func() { in.healthLoop(ctx) })
	if in.cluster != nil {
		wg.Go(func() { in.cluster.Run(ctx) })
		wg.Go(func() { in.clusterLoop(ctx) })
	}
	wg.Go(func() { in.store.Run(ctx) })
	wg.Go(func() { in.renewLoop(ctx) })
	if ready != nil {
		ready()
	}
	<-ctx.Done()
	in.log.Info("instance stopping")
	for _, srv := range servers {
		srv.Close()
	}
	in.closeListeners()
	in.peers.closeAll()
	in.closeRelays()
	in.storeTr.closeAll()
	in.fedTr.closeAll()
	wg.Wait()
	in.reloads.Lock() // a reload in progress has finished starting loops
	in.loops.Wait()
	in.reloads.Unlock()
	in.dials.wait()
	in.conns.Wait()
	return nil
}

func (in *Instance) serveHTTP(srv *http.Server, ln net.Listener, useTLS bool) {
	var err error
	if useTLS {
		err = srv.ServeTLS(tunnel.CorkListener(ln), "", "")
	} else {
		err = srv.Serve(ln)
	}
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		in.log.Error("http server failed", "addr", ln.Addr().String(), "err", err)
	}
}

// peerSite returns the peers entry of site.
func (in *Instance) peerSite(site string) (config.Peer, bool) {
	for _, p := range in.conf().Peers {
		if p.Site == site {
			return p, true
		}
	}
	return config.Peer{}, false
}

// allowedSite reports whether site is one of this instance's peer sites.
func (in *Instance) allowedSite(site string) bool {
	_, ok := in.peerSite(site)
	return ok
}

// tunnelTenant is the tenant a tunnel to the peer h serves: the peer's
// tenant, or, for a shared peer (one without a tenant), this instance's.
// Only that tenant's services are offered and used over the tunnel.
func (in *Instance) tunnelTenant(h tunnel.Hello) string {
	if h.Tenant != "" {
		return h.Tenant
	}
	return in.cfg.Tenant
}

// authorizePeerSite is the TLS authorization of tunnel peers: the peer's
// certificate must name our trust domain, one of our peer sites, and the
// tenant configured for that site (peers[].tenant). An instance with a
// tenant also accepts a shared instance (no tenant) of its peer site.
func (in *Instance) authorizePeerSite(want string) tlsgen.Authorize {
	return func(id tlsgen.Identity) error {
		if want != "" && id.Site != want {
			return fmt.Errorf("peer %s is of site %q, expected site %q", id, id.Site, want)
		}
		p, ok := in.peerSite(id.Site)
		if !ok {
			return fmt.Errorf("peer %s is of site %q, which is not a configured peer site", id, id.Site)
		}
		if id.Tenant != p.Tenant && (id.Tenant != "" || in.cfg.Tenant == "") {
			return fmt.Errorf("peer %s belongs to tenant %q, but peer site %q is of tenant %q (peers[].tenant)", id, id.Tenant, id.Site, p.Tenant)
		}
		return nil
	}
}

func (in *Instance) tunnelServer(ctx context.Context) *http.Server {
	ts := &tunnel.Server{Config: in.tcfg, Insecure: in.tls == nil}
	ts.OnSession = func(s *tunnel.Session) { in.serveSession(ctx, s, "") }
	mux := http.NewServeMux()
	mux.Handle(in.cfg.Tunnel.Path, ts)
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: in.cfg.Limits.HandshakeTimeout.D(),
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(in.log.With("component", "tunnel-listener").Handler(), slog.LevelWarn),
		TLSNextProto:      map[string]func(*http.Server, *tls.Conn, http.Handler){}, // HTTP/1.1 only
	}
	if in.tls != nil {
		tc := in.tls.ServerConfig(in.authorizePeerSite(""))
		tc.NextProtos = []string{"http/1.1"}
		srv.TLSConfig = tc
	}
	return srv
}

// serveSession registers an established session, serves the peer's streams
// until it ends, and unregisters it. It returns errDuplicate when the
// session duplicates one this instance already holds.
func (in *Instance) serveSession(ctx context.Context, s *tunnel.Session, url string) error {
	r := s.Remote()
	log := in.log.With("peer", r.Instance, "peer_site", r.Site, "addr", s.RemoteAddr())
	if !in.allowedSite(r.Site) {
		log.Warn("tunnel refused", "reason", "peer site is not configured")
		s.Close()
		return nil
	}
	p, err := in.peers.add(s, url)
	if errors.Is(err, errDuplicate) {
		log.Debug("tunnel closed", "reason", err.Error())
		s.Close()
		return err
	}
	if err != nil {
		log.Warn("tunnel closed", "reason", err.Error())
		s.Close()
		return err
	}
	log.Info("tunnel up", "epoch", r.Epoch, "tenant", r.Tenant, "services", r.Services)
	in.checkOffers(log, r, r.Services)
	in.m.tunnelUp(r.Site)
	if url != "" {
		if urls := s.Members(); len(urls) > 0 {
			in.dials.announce(r.Site, urls)
		}
	}
	err = s.Serve(ctx, in.serveInbound)
	in.peers.remove(p)
	if ctx.Err() != nil {
		in.m.tunnelDown(r.Site, "stopping")
		log.Info("tunnel closed", "reason", "instance stopping")
		return nil
	}
	if err == nil {
		in.m.tunnelDown(r.Site, "closed_by_peer")
	} else {
		in.m.tunnelDown(r.Site, "error")
	}
	log.Warn("tunnel down", "reason", reason(err))
	return nil
}

func reason(err error) string {
	if err == nil {
		return "closed by peer"
	}
	return err.Error()
}

// dialLoop keeps one tunnel to rawURL up until ctx ends, redialling with
// capped exponential backoff and jitter.
func (in *Instance) dialLoop(ctx context.Context, site, rawURL string) {
	log := in.log.With("url", rawURL)
	var tc *tls.Config
	if in.tls != nil {
		u, err := url.Parse(rawURL)
		if err != nil {
			log.Error("bad tunnel url", "err", err)
			return
		}
		tc = in.tls.ClientConfig(u.Hostname(), in.authorizePeerSite(site))
		tc.NextProtos = []string{"http/1.1"}
	}
	b := backoff.Backoff{Min: in.cfg.Tunnel.BackoffMin.D(), Max: in.cfg.Tunnel.BackoffMax.D()}
	failures := 0
	for ctx.Err() == nil {
		dctx, cancel := context.WithTimeout(ctx, in.cfg.Tunnel.DialTimeout.D())
		s, err := tunnel.Dial(dctx, rawURL, tc, in.tcfg)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			failures++
			if failures == 1 || failures%50 == 0 {
				log.Warn("tunnel dial failed", "attempt", failures, "err", err)
			} else {
				log.Debug("tunnel dial failed", "attempt", failures, "err", err)
			}
			sleep(ctx, redialDelay(&b, err))
			continue
		}
		failures = 0
		up := time.Now()
		err = in.serveSession(ctx, s, rawURL)
		switch {
		case errors.Is(err, errDuplicate):
			// Another URL already reaches that instance: dial again when
			// that tunnel ends.
			in.peers.waitGone(ctx, s.Remote())
			sleep(ctx, b.Next())
		case time.Since(up) < b.Max:
			// A session that ends at once (refused after the hello, or a
			// flapping peer) must not turn into a redial loop.
			sleep(ctx, b.Next())
		default:
			b.Reset()
		}
	}
}

// refusedRedialCap bounds the redial delay while the peer is restarting
// (its port refuses, its name does not resolve): such a dial costs next to
// nothing, and the tunnel should be back within a second or so of the peer
// listening again.
const refusedRedialCap = time.Second

func redialDelay(b *backoff.Backoff, err error) time.Duration {
	d := b.Next()
	if peerRestarting(err) {
		return min(d, refusedRedialCap/2+rand.N(refusedRedialCap/2))
	}
	return d
}

// peerRestarting reports dial errors that mean the peer is not there right
// now, cheaply: its port refuses, or (as with containers) its name does not
// resolve or its address is unreachable while it restarts.
func peerRestarting(err error) bool {
	var dnsErr *net.DNSError
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) ||
		(errors.As(err, &dnsErr) && dnsErr.IsNotFound)
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
