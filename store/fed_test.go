package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fedSites starts in-process sites, each of n members, federated by the
// given links (per site: links out, sites taken from).
type fedSites struct {
	fed   *memFed
	sites map[string]*memCluster
	names map[string][]string
}

type siteSpec struct {
	name    string
	members int
	to      []FedLink
	from    []string
	policy  string
	limit   int64
	auto    bool
	initial map[string]string
	resolve Resolver
	every   time.Duration // FedOptions.SendInterval; 0: 10ms
}

func startFed(t *testing.T, specs ...siteSpec) *fedSites {
	t.Helper()
	f := &fedSites{fed: &memFed{sites: map[string]*memCluster{}}, sites: map[string]*memCluster{}, names: map[string][]string{}}
	for _, sp := range specs {
		o := testOptions()
		o.Schemes = []Scheme{{Name: "default", BackupCount: 1, FedTo: sp.to, FedFrom: sp.from}}
		o.Fed = FedOptions{Policy: sp.policy, Limit: sp.limit, AutoReplicate: sp.auto, SendInterval: cmp.Or(sp.every, 10*time.Millisecond)}
		if sp.resolve != nil {
			o.Resolvers = map[string]Resolver{"default": sp.resolve}
		}
		for _, other := range specs {
			if other.name != sp.name {
				o.Fed.Participants = append(o.Fed.Participants, FedParticipant{Site: other.name, Initial: sp.initial[other.name]})
			}
		}
		c := newMemCluster(t, o)
		c.site, c.fed = sp.name, f.fed
		// The sites started before this one already ship to it.
		f.fed.mu.Lock()
		f.fed.sites[sp.name] = c
		f.fed.mu.Unlock()
		f.sites[sp.name] = c
		for i := range sp.members {
			n := fmt.Sprintf("%s-%d", sp.name, i)
			f.names[sp.name] = append(f.names[sp.name], n)
			c.start(n)
		}
	}
	for _, c := range f.sites {
		c.waitSettled(t, 10*time.Second)
	}
	t.Cleanup(func() {
		for _, c := range f.sites {
			c.stopAll()
		}
	})
	return f
}

func (f *fedSites) store(site string) *Store { return f.sites[site].store(f.names[site][0]) }

