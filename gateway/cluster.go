package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"time"

	"github.com/sitebridge/sitebridge/config"
	"github.com/sitebridge/sitebridge/ha"
	"github.com/sitebridge/sitebridge/tlsgen"
	"github.com/sitebridge/sitebridge/tunnel"
)

// errStopping: the instance is shutting down.
var errStopping = errors.New("instance is stopping")

// relayPath is the HTTP path of the intra-site relay endpoint.
const relayPath = "/sitebridge-relay"

// startCluster joins the site's cluster (binding gossip) and binds the
// relay endpoint. It is part of bind: a taken port fails the start.
func (in *Instance) startCluster() error {
	cl := in.cfg.Cluster
	var key []byte
	if !in.cfg.TLS.Insecure {
		var err error
		if key, err = tlsgen.LoadGossipKey(cl.GossipKey); err != nil {
			return fmt.Errorf("cluster.gossip-key: %w", err)
		}
	}
	ln, err := net.Listen("tcp", cl.Relay)
	if err != nil {
		return fmt.Errorf("cluster.relay: %w", err)
	}
	c, err := ha.Start(ha.Config{
		Name: cl.Name, Node: in.cfg.Instance, Bind: cl.Bind, Advertise: cl.Advertise,
		Join: cl.Join, Key: key, Mode: in.cfg.Mode, Log: in.log.With("component", "cluster"),
	}, in.meta())
	if err != nil {
		ln.Close()
		return err
	}
	in.cluster, in.relayLn = c, ln
	return nil
}

// meta is what this instance tells its site about itself.
func (in *Instance) meta() ha.Meta {
	m := ha.Meta{Instance: in.cfg.Instance, Site: in.cfg.Site, Epoch: in.epoch, TunnelURL: in.tunnelURL(), Relay: in.relayAdvertise()}
	m.Admin = in.adminAddr
	reach := map[string]bool{}
	for _, p := range in.peers.all() {
		t := in.tunnelTenant(p.hello)
		for _, s := range p.sess.Services() {
			reach[config.ServiceID(t, s)] = true
		}
	}
	for s := range reach {
		m.Reach = append(m.Reach, s)
	}
	slices.Sort(m.Reach)
	return m
}

// tunnelURL is the URL other sites dial to reach this instance: the
// configured advertise URL, or one derived from a tunnel listener bound to
// a specific host. Empty when it cannot be known.
func (in *Instance) tunnelURL() string {
	if in.cfg.Tunnel.Advertise != "" {
		return in.cfg.Tunnel.Advertise
	}
	if in.tunnelLn == nil {
		return ""
	}
	host, port, _ := net.SplitHostPort(in.TunnelAddr())
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		if in.cfg.Cluster.Advertise == "" {
			return ""
		}
		host, _, _ = net.SplitHostPort(in.cfg.Cluster.Advertise)
	}
	scheme := "wss"
	if in.tls == nil {
		scheme = "ws"
	}
	return (&url.URL{Scheme: scheme, Host: net.JoinHostPort(host, port), Path: in.cfg.Tunnel.Path}).String()
}

// relayAdvertise is the host:port members dial for relay.
func (in *Instance) relayAdvertise() string {
	cl := in.cfg.Cluster
	if cl.RelayAdvertise != "" {
		return cl.RelayAdvertise
	}
	if in.relayLn == nil {
		return ""
	}
	_, port, _ := net.SplitHostPort(in.relayLn.Addr().String())
	for _, hp := range []string{cl.Advertise, in.relayLn.Addr().String()} {
		host, _, err := net.SplitHostPort(hp)
		if err != nil {
			continue
		}
		if ip := net.ParseIP(host); ip == nil || !ip.IsUnspecified() {
			return net.JoinHostPort(host, port)
		}
	}
	if in.cluster != nil {
		host, _, _ := net.SplitHostPort(in.cluster.Addr())
		return net.JoinHostPort(host, port)
	}
	return ""
}

// memberURLs lists the tunnel URLs of the live accepting members of this
// site (this one included), for hellos and members frames.
func (in *Instance) memberURLs() []string {
	var urls []string
	if in.cluster == nil {
		if u := in.tunnelURL(); u != "" {
			urls = append(urls, u)
		}
		return urls
	}
	for _, m := range in.cluster.Members() {
		if m.Meta.Site == in.cfg.Site && m.Meta.TunnelURL != "" {
			urls = append(urls, m.Meta.TunnelURL)
		}
	}
	slices.Sort(urls)
	return slices.Compact(urls)
}

