// Package ha joins the instances of one site into a cluster with
// hashicorp/memberlist: encrypted gossip, a cluster name that keeps other
// deployments out, and per-member metadata (what each member offers and
// reaches) that the instance runtime uses for discovery and relay.
//
// # Timing profiles
//
// Mode "dev" uses memberlist's local profile: a member that stops
// answering is suspected after about one probe interval (1 s) and declared
// dead within about 3 s. Mode "prod" uses the LAN profile: probes every 1 s
// with a 500 ms timeout and a longer suspicion (about 5-10 s before a dead
// member is removed), which tolerates slow networks and pauses.
package ha

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// Meta is what a member says about itself to the rest of its site.
type Meta struct {
	Instance string `json:"i"`
	Site     string `json:"s"`
	Epoch    uint64 `json:"e"`
	// TunnelURL is the advertised tunnel URL of an accepting member.
	TunnelURL string `json:"t,omitempty"`
	// Relay is the host:port of the member's relay endpoint.
	Relay string `json:"r,omitempty"`
	// Admin is the member's admin address.
	Admin string `json:"a,omitempty"`
	// Reach lists the services the member can reach through its live
	// tunnels (what the far ends offer). ReachTruncated is set when the
	// list did not fit in the metadata limit; then any member may be tried.
	Reach          []string `json:"re,omitempty"`
	ReachTruncated bool     `json:"rt,omitempty"`
}

// Member is a live member of the cluster.
type Member struct {
	Name string
	Addr string // gossip address
	Meta Meta
}

// Config configures a cluster member.
type Config struct {
	Name      string   // cluster name (memberlist label)
	Node      string   // this member's unique name
	Bind      string   // host:port for gossip
	Advertise string   // host:port others reach us at; empty: derived from Bind
	Join      []string // well-known addresses
	Key       []byte   // gossip encryption key (16, 24 or 32 bytes); nil: plaintext
	Mode      string   // "dev" or "prod"
	Log       *slog.Logger
}

// Cluster is this instance's membership in its site's cluster.
type Cluster struct {
	cfg  Config
	log  *slog.Logger
	ml   *memberlist.Memberlist
	addr string // advertised gossip address

	mu      sync.Mutex
	meta    []byte
	members map[string]Member // kept from memberlist's callbacks, which run under its lock
	changed chan struct{}

	crashed    atomic.Bool       // gossip was stopped without a leave (tests simulate crashes)
	reborn     map[string]string // under mu: member -> the new address it spoke from while its old one was still known
	rejoin     chan string       // addresses Run contacts: reborn members whose old address was declared dead
	joined     chan struct{}     // closed once a well-known address answered (or none is configured)
	joinedOnce sync.Once
}

// Joined is closed once this member has joined its cluster: a well-known
// address answered, or none is configured.
func (c *Cluster) Joined() <-chan struct{} { return c.joined }

