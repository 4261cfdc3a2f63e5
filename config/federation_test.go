package config

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// fedValidConfigs are checked by TestParseValid (with golden files) and
// seed FuzzParse.
var fedValidConfigs = []validConfig{
	{
		name: "federation-topologies",
		yaml: `
instance: cloud-0
site: cloud
tls: {insecure: true}
tunnel: {listen: ":8443"}
peers: [{site: onprem}, {site: edge}, {site: dr}]
store:
  schemes:
    - name: trades
      federation: aa
    - name: ref
      federation: cust
    - name: local
federation:
  participants:
    - site: onprem
    - site: edge
      initial-action: stop
    - site: dr
      initial-action: pause
    - site: lab          # in no topology, and not a peer: allowed
  topologies:
    - name: aa
      type: active-active
      sites: [cloud, onprem]
    - name: ap
      type: active-passive
      active: [cloud, onprem]
      passive: [dr]
    - name: hs
      type: hub-and-spoke
      hub: cloud
      spokes: [onprem, edge]
    - name: cen
      type: central
      hub: onprem
      spokes: [cloud, edge]
    - name: cust
      type: custom
      senders: [edge]
      repeaters: [cloud, onprem]
      receivers: [dr]
  journal:
    policy: block
    block-wait: 2s
  batch-size: 1
  send-interval: 1s
`,
		check: func(t *testing.T, c *Config) {
			f := c.Federation
			if !f.Enabled() || len(f.Topologies) != 5 {
				t.Fatalf("federation = %+v", f)
			}
			if f.Journal.BlockWait.D() != 2*time.Second || f.BatchSize != 1 || f.SendInterval.D() != time.Second {
				t.Errorf("federation = %+v", f)
			}
			for site, want := range map[string]string{"onprem": InitialStart, "edge": InitialStop, "dr": InitialPause, "lab": InitialStart} {
				if p, ok := f.Participant(site); !ok || p.InitialAction != want {
					t.Errorf("Participant(%s) = %+v, %v; want initial action %s", site, p, ok, want)
				}
			}
			if _, ok := f.Participant("cloud"); ok {
				t.Error("Participant(cloud) found")
			}
			if top, ok := c.FedTopology("cen"); !ok || top.Type != TopoCentral || top.Hub != "onprem" {
				t.Errorf("FedTopology(cen) = %+v, %v", top, ok)
			}
			if _, ok := c.FedTopology("nope"); ok {
				t.Error("FedTopology(nope) found")
			}
		},
	},
}

