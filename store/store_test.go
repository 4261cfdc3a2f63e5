package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func testOptions() Options {
	return Options{Partitions: 31, RequestTimeout: 10 * time.Second, JournalRetain: 1 << 20}
}

func TestBasicOperations(t *testing.T) {
	c := newMemCluster(t, testOptions())
	defer c.stopAll()
	a := c.start("a")
	c.start("b")
	c.start("c")
	c.waitSettled(t, 10*time.Second)
	ctx := context.Background()
	b := c.store("b")

	if err := a.Put(ctx, "", "trades", "k1", []byte("v1"), 0); err != nil {
		t.Fatal(err)
	}
	e, ok, err := b.Get(ctx, "", "trades", "k1")
	if err != nil || !ok || string(e.Value) != "v1" {
		t.Fatalf("get = %q %v %v", e.Value, ok, err)
	}
	if _, ok, _ := b.Get(ctx, "other", "trades", "k1"); ok {
		t.Fatal("a scoped get saw an unscoped key")
	}
	existed, err := b.Delete(ctx, "", "trades", "k1")
	if err != nil || !existed {
		t.Fatalf("delete = %v %v", existed, err)
	}
	if existed, _ := b.Delete(ctx, "", "trades", "k1"); existed {
		t.Fatal("second delete said existed")
	}
	for i := range 50 {
		if err := c.store("c").Put(ctx, "", "orders", fmt.Sprintf("o%03d", i), []byte("x"), 0); err != nil {
			t.Fatal(err)
		}
	}
	infos, err := a.Caches(ctx, "")
	if err != nil || len(infos) != 1 || infos[0].Name != "orders" || infos[0].Size != 50 {
		t.Fatalf("caches = %+v %v", infos, err)
	}
	var all []string
	cursor := ""
	for {
		pg, err := b.Keys(ctx, "", "orders", "o00", cursor, 7)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, pg.Keys...)
		if pg.Next == "" {
			break
		}
		cursor = pg.Next
	}
	if len(all) != 10 || all[0] != "o000" || all[9] != "o009" {
		t.Fatalf("keys = %v", all)
	}
	if err := a.Clear(ctx, "", "orders"); err != nil {
		t.Fatal(err)
	}
	if infos, _ := a.Caches(ctx, ""); len(infos) != 0 {
		t.Fatalf("after clear: %+v", infos)
	}
	// TTL.
	if err := a.Put(ctx, "", "t", "x", []byte("y"), 50*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, ok, _ := a.Get(ctx, "", "t", "x"); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("entry did not expire")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRefusals(t *testing.T) {
	o := testOptions()
	o.MaxValueSize = 10
	c := newMemCluster(t, o)
	defer c.stopAll()
	a := c.start("a")
	c.waitSettled(t, 5*time.Second)
	ctx := context.Background()
	cases := []struct {
		scope, cache, key string
		val               []byte
		want              error
	}{
		{"", "", "k", nil, ErrBadName},
		{"", "a/b", "k", nil, ErrBadName},
		{"", "c", "", nil, ErrBadName},
		{"", "c", "a\x00b", nil, ErrBadName},
		{"bad scope", "c", "k", nil, ErrBadName},
		{"", "c", "k", make([]byte, 11), ErrTooLarge},
	}
	for _, tc := range cases {
		err := a.Put(ctx, tc.scope, tc.cache, tc.key, tc.val, 0)
		if !errors.Is(err, tc.want) {
			t.Errorf("Put(%q,%q,%q) = %v, want %v", tc.scope, tc.cache, tc.key, err, tc.want)
		}
	}
}

// writeLoad runs writers against random members until stop, recording
// every acknowledged value.
type writeLoad struct {
	mu      sync.Mutex
	acked   map[string]string
	doubt   map[string][]string // values whose write failed after the last ack: they may or may not have taken
	ackedN  atomic.Int64
	failedN atomic.Int64
}

func (w *writeLoad) run(ctx context.Context, c *memCluster, names []string, writer int, n int) {
	for i := range n {
		if ctx.Err() != nil {
			return
		}
		key := fmt.Sprintf("k%d-%d", writer, i%200)
		val := fmt.Sprintf("w%d-%d", writer, i)
		name := names[(writer+i)%len(names)]
		c.mu.Lock()
		m := c.members[name]
		up := m.up
		st := m.store
		c.mu.Unlock()
		if !up {
			continue
		}
		if err := st.Put(ctx, "", "load", key, []byte(val), 0); err != nil {
			w.failedN.Add(1)
			w.mu.Lock()
			w.doubt[key] = append(w.doubt[key], val)
			w.mu.Unlock()
			continue
		}
		w.mu.Lock()
		w.acked[key] = val
		delete(w.doubt, key)
		w.mu.Unlock()
		w.ackedN.Add(1)
	}
}

// ok reports whether got is the key's last acknowledged value or a value
// written after it whose write failed (in doubt).
func (w *writeLoad) ok(key, got string) bool {
	return got == w.acked[key] || slices.Contains(w.doubt[key], got)
}

func (w *writeLoad) verify(t *testing.T, st *Store) {
	t.Helper()
	ctx := context.Background()
	lost := 0
	for k, v := range w.acked {
		e, ok, err := st.Get(ctx, "", "load", k)
		if err != nil {
			t.Fatalf("get %s: %v", k, err)
		}
		if !w.ok(k, string(e.Value)) || !ok {
			lost++
			if lost < 5 {
				t.Errorf("key %s: got %q (present %v), last acknowledged %q", k, e.Value, ok, v)
			}
		}
	}
	t.Logf("acknowledged %d writes (%d keys), %d failed, lost %d", w.ackedN.Load(), len(w.acked), w.failedN.Load(), lost)
	if lost > 0 {
		t.Fatalf("%d acknowledged keys lost", lost)
	}
}

func TestKillAndRestartLosesNoAckedWrite(t *testing.T) {
	for _, size := range []int{2, 3} {
		for victim := range size {
			t.Run(fmt.Sprintf("site-of-%d/kill-%d", size, victim), func(t *testing.T) {
				c := newMemCluster(t, testOptions())
				defer c.stopAll()
				var names []string
				for i := range size {
					names = append(names, fmt.Sprintf("m%d", i))
					c.start(names[i])
				}
				c.waitSettled(t, 10*time.Second)
				w := &writeLoad{acked: map[string]string{}, doubt: map[string][]string{}}
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				var wg sync.WaitGroup
				for i := range 6 {
					wg.Go(func() { w.run(ctx, c, names, i, 1500) })
				}
				// Kill midway, restart a little later.
				for w.ackedN.Load() < 2000 {
					time.Sleep(time.Millisecond)
				}
				c.kill(names[victim], 100*time.Millisecond)
				for n := w.ackedN.Load(); w.ackedN.Load() < n+1500; {
					time.Sleep(time.Millisecond)
				}
				c.start(names[victim])
				wg.Wait()
				c.waitSettled(t, 20*time.Second)
				for _, n := range names {
					w.verify(t, c.store(n))
				}
			})
		}
	}
}

// TestJournalSurvivesFailoverAndMoves: after a kill, a restart and the
// moves they cause, every partition's journal on its primary still runs
// from seq 1 without a gap, each backup's journal is the same, and replaying
// the journal gives every acknowledged value.
func TestJournalSurvivesFailoverAndMoves(t *testing.T) {
	c := newMemCluster(t, testOptions())
	defer c.stopAll()
	names := []string{"m0", "m1", "m2"}
	for _, n := range names {
		c.start(n)
	}
	c.waitSettled(t, 10*time.Second)
	w := &writeLoad{acked: map[string]string{}, doubt: map[string][]string{}}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() { w.run(ctx, c, names, i, 1000) })
	}
	for w.ackedN.Load() < 1000 {
		time.Sleep(time.Millisecond)
	}
	c.kill("m1", 50*time.Millisecond)
	for n := w.ackedN.Load(); w.ackedN.Load() < n+1000; {
		time.Sleep(time.Millisecond)
	}
	c.start("m1")
	wg.Wait()
	c.waitSettled(t, 20*time.Second)

	s0 := c.store("m0").services["default"]
	tb, _ := s0.currentTable()
	last := map[string]string{} // key -> value replayed from journals
	for p := range s0.nparts {
		var ref []jentry
		for i, owner := range tb.Parts[p].Owners {
			s := c.store(owner).services["default"]
			s.pmu[p].Lock()
			j := append([]jentry(nil), s.parts[p].journal...)
			born := s.parts[p].born
			s.pmu[p].Unlock()
			for k := range j {
				// Numbered without a gap from where the partition's history began.
				if j[k].Seq != born+uint64(k+1) {
					t.Fatalf("partition %d on %s: journal[%d] has seq %d", p, owner, k, j[k].Seq)
				}
			}
			if i == 0 {
				ref = j
				continue
			}
			if len(j) != len(ref) {
				t.Fatalf("partition %d: backup %s journal has %d entries, primary %d", p, owner, len(j), len(ref))
			}
			for k := range j {
				if j[k].Epoch != ref[k].Epoch || j[k].Key != ref[k].Key || string(j[k].Value) != string(ref[k].Value) {
					t.Fatalf("partition %d: backup %s differs at seq %d", p, owner, j[k].Seq)
				}
			}
		}
		for _, e := range ref {
			if e.Op == opPut {
				last[e.Key] = string(e.Value)
			}
		}
	}
	for k, v := range w.acked {
		if !w.ok(k, last[k]) {
			t.Errorf("journal replay: key %s = %q, acknowledged %q", k, last[k], v)
		}
	}
	t.Logf("%d acknowledged writes; journals contiguous and identical on every owner", w.ackedN.Load())
}