// Start binds the gossip listener and starts memberlist; [Cluster.Run]
// then joins the well-known addresses.
func Start(cfg Config, meta Meta) (*Cluster, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	c := &Cluster{cfg: cfg, log: cfg.Log, changed: make(chan struct{}), members: map[string]Member{}, joined: make(chan struct{}),
		reborn: map[string]string{}, rejoin: make(chan string, 16)}
	if err := c.setMeta(meta); err != nil {
		return nil, err
	}
	mc := memberlist.DefaultLocalConfig()
	if cfg.Mode == "prod" {
		mc = memberlist.DefaultLANConfig()
	}
	mc.Name = cfg.Node
	mc.Label = cfg.Name
	// A member that died without leaving may come back under its name at
	// another address (a pod re-created with a new IP). Names are bound to
	// certificates, so that is the same instance: take it back as soon as
	// the old address is declared dead, rather than only after memberlist
	// forgets the dead node (tens of seconds more, during which the site
	// runs with one copy of that member's partitions). The new address is
	// learnt at the next state exchange after the old one is declared dead.
	mc.DeadNodeReclaimTime = time.Millisecond
	mc.SecretKey = cfg.Key
	mc.Delegate = delegate{c}
	mc.Events = delegate{c}
	mc.Conflict = delegate{c}
	mc.Logger = slog.NewLogLogger(cfg.Log.Handler(), slog.LevelDebug)
	host, port, err := splitHostPort(cfg.Bind)
	if err != nil {
		return nil, fmt.Errorf("cluster bind: %w", err)
	}
	if host, err = resolveIP(host); err != nil {
		return nil, fmt.Errorf("cluster bind %s: %w", cfg.Bind, err)
	}
	mc.BindAddr, mc.BindPort = host, port
	if cfg.Advertise != "" {
		ahost, aport, err := splitHostPort(cfg.Advertise)
		if err != nil {
			return nil, fmt.Errorf("cluster advertise: %w", err)
		}
		ip, err := resolveIP(ahost)
		if err != nil {
			return nil, fmt.Errorf("cluster advertise %s: %w", cfg.Advertise, err)
		}
		mc.AdvertiseAddr, mc.AdvertisePort = ip, aport
	}
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	c.ml = ml
	// Read once, before any metadata update can rewrite the local node.
	n := ml.LocalNode()
	c.addr = net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))
	return c, nil
}

// resolveIP turns a host name into one of its addresses (memberlist binds
// and advertises IP addresses only); an IP address or "" is kept.
func resolveIP(host string) (string, error) {
	if host == "" || net.ParseIP(host) != nil {
		return host, nil
	}
	ips, err := net.LookupIP(host)
	if err != nil {
		return "", err
	}
	if len(ips) == 0 {
		return "", fmt.Errorf("%s has no address", host)
	}
	return ips[0].String(), nil
}

func splitHostPort(s string) (string, int, error) {
	host, p, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, err
	}
	return host, port, nil
}

// Addr is the address gossip is bound to.
func (c *Cluster) Addr() string { return c.addr }

// Run joins the well-known addresses, retrying until one answers, then
// stays in the cluster until ctx ends; it then leaves gracefully and shuts
// memberlist down.
func (c *Cluster) Run(ctx context.Context) error {
	defer c.ml.Shutdown()
	if len(c.cfg.Join) > 0 {
		c.join(ctx)
	}
	c.joinedOnce.Do(func() { close(c.joined) })
	for {
		select {
		case addr := <-c.rejoin:
			if _, err := c.ml.Join([]string{addr}); err != nil {
				c.log.Debug("cluster: contacting a restarted member", "addr", addr, "err", err)
			}
			continue
		case <-ctx.Done():
		}
		break
	}
	if c.crashed.Load() {
		return nil
	}
	if err := c.ml.Leave(time.Second); err != nil {
		c.log.Debug("cluster leave", "err", err)
	}
	return nil
}