// fedInvalidConfigs are checked by TestParseInvalid and seed FuzzParse.
var fedInvalidConfigs = []invalidConfig{
	{
		name: "federation-participants-and-journal",
		yaml: `instance: a
site: cloud
tls: {insecure: true}
tunnel: {listen: ":8443"}
peers: [{site: onprem}]
federation:
  participants:
    - site: cloud
    - site: onprem
      initial-action: resume
    - site: onprem
    - initial-action: stop
    - site: Edge
      initial-action: ""
  journal:
    limit: 512KiB
    policy: drop
  batch-size: 10001
  send-interval: 0s
`,
		want: []string{
			`8: federation.participants[0].site: must differ from this instance's site "cloud"`,
			`10: federation.participants[1].initial-action: must be one of start, stop, pause, start-with-no-backlog; got "resume"`,
			`11: federation.participants[2].site: duplicate participant "onprem" (also federation.participants[1])`,
			`12: federation.participants[3].site: is required`,
			`13: federation.participants[4].site: invalid name "Edge"`,
			`14: federation.participants[4].initial-action: must be one of start, stop, pause, start-with-no-backlog; got ""`,
			`16: federation.journal.limit: must be from 1MiB to 64GiB, got 512KiB`,
			`17: federation.journal.policy: must be block or error, got "drop"`,
			`18: federation.batch-size: must be from 1 to 10000, got 10001`,
			`19: federation.send-interval: must be greater than 0, got 0s`,
		},
	},
	{
		name: "federation-explicit-zeros",
		yaml: `instance: a
site: cloud
tls: {insecure: true}
tunnel: {listen: ":8443"}
peers: [{site: onprem}]
federation:
  journal: {limit: 0, policy: ""}
  batch-size: 0
  send-interval: 0s
`,
		want: []string{
			`7: federation.journal.limit: must be from 1MiB to 64GiB, got 0`,
			`7: federation.journal.policy: must be block or error, got ""`,
			`8: federation.batch-size: must be from 1 to 10000, got 0`,
			`9: federation.send-interval: must be greater than 0, got 0s`,
		},
	},
	{
		name: "federation-policy-block",
		yaml: `instance: a
site: cloud
tls: {insecure: true}
tunnel: {listen: ":8443"}
peers: [{site: onprem}]
federation:
  journal:
    limit: 65GiB
    auto-replicate-all: false
`,
		want: []string{
			`8: federation.journal.limit: must be from 1MiB to 64GiB, got 65GiB`,
			`9: federation.journal.auto-replicate-all: applies only to policy error (policy is block)`,
		},
	},
	{
		name: "federation-policy-error",
		yaml: `instance: a
site: cloud
tls: {insecure: true}
tunnel: {listen: ":8443"}
peers: [{site: onprem}]
federation:
  journal:
    policy: error
    block-wait: 5s
    auto-replicate-all: false
`,
		want: []string{
			`9: federation.journal.block-wait: applies only to policy block (policy is error)`,
		},
	},
	{
		name: "federation-types",
		yaml: `instance: a
site: cloud
tls: {insecure: true}
tunnel: {listen: ":8443"}
peers: [{site: onprem}]
federation:
  participants: onprem
  topologies:
    - name: t
      type: active-active
      sites: cloud
    - name: u
      hub: [cloud]
  journal:
    limit: lots
    block-wait: 1
    auto-replicate-all: yes
  batch-size: 1.5
`,
		want: []string{
			`7: federation.participants: expected a list, got "onprem"`,
			// sites did not decode: that it is missing is not reported.
			`11: federation.topologies[0].sites: expected a list, got "cloud"`,
			`12: federation.topologies[1].type: is required: one of active-active, active-passive, hub-and-spoke, central, custom`,
			`13: federation.topologies[1].hub: expected a string, got a list`,
			`15: federation.journal.limit: invalid byte size "lots"`,
			`16: federation.journal.block-wait: invalid duration "1"`,
			`17: federation.journal.auto-replicate-all: expected true or false, got "yes"`,
			`18: federation.batch-size: expected an integer, got "1.5"`,
		},
	},
	{
		name: "federation-topologies",
		yaml: `instance: a
site: cloud
tls: {insecure: true}
tunnel: {listen: ":8443"}
peers: [{site: onprem}, {site: edge}]
store:
  schemes:
    - name: trades
      federation: activeactive
    - name: ref
      federation: nope
federation:
  participants: [{site: onprem}, {site: edge}]
  topologies:
    - name: active-active
      type: active-active
      sites: [cloud, onprem, cloud]
      hub: cloud
    - name: active-active
      type: star
      hub: cloud
    - name: ap
      type: active-passive
      active: [cloud]
    - name: hs
      type: hub-and-spoke
      hub: onprem
      spokes: [edge, dc]
    - name: cen
      type: central
      hub: cloud
      spokes: [onprem, cloud]
    - name: lone
      type: active-active
      sites: [cloud]
    - name: Bad_Name
      type: custom
    - type: active-active
      sites: [cloud, "", onprem]
`,
		want: []string{
			`9: store.schemes[0].federation: unknown topology "activeactive" (did you mean "active-active"?)`,
			`11: store.schemes[1].federation: unknown topology "nope" (defined: "active-active", "ap", "hs", "cen", "lone", "Bad_Name")`,
			`17: federation.topologies[0].sites[2]: duplicate site "cloud" (also sites[0])`,
			`18: federation.topologies[0].hub: not used by type active-active (hub belongs to type hub-and-spoke and central)`,
			`19: federation.topologies[1].name: duplicate topology name "active-active" (also federation.topologies[0])`,
			`20: federation.topologies[1].type: must be one of active-active, active-passive, hub-and-spoke, central, custom; got "star"`,
			`22: federation.topologies[2].passive: is required for type active-passive`,
			`25: federation.topologies[3]: does not name this instance's site "cloud"`,
			`28: federation.topologies[3].spokes[1]: site "dc" is in topology "hs" but not a participant (add it to federation.participants)`,
			`32: federation.topologies[4].spokes[1]: site "cloud" is also in hub: a site has one role in a topology`,
			`33: federation.topologies[5]: names 1 site(s); a topology needs at least 2`,
			`36: federation.topologies[6]: type custom needs senders, repeaters or receivers`,
			`36: federation.topologies[6].name: invalid name "Bad_Name"`,
			`38: federation.topologies[7].name: is required`,
			`39: federation.topologies[7].sites[1]: is required`,
		},
	},
	{
		name: "federation-no-path",
		yaml: `instance: a
site: cloud
tls: {insecure: true}
tunnel: {listen: ":8443"}
peers: [{site: onprem}, {site: edge}]
federation:
  participants: [{site: onprem}, {site: edge}]
  topologies:
    - name: only-receivers
      type: custom
      receivers: [cloud, onprem]
    - name: one-repeater
      type: custom
      repeaters: [cloud]
      senders: [edge]
      receivers: []
    - name: senders-only
      type: custom
      senders: [edge, cloud]
`,
		want: []string{
			`11: federation.topologies[0].receivers[0]: this site "cloud": no path reaches it in topology "only-receivers"`,
			`11: federation.topologies[0].receivers[1]: participant "onprem": no path reaches it in topology "only-receivers"`,
			`19: federation.topologies[2].senders[0]: participant "edge": no path reaches it in topology "senders-only"`,
			`19: federation.topologies[2].senders[1]: this site "cloud": no path reaches it in topology "senders-only"`,
		},
	},
	{
		name: "federation-not-peer",
		yaml: `instance: a
site: cloud
tls: {insecure: true}
tunnel: {listen: ":8443"}
peers: [{site: onprem}]
federation:
  participants:
    - site: onprem
    - site: dr
    - site: far
  topologies:
    - name: chain
      type: custom
      senders: [cloud]
      repeaters: [onprem]
      receivers: [dr]
    - name: ap
      type: active-passive
      active: [onprem]
      passive: [far, cloud]
`,
		// cloud sends to onprem and dr directly; far is reached only through
		// onprem, so it need not be a peer.
		want: []string{
			`9: federation.participants[1].site: site "dr" is not in peers, but topology "chain" links it with this site`,
		},
	},
	{
		name: "federation-without-topologies",
		yaml: `instance: a
site: cloud
tls: {insecure: true}
tunnel: {listen: ":8443"}
peers: [{site: onprem}]
store:
  schemes:
    - name: trades
      federation: active-active
`,
		want: []string{
			`9: store.schemes[0].federation: unknown topology "active-active" (federation.topologies defines none)`,
		},
	},
}