// TestJoinedWaitsForTheCopy: a member that joins (or restarts empty) is
// not joined until it holds every partition placed on it, and stays
// joined once it was, through the moves after another member fails.
func TestJoinedWaitsForTheCopy(t *testing.T) {
	c := newMemCluster(t, testOptions())
	defer c.stopAll()
	a := c.start("a")
	waitJoined := func(st *Store, name string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			ok, why := st.Joined()
			if ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not joined: waiting for %s", name, why)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitJoined(a, "a")
	ctx := context.Background()
	for i := range 2000 {
		if err := a.Put(ctx, "", "trades", fmt.Sprint(i), make([]byte, 512), 0); err != nil {
			t.Fatal(err)
		}
	}
	b := c.start("b")
	if ok, why := b.Joined(); ok || why == "" {
		t.Fatalf("b joined at once, before any copy (%q)", why)
	}
	waitJoined(b, "b")
	// Everything b is to hold, it holds.
	for _, ss := range b.Status() {
		for _, p := range ss.Partitions {
			if slices.Contains(p.Owners, "b") && !p.Held {
				t.Fatalf("b joined without holding partition %d", p.ID)
			}
		}
	}
	c.start("c")
	waitJoined(c.store("c"), "c")
	c.waitSettled(t, 10*time.Second)
	// a fails: b and c take over its partitions, and stay joined meanwhile.
	c.kill("a", 50*time.Millisecond)
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		for _, n := range []string{"b", "c"} {
			if ok, why := c.store(n).Joined(); !ok {
				t.Fatalf("%s no longer joined after a failed: %s", n, why)
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	c.waitSettled(t, 10*time.Second)
}

// TestRestartInPlaceRejoins: a member that crashes and comes back under
// its name before the others notice it died (a container restarted in
// place) is copied its partitions again and joins, with nothing lost.
func TestRestartInPlaceRejoins(t *testing.T) {
	for _, n := range []int{0, 200} {
		t.Run(fmt.Sprintf("%d-keys", n), func(t *testing.T) {
			c := newMemCluster(t, testOptions())
			defer c.stopAll()
			a := c.start("a")
			c.start("b")
			c.waitSettled(t, 10*time.Second)
			ctx := context.Background()
			for i := range n {
				if err := a.Put(ctx, "", "trades", fmt.Sprint(i), []byte("v"), 0); err != nil {
					t.Fatal(err)
				}
			}
			c.kill("b", time.Hour) // never noticed
			b := c.start("b")
			deadline := time.Now().Add(10 * time.Second)
			for {
				ok, why := b.Joined()
				if ok {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("b restarted in place did not rejoin: waiting for %s", why)
				}
				time.Sleep(20 * time.Millisecond)
			}
			c.waitSettled(t, 10*time.Second)
			c.kill("a", 50*time.Millisecond)
			for i := range n {
				if _, ok, err := b.Get(ctx, "", "trades", fmt.Sprint(i)); err != nil || !ok {
					t.Fatalf("key %d lost after a restart in place and a failover: %v %v", i, ok, err)
				}
			}
		})
	}
}

// TestJournalTrimmedWithoutFederation: without federation a partition's
// journal keeps only the retained entries (a fresh partition must not keep
// every change for participants that do not exist).
func TestJournalTrimmedWithoutFederation(t *testing.T) {
	o := testOptions()
	o.Partitions, o.JournalRetain = 1, 10
	c := newMemCluster(t, o)
	defer c.stopAll()
	c.start("a")
	c.start("b")
	c.waitSettled(t, 10*time.Second)
	ctx := context.Background()
	for i := range 100 {
		if err := c.store("a").Put(ctx, "", "c", fmt.Sprintf("k%d", i), []byte("v"), 0); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range []string{"a", "b"} {
		s := c.store(m).services["default"]
		s.pmu[0].Lock()
		n := len(s.parts[0].journal)
		s.pmu[0].Unlock()
		if n > 2*o.JournalRetain {
			t.Errorf("%s holds %d journal entries, want at most about %d retained", m, n, o.JournalRetain)
		}
	}
}

// TestBackupClockFollowsPrimary: a backup's clock moves past the versions
// it takes from the primary, so that as primary later its changes (and the
// seq base of a partition it starts again) are newer than what it holds,
// even when the primary's clock ran ahead.
func TestBackupClockFollowsPrimary(t *testing.T) {
	o := testOptions()
	o.Partitions = 1
	c := newMemCluster(t, o)
	defer c.stopAll()
	c.start("a")
	c.start("b")
	c.waitSettled(t, 10*time.Second)
	s := c.store("a").services["default"]
	tb, _ := s.currentTable()
	primary, backup := tb.Parts[0].Owners[0], tb.Parts[0].Owners[1]
	ahead := time.Now().Add(time.Hour).UnixNano()
	c.store(primary).clock.Observe(Version{Wall: ahead})
	if err := c.store(primary).Put(context.Background(), "", "c", "k", []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	if got := c.store(backup).clock.Next().Wall; got < ahead {
		t.Fatalf("backup %s's clock reads %d, behind the primary's version %d", backup, got, ahead)
	}
}