// waitConverged polls until every partition digest is equal on the sites.
func (f *fedSites) waitConverged(t *testing.T, within time.Duration, sites ...string) {
	t.Helper()
	deadline := time.Now().Add(within)
	var last string
	for time.Now().Before(deadline) {
		ref, err := f.store(sites[0]).Digests(context.Background(), "default")
		ok := err == nil
		for _, s := range sites[1:] {
			d, err := f.store(s).Digests(context.Background(), "default")
			if err != nil || !slices.Equal(d, ref) {
				ok = false
				last = fmt.Sprintf("%s vs %s differ (%v)", sites[0], s, err)
			}
		}
		if ok {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, s := range sites {
		st, _ := f.store(s).FedStatus(context.Background())
		t.Logf("%s: %+v", s, st)
	}
	t.Fatalf("sites did not converge within %v: %s", within, last)
}

func aa(a, b string) (siteSpec, siteSpec) {
	return siteSpec{name: a, members: 2, to: []FedLink{{Site: b}}, from: []string{b}},
		siteSpec{name: b, members: 2, to: []FedLink{{Site: a}}, from: []string{a}}
}

func TestFederationActiveActiveConverges(t *testing.T) {
	f := startFed(t, func() []siteSpec { a, b := aa("cloud", "onprem"); return []siteSpec{a, b} }()...)
	ctx := context.Background()
	var wg sync.WaitGroup
	// Both sites write the same keys concurrently.
	for _, site := range []string{"cloud", "onprem"} {
		for w := range 3 {
			wg.Go(func() {
				st := f.sites[site].store(f.names[site][w%2])
				for i := range 300 {
					if err := st.Put(ctx, "", "trades", fmt.Sprintf("k%d", i%50), []byte(fmt.Sprintf("%s-%d-%d", site, w, i)), 0); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
	}
	wg.Wait()
	f.waitConverged(t, 20*time.Second, "cloud", "onprem")
	for i := range 50 {
		k := fmt.Sprintf("k%d", i)
		a, _, _ := f.store("cloud").Get(ctx, "", "trades", k)
		b, _, _ := f.store("onprem").Get(ctx, "", "trades", k)
		if string(a.Value) != string(b.Value) || a.Version != b.Version {
			t.Fatalf("%s: cloud %q@%v, onprem %q@%v", k, a.Value, a.Version, b.Value, b.Version)
		}
	}
	// Deletes and clears travel as versioned operations.
	if _, err := f.store("cloud").Delete(ctx, "", "trades", "k1"); err != nil {
		t.Fatal(err)
	}
	if err := f.store("onprem").Clear(ctx, "", "other"); err != nil {
		t.Fatal(err)
	}
	f.waitConverged(t, 20*time.Second, "cloud", "onprem")
	if _, ok, _ := f.store("onprem").Get(ctx, "", "trades", "k1"); ok {
		t.Fatal("delete did not reach onprem")
	}
	for _, site := range []string{"cloud", "onprem"} {
		waitState(t, f.store(site), func(s FedStatus) bool { return s.Pending == 0 && s.Duplicates == 0 && s.Unknown == 0 })
	}
}

// TestFederationKillNoAckedWriteLost: kill one member of either site during
// writes on both; every acknowledged write reaches both sites, applied once.
func TestFederationKillNoAckedWriteLost(t *testing.T) {
	for _, victimSite := range []string{"cloud", "onprem"} {
		t.Run("kill-"+victimSite, func(t *testing.T) {
			f := startFed(t, func() []siteSpec { a, b := aa("cloud", "onprem"); return []siteSpec{a, b} }()...)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			type ack struct{ site, key, val string }
			var mu sync.Mutex
			var acked []ack
			var doubt []ack
			var n atomic.Int64
			var wg sync.WaitGroup
			for _, site := range []string{"cloud", "onprem"} {
				for w := range 2 {
					wg.Go(func() {
						for i := range 800 {
							name := f.names[site][(w+i)%2]
							c := f.sites[site]
							c.mu.Lock()
							m := c.members[name]
							up, st := m.up, m.store
							c.mu.Unlock()
							if !up {
								continue
							}
							key := fmt.Sprintf("%s-w%d-%d", site, w, i) // written once each
							err := st.Put(ctx, "", "trades", key, []byte(key), 0)
							mu.Lock()
							if err == nil {
								acked = append(acked, ack{site, key, key})
								n.Add(1)
							} else {
								doubt = append(doubt, ack{site, key, key})
							}
							mu.Unlock()
						}
					})
				}
			}
			for n.Load() < 800 {
				time.Sleep(time.Millisecond)
			}
			victim := f.names[victimSite][0]
			f.sites[victimSite].kill(victim, 100*time.Millisecond)
			for m := n.Load(); n.Load() < m+800; {
				time.Sleep(time.Millisecond)
			}
			f.sites[victimSite].start(victim)
			wg.Wait()
			for _, c := range f.sites {
				c.waitSettled(t, 20*time.Second)
			}
			f.waitConverged(t, 30*time.Second, "cloud", "onprem")
			for _, site := range []string{"cloud", "onprem"} {
				for _, a := range acked {
					e, ok, err := f.store(site).Get(ctx, "", "trades", a.key)
					if err != nil || !ok || string(e.Value) != a.val {
						t.Fatalf("%s: acknowledged %s missing (%v %v)", site, a.key, ok, err)
					}
				}
			}
			// Applied exactly once: the receiving site applied (or found
			// superseded) exactly as many changes from the other as the
			// other made, and none arrived twice.
			for _, pair := range [][2]string{{"cloud", "onprem"}, {"onprem", "cloud"}} {
				from, to := pair[0], pair[1]
				rs, err := f.store(to).FedStatus(ctx)
				if err != nil {
					t.Fatal(err)
				}
				ss, err := f.store(from).FedStatus(ctx)
				if err != nil {
					t.Fatal(err)
				}
				got := rs[0].Applied + rs[0].Superseded + rs[0].Duplicates
				if rs[0].Duplicates != 0 || got != ss[0].Produced {
					t.Fatalf("%s from %s: applied %d, superseded %d, duplicates %d; %s made %d changes",
						to, from, rs[0].Applied, rs[0].Superseded, rs[0].Duplicates, from, ss[0].Produced)
				}
				t.Logf("%s applied all %d changes made at %s, each once; %d acknowledged writes in all, %d in doubt", to, got, from, len(acked), len(doubt))
			}
		})
	}
}

func TestFederationActivePassive(t *testing.T) {
	f := startFed(t,
		siteSpec{name: "cloud", members: 2, to: []FedLink{{Site: "onprem"}}},
		siteSpec{name: "onprem", members: 2, from: []string{"cloud"}})
	ctx := context.Background()
	if err := f.store("cloud").Put(ctx, "", "c", "from-cloud", []byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.store("onprem").Put(ctx, "", "c", "from-onprem", []byte("y"), 0); err != nil {
		t.Fatal(err)
	}
	waitGet(t, f.store("onprem"), "from-cloud")
	time.Sleep(300 * time.Millisecond) // 30 send intervals: what would be sent is sent
	if _, ok, _ := f.store("cloud").Get(ctx, "", "c", "from-onprem"); ok {
		t.Fatal("a write at the passive site reached the active one")
	}
}

func TestFederationCentralRepeats(t *testing.T) {
	f := startFed(t,
		siteSpec{name: "hub", members: 2, to: []FedLink{{Site: "spoke1", Repeat: true}, {Site: "spoke2", Repeat: true}}, from: []string{"spoke1", "spoke2"}},
		siteSpec{name: "spoke1", members: 1, to: []FedLink{{Site: "hub"}}, from: []string{"hub"}},
		siteSpec{name: "spoke2", members: 1, to: []FedLink{{Site: "hub"}}, from: []string{"hub"}})
	ctx := context.Background()
	if err := f.store("spoke1").Put(ctx, "", "c", "k", []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	waitGet(t, f.store("spoke2"), "k")
	f.waitConverged(t, 10*time.Second, "hub", "spoke1", "spoke2")
}

func waitGet(t *testing.T, st *Store, key string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, ok, _ := st.Get(context.Background(), "", "c", key); ok {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s never arrived", key)
}

// TestFederationJournalLimit fills the journal while the participant is
// paused: policy block refuses writers clearly; policy error drops the
// backlog, and the scheduled replicate-all converges the sites.
func TestFederationJournalLimit(t *testing.T) {
	for _, policy := range []string{PolicyBlock, PolicyError} {
		t.Run(policy, func(t *testing.T) {
			a, b := aa("cloud", "onprem")
			a.policy, a.limit, a.auto = policy, 64<<10, true
			a.initial = map[string]string{"onprem": FedOpPause}
			f := startFed(t, a, b)
			ctx := context.Background()
			val := make([]byte, 1000)
			var full error
			for i := range 400 {
				if err := f.store("cloud").Put(ctx, "", "c", fmt.Sprintf("k%d", i), val, 0); err != nil {
					full = err
					break
				}
			}
			st, _ := f.store("cloud").FedStatus(ctx)
			t.Logf("policy %s: writes ended with %v; status %+v", policy, full, st)
			switch policy {
			case PolicyBlock:
				if !errors.Is(full, ErrJournalFull) {
					t.Fatalf("a full journal under policy block gave %v", full)
				}
				if err := f.store("cloud").FedControl(ctx, "onprem", FedOpResume); err != nil {
					t.Fatal(err)
				}
			case PolicyError:
				if full != nil {
					t.Fatalf("policy error refused a writer: %v", full)
				}
				waitState(t, f.store("cloud"), func(s FedStatus) bool { return s.Reason != "" })
				if err := f.store("cloud").FedControl(ctx, "onprem", FedOpResume); err != nil && !errors.Is(err, ErrUnavailable) {
					t.Log(err)
				}
				if err := f.store("cloud").FedControl(ctx, "onprem", FedOpStart); err != nil {
					t.Fatal(err)
				}
			}
			f.waitConverged(t, 30*time.Second, "cloud", "onprem")
			waitState(t, f.store("cloud"), func(s FedStatus) bool { return s.Pending == 0 && s.JournalBytes < 64<<10 })
		})
	}
}

func waitState(t *testing.T, st *Store, ok func(FedStatus) bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var last []FedStatus
	for time.Now().Before(deadline) {
		s, err := st.FedStatus(context.Background())
		if err == nil && len(s) == 1 && ok(s[0]) {
			return
		}
		last = s
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("federation status never reached the condition: %+v", last)
}

func TestFederationReplicateAll(t *testing.T) {
	a, b := aa("cloud", "onprem")
	a.initial = map[string]string{"onprem": FedOpStop}
	f := startFed(t, a, b)
	ctx := context.Background()
	for i := range 500 {
		if err := f.store("cloud").Put(ctx, "", "c", fmt.Sprintf("k%d", i), []byte("v"), 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.store("cloud").FedControl(ctx, "onprem", FedOpStart); err != nil {
		t.Fatal(err)
	}
	if err := f.store("cloud").FedControl(ctx, "onprem", FedOpReplicateAll); err != nil {
		t.Fatal(err)
	}
	f.waitConverged(t, 20*time.Second, "cloud", "onprem")
	waitState(t, f.store("cloud"), func(s FedStatus) bool {
		return s.ReplicateAll != nil && s.ReplicateAll.Done == s.ReplicateAll.Total && s.ReplicateAll.Percent == 100
	})
}

// largestWins is a custom resolver: the larger value wins, whatever the
// versions (a delete never wins).
type largestWins struct{}

func (largestWins) Wins(_, _ string, local, incoming Change) bool {
	if incoming.Deleted || local.Deleted {
		return local.Deleted && !incoming.Deleted
	}
	return string(incoming.Value) > string(local.Value)
}

func TestFederationCustomResolver(t *testing.T) {
	a, b := aa("cloud", "onprem")
	a.resolve, b.resolve = largestWins{}, largestWins{}
	f := startFed(t, a, b)
	ctx := context.Background()
	// Onprem writes the larger value first; cloud's later, smaller write
	// loses under this resolver (it would win under last-writer-wins).
	if err := f.store("onprem").Put(ctx, "", "c", "k", []byte("9-onprem"), 0); err != nil {
		t.Fatal(err)
	}
	waitGet(t, f.store("cloud"), "k")
	if err := f.store("cloud").Put(ctx, "", "c", "k", []byte("1-cloud"), 0); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, _ := f.store("onprem").FedStatus(ctx)
		if len(st) == 1 && st[0].Superseded == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("onprem never judged cloud's write: %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	e, _, _ := f.store("onprem").Get(ctx, "", "c", "k")
	if string(e.Value) != "9-onprem" {
		t.Fatalf("onprem holds %q; the resolver should have kept 9-onprem", e.Value)
	}
}

// TestServeFedRefusals: batches from a site the topology does not take
// from, with another partition count, of another request type, or
// malformed, are refused and change nothing.
func TestServeFedRefusals(t *testing.T) {
	f := startFed(t,
		siteSpec{name: "cloud", members: 1, to: []FedLink{{Site: "onprem"}}},
		siteSpec{name: "onprem", members: 1, from: []string{"cloud"}})
	st := f.store("onprem")
	ctx := context.Background()
	batch := func(nparts int) []byte {
		return encodeReq(&req{Type: reqFedShip, Service: "default", Part: 1, NParts: nparts, LastSeq: 1,
			Ops: []jentry{{Seq: 1, Op: opPut, Cache: "c", Key: "evil", Value: []byte("x"), Ver: Version{Wall: 1, Site: "mallory"}}}})
	}
	cases := []struct {
		name string
		site string
		b    []byte
		want byte
	}{
		{"site not in the topology", "mallory", batch(31), stRefused},
		{"partition count differs", "cloud", batch(7), stError},
		{"not a federation batch", "cloud", encodeReq(&req{Type: reqPushTable, Service: "default"}), stRefused},
		{"unknown scheme", "cloud", encodeReq(&req{Type: reqFedShip, Service: "nope", NParts: 31}), stRefused},
		{"garbage", "cloud", []byte{0xff, 0x00, 0x13}, stError},
	}
	for _, tc := range cases {
		a, err := decodeResp(st.ServeFed(ctx, tc.site, tc.b))
		if err != nil || a.Status != tc.want {
			t.Errorf("%s: status %v %v, want %d", tc.name, a, err, tc.want)
		}
	}
	if _, ok, _ := st.Get(ctx, "", "c", "evil"); ok {
		t.Fatal("a refused batch changed data")
	}
}

// TestFederationSenderStartsAgainEmpty: when a site's partitions lose every
// copy (its one member restarts, or both members go down in turn before
// the first is copied again) they start empty; the changes made to them
// afterwards still reach the other site, which remembers positions in the
// partitions' earlier history and must not skip the new changes as
// already applied.
func TestFederationSenderStartsAgainEmpty(t *testing.T) {
	for _, tc := range []struct {
		name    string
		members int
	}{{"one-member-restarts", 1}, {"both-members-in-turn", 2}} {
		t.Run(tc.name, func(t *testing.T) {
			f := startFed(t,
				siteSpec{name: "cloud", members: tc.members, to: []FedLink{{Site: "onprem"}}, from: []string{"onprem"}},
				siteSpec{name: "onprem", members: 2, to: []FedLink{{Site: "cloud"}}, from: []string{"cloud"}})
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			put := func(round string) {
				st := f.store("cloud")
				for i := range 40 {
					if err := st.Put(ctx, "", "c", fmt.Sprintf("k%d", i), []byte(round), 0); err != nil {
						t.Fatal(err)
					}
				}
			}
			arrived := func(round string) {
				t.Helper()
				deadline := time.Now().Add(20 * time.Second)
				for i := range 40 {
					for {
						e, ok, _ := f.store("onprem").Get(ctx, "", "c", fmt.Sprintf("k%d", i))
						if ok && string(e.Value) == round {
							break
						}
						if time.Now().After(deadline) {
							st, _ := f.store("cloud").FedStatus(ctx)
							t.Fatalf("k%d at onprem is %q, want %q; cloud's federation: %+v", i, e.Value, round, st)
						}
						time.Sleep(10 * time.Millisecond)
					}
				}
			}
			put("first")
			arrived("first")
			// Every copy of cloud's partitions goes.
			c := f.sites["cloud"]
			names := f.names["cloud"]
			c.kill(names[0], 0)
			if tc.members == 2 {
				c.start(names[0])
				c.kill(names[1], 0)
			} else {
				c.start(names[0])
			}
			c.waitSettled(t, 10*time.Second)
			put("second")
			arrived("second")
			waitState(t, f.store("cloud"), func(s FedStatus) bool { return s.Pending == 0 && s.State == FedStarted })
		})
	}
}

func TestLostPartitions(t *testing.T) {
	e1, e2 := Epoch{Ver: 1, Author: "a"}, Epoch{Ver: 2, Author: "b"}
	base := &Table{Lineage: "L", Parts: []PartTable{{Epoch: e1, Owners: []string{"a"}, Synced: []string{"a"}}}}
	fresh := func(lineage string, ep Epoch) *Table {
		return &Table{Lineage: lineage, Parts: []PartTable{{Epoch: ep, Owners: []string{"b"}, Synced: []string{"b"}, Fresh: true}}}
	}
	for _, c := range []struct {
		name string
		base *Table
		next *Table
		live []string
		want int
	}{
		{"its only holder is gone", base, fresh("L", e2), []string{"b"}, 1},
		{"named to a member that never took it up", base, fresh("L", e2), []string{"a", "b"}, 0},
		{"fresh flag carried over unchanged", &Table{Lineage: "L", Parts: []PartTable{{Epoch: e2, Synced: []string{"a"}}}}, fresh("L", e2), []string{"b"}, 0},
		{"a new history", base, fresh("M", e2), []string{"b"}, 0},
		{"no earlier table", nil, fresh("L", e2), []string{"b"}, 0},
	} {
		if got := len(lostPartitions(c.base, c.next, c.live)); got != c.want {
			t.Errorf("%s: %d lost, want %d", c.name, got, c.want)
		}
	}
}

// TestFederationIdleIsQuiet: once both sites have each other's changes,
// nothing more is shipped. Before, each batch received was journaled as a
// mark, which the receiver then sent back as a batch of its own, and the
// two sites traded marks for ever: thousands of batches a second per
// partition pair, and both instances' CPUs busy while idle.
func TestFederationIdleIsQuiet(t *testing.T) {
	f := startFed(t, func() []siteSpec { a, b := aa("cloud", "onprem"); return []siteSpec{a, b} }()...)
	ctx := context.Background()
	for i := range 20 {
		site := []string{"cloud", "onprem"}[i%2]
		if err := f.store(site).Put(ctx, "", "c", fmt.Sprintf("k%d", i), []byte(site), 0); err != nil {
			t.Fatal(err)
		}
	}
	f.waitConverged(t, 10*time.Second, "cloud", "onprem")
	calls := func() int {
		f.fed.mu.Lock()
		defer f.fed.mu.Unlock()
		return f.fed.calls
	}
	// Quiet: no batch for 20 send intervals in a row.
	const window = 200 * time.Millisecond
	start, first := time.Now(), calls()
	last, since := first, start
	for time.Since(since) < window {
		if el := time.Since(start); el > 5*time.Second {
			t.Fatalf("federation still ships while idle: %d batches in %v", calls()-first, el.Round(time.Millisecond))
		}
		time.Sleep(10 * time.Millisecond)
		if n := calls(); n != last {
			last, since = n, time.Now()
		}
	}
	// And a change made now still goes across.
	if err := f.store("onprem").Put(ctx, "", "c", "after", []byte("quiet"), 0); err != nil {
		t.Fatal(err)
	}
	waitGet(t, f.store("cloud"), "after")
}

// TestFederationShipsOnCommit: a committed change is shipped at once, not
// at the next send interval (here an hour, so only the commit's wake-up
// can send it).
func TestFederationShipsOnCommit(t *testing.T) {
	a, b := aa("cloud", "onprem")
	a.every, b.every = time.Hour, time.Hour
	f := startFed(t, a, b)
	ctx := context.Background()
	for i := range 5 {
		key := fmt.Sprintf("now%d", i)
		if err := f.store("cloud").Put(ctx, "", "c", key, []byte("v"), 0); err != nil {
			t.Fatal(err)
		}
		waitGet(t, f.store("onprem"), key)
	}
}