func TestTopologyEdges(t *testing.T) {
	e := func(from, to string) Edge { return Edge{From: from, To: to} }
	r := func(from, to string) Edge { return Edge{From: from, To: to, Repeat: true} }
	for _, tc := range []struct {
		name    string
		top     Topology
		edges   []Edge
		members []string
	}{
		{
			name:    "active-active",
			top:     Topology{Type: TopoActiveActive, Sites: []string{"c", "a", "b"}},
			edges:   []Edge{e("a", "b"), e("a", "c"), e("b", "a"), e("b", "c"), e("c", "a"), e("c", "b")},
			members: []string{"a", "b", "c"},
		},
		{
			name:    "active-active-two",
			top:     Topology{Type: TopoActiveActive, Sites: []string{"cloud", "onprem"}},
			edges:   []Edge{e("cloud", "onprem"), e("onprem", "cloud")},
			members: []string{"cloud", "onprem"},
		},
		{
			name:    "active-passive",
			top:     Topology{Type: TopoActivePassive, Active: []string{"a", "b"}, Passive: []string{"c", "d"}},
			edges:   []Edge{e("a", "b"), e("a", "c"), e("a", "d"), e("b", "a"), e("b", "c"), e("b", "d")},
			members: []string{"a", "b", "c", "d"},
		},
		{
			name:    "active-passive-one-active",
			top:     Topology{Type: TopoActivePassive, Active: []string{"cloud"}, Passive: []string{"onprem"}},
			edges:   []Edge{e("cloud", "onprem")},
			members: []string{"cloud", "onprem"},
		},
		{
			name:    "hub-and-spoke",
			top:     Topology{Type: TopoHubAndSpoke, Hub: "h", Spokes: []string{"b", "a"}},
			edges:   []Edge{e("h", "a"), e("h", "b")},
			members: []string{"a", "b", "h"},
		},
		{
			name:    "central",
			top:     Topology{Type: TopoCentral, Hub: "h", Spokes: []string{"a", "b"}},
			edges:   []Edge{e("a", "h"), e("b", "h"), r("h", "a"), r("h", "b")},
			members: []string{"a", "b", "h"},
		},
		{
			name: "custom",
			top: Topology{Type: TopoCustom, Senders: []string{"s"}, Repeaters: []string{"r1", "r2"},
				Receivers: []string{"v"}},
			edges: []Edge{
				r("r1", "r2"), r("r1", "v"), r("r2", "r1"), r("r2", "v"),
				e("s", "r1"), e("s", "r2"), e("s", "v"),
			},
			members: []string{"r1", "r2", "s", "v"},
		},
		{
			name:    "custom-senders-receivers",
			top:     Topology{Type: TopoCustom, Senders: []string{"a", "b"}, Receivers: []string{"c"}},
			edges:   []Edge{e("a", "c"), e("b", "c")},
			members: []string{"a", "b", "c"},
		},
		{
			name:    "custom-repeaters-only",
			top:     Topology{Type: TopoCustom, Repeaters: []string{"a", "b"}},
			edges:   []Edge{r("a", "b"), r("b", "a")},
			members: []string{"a", "b"},
		},
		{
			name:    "custom-receivers-only",
			top:     Topology{Type: TopoCustom, Receivers: []string{"a", "b"}},
			edges:   nil,
			members: []string{"a", "b"},
		},
		{
			// Invalid, but well defined: a site in two roles gets the
			// union of their edges (Repeat if either role repeats), and
			// never an edge to itself.
			name:    "custom-two-roles",
			top:     Topology{Type: TopoCustom, Senders: []string{"a"}, Repeaters: []string{"a", "b"}},
			edges:   []Edge{r("a", "b"), r("b", "a")},
			members: []string{"a", "b"},
		},
		{
			name:    "duplicates-and-empty",
			top:     Topology{Type: TopoActiveActive, Sites: []string{"a", "b", "a", ""}},
			edges:   []Edge{e("a", "b"), e("b", "a")},
			members: []string{"a", "b"},
		},
		{
			// Lists of other types count as members but make no edges.
			name:    "other-type-fields",
			top:     Topology{Type: TopoHubAndSpoke, Hub: "h", Spokes: []string{"a"}, Sites: []string{"x"}},
			edges:   []Edge{e("h", "a")},
			members: []string{"a", "h", "x"},
		},
		{
			name:    "hub-and-spoke-no-hub",
			top:     Topology{Type: TopoHubAndSpoke, Spokes: []string{"a", "b"}},
			edges:   nil,
			members: []string{"a", "b"},
		},
		{
			name:    "unknown-type",
			top:     Topology{Type: "star", Sites: []string{"a", "b"}},
			edges:   nil,
			members: []string{"a", "b"},
		},
		{name: "empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.top.Edges(); !reflect.DeepEqual(got, tc.edges) {
				t.Errorf("Edges() = %+v\nwant %+v", got, tc.edges)
			}
			if got := tc.top.Members(); !reflect.DeepEqual(got, tc.members) {
				t.Errorf("Members() = %q, want %q", got, tc.members)
			}
		})
	}
}

