package config

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Initial actions of a federation participant: what federation to it does
// when this instance starts (ARCHITECTURE section 7).
const (
	InitialStart     = "start"                 // ship the journal, backlog included (default)
	InitialStop      = "stop"                  // ship nothing until started
	InitialPause     = "pause"                 // keep journaling for it, ship nothing until resumed
	InitialNoBacklog = "start-with-no-backlog" // start, dropping what is journaled for it so far
)

// Topology types. See [Topology.Edges] for the links each one makes.
const (
	TopoActiveActive  = "active-active"
	TopoActivePassive = "active-passive"
	TopoHubAndSpoke   = "hub-and-spoke"
	TopoCentral       = "central"
	TopoCustom        = "custom"
)

// Journal policies: what a write does when the federation journal of its
// member is full.
const (
	PolicyBlock = "block" // the writer waits up to block-wait for room, then fails
	PolicyError = "error" // the lagging participant goes into an error state
)

// Defaults and bounds of the federation section, applied by
// [Config.SetDefaults] and checked by [Config.Validate].
const (
	DefaultJournalLimit  = 256 << 20
	DefaultBatchSize     = 512
	DefaultSendInterval  = 50 * time.Millisecond
	MinJournalLimit      = 1 << 20
	MaxJournalLimit      = 64 << 30
	MaxBatchSize         = 10000
	defaultJournalPolicy = PolicyBlock
)

// Federation ships the caches of the schemes that name a topology to other
// sites (ARCHITECTURE section 7). A config without topologies has no
// federation; the other fields get their defaults all the same.
type Federation struct {
	// Participants are the remote sites this site federates with, never
	// this site itself. Each site a topology names, other than this one,
	// must be a participant; a participant no topology names is allowed
	// (and idle).
	Participants []Participant `yaml:"participants"`
	// Topologies are the named federation topologies; a scheme's
	// federation key names one. Each names this site and at least one
	// other.
	Topologies []Topology `yaml:"topologies"`
	Journal    FedJournal `yaml:"journal"`
	// BatchSize is the most journal entries shipped in one batch,
	// 1 to 10000. Default 512.
	BatchSize int `yaml:"batch-size"`
	// SendInterval is how often the sender looks at every partition even
	// when nothing woke it: positions still to learn, retries after an
	// error, operator changes. A committed change is sent at once (one
	// batch per partition in flight; what commits meanwhile goes in the
	// next). Default 50ms; must be greater than 0.
	SendInterval Duration `yaml:"send-interval"`
}

// Participant is a remote site this site federates with.
type Participant struct {
	// Site names the remote site: same rule as instance names, unique, not
	// this instance's site.
	Site string `yaml:"site"`
	// InitialAction is what federation to this site does when the
	// instance starts: "start" (default), "stop", "pause" or
	// "start-with-no-backlog".
	InitialAction string `yaml:"initial-action"`
}

// Topology says which sites send their changes to which. Name and Type are
// required; which of the site lists are used depends on Type, and the
// others must be empty:
//
//   - active-active: Sites; every site sends to every other.
//   - active-passive: Active and Passive; each active site sends to every
//     passive one and to the other active ones.
//   - hub-and-spoke: Hub and Spokes; the hub sends to every spoke, spokes
//     send nothing.
//   - central: Hub and Spokes; every spoke sends to the hub, and the hub
//     sends to every spoke, repeating what it received.
//   - custom: Senders, Repeaters and Receivers; a sender sends its own
//     changes to every repeater and receiver, a repeater sends its own and
//     received changes to every other repeater and every receiver, and
//     receivers send nothing.
//
// A site appears at most once in a topology.
type Topology struct {
	// Name is required and unique; same rule as instance names.
	Name string `yaml:"name"`
	// Type is one of the Topo constants.
	Type      string   `yaml:"type"`
	Sites     []string `yaml:"sites,omitempty"`
	Active    []string `yaml:"active,omitempty"`
	Passive   []string `yaml:"passive,omitempty"`
	Hub       string   `yaml:"hub,omitempty"`
	Spokes    []string `yaml:"spokes,omitempty"`
	Senders   []string `yaml:"senders,omitempty"`
	Repeaters []string `yaml:"repeaters,omitempty"`
	Receivers []string `yaml:"receivers,omitempty"`
}

