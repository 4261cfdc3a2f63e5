package config

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// SetDefaults fills in every field that has a default and is empty (zero).
// Timing defaults depend on Mode, so set Mode first.
func (c *Config) SetDefaults() {
	c.applyDefaults(func(string) bool { return false })
}

// applyDefaults fills the empty fields whose key path is not explicitly
// set: an explicit zero in a file is kept, and then rejected by validate,
// rather than silently replaced.
func (c *Config) applyDefaults(isSet func(path string) bool) {
	str := func(path string, f *string, def string) {
		if *f == "" && !isSet(path) {
			*f = def
		}
	}
	dur := func(path string, f *Duration, def time.Duration) {
		if *f == 0 && !isSet(path) {
			*f = Duration(def)
		}
	}
	num := func(path string, f *int, def int) {
		if *f == 0 && !isSet(path) {
			*f = def
		}
	}
	str("trust-domain", &c.TrustDomain, DefaultTrustDomain)
	str("mode", &c.Mode, DefaultMode)

	t := &c.Tunnel
	str("tunnel.path", &t.Path, DefaultTunnelPath)
	if c.Mode == ModeProd {
		dur("tunnel.keepalive", &t.Keepalive, DefaultKeepaliveProd)
		dur("tunnel.dead-after", &t.DeadAfter, DefaultDeadAfterProd)
	} else {
		dur("tunnel.keepalive", &t.Keepalive, DefaultKeepaliveDev)
		dur("tunnel.dead-after", &t.DeadAfter, DefaultDeadAfterDev)
	}
	dur("tunnel.dial-timeout", &t.DialTimeout, DefaultDialTimeout)
	dur("tunnel.backoff-min", &t.BackoffMin, DefaultBackoffMin)
	dur("tunnel.backoff-max", &t.BackoffMax, DefaultBackoffMax)
	num("tunnel.window-size", &t.WindowSize, DefaultWindowSize)
	num("tunnel.connections", &t.Connections, 1)

	for i := range c.Peers {
		str(fmt.Sprintf("peers[%d].tenant", i), &c.Peers[i].Tenant, c.Tenant)
	}
	for i := range c.Services {
		str(fmt.Sprintf("services[%d].tenant", i), &c.Services[i].Tenant, c.Tenant)
		dur(fmt.Sprintf("services[%d].dial-timeout", i), &c.Services[i].DialTimeout, DefaultDialTimeout)
		num(fmt.Sprintf("services[%d].max-connections", i), &c.Services[i].MaxConnections, DefaultMaxConnections)
	}

	str("admin.listen", &c.Admin.Listen, DefaultAdminListen)
	str("log.level", &c.Log.Level, DefaultLogLevel)
	str("log.format", &c.Log.Format, DefaultLogFormat)

	if cl := &c.Cluster; cl.Enabled() {
		str("cluster.bind", &cl.Bind, DefaultClusterBind)
		if host, _, err := net.SplitHostPort(cl.Bind); err == nil {
			str("cluster.relay", &cl.Relay, net.JoinHostPort(host, DefaultClusterRelay))
		}
	}

	l := &c.Limits
	dur("limits.handshake-timeout", &l.HandshakeTimeout, DefaultHandshakeTimeout)
	dur("limits.hello-timeout", &l.HelloTimeout, DefaultHelloTimeout)
	num("limits.max-streams-per-tunnel", &l.MaxStreamsPerTunnel, DefaultMaxStreamsPerTunnel)
	num("limits.max-message-size", &l.MaxMessageSize, DefaultMaxMessageSize)
	dur("limits.open-timeout", &l.OpenTimeout, DefaultOpenTimeout)
	num("limits.max-pending-per-port", &l.MaxPendingPerPort, DefaultMaxPendingPerPort)
	num("limits.max-streams-per-tenant", &l.MaxStreamsPerTenant, DefaultMaxStreamsTenant)

	c.Store.applyDefaults(isSet)
	c.Federation.applyDefaults(isSet)
}

// Validate checks c, which should have its defaults set, and returns Errors
// (with key paths but no positions) listing every problem, or nil.
func (c *Config) Validate() error {
	if errs := c.validate(); len(errs) > 0 {
		errs.sort()
		return errs
	}
	return nil
}