func TestFedEdges(t *testing.T) {
	c, err := Parse(testFile, []byte(fedValidConfigs[0].yaml))
	if err != nil {
		t.Fatal(err)
	}
	e := func(from, to string) Edge { return Edge{From: from, To: to} }
	r := func(from, to string) Edge { return Edge{From: from, To: to, Repeat: true} }
	for _, tc := range []struct {
		topology string
		from, to []Edge
	}{
		{"aa", []Edge{e("cloud", "onprem")}, []Edge{e("onprem", "cloud")}},
		{"ap", []Edge{e("cloud", "dr"), e("cloud", "onprem")}, []Edge{e("onprem", "cloud")}},
		{"hs", []Edge{e("cloud", "edge"), e("cloud", "onprem")}, nil},
		{"cen", []Edge{e("cloud", "onprem")}, []Edge{r("onprem", "cloud")}},
		{"cust", []Edge{r("cloud", "dr"), r("cloud", "onprem")}, []Edge{e("edge", "cloud"), r("onprem", "cloud")}},
		{"nope", nil, nil},
	} {
		if got := c.FedEdgesFrom(tc.topology); !reflect.DeepEqual(got, tc.from) {
			t.Errorf("FedEdgesFrom(%s) = %+v, want %+v", tc.topology, got, tc.from)
		}
		if got := c.FedEdgesTo(tc.topology); !reflect.DeepEqual(got, tc.to) {
			t.Errorf("FedEdgesTo(%s) = %+v, want %+v", tc.topology, got, tc.to)
		}
	}

	// The other side of the same topologies sees the mirror image.
	c.Site = "onprem"
	if got, want := c.FedEdgesFrom("cen"), []Edge{r("onprem", "cloud"), r("onprem", "edge")}; !reflect.DeepEqual(got, want) {
		t.Errorf("onprem FedEdgesFrom(cen) = %+v, want %+v", got, want)
	}
	if got, want := c.FedEdgesTo("cen"), []Edge{e("cloud", "onprem"), e("edge", "onprem")}; !reflect.DeepEqual(got, want) {
		t.Errorf("onprem FedEdgesTo(cen) = %+v, want %+v", got, want)
	}
}

