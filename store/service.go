package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Membership is the view of the site's live members that a store needs;
// the gateway adapts its memberlist cluster to it.
type Membership interface {
	// Self is this member's name.
	Self() string
	// Members lists the live members, this one included.
	Members() []string
	// Senior names the member that coordinates the partition tables.
	Senior() string
	// Changed is closed at the next change of Members or Senior.
	Changed() <-chan struct{}
	// Ready is closed once this member has joined its site (or decided it
	// is alone); before that it does not act as senior.
	Ready() <-chan struct{}
}

// Transport carries a request to another member of the site and returns
// its answer. The gateway implements it over mutually authenticated
// intra-site streams.
type Transport interface {
	Call(ctx context.Context, member string, req []byte) ([]byte, error)
}

// errStatus is a non-OK answer from another member.
type errStatus struct {
	status byte
	msg    string
}

func (e *errStatus) Error() string {
	names := map[byte]string{stNotPrimary: "not primary", stStale: "stale epoch", stNeedSync: "needs sync",
		stNoTable: "no table", stError: "error", stTooLarge: "too large", stBadName: "bad name",
		stFull: "journal full", stRefused: "refused"}
	if e.msg == "" {
		return names[e.status]
	}
	return names[e.status] + ": " + e.msg
}

// service is one distributed cache service: one scheme's partitions, their
// table and the loops that keep them. Every member runs one per scheme.
type service struct {
	name      string
	nparts    int
	backups   int
	self      string
	joined    atomic.Bool // latched once this member held every partition placed on it
	site      string
	mem       Membership
	tr        Transport
	clock     *Clock
	log       *slog.Logger
	timeout   time.Duration // a client request's budget
	retain    int           // journal entries kept per partition
	tombstone time.Duration // how long tombstones are kept

	mu      sync.Mutex // guards table, lineage, tableCh
	table   *Table
	tableCh chan struct{} // closed when table changes

	pmu   []sync.Mutex // pmu[i] guards parts[i]
	parts []*partition

	fed      *fedState    // nil: the scheme is not federated
	resolver Resolver     // conflicts with changes from other sites
	jbytes   atomic.Int64 // journal bytes of every partition held here
	ctlMu    sync.Mutex   // serialises federation operations at the senior

	kick   chan struct{} // wakes the senior loop
	syncCh chan struct{} // wakes the sync loop
	wg     sync.WaitGroup
	wgMu   sync.Mutex // guards closed and wg.Go against run's final Wait
	closed bool
	ctx    context.Context // the service's life; set by run
}

// keep is how many journal entries a partition keeps beyond what
// federation still needs: journal-retain without federation; none with it,
// so the journal holds exactly the backlog that the limit bounds.
func (s *service) keep() int {
	if s.fed != nil {
		return 0
	}
	return max(s.retain, 0)
}

// spawn runs fn in a goroutine the service owns, unless the service is
// stopping; it reports whether fn was started.
func (s *service) spawn(fn func()) bool {
	s.wgMu.Lock()
	defer s.wgMu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Go(fn)
	return true
}

func newService(name string, nparts, backups int, self, site string, mem Membership, tr Transport, clock *Clock, log *slog.Logger, timeout time.Duration, retain int) *service {
	s := &service{
		name: name, nparts: nparts, backups: backups, self: self, site: site, mem: mem, tr: tr, clock: clock,
		log: log.With("service", name), timeout: timeout, retain: retain, tombstone: 10 * time.Minute,
		tableCh: make(chan struct{}), pmu: make([]sync.Mutex, nparts), parts: make([]*partition, nparts),
		kick: make(chan struct{}, 1), syncCh: make(chan struct{}, 1), resolver: LastWriterWins{},
	}
	for i := range s.parts {
		s.parts[i] = newPartition(i, math.MaxUint64)
		s.parts[i].acct = &s.jbytes
	}
	return s
}