// validate returns every problem in c, each with its key path.
func (c *Config) validate() Errors {
	var v validator

	v.name("instance", c.Instance, true)
	v.name("site", c.Site, true)
	v.name("tenant", c.Tenant, false)
	if !validDNSName(c.TrustDomain) {
		v.add("trust-domain", "invalid trust domain %q: want a lowercase DNS name", c.TrustDomain)
	}
	if c.Mode != ModeDev && c.Mode != ModeProd {
		v.add("mode", "must be %q or %q, got %q", ModeDev, ModeProd, c.Mode)
	}

	if !c.TLS.Insecure {
		for _, f := range []struct{ key, val string }{{"ca", c.TLS.CA}, {"cert", c.TLS.Cert}, {"key", c.TLS.Key}} {
			if f.val == "" {
				v.add("tls."+f.key, "is required unless tls.insecure is true")
			}
		}
	}
	if r := c.TLS.Renew; r.CAURL != "" || r.Before != 0 {
		switch {
		case c.TLS.Insecure:
			v.add("tls.renew", "must not be set with tls.insecure: true (there is no certificate to renew)")
		case r.CAURL == "":
			v.add("tls.renew.before", "is set but tls.renew.ca-url is empty: there is no CA to renew at")
		default:
			if msg := checkCAURL(r.CAURL); msg != "" {
				v.add("tls.renew.ca-url", "%s", msg)
			}
		}
	}

	t := &c.Tunnel
	if t.Listen != "" {
		v.addr("tunnel.listen", t.Listen, false, false)
	}
	if !strings.HasPrefix(t.Path, "/") || strings.ContainsAny(t.Path, "?# ") {
		v.add("tunnel.path", "invalid path %q: must start with \"/\" and contain no '?', '#' or spaces", t.Path)
	}
	if t.Advertise != "" {
		v.url("tunnel.advertise", t.Advertise, c.TLS.Insecure)
		if t.Listen == "" {
			v.add("tunnel.advertise", "is set but tunnel.listen is empty (this instance does not accept tunnels)")
		}
	}
	v.positive("tunnel.keepalive", t.Keepalive)
	v.positive("tunnel.dead-after", t.DeadAfter)
	if t.Keepalive > 0 && t.DeadAfter > 0 && t.DeadAfter <= t.Keepalive {
		v.add("tunnel.dead-after", "must be greater than tunnel.keepalive (%s), got %s", t.Keepalive, t.DeadAfter)
	}
	v.positive("tunnel.dial-timeout", t.DialTimeout)
	v.positive("tunnel.backoff-min", t.BackoffMin)
	v.positive("tunnel.backoff-max", t.BackoffMax)
	if t.WindowSize < MinWindowSize || t.WindowSize > 1<<30 {
		v.add("tunnel.window-size", "must be from %d (256 KiB) to %d (1 GiB), got %d", MinWindowSize, 1<<30, t.WindowSize)
	}
	if t.Connections < 1 || t.Connections > MaxTunnelConnections {
		v.add("tunnel.connections", "must be from 1 to %d, got %d", MaxTunnelConnections, t.Connections)
	}
	if t.BackoffMin > 0 && t.BackoffMax > 0 && t.BackoffMax < t.BackoffMin {
		v.add("tunnel.backoff-max", "must not be less than tunnel.backoff-min (%s), got %s", t.BackoffMin, t.BackoffMax)
	}

	c.validatePeers(&v)
	c.validateServices(&v)

	if c.Admin.Listen == "" {
		v.add("admin.listen", "must not be empty")
	} else if v.addr("admin.listen", c.Admin.Listen, false, true) && c.Admin.Token == "" && !isLoopback(c.Admin.Listen) {
		v.add("admin.token", "is required when admin.listen (%s) is not a loopback address", c.Admin.Listen)
	}

	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		v.add("log.level", "must be one of debug, info, warn, error; got %q", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		v.add("log.format", "must be text or json, got %q", c.Log.Format)
	}

	l := &c.Limits
	v.positive("limits.handshake-timeout", l.HandshakeTimeout)
	v.positive("limits.hello-timeout", l.HelloTimeout)
	if l.MaxStreamsPerTunnel <= 0 {
		v.add("limits.max-streams-per-tunnel", "must be greater than 0, got %d", l.MaxStreamsPerTunnel)
	}
	if l.MaxMessageSize < MinMaxMessageSize {
		v.add("limits.max-message-size", "must be at least %d (64 KiB), got %d", MinMaxMessageSize, l.MaxMessageSize)
	}
	v.positive("limits.open-timeout", l.OpenTimeout)
	if l.MaxPendingPerPort <= 0 {
		v.add("limits.max-pending-per-port", "must be greater than 0, got %d", l.MaxPendingPerPort)
	}
	if l.MaxStreamsPerTenant <= 0 {
		v.add("limits.max-streams-per-tenant", "must be greater than 0, got %d", l.MaxStreamsPerTenant)
	}
	if l.IdleTimeout < 0 {
		v.add("limits.idle-timeout", "must not be negative")
	}

	c.validateCluster(&v)
	c.validateListeners(&v)
	c.validateStore(&v)
	c.validateFederation(&v)
	return v.errs
}