func (c *Cluster) join(ctx context.Context) {
	delay := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		n, err := c.ml.Join(c.cfg.Join)
		if n > 0 {
			c.log.Info("cluster joined", "contacted", n, "members", c.ml.NumMembers())
			return
		}
		if attempt == 1 || attempt%20 == 0 {
			c.log.Warn("cluster join: no well-known address answered yet", "join", c.cfg.Join, "attempt", attempt, "err", err)
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// UpdateMeta replaces this member's metadata and gossips it.
func (c *Cluster) UpdateMeta(m Meta) error {
	if err := c.setMeta(m); err != nil {
		return err
	}
	return c.ml.UpdateNode(time.Second)
}

func (c *Cluster) setMeta(m Meta) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	for len(b) > memberlist.MetaMaxSize && len(m.Reach) > 0 {
		m.Reach = m.Reach[:len(m.Reach)-1]
		m.ReachTruncated = true
		b, _ = json.Marshal(m)
	}
	if len(b) > memberlist.MetaMaxSize {
		return errors.New("cluster metadata does not fit in 512 bytes")
	}
	c.mu.Lock()
	c.meta = b
	c.mu.Unlock()
	return nil
}

// Members lists the live members, this one included, ordered by name.
// (memberlist's own Members returns nodes it keeps mutating, so the list is
// kept from its callbacks instead.)
func (c *Cluster) Members() []Member {
	c.mu.Lock()
	out := make([]Member, 0, len(c.members))
	for _, m := range c.members {
		out = append(out, m)
	}
	c.mu.Unlock()
	slices.SortFunc(out, func(a, b Member) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	return out
}

// Member returns the live member called name.
func (c *Cluster) Member(name string) (Member, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m, ok := c.members[name]
	return m, ok
}

// update records a joined or updated node; it runs inside memberlist's
// callbacks, the only place its *Node may be read safely.
func (c *Cluster) update(n *memberlist.Node) {
	m := Member{Name: n.Name, Addr: n.Address()}
	if err := json.Unmarshal(n.Meta, &m.Meta); err != nil {
		c.log.Warn("cluster member with unreadable metadata", "member", n.Name, "err", err)
	}
	c.mu.Lock()
	c.members[n.Name] = m
	c.mu.Unlock()
	c.notify()
}

func (c *Cluster) remove(n *memberlist.Node) {
	c.mu.Lock()
	delete(c.members, n.Name)
	c.mu.Unlock()
	c.notify()
}

// Senior returns the oldest live member (lowest epoch): the coordinator
// for whatever needs one.
func (c *Cluster) Senior() (Member, bool) {
	ms := c.Members()
	if len(ms) == 0 {
		return Member{}, false
	}
	return slices.MinFunc(ms, func(a, b Member) int {
		switch {
		case a.Meta.Epoch < b.Meta.Epoch:
			return -1
		case a.Meta.Epoch > b.Meta.Epoch:
			return 1
		}
		return 0
	}), true
}

// Changed returns a channel closed at the next membership or metadata
// change.
func (c *Cluster) Changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

func (c *Cluster) notify() {
	c.mu.Lock()
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
}

// delegate plugs the cluster into memberlist's callbacks.
type delegate struct{ c *Cluster }

func (d delegate) NodeMeta(limit int) []byte {
	d.c.mu.Lock()
	defer d.c.mu.Unlock()
	return slices.Clone(d.c.meta)
}
func (d delegate) NotifyMsg([]byte)                           {}
func (d delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d delegate) LocalState(join bool) []byte                { return nil }
func (d delegate) MergeRemoteState(buf []byte, join bool)     {}

func (d delegate) NotifyJoin(n *memberlist.Node) {
	d.c.log.Info("cluster member joined", "member", n.Name, "addr", n.Address())
	d.c.update(n)
}

// NotifyConflict: a member speaks from a new address while its old one is
// still known (it crashed and was re-created at once). It is taken back
// when the old address is declared dead (see NotifyLeave).
func (d delegate) NotifyConflict(existing, other *memberlist.Node) {
	d.c.log.Info("cluster member restarted at a new address; taken back once the old one is declared dead",
		"member", other.Name, "old", existing.Address(), "new", other.Address())
	d.c.mu.Lock()
	d.c.reborn[other.Name] = other.Address()
	d.c.mu.Unlock()
}

func (d delegate) NotifyLeave(n *memberlist.Node) {
	d.c.mu.Lock()
	addr, reborn := d.c.reborn[n.Name]
	delete(d.c.reborn, n.Name)
	d.c.mu.Unlock()
	if reborn && addr != n.Address() {
		select {
		case d.c.rejoin <- addr: // Run contacts it: memberlist's lock is held here
		default:
		}
	}
	switch {
	case n.Name == d.c.cfg.Node:
		d.c.log.Debug("left the cluster", "member", n.Name)
	case n.State == memberlist.StateLeft:
		d.c.log.Info("cluster member left", "member", n.Name, "addr", n.Address(), "reason", "it left (stopping)")
	default:
		d.c.log.Warn("cluster member failed", "member", n.Name, "addr", n.Address(), "reason", "it stopped answering and was declared dead")
	}
	d.c.remove(n)
}

func (d delegate) NotifyUpdate(n *memberlist.Node) { d.c.update(n) }
