// Package config defines the per-instance configuration of a sitebridge
// instance: the YAML schema as plain structs, its defaults, and strict
// loading and validation.
//
// One YAML file configures one instance. Loading is strict: unknown keys,
// duplicate keys, values of the wrong type and invalid values are all errors,
// and every problem in a file is reported at once as an [Errors] value whose
// elements carry the file, line, column and key path (for example
// "services[1].accept") of the problem.
//
// After [Parse] or [Load] the defaults are applied and the config is
// validated, so the returned *Config is the effective config; [Config.Marshal]
// renders it back as YAML. Code that builds a Config in Go calls
// [Config.SetDefaults] and then [Config.Validate].
package config

import (
	"bytes"
	"slices"
	"time"

	"gopkg.in/yaml.v3"
)

// Modes. The mode selects timing defaults: dev notices a dead tunnel within
// about 3 s, prod is more tolerant of slow networks.
const (
	ModeDev  = "dev"
	ModeProd = "prod"
)

// Defaults applied by [Config.SetDefaults] to fields left empty.
const (
	DefaultTrustDomain         = "sitebridge.local"
	DefaultMode                = ModeDev
	DefaultTunnelPath          = "/sitebridge"
	DefaultAdminListen         = "127.0.0.1:9100"
	DefaultLogLevel            = "info"
	DefaultLogFormat           = "text"
	DefaultMaxStreamsPerTunnel = 4096
	DefaultMaxMessageSize      = 1 << 20
	MinMaxMessageSize          = 64 << 10 // lower bound for limits.max-message-size

	DefaultKeepaliveDev  = 1 * time.Second
	DefaultKeepaliveProd = 10 * time.Second
	DefaultDeadAfterDev  = 3 * time.Second
	DefaultDeadAfterProd = 30 * time.Second
	DefaultDialTimeout   = 5 * time.Second // tunnel.dial-timeout and services[].dial-timeout
	DefaultBackoffMin    = 100 * time.Millisecond
	DefaultBackoffMax    = 5 * time.Second
	DefaultWindowSize    = 8 << 20
	MinWindowSize        = 256 << 10

	DefaultClusterBind  = "0.0.0.0:7946"
	DefaultClusterRelay = "7947" // port; the host is Bind's

	DefaultHandshakeTimeout  = 10 * time.Second
	DefaultHelloTimeout      = 5 * time.Second
	DefaultOpenTimeout       = 5 * time.Second
	DefaultMaxPendingPerPort = 1024
	DefaultMaxConnections    = 4096  // services[].max-connections
	DefaultMaxStreamsTenant  = 16384 // limits.max-streams-per-tenant
)

// Config is the configuration of one instance.
type Config struct {
	// Instance names this instance within its site. Required; 1-63
	// characters of a-z, 0-9 and '-', not starting or ending with '-'.
	Instance string `yaml:"instance"`
	// Site names the site this instance belongs to. Required; same rule as
	// Instance.
	Site string `yaml:"site"`
	// Tenant is optional; when set, same rule as Instance.
	Tenant string `yaml:"tenant"`
	// TrustDomain is the trust domain named in certificate URI SANs.
	// Default "sitebridge.local"; a lowercase DNS name.
	TrustDomain string `yaml:"trust-domain"`
	// Mode is "dev" (default) or "prod"; it selects timing defaults.
	Mode     string    `yaml:"mode"`
	TLS      TLS       `yaml:"tls"`
	Tunnel   Tunnel    `yaml:"tunnel"`
	Peers    []Peer    `yaml:"peers"` // at least one
	Services []Service `yaml:"services"`
	Admin    Admin     `yaml:"admin"`
	Log      Log       `yaml:"log"`
	Limits   Limits    `yaml:"limits"`
	Cluster  Cluster   `yaml:"cluster"`
	Store    Store     `yaml:"store"`
	// Federation ships the store's caches to other sites. Optional: without
	// topologies there is no federation.
	Federation Federation `yaml:"federation"`
}

// Cluster joins this instance with the other instances of its site
// (hashicorp/memberlist). Without a name the instance runs alone: it keeps
// its configured tunnels but has no membership, discovery or relay.
type Cluster struct {
	// Name is the cluster name; members with another name never join
	// (it is the memberlist label). Setting it enables clustering.
	Name string `yaml:"name"`
	// Bind is the host:port of gossip (TCP and UDP). Default 0.0.0.0:7946.
	Bind string `yaml:"bind"`
	// Advertise is the host:port other members reach this one at. Default:
	// Bind, with a wildcard host replaced by a private address of this host.
	Advertise string `yaml:"advertise"`
	// Join lists well-known addresses (host:port) of members; a DNS name may
	// resolve to several. The instance retries until one answers.
	Join []string `yaml:"join"`
	// GossipKey is the file holding the gossip encryption key (from
	// tlsgen). Required unless tls.insecure.
	GossipKey string `yaml:"gossip-key"`
	// Relay is the host:port of the intra-site relay endpoint (mutual TLS),
	// through which a member without a usable tunnel forwards clients via
	// one that has one. Default: Bind's host with port 7947.
	Relay string `yaml:"relay"`
	// RelayAdvertise is the host:port other members dial for relay.
	// Default: Advertise's host (or Bind's) with Relay's port.
	RelayAdvertise string `yaml:"relay-advertise"`
}