func (c *Config) validateCluster(v *validator) {
	cl := &c.Cluster
	if !cl.Enabled() {
		if cl.Bind != "" || cl.Advertise != "" || len(cl.Join) > 0 || cl.GossipKey != "" || cl.Relay != "" || cl.RelayAdvertise != "" {
			v.add("cluster.name", "is required when any other cluster key is set")
		}
		return
	}
	if len(cl.Name) > 64 || !printable(cl.Name) || strings.ContainsAny(cl.Name, " \t") {
		v.add("cluster.name", "invalid cluster name %q: want 1-64 printable characters without spaces", cl.Name)
	}
	v.addr("cluster.bind", cl.Bind, false, true)
	if cl.Advertise != "" {
		v.addr("cluster.advertise", cl.Advertise, true, false)
	}
	for i, j := range cl.Join {
		v.addr(fmt.Sprintf("cluster.join[%d]", i), j, true, false)
	}
	if cl.GossipKey == "" && !c.TLS.Insecure {
		v.add("cluster.gossip-key", "is required unless tls.insecure is true (gossip is encrypted)")
	}
	v.addr("cluster.relay", cl.Relay, false, true)
	if cl.RelayAdvertise != "" {
		v.addr("cluster.relay-advertise", cl.RelayAdvertise, true, false)
	}
}

func (c *Config) validatePeers(v *validator) {
	if len(c.Peers) == 0 {
		v.add("peers", "at least one peer is required")
	}
	sites := map[string]int{}
	dials := false
	for i, p := range c.Peers {
		path := fmt.Sprintf("peers[%d]", i)
		if v.name(path+".site", p.Site, true) {
			if p.Site == c.Site {
				v.add(path+".site", "must differ from this instance's site %q", c.Site)
			}
			if j, dup := sites[p.Site]; dup {
				v.add(path+".site", "duplicate peer site %q (also peers[%d])", p.Site, j)
			} else {
				sites[p.Site] = i
			}
		}
		for j, u := range p.URLs {
			v.url(fmt.Sprintf("%s.urls[%d]", path, j), u, c.TLS.Insecure)
		}
		if v.name(path+".tenant", p.Tenant, false) && c.Tenant != "" && p.Tenant != c.Tenant {
			v.add(path+".tenant", "is %q, but this instance belongs to tenant %q: only a shared instance (no tenant) has peers of other tenants", p.Tenant, c.Tenant)
		}
		dials = dials || len(p.URLs) > 0
	}
	switch {
	case !c.Accepting() && !dials:
		v.add("peers", "instance neither accepts tunnels (tunnel.listen) nor dials any (peers[].urls)")
	case !c.Accepting():
		for i, p := range c.Peers {
			if len(p.URLs) == 0 {
				v.add(fmt.Sprintf("peers[%d].urls", i),
					"required: this instance does not accept tunnels (tunnel.listen is empty), so it must dial every peer")
			}
		}
	}
}