func wake(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// currentTable returns the table (nil: none yet) and a channel closed when
// it changes.
func (s *service) currentTable() (*Table, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.table, s.tableCh
}

// applyTable installs t if it is newer than the current table. A table of
// another lineage replaces the current one only when force is set (it comes
// from the senior); the partitions of the old lineage are then dropped.
func (s *service) applyTable(t *Table, force bool) bool {
	if t == nil || len(t.Parts) != s.nparts {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.table
	if old != nil {
		if old.Lineage != t.Lineage {
			if !force {
				return false
			}
			dropped := 0
			for i := range s.parts {
				s.pmu[i].Lock()
				if s.parts[i].holds {
					dropped++
				}
				s.parts[i].reset()
				s.pmu[i].Unlock()
			}
			s.log.Warn("store: adopting the senior's partition history; dropping this member's copies",
				"old_lineage", old.Lineage, "lineage", t.Lineage, "partitions_dropped", dropped)
		} else if t.Epoch.Compare(old.Epoch) <= 0 {
			return false
		}
	}
	for i := range s.parts {
		pt := &t.Parts[i]
		s.pmu[i].Lock()
		p := s.parts[i]
		changed := p.epoch != pt.Epoch
		prevPrimary := ""
		if len(p.owners) > 0 {
			prevPrimary = p.owners[0]
		}
		p.epoch, p.owners, p.fresh = pt.Epoch, slices.Clone(pt.Owners), pt.Fresh
		switch {
		case pt.Primary() == s.self:
			if !p.holds && pt.Fresh {
				p.hold()
				base := s.seqBase()
				p.lastSeq, p.born, p.committed = base, base, base
				if s.fed != nil {
					// Kept for the participants until they have it;
					// without federation the journal is trimmed to retain.
					p.purgeTo = base
				}
			}
			if p.holds && changed {
				p.syncedEpoch = pt.Epoch
				p.synced = map[string]bool{}
				// Which of our changes every owner holds is known again
				// only after the first round with the backups.
				p.committed = min(p.committed, p.lastSeq)
				if pt.Primary() != prevPrimary {
					p.committed = 0
				}
			}
			if p.holds && !changed {
				// A backup this member synced that the senior no longer
				// counts as synced has lost its copy (it restarted before
				// anyone noticed it died): sync it again.
				for m, ok := range p.synced {
					if ok && slices.Contains(pt.Owners, m) && !slices.Contains(pt.Synced, m) {
						s.log.Info("store: backup lost its copy; syncing it again", "partition", i, "member", m)
						p.synced[m] = false
					}
				}
			}
			if !p.holds && changed {
				s.log.Warn("store: named primary of a partition this member does not hold; waiting for the senior",
					"partition", i, "epoch", pt.Epoch)
			}
		case slices.Contains(pt.Owners, s.self):
			p.synced, p.queue = nil, failQueue(p.queue, errNotPrimary)
		default:
			p.synced, p.queue = nil, failQueue(p.queue, errNotPrimary)
			if p.holds && len(pt.Synced) == len(pt.Owners) && len(pt.Owners) > 0 {
				p.reset() // its owners hold it: this copy is no longer needed
			}
		}
		s.pmu[i].Unlock()
	}
	s.table = t
	close(s.tableCh)
	s.tableCh = make(chan struct{})
	wake(s.syncCh)
	return true
}

var errNotPrimary = &errStatus{status: stNotPrimary}

// failQueue fails every queued write not being committed.
func failQueue(q []*pending, err error) []*pending {
	for _, w := range q {
		w.err = err
		close(w.done)
	}
	return nil
}

// localState reports what this member holds.
func (s *service) localState() *state {
	s.mu.Lock()
	st := &state{}
	if s.table != nil {
		st.Lineage, st.Table = s.table.Lineage, s.table.Epoch
	}
	s.mu.Unlock()
	for i := range s.parts {
		s.pmu[i].Lock()
		if p := s.parts[i]; p.holds {
			st.Parts = append(st.Parts, partState{Part: i, SyncedEpoch: p.syncedEpoch, LastSeq: p.lastSeq, LastEpoch: p.lastEpoch})
		}
		s.pmu[i].Unlock()
	}
	return st
}

// call sends r to member and decodes the answer; a non-OK status is
// returned as *errStatus together with the answer.
func (s *service) call(ctx context.Context, member string, r *req) (*resp, error) {
	r.Service, r.From = s.name, s.self
	b, err := s.tr.Call(ctx, member, encodeReq(r))
	if err != nil {
		return nil, err
	}
	a, err := decodeResp(b)
	if err != nil {
		return nil, fmt.Errorf("answer from %s: %w", member, err)
	}
	if a.Status != stOK {
		if a.Table != nil {
			s.applyTable(a.Table, false)
		}
		return a, &errStatus{status: a.Status, msg: a.Msg}
	}
	return a, nil
}

// run runs the service's loops until ctx ends.
func (s *service) run(ctx context.Context) {
	s.ctx = ctx
	s.spawn(func() { s.seniorLoop(ctx) })
	s.spawn(func() { s.syncLoop(ctx) })
	s.spawn(func() { s.sweepLoop(ctx) })
	if s.fed != nil {
		for _, peer := range s.fed.peers {
			s.spawn(func() { s.fedLoop(ctx, peer) })
		}
	}
	<-ctx.Done()
	s.wgMu.Lock()
	s.closed = true
	s.wgMu.Unlock()
	s.wg.Wait()
	for i := range s.parts {
		s.pmu[i].Lock()
		s.parts[i].queue = failQueue(s.parts[i].queue, ErrStopped)
		s.pmu[i].Unlock()
	}
}

func (s *service) sweepLoop(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now().UnixNano()
		for i := range s.parts {
			s.pmu[i].Lock()
			if p := s.parts[i]; p.holds {
				p.sweep(now, s.tombstone)
			}
			s.pmu[i].Unlock()
		}
	}
}

func newLineage() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// seniorLoop makes and pushes tables while this member is the senior.
func (s *service) seniorLoop(ctx context.Context) {
	select {
	case <-ctx.Done():
		return
	case <-s.mem.Ready():
	}
	settled := false
	for {
		wait := 250 * time.Millisecond
		if settled {
			wait = 2 * time.Second
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-s.mem.Changed():
		case <-s.kick:
		case <-t.C:
		}
		t.Stop()
		if s.mem.Senior() != s.self {
			settled = false
			continue
		}
		settled = s.coordinate(ctx)
	}
}

// coordinate is one round of the senior's work: learn what every live
// member holds, compute the next table, push it. It reports whether the
// table is settled (every partition at its target owners, all synced).
func (s *service) coordinate(ctx context.Context) bool {
	live := s.mem.Members()
	if !slices.Contains(live, s.self) {
		live = append(live, s.self)
	}
	slices.Sort(live)
	type answer struct {
		m  string
		st *state
	}
	ch := make(chan answer, len(live))
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	for _, m := range live {
		go func() {
			if m == s.self {
				ch <- answer{m, s.localState()}
				return
			}
			a, err := s.call(cctx, m, &req{Type: reqState})
			if err != nil {
				ch <- answer{m, nil}
				return
			}
			ch <- answer{m, a.State}
		}()
	}
	states := map[string]*state{}
	for range live {
		if a := <-ch; a.st != nil {
			states[a.m] = a.st
		}
	}
	cancel()

	cur, _ := s.currentTable()
	// Adopt a newer table of our history, or, having none, the newest any
	// member has.
	var newest string
	for m, st := range states {
		if st.Table.Ver == 0 || (cur != nil && st.Lineage != cur.Lineage) {
			continue
		}
		if cur == nil || st.Table.Compare(cur.Epoch) > 0 {
			if newest == "" || st.Table.Compare(states[newest].Table) > 0 {
				newest = m
			}
		}
	}
	if newest != "" && newest != s.self {
		if a, err := s.call(ctx, newest, &req{Type: reqTable}); err == nil && a.Table != nil {
			s.applyTable(a.Table, cur == nil)
			cur, _ = s.currentTable()
		}
	}
	lineage := newLineage()
	if cur != nil {
		lineage = cur.Lineage
	}
	v := views{}
	maxVer := uint64(0)
	if cur != nil {
		maxVer = cur.Epoch.Ver
	}
	for m, st := range states {
		maxVer = max(maxVer, st.Table.Ver)
		h := map[int]holding{}
		if st.Lineage == lineage {
			for _, ps := range st.Parts {
				h[ps.Part] = holding{synced: ps.SyncedEpoch, lastSeq: ps.LastSeq}
			}
		}
		v[m] = h
	}
	base := cur
	if base != nil && maxVer > base.Epoch.Ver {
		b := *base
		b.Epoch.Ver = maxVer
		base = &b
	}
	next := nextTable(base, lineage, s.self, s.nparts, s.backups, live, v)
	if s.fed != nil {
		// Participants the table does not know yet start as configured.
		have := base
		if next != nil {
			have = next
		}
		var add []FedControl
		for _, c := range s.fed.initialFed() {
			if _, ok := have.control(c.Site); !ok {
				add = append(add, c)
			}
		}
		if len(add) > 0 {
			if next == nil {
				n := *base
				n.Epoch = Epoch{Ver: base.Epoch.Ver + 1, Author: s.self}
				next = &n
			}
			next.Fed = append(slices.Clone(next.Fed), add...)
		}
	}
	if next != nil {
		if cur == nil {
			s.log.Info("store: new partition table history", "lineage", lineage, "partitions", s.nparts, "members", live)
		}
		if lost := lostPartitions(base, next, live); len(lost) > 0 {
			s.log.Warn("store: partitions whose every copy was on members now gone start again empty; what only they held is lost (a rolling restart must wait for /readyz before stopping the next member)",
				"partitions", len(lost), "first", lost[0], "members", live, "epoch", next.Epoch)
		}
		s.applyTable(next, true)
		cur = next
		s.log.Debug("store: table published", "epoch", next.Epoch, "members", live)
	}
	// Push to every member that lacks it.
	for m, st := range states {
		if m == s.self || (st.Lineage == cur.Lineage && st.Table == cur.Epoch) {
			continue
		}
		s.spawn(func() {
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			if _, err := s.call(pctx, m, &req{Type: reqPushTable, Table: cur}); err != nil {
				s.log.Debug("store: table push failed", "member", m, "err", err)
			}
		})
	}
	return len(states) == len(live) && cur.settled(live, s.backups)
}

// askSenior nudges the senior to recompute soon.
func (s *service) askSenior(ctx context.Context) {
	sen := s.mem.Senior()
	if sen == s.self || sen == "" {
		wake(s.kick)
		return
	}
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	s.call(cctx, sen, &req{Type: reqKick})
}

var errNoTable = errors.New("no partition table yet")

// seqBase is where a partition started again empty numbers its changes
// from: the hybrid clock's time in nanoseconds, above any seq an earlier
// history of the partition can have reached (one change per nanosecond
// since that history began).
func (s *service) seqBase() uint64 {
	return uint64(max(time.Now().UnixNano(), s.clock.Next().Wall))
}

// lostPartitions lists the partitions next starts again empty although
// base had them complete on a member that is not live any more: their
// data is gone. (A partition named to a member that never took it up, as
// while a site forms, starts empty again without loss.)
func lostPartitions(base, next *Table, live []string) []int {
	if base == nil || base.Lineage != next.Lineage {
		return nil
	}
	var lost []int
	for i := range next.Parts {
		if !next.Parts[i].Fresh || i >= len(base.Parts) || next.Parts[i].Epoch == base.Parts[i].Epoch {
			continue
		}
		if slices.ContainsFunc(base.Parts[i].Synced, func(m string) bool { return !slices.Contains(live, m) }) {
			lost = append(lost, i)
		}
	}
	return lost
}