// Enabled reports whether clustering is configured.
func (c Cluster) Enabled() bool { return c.Name != "" }

// TLS configures the mutual TLS of tunnels. Relative file paths in a parsed
// config are resolved against the directory of the config file and made
// absolute.
type TLS struct {
	CA   string `yaml:"ca"`   // CA bundle; required unless Insecure
	Cert string `yaml:"cert"` // this instance's certificate; required unless Insecure
	Key  string `yaml:"key"`  // its private key; required unless Insecure
	// Insecure selects plaintext ws:// tunnels. Allowed, but the caller
	// logs a warning at every start.
	Insecure bool `yaml:"insecure"`
	// Renew renews Cert automatically at a smallstep CA. Optional.
	Renew TLSRenew `yaml:"renew"`
}

// TLSRenew configures the automatic renewal of this instance's certificate
// at a smallstep CA (step-ca) that issued it, for example through
// `sitebridge enroll`. Without CAURL there is no renewal.
type TLSRenew struct {
	// CAURL is the https:// URL of the step-ca, such as
	// https://ca.example.com:9000. Its TLS is verified with tls.ca. The
	// renewed certificate replaces the file tls.cert (temporary file and
	// rename in its directory, which must be writable); the key stays.
	CAURL string `yaml:"ca-url"`
	// Before is how long before the certificate expires it is renewed.
	// 0 (default): a third of the certificate's lifetime. More than half
	// the lifetime counts as half. Only valid with CAURL.
	Before Duration `yaml:"before"`
}

// Tunnel configures the tunnels this instance accepts and dials.
type Tunnel struct {
	// Listen is the host:port to accept tunnels on. Empty means this
	// instance does not accept tunnels (it only dials).
	Listen string `yaml:"listen"`
	// Path is the HTTP path of the WebSocket endpoint. Default "/sitebridge".
	Path string `yaml:"path"`
	// Advertise is the wss:// URL other instances should dial to reach this
	// one. Optional; only valid together with Listen.
	Advertise string `yaml:"advertise"`
	// Keepalive is the ping interval. Default 1s (dev) or 10s (prod).
	Keepalive Duration `yaml:"keepalive"`
	// DeadAfter declares a tunnel dead after no traffic or pong for this
	// long. Default 3s (dev) or 30s (prod); must be greater than Keepalive.
	DeadAfter Duration `yaml:"dead-after"`
	// DialTimeout bounds one tunnel dial including TLS. Default 5s.
	DialTimeout Duration `yaml:"dial-timeout"`
	// BackoffMin and BackoffMax bound the exponential redial backoff.
	// Defaults 100ms and 5s; BackoffMax must not be less than BackoffMin.
	BackoffMin Duration `yaml:"backoff-min"`
	BackoffMax Duration `yaml:"backoff-max"`
	// WindowSize is the most bytes of one stream in flight (the yamux
	// receive window), which is also the most a receiving instance buffers
	// for one stream whose reader is slow. One stream moves at most about
	// WindowSize/2 per round trip. Default 8 MiB; at least 256 KiB.
	WindowSize int `yaml:"window-size"`
	// Connections is how many tunnels this instance keeps to each URL it
	// dials. New forwarded connections go to the least busy one. One TCP
	// connection carries at most its send buffer per round trip, so on a
	// long fat link several tunnels carry more between them. Default 1; at
	// most MaxTunnelConnections (16).
	Connections int `yaml:"connections"`
}

// MaxTunnelConnections is the most tunnel.connections allows.
const MaxTunnelConnections = 16

// Peer is a remote site this instance talks to.
type Peer struct {
	// Site names the remote site. Required, unique across peers and
	// different from the own site.
	Site string `yaml:"site"`
	// URLs are the tunnel URLs this instance dials for that site, each
	// wss://host:port/path (ws:// only with tls.insecure). Empty means this
	// instance only accepts tunnels from that site.
	URLs []string `yaml:"urls"`
	// Tenant is the tenant the peer site's certificates name. Default: this
	// instance's tenant. A shared instance (one with no tenant of its own)
	// serves several tenants' sites: each peer entry names its tenant, and
	// a tunnel from that site may only offer and use that tenant's
	// services. An instance with a tenant also accepts peers whose
	// certificates name no tenant (shared instances) as its peer site.
	Tenant string `yaml:"tenant"`
}