// FedJournal bounds the federation journal of each member.
type FedJournal struct {
	// Limit is the journal bytes per member before Policy applies,
	// 1 MiB to 64 GiB. Default 256 MiB.
	Limit ByteSize `yaml:"limit"`
	// Policy is "block" (default) or "error"; see the Policy constants.
	Policy string `yaml:"policy"`
	// BlockWait is how long a writer waits for room under policy block
	// before it gets an error. Default 0s: it fails at once.
	BlockWait Duration `yaml:"block-wait"`
	// AutoReplicateAll schedules a replicate-all for a participant in the
	// error state when it is started or reconnects (policy error only).
	// nil means true; SetDefaults fills it in. Use
	// [FedJournal.AutoReplicate] to read it.
	AutoReplicateAll *bool `yaml:"auto-replicate-all"`
}

// AutoReplicate returns AutoReplicateAll, or true when it is nil.
func (j FedJournal) AutoReplicate() bool {
	return j.AutoReplicateAll == nil || *j.AutoReplicateAll
}

// Edge is one directed federation link of a topology.
type Edge struct {
	From, To string
	// Repeat: From also forwards changes it received from other sites, not
	// only its own.
	Repeat bool
}

// Edges returns the links of t, as described at [Topology], sorted by From
// and then To. A site is never linked to itself, and a pair of sites is
// linked at most once per direction (Repeat if any role says so). An
// unknown Type has no edges.
func (t Topology) Edges() []Edge {
	var es []Edge
	link := func(from, to []string, repeat bool) {
		for _, f := range from {
			for _, x := range to {
				if f != "" && x != "" && f != x {
					es = append(es, Edge{From: f, To: x, Repeat: repeat})
				}
			}
		}
	}
	var hub []string
	if t.Hub != "" {
		hub = []string{t.Hub}
	}
	switch t.Type {
	case TopoActiveActive:
		link(t.Sites, t.Sites, false)
	case TopoActivePassive:
		link(t.Active, t.Active, false)
		link(t.Active, t.Passive, false)
	case TopoHubAndSpoke:
		link(hub, t.Spokes, false)
	case TopoCentral:
		link(t.Spokes, hub, false)
		link(hub, t.Spokes, true)
	case TopoCustom:
		link(t.Senders, t.Repeaters, false)
		link(t.Senders, t.Receivers, false)
		link(t.Repeaters, t.Repeaters, true)
		link(t.Repeaters, t.Receivers, true)
	}
	slices.SortFunc(es, func(a, b Edge) int {
		return cmp.Or(cmp.Compare(a.From, b.From), cmp.Compare(a.To, b.To))
	})
	out := es[:0]
	for _, e := range es {
		if n := len(out); n > 0 && out[n-1].From == e.From && out[n-1].To == e.To {
			out[n-1].Repeat = out[n-1].Repeat || e.Repeat
			continue
		}
		out = append(out, e)
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// Members returns every site t names, in any of its lists, sorted and
// without duplicates.
func (t Topology) Members() []string {
	var sites []string
	for _, r := range t.roles() {
		for _, s := range r.sites {
			if s != "" {
				sites = append(sites, s)
			}
		}
	}
	slices.Sort(sites)
	return slices.Compact(sites)
}

// role is one list of sites of a topology, with its key.
type role struct {
	key   string
	sites []string
}

func (t Topology) roles() []role {
	var hub []string
	if t.Hub != "" {
		hub = []string{t.Hub}
	}
	return []role{
		{"sites", t.Sites}, {"active", t.Active}, {"passive", t.Passive},
		{"hub", hub}, {"spokes", t.Spokes},
		{"senders", t.Senders}, {"repeaters", t.Repeaters}, {"receivers", t.Receivers},
	}
}

// roleSpec is a site list a topology type uses.
type roleSpec struct {
	key      string
	required bool
}

// topologyRoles lists, for each type, the site lists it uses.
var topologyRoles = map[string][]roleSpec{
	TopoActiveActive:  {{"sites", true}},
	TopoActivePassive: {{"active", true}, {"passive", true}},
	TopoHubAndSpoke:   {{"hub", true}, {"spokes", true}},
	TopoCentral:       {{"hub", true}, {"spokes", true}},
	TopoCustom:        {{"senders", false}, {"repeaters", false}, {"receivers", false}},
}

// role returns the site list with the given key.
func (t Topology) role(key string) []string {
	for _, r := range t.roles() {
		if r.key == key {
			return r.sites
		}
	}
	return nil
}

var topologyTypes = []string{TopoActiveActive, TopoActivePassive, TopoHubAndSpoke, TopoCentral, TopoCustom}

// Enabled reports whether any topology is configured.
func (f Federation) Enabled() bool { return len(f.Topologies) > 0 }

// Participant returns the participant for site.
func (f Federation) Participant(site string) (Participant, bool) {
	i := slices.IndexFunc(f.Participants, func(p Participant) bool { return p.Site == site })
	if i < 0 {
		return Participant{}, false
	}
	return f.Participants[i], true
}

// FedTopology returns the federation topology with the given name.
func (c *Config) FedTopology(name string) (Topology, bool) {
	i := slices.IndexFunc(c.Federation.Topologies, func(t Topology) bool { return t.Name == name })
	if i < 0 {
		return Topology{}, false
	}
	return c.Federation.Topologies[i], true
}

// FedEdgesFrom returns the edges of the named topology on which this
// instance's site sends, sorted by To; nil for an unknown topology.
func (c *Config) FedEdgesFrom(topology string) []Edge {
	return c.fedEdges(topology, func(e Edge) bool { return e.From == c.Site })
}

// FedEdgesTo returns the edges of the named topology on which this
// instance's site receives, sorted by From; nil for an unknown topology.
func (c *Config) FedEdgesTo(topology string) []Edge {
	return c.fedEdges(topology, func(e Edge) bool { return e.To == c.Site })
}

func (c *Config) fedEdges(topology string, keep func(Edge) bool) []Edge {
	t, ok := c.FedTopology(topology)
	if !ok {
		return nil
	}
	var es []Edge
	for _, e := range t.Edges() {
		if keep(e) {
			es = append(es, e)
		}
	}
	return es
}

// clone returns a deep copy of f.
func (f Federation) clone() Federation {
	f.Participants = slices.Clone(f.Participants)
	f.Topologies = slices.Clone(f.Topologies)
	for i := range f.Topologies {
		t := &f.Topologies[i]
		for _, l := range []*[]string{&t.Sites, &t.Active, &t.Passive, &t.Spokes, &t.Senders, &t.Repeaters, &t.Receivers} {
			*l = slices.Clone(*l)
		}
	}
	if a := f.Journal.AutoReplicateAll; a != nil {
		f.Journal.AutoReplicateAll = new(*a)
	}
	return f
}

// applyDefaults fills in the federation defaults; see
// Config.applyDefaults.
func (f *Federation) applyDefaults(isSet func(path string) bool) {
	for i := range f.Participants {
		p := &f.Participants[i]
		if p.InitialAction == "" && !isSet(fmt.Sprintf("federation.participants[%d].initial-action", i)) {
			p.InitialAction = InitialStart
		}
	}
	j := &f.Journal
	if j.Limit == 0 && !isSet("federation.journal.limit") {
		j.Limit = DefaultJournalLimit
	}
	if j.Policy == "" && !isSet("federation.journal.policy") {
		j.Policy = defaultJournalPolicy
	}
	if j.AutoReplicateAll == nil {
		j.AutoReplicateAll = new(true)
	}
	if f.BatchSize == 0 && !isSet("federation.batch-size") {
		f.BatchSize = DefaultBatchSize
	}
	if f.SendInterval == 0 && !isSet("federation.send-interval") {
		f.SendInterval = Duration(DefaultSendInterval)
	}
}

func (c *Config) validateFederation(v *validator) {
	f := &c.Federation

	// participants maps each participant site as written to its index.
	participants := map[string]int{}
	for i, p := range f.Participants {
		path := fmt.Sprintf("federation.participants[%d]", i)
		if j, dup := participants[p.Site]; dup && p.Site != "" {
			v.add(path+".site", "duplicate participant %q (also federation.participants[%d])", p.Site, j)
		} else {
			participants[p.Site] = i
			if v.name(path+".site", p.Site, true) && p.Site == c.Site {
				v.add(path+".site", "must differ from this instance's site %q: participants are remote sites", c.Site)
			}
		}
		switch p.InitialAction {
		case InitialStart, InitialStop, InitialPause, InitialNoBacklog:
		default:
			v.add(path+".initial-action", "must be one of %s, %s, %s, %s; got %q",
				InitialStart, InitialStop, InitialPause, InitialNoBacklog, p.InitialAction)
		}
	}

	// topologies holds every topology name as written, so that a scheme
	// naming a topology whose own name is bad is reported once, at that
	// name. linked holds the participants some topology links directly
	// with this site, with that topology's name.
	topologies := map[string]int{}
	linked := map[string]string{}
	for i, t := range f.Topologies {
		path := fmt.Sprintf("federation.topologies[%d]", i)
		if j, dup := topologies[t.Name]; dup && t.Name != "" {
			v.add(path+".name", "duplicate topology name %q (also federation.topologies[%d])", t.Name, j)
		} else {
			v.name(path+".name", t.Name, true)
			topologies[t.Name] = i
		}
		c.validateTopology(v, path, t, participants)
		for _, e := range t.Edges() {
			for _, s := range []string{e.From, e.To} {
				if _, seen := linked[s]; !seen && s != c.Site && (e.From == c.Site || e.To == c.Site) {
					linked[s] = t.Name
				}
			}
		}
	}

	// Federation traffic rides the tunnels, so a participant this site
	// sends to or receives from directly must be a peer.
	peers := map[string]bool{}
	for _, p := range c.Peers {
		peers[p.Site] = true
	}
	for i, p := range f.Participants {
		if t, ok := linked[p.Site]; ok && !peers[p.Site] && validName(p.Site) && participants[p.Site] == i {
			v.add(fmt.Sprintf("federation.participants[%d].site", i),
				"site %q is not in peers, but topology %q links it with this site (federation rides the tunnels to peers)", p.Site, t)
		}
	}

	j := &f.Journal
	if j.Limit < MinJournalLimit || j.Limit > MaxJournalLimit {
		v.add("federation.journal.limit", "must be from %s to %s, got %s",
			ByteSize(MinJournalLimit), ByteSize(MaxJournalLimit), j.Limit)
	}
	switch j.Policy {
	case PolicyBlock:
		if !j.AutoReplicate() {
			v.add("federation.journal.auto-replicate-all", "applies only to policy %s (policy is %s)", PolicyError, PolicyBlock)
		}
	case PolicyError:
		if j.BlockWait != 0 {
			v.add("federation.journal.block-wait", "applies only to policy %s (policy is %s)", PolicyBlock, PolicyError)
		}
	default:
		v.add("federation.journal.policy", "must be %s or %s, got %q", PolicyBlock, PolicyError, j.Policy)
	}
	if j.BlockWait < 0 {
		v.add("federation.journal.block-wait", "must not be negative")
	}
	if f.BatchSize < 1 || f.BatchSize > MaxBatchSize {
		v.add("federation.batch-size", "must be from 1 to %d, got %d", MaxBatchSize, f.BatchSize)
	}
	v.positive("federation.send-interval", f.SendInterval)

	for i, sc := range c.Store.Schemes {
		if sc.Federation == "" || !validName(sc.Federation) {
			continue // none, or reported by validateStore
		}
		if _, ok := topologies[sc.Federation]; !ok {
			v.add(fmt.Sprintf("store.schemes[%d].federation", i), "unknown topology %q%s",
				sc.Federation, suggestTopology(sc.Federation, f.Topologies))
		}
	}
}

// validateTopology checks one topology: its type, that it uses the site
// lists of its type and no others, that no site appears twice, that every
// site other than this one is a participant, and, when it is otherwise
// complete, that it names this site and at least one more, each on an edge.
func (c *Config) validateTopology(v *validator, path string, t Topology, participants map[string]int) {
	label := strconv.Quote(t.Name)
	if t.Name == "" {
		label = path
	}
	allowed, known := topologyRoles[t.Type]
	switch {
	case t.Type == "":
		v.add(path+".type", "is required: one of %s", strings.Join(topologyTypes, ", "))
	case !known:
		v.add(path+".type", "must be one of %s; got %q", strings.Join(topologyTypes, ", "), t.Type)
	}
	uses := func(key string) bool {
		return !known || slices.ContainsFunc(allowed, func(a roleSpec) bool { return a.key == key })
	}

	complete := known
	if known {
		for _, a := range allowed {
			if !a.required {
				continue
			}
			if len(t.role(a.key)) == 0 {
				v.add(path+"."+a.key, "is required for type %s", t.Type)
				complete = false
			}
		}
		if t.Type == TopoCustom && len(t.Senders)+len(t.Repeaters)+len(t.Receivers) == 0 {
			v.add(path, "type custom needs senders, repeaters or receivers")
			complete = false
		}
	}

	// where maps each site to where it is first listed, such as "sites[0]".
	where := map[string]string{}
	var members []string
	for _, r := range t.roles() {
		if len(r.sites) == 0 {
			continue
		}
		if !uses(r.key) {
			v.add(path+"."+r.key, "not used by type %s (%s)", t.Type, roleTypes(r.key))
			continue
		}
		for k, s := range r.sites {
			at, p := r.key, path+"."+r.key
			if r.key != "hub" {
				at = fmt.Sprintf("%s[%d]", r.key, k)
				p = path + "." + at
			}
			if !v.name(p, s, true) {
				continue
			}
			if prev, dup := where[s]; dup {
				if strings.HasPrefix(prev, r.key+"[") {
					v.add(p, "duplicate site %q (also %s)", s, prev)
				} else {
					v.add(p, "site %q is also in %s: a site has one role in a topology", s, prev)
				}
				continue
			}
			where[s] = at
			members = append(members, s)
			if _, ok := participants[s]; !ok && s != c.Site {
				v.add(p, "site %q is in topology %s but not a participant (add it to federation.participants)", s, label)
			}
		}
	}
	if !complete {
		return
	}
	if len(members) < 2 {
		v.add(path, "names %d site(s); a topology needs at least 2", len(members))
	}
	if validName(c.Site) && !slices.Contains(members, c.Site) {
		v.add(path, "does not name this instance's site %q", c.Site)
	}
	if len(members) < 2 {
		return
	}
	onEdge := map[string]bool{}
	for _, e := range t.Edges() {
		onEdge[e.From], onEdge[e.To] = true, true
	}
	for _, s := range members {
		if onEdge[s] {
			continue
		}
		who := "participant"
		if s == c.Site {
			who = "this site"
		}
		p := path + "." + where[s]
		v.add(p, "%s %q: no path reaches it in topology %s (it neither sends nor receives)", who, s, label)
	}
}

// roleTypes names the topology types that use a site list.
func roleTypes(key string) string {
	var types []string
	for _, typ := range topologyTypes {
		for _, a := range topologyRoles[typ] {
			if a.key == key {
				types = append(types, typ)
			}
		}
	}
	return key + " belongs to type " + strings.Join(types, " and ")
}

// suggestTopology returns a hint for an unknown topology name: the closest
// defined one, or the list of defined ones.
func suggestTopology(name string, topologies []Topology) string {
	known := map[string]int{}
	var defined []string
	for i, t := range topologies {
		if _, dup := known[t.Name]; t.Name != "" && !dup {
			known[t.Name] = i
			defined = append(defined, strconv.Quote(t.Name))
		}
	}
	if len(defined) == 0 {
		return " (federation.topologies defines none)"
	}
	if hint := suggest(name, known); hint != "" {
		return hint
	}
	return " (defined: " + strings.Join(defined, ", ") + ")"
}