func (c *Config) validateServices(v *validator) {
	names := map[string]int{}
	tenants := map[string]bool{}
	for _, p := range c.Peers {
		tenants[p.Tenant] = true
	}
	for i, s := range c.Services {
		path := fmt.Sprintf("services[%d]", i)
		switch {
		case s.Name == "":
			v.add(path+".name", "is required")
		case !validServiceName(s.Name):
			v.add(path+".name", "invalid service name %q: want 1-64 characters of A-Z, a-z, 0-9, '.', '_' and '-'", s.Name)
		default:
			if j, dup := names[s.ID()]; dup {
				if s.Tenant != "" {
					v.add(path+".name", "duplicate service name %q of tenant %q (also services[%d])", s.Name, s.Tenant, j)
				} else {
					v.add(path+".name", "duplicate service name %q (also services[%d])", s.Name, j)
				}
			} else {
				names[s.ID()] = i
			}
		}
		switch {
		case s.Tenant != "" && !v.name(path+".tenant", s.Tenant, false):
		case c.Tenant != "" && s.Tenant != c.Tenant:
			v.add(path+".tenant", "is %q, but this instance belongs to tenant %q: only a shared instance (no tenant) serves other tenants' services", s.Tenant, c.Tenant)
		case len(c.Peers) > 0 && !tenants[s.Tenant] && !(c.Tenant != "" && tenants[""]):
			if s.Tenant == "" {
				v.add(path+".tenant", "is not set, and every peer site names a tenant (peers[].tenant), so no tunnel could carry this service; set the tenant it belongs to")
			} else {
				v.add(path+".tenant", "no peer site of tenant %q (peers[].tenant), so no tunnel could carry this service", s.Tenant)
			}
		}
		switch {
		case s.Accept == "" && s.Connect == "":
			v.add(path, "exactly one of accept or connect must be set, got neither")
		case s.Accept != "" && s.Connect != "":
			v.add(path, "exactly one of accept or connect must be set, got both")
		case s.Accept != "":
			v.addr(path+".accept", s.Accept, false, false)
		default:
			v.addr(path+".connect", s.Connect, true, false)
		}
		v.positive(path+".dial-timeout", s.DialTimeout)
		if s.EarlyData && s.Accept == "" && s.Connect != "" {
			v.add(path+".early-data", "applies only to accept services (the side that takes clients sends it); this service connects %s", s.Connect)
		}
		if s.MaxConnections <= 0 {
			v.add(path+".max-connections", "must be greater than 0, got %d", s.MaxConnections)
		}
	}
}

// validateListeners rejects two listeners (tunnel, admin, service accept
// addresses) on the same port with overlapping hosts.
func (c *Config) validateListeners(v *validator) {
	type listener struct{ path, addr, host, port string }
	var seen []listener
	check := func(path, addr string) {
		if addr == "" || checkAddr(addr, false, true) != "" {
			return // empty or already reported
		}
		host, port, _ := net.SplitHostPort(addr)
		if port == "0" {
			return
		}
		for _, l := range seen {
			if l.port == port && hostsOverlap(l.host, host) {
				v.add(path, "address %s conflicts with %s (%s)", addr, l.path, l.addr)
				return
			}
		}
		seen = append(seen, listener{path, addr, host, port})
	}
	check("tunnel.listen", c.Tunnel.Listen)
	check("admin.listen", c.Admin.Listen)
	if c.Cluster.Enabled() {
		check("cluster.bind", c.Cluster.Bind)
		check("cluster.relay", c.Cluster.Relay)
	}
	for i, s := range c.Services {
		if s.Accept != "" && s.Connect == "" {
			check(fmt.Sprintf("services[%d].accept", i), s.Accept)
		}
	}
}

type validator struct{ errs Errors }

func (v *validator) add(path, format string, args ...any) {
	v.errs = append(v.errs, &Error{Path: path, Msg: fmt.Sprintf(format, args...)})
}

// name checks the name rule for instance, site and tenant names and
// reports whether s is a valid, non-empty name.
func (v *validator) name(path, s string, required bool) bool {
	switch {
	case s == "":
		if required {
			v.add(path, "is required")
		}
		return false
	case !validName(s):
		v.add(path, "invalid name %q: want 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'", s)
		return false
	}
	return true
}

func (v *validator) positive(path string, d Duration) {
	if d <= 0 {
		v.add(path, "must be greater than 0, got %s", d)
	}
}

// addr checks a host:port and reports whether it is valid.
func (v *validator) addr(path, s string, needHost, allowZeroPort bool) bool {
	if msg := checkAddr(s, needHost, allowZeroPort); msg != "" {
		v.add(path, "%s", msg)
		return false
	}
	return true
}

func (v *validator) url(path, s string, insecure bool) {
	if msg := checkURL(s, insecure); msg != "" {
		v.add(path, "%s", msg)
	}
}