// clusterLoop keeps this member's metadata current (the services its
// tunnels reach) and, on an accepting instance, tells every connected peer
// the site's member list whenever it changes.
func (in *Instance) clusterLoop(ctx context.Context) {
	var lastMeta ha.Meta
	var lastURLs []string
	for {
		memberCh, peerCh := in.cluster.Changed(), in.peers.changes()
		m := in.meta()
		if !slices.Equal(m.Reach, lastMeta.Reach) || m.TunnelURL != lastMeta.TunnelURL || m.Relay != lastMeta.Relay {
			if err := in.cluster.UpdateMeta(m); err != nil {
				in.log.Debug("cluster metadata update", "err", err)
			}
			lastMeta = m
		}
		if in.cfg.Accepting() {
			urls := in.memberURLs()
			if !slices.Equal(urls, lastURLs) {
				in.log.Info("site members announced to peers", "members", urls)
				for _, p := range in.peers.all() {
					if p.url == "" { // a tunnel the peer dialled: it wants our members
						if err := p.sess.SendMembers(urls); err != nil {
							in.log.Debug("send members", "peer", p.hello.Instance, "err", err)
						}
					}
				}
				lastURLs = urls
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-memberCh:
		case <-peerCh:
		}
		// Let a burst of changes settle before announcing.
		sleep(ctx, 50*time.Millisecond)
	}
}

// relayServer serves the intra-site relay endpoint: members of this site
// (and only they) open streams here to reach a service through this
// instance's tunnels.
func (in *Instance) relayServer(ctx context.Context) *http.Server {
	ts := &tunnel.Server{Config: in.relayConfig(), Insecure: in.tls == nil}
	ts.OnSession = func(s *tunnel.Session) {
		r := s.Remote()
		if r.Site != in.cfg.Site {
			in.log.Warn("relay session refused", "peer", r.Instance, "peer_site", r.Site, "reason", "not a member of this site")
			s.Close()
			return
		}
		s.Serve(ctx, func(ctx context.Context, s *tunnel.Session, st *tunnel.Inbound) {
			if st.Header.Kind == tunnel.KindStore {
				in.serveStore(ctx, s, st)
				return
			}
			in.serveRelayed(ctx, s, st)
		})
	}
	mux := http.NewServeMux()
	mux.Handle(relayPath, ts)
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: in.cfg.Limits.HandshakeTimeout.D(),
		MaxHeaderBytes:    16 << 10,
		TLSNextProto:      map[string]func(*http.Server, *tls.Conn, http.Handler){},
	}
	if in.tls != nil {
		tc := in.tls.ServerConfig(in.authorizeSiteMember(""))
		tc.NextProtos = []string{"http/1.1"}
		srv.TLSConfig = tc
	}
	return srv
}

func (in *Instance) relayConfig() tunnel.Config {
	c := in.tcfg
	c.Members, c.OnMembers = nil, nil
	c.Kinds = []tunnel.Kind{tunnel.KindStore}
	c.Log = in.log.With("component", "relay")
	return c
}

// authorizeSiteMember admits certificates of this site (and tenant), and,
// when instance is given, of exactly that instance.
func (in *Instance) authorizeSiteMember(instance string) tlsgen.Authorize {
	return func(id tlsgen.Identity) error {
		if id.Site != in.cfg.Site || id.Tenant != in.cfg.Tenant {
			return fmt.Errorf("peer %s is not a member of site %q", id, in.cfg.Site)
		}
		if instance != "" && id.Instance != instance {
			return fmt.Errorf("peer %s is not instance %q", id, instance)
		}
		return nil
	}
}

// serveRelayed serves a stream a site member relays to us: it goes out over
// this instance's own tunnels only (never relayed again, so no loops).
func (in *Instance) serveRelayed(ctx context.Context, s *tunnel.Session, st *tunnel.Inbound) {
	service := config.ServiceID(st.Header.Tenant, st.Header.Service)
	octx, cancel := context.WithTimeout(ctx, in.conf().Limits.OpenTimeout.D()/2)
	out, p, _, err := in.open(octx, st.Header.Tenant, st.Header.Service, false, nil)
	cancel()
	if err != nil {
		in.log.Warn("relay refused", "member", s.Remote().Instance, "service", service, "reason", err.Error())
		st.Refuse(tunnel.CodeTargetUnreachable, fmt.Sprintf("instance %s has no tunnel for service %q", in.cfg.Instance, service))
		return
	}
	if err := st.Accept(); err != nil {
		out.Close()
		st.Close()
		p.active.Add(-1) // counted by open
		return
	}
	in.log.Debug("relaying", "member", s.Remote().Instance, "service", service, "via", p.hello.Instance)
	in.forward(ctx, service, st, out, p, 0)
}

// relayPool caches one relay session per site member.
type relayPool struct {
	mu     sync.Mutex
	sess   map[string]*tunnel.Session
	closed bool // set by closeRelays: no new sessions
	wg     sync.WaitGroup
}

// relaySession returns a live relay session to member m, dialling one if
// needed.
func (in *Instance) relaySession(ctx context.Context, m ha.Member) (*tunnel.Session, error) {
	rp := &in.relays
	rp.mu.Lock()
	if s := rp.sess[m.Name]; s != nil {
		select {
		case <-s.Done():
		default:
			rp.mu.Unlock()
			return s, nil
		}
	}
	rp.mu.Unlock()

	scheme := "wss"
	var tc *tls.Config
	if in.tls != nil {
		tc = in.tls.ClientConfig("", in.authorizeSiteMember(m.Meta.Instance))
		tc.NextProtos = []string{"http/1.1"}
	} else {
		scheme = "ws"
	}
	u := (&url.URL{Scheme: scheme, Host: m.Meta.Relay, Path: relayPath}).String()
	s, err := tunnel.Dial(ctx, u, tc, in.relayConfig())
	if err != nil {
		return nil, fmt.Errorf("relay to %s: %w", m.Name, err)
	}
	rp.mu.Lock()
	defer rp.mu.Unlock()
	if rp.closed {
		s.Close()
		return nil, fmt.Errorf("relay to %s: %w", m.Name, errStopping)
	}
	if rp.sess == nil {
		rp.sess = map[string]*tunnel.Session{}
	}
	if old := rp.sess[m.Name]; old != nil {
		old.Close()
	}
	rp.sess[m.Name] = s
	// The relay target never opens streams to us; Serve reads the control
	// stream and ends with the session.
	rp.wg.Go(func() {
		s.Serve(context.Background(), func(_ context.Context, _ *tunnel.Session, st *tunnel.Inbound) {
			st.Refuse(tunnel.CodeUnsupportedKind, "relay sessions carry streams one way")
		})
	})
	return s, nil
}

// closeRelays closes every relay session and waits for them.
func (in *Instance) closeRelays() {
	in.relays.mu.Lock()
	in.relays.closed = true
	for _, s := range in.relays.sess {
		s.Close()
	}
	in.relays.mu.Unlock()
	in.relays.wg.Wait()
}