// Service is one forwarded TCP service. Exactly one of Accept and Connect is
// set: the accepting side listens for clients, the connecting side dials the
// real server. The same Name pairs both sides.
type Service struct {
	// Name is required and unique per tenant; 1-64 characters of A-Z, a-z,
	// 0-9, '.', '_' and '-'.
	Name string `yaml:"name"`
	// Tenant owns the service: only tunnels of that tenant may offer it
	// (connect) or carry its clients (accept). Default: this instance's
	// tenant. Only a shared instance (no tenant of its own) may serve
	// other tenants' services; each needs a peer site of that tenant.
	Tenant string `yaml:"tenant"`
	// Accept is the host:port listened on for clients.
	Accept string `yaml:"accept"`
	// Connect is the host:port of the real server.
	Connect string `yaml:"connect"`
	// DialTimeout bounds the dial of Connect. Default 5s (also filled in for
	// accept services, where it is unused).
	DialTimeout Duration `yaml:"dial-timeout"`
	// MaxConnections caps the connections of this service open at once on
	// this instance: clients of an accept port, or streams from peers to a
	// connect target. The excess is refused and logged. Default 4096.
	MaxConnections int `yaml:"max-connections"`
	// EarlyData (accept services only): what a client has sent by the
	// time its stream opens leaves with the stream header, which saves a
	// tunnel round trip before the first byte reaches the target. If a
	// far end fails without answering, those bytes are sent again on the
	// next route, so a target may see them on a connection that then
	// closes and again on a new one: turn it on only for protocols where
	// that is harmless (TLS, for one). Default false.
	EarlyData bool `yaml:"early-data"`
}

// ID names the service within the instance: "tenant/name", or just the
// name when the service belongs to no tenant.
func (s Service) ID() string { return ServiceID(s.Tenant, s.Name) }

// ServiceID is the ID of service name of tenant: "tenant/name", or name
// when tenant is empty.
func ServiceID(tenant, name string) string {
	if tenant == "" {
		return name
	}
	return tenant + "/" + name
}

// Admin configures the admin HTTP endpoint.
type Admin struct {
	// Listen is the host:port of the admin endpoint. Default
	// "127.0.0.1:9100"; port 0 picks a free port.
	Listen string `yaml:"listen"`
	// Token is the bearer token required by the endpoint. Required when
	// Listen is not a loopback address.
	Token string `yaml:"token"`
}

// Log configures logging.
type Log struct {
	Level  string `yaml:"level"`  // debug, info (default), warn or error
	Format string `yaml:"format"` // text (default) or json
}

// Limits bounds resources and waiting.
type Limits struct {
	// HandshakeTimeout bounds the TLS handshake plus WebSocket upgrade.
	// Default 10s.
	HandshakeTimeout Duration `yaml:"handshake-timeout"`
	// HelloTimeout bounds the hello exchange on a new tunnel. Default 5s.
	HelloTimeout Duration `yaml:"hello-timeout"`
	// MaxStreamsPerTunnel caps concurrent streams on one tunnel.
	// Default 4096; must be greater than 0.
	MaxStreamsPerTunnel int `yaml:"max-streams-per-tunnel"`
	// MaxMessageSize caps one WebSocket message, in bytes. Default 1 MiB;
	// at least 64 KiB.
	MaxMessageSize int `yaml:"max-message-size"`
	// OpenTimeout is the deadline to route one client connection,
	// including retries. Default 5s.
	OpenTimeout Duration `yaml:"open-timeout"`
	// MaxPendingPerPort caps the client connections of one accept port that
	// are waiting for a route (a tunnel to come up, a stream to open); more
	// are closed at once. Default 1024.
	MaxPendingPerPort int `yaml:"max-pending-per-port"`
	// MaxStreamsPerTenant caps the service streams that peers of one
	// tenant have open on this instance at once, over all their tunnels;
	// the excess is refused with overloaded. Default 16384.
	MaxStreamsPerTenant int `yaml:"max-streams-per-tenant"`
	// IdleTimeout closes a forwarded connection idle for this long.
	// 0 (default) means never.
	IdleTimeout Duration `yaml:"idle-timeout"`
}

// Accepting reports whether this instance accepts tunnels.
func (c *Config) Accepting() bool { return c.Tunnel.Listen != "" }

// PeerSites returns the sites of the configured peers, in config order.
func (c *Config) PeerSites() []string {
	sites := make([]string, len(c.Peers))
	for i, p := range c.Peers {
		sites[i] = p.Site
	}
	return sites
}

// IsAccept reports whether the service is the accepting side (listens for
// clients) rather than the connecting side.
func (s Service) IsAccept() bool { return s.Accept != "" }

// Clone returns a deep copy of c.
func (c *Config) Clone() *Config {
	d := *c
	d.Peers = slices.Clone(c.Peers)
	for i := range d.Peers {
		d.Peers[i].URLs = slices.Clone(d.Peers[i].URLs)
	}
	d.Services = slices.Clone(c.Services)
	d.Cluster.Join = slices.Clone(c.Cluster.Join)
	d.Store = c.Store.clone()
	d.Federation = c.Federation.clone()
	return &d
}

// Marshal renders c as YAML. For a config returned by Parse or Load this is
// the effective config, with defaults filled in and TLS paths absolute;
// parsing the output again yields an equal config.
func (c *Config) Marshal() ([]byte, error) {
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(c); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