// checkAddr validates a host:port; it returns a problem description or "".
func checkAddr(s string, needHost, allowZeroPort bool) string {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Sprintf("invalid address %q: want host:port", s)
	}
	if host == "" && needHost {
		return fmt.Sprintf("invalid address %q: host is required", s)
	}
	if host != "" && !validHost(host) {
		return fmt.Sprintf("invalid address %q: bad host %q", s, host)
	}
	lowest := 1
	if allowZeroPort {
		lowest = 0
	}
	if !validPort(port, lowest) {
		return fmt.Sprintf("invalid address %q: port must be a number from %d to 65535", s, lowest)
	}
	return ""
}

// checkURL validates a tunnel URL; it returns a problem description or "".
func checkURL(s string, insecure bool) string {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Sprintf("invalid URL %q", s)
	}
	switch u.Scheme {
	case "wss":
	case "ws":
		if !insecure {
			return fmt.Sprintf("invalid URL %q: scheme ws requires tls.insecure: true; use wss", s)
		}
	default:
		if insecure {
			return fmt.Sprintf("invalid URL %q: scheme must be wss or ws", s)
		}
		return fmt.Sprintf("invalid URL %q: scheme must be wss", s)
	}
	if p := checkURLParts(s, u); p != "" {
		return p
	}
	switch {
	case u.Port() == "":
		return fmt.Sprintf("invalid URL %q: an explicit port is required", s)
	case !validPort(u.Port(), 1):
		return fmt.Sprintf("invalid URL %q: port must be a number from 1 to 65535", s)
	case !strings.HasPrefix(u.Path, "/"):
		return fmt.Sprintf("invalid URL %q: the tunnel path is required (e.g. %s)", s, DefaultTunnelPath)
	}
	return ""
}

// checkURLParts checks what every URL in a config must be: a valid host,
// no user information, no query or fragment. It returns a problem
// description or "".
func checkURLParts(s string, u *url.URL) string {
	switch {
	case u.Opaque != "" || u.Hostname() == "":
		return fmt.Sprintf("invalid URL %q: host is required", s)
	case u.User != nil:
		return fmt.Sprintf("invalid URL %q: must not contain user information", s)
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return fmt.Sprintf("invalid URL %q: must not contain a query or fragment", s)
	case !validHost(u.Hostname()):
		return fmt.Sprintf("invalid URL %q: bad host %q", s, u.Hostname())
	}
	return ""
}

// checkCAURL validates the URL of a step-ca: https://host[:port][/path];
// it returns a problem description or "".
func checkCAURL(s string) string {
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return fmt.Sprintf("invalid URL %q", s)
	case u.Scheme != "https":
		return fmt.Sprintf("invalid URL %q: scheme must be https", s)
	case checkURLParts(s, u) != "":
		return checkURLParts(s, u)
	case u.Port() != "" && !validPort(u.Port(), 1):
		return fmt.Sprintf("invalid URL %q: port must be a number from 1 to 65535", s)
	}
	return ""
}

func validPort(s string, lowest int) bool {
	if s == "" || len(s) > 5 || strings.Trim(s, "0123456789") != "" {
		return false
	}
	n, err := strconv.Atoi(s)
	return err == nil && n >= lowest && n <= 65535
}

// validHost accepts an IP address (IPv6 with optional zone) or a DNS host
// name (letters, digits, '-' and '_' in dot-separated labels).
func validHost(h string) bool {
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	if len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return false
			}
		}
	}
	return true
}

// validName checks the name rule for instances, sites and tenants: 1-63
// characters of a-z, 0-9 and '-', not starting or ending with '-'.
func validName(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}

// validDNSName checks a trust domain: dot-separated names, each following
// the name rule, at most 253 characters in all.
func validDNSName(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if !validName(label) {
			return false
		}
	}
	return true
}

func validServiceName(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

// isLoopback reports whether the host of a valid host:port is a loopback
// address or "localhost". An empty host (all interfaces) is not.
func isLoopback(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

// hostsOverlap reports whether listeners on hosts a and b could collide on
// one port: the same host, or either one listening on all interfaces.
func hostsOverlap(a, b string) bool {
	return strings.EqualFold(a, b) || isWildcard(a) || isWildcard(b)
}

func isWildcard(host string) bool {
	if host == "" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsUnspecified()
}