func TestFederationDefaults(t *testing.T) {
	// No federation section: valid, no federation, defaults filled in.
	c, err := Parse(testFile, []byte("instance: a\nsite: cloud\ntls: {insecure: true}\ntunnel: {listen: ':1'}\npeers: [{site: onprem}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := Federation{
		Journal: FedJournal{
			Limit:            DefaultJournalLimit,
			Policy:           PolicyBlock,
			AutoReplicateAll: new(true),
		},
		BatchSize:    DefaultBatchSize,
		SendInterval: Duration(DefaultSendInterval),
	}
	if !reflect.DeepEqual(c.Federation, want) {
		t.Errorf("federation = %+v, want %+v", c.Federation, want)
	}
	if c.Federation.Enabled() {
		t.Error("Enabled() = true without topologies")
	}
	if _, ok := c.FedTopology("active-active"); ok || c.FedEdgesFrom("active-active") != nil {
		t.Error("topology found without federation")
	}

	// Built in Go: SetDefaults fills what is empty and keeps the rest.
	c = &Config{
		Instance: "a", Site: "cloud", TLS: TLS{Insecure: true},
		Tunnel: Tunnel{Listen: ":8443"}, Peers: []Peer{{Site: "onprem"}},
		Store: Store{Schemes: []Scheme{{Name: "trades", Federation: "aa"}}},
		Federation: Federation{
			Participants: []Participant{{Site: "onprem"}, {Site: "dr", InitialAction: InitialStop}},
			Topologies:   []Topology{{Name: "aa", Type: TopoActiveActive, Sites: []string{"cloud", "onprem"}}},
			Journal:      FedJournal{Policy: PolicyError, AutoReplicateAll: new(false)},
		},
	}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	f := c.Federation
	if f.Participants[0].InitialAction != InitialStart || f.Participants[1].InitialAction != InitialStop {
		t.Errorf("participants = %+v", f.Participants)
	}
	if f.Journal.Limit != DefaultJournalLimit || f.Journal.Policy != PolicyError || f.Journal.AutoReplicate() ||
		f.BatchSize != DefaultBatchSize || f.SendInterval.D() != DefaultSendInterval {
		t.Errorf("federation = %+v", f)
	}
	if !(FedJournal{}).AutoReplicate() {
		t.Error("AutoReplicate() of nil = false, want true")
	}

	// Validate reports a scheme naming a missing topology, by path.
	c.Store.Schemes[0].Federation = "ab"
	var errs Errors
	if err := c.Validate(); !errors.As(err, &errs) || len(errs) != 1 ||
		errs[0].Path != "store.schemes[0].federation" || !strings.Contains(errs[0].Msg, `unknown topology "ab" (did you mean "aa"?)`) {
		t.Errorf("Validate = %v", err)
	}
}

func TestFederationClone(t *testing.T) {
	c, err := Parse(testFile, []byte(fedValidConfigs[0].yaml))
	if err != nil {
		t.Fatal(err)
	}
	d := c.Clone()
	if !reflect.DeepEqual(c, d) {
		t.Fatalf("Clone differs:\n%+v\n%+v", c, d)
	}
	d.Federation.Participants[0].Site = "changed"
	d.Federation.Topologies[0].Sites[0] = "changed"
	d.Federation.Topologies[4].Receivers[0] = "changed"
	*d.Federation.Journal.AutoReplicateAll = false
	f := c.Federation
	if f.Participants[0].Site == "changed" || f.Topologies[0].Sites[0] == "changed" ||
		f.Topologies[4].Receivers[0] == "changed" || !f.Journal.AutoReplicate() {
		t.Error("Clone shares federation data with the original")
	}
}
