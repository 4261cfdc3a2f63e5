package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Federation: each partition's primary ships its journal, in order and in
// batches, to every remote site its scheme's topology sends to. The
// receiving site hands the batch to its own primary of the partition, which
// applies each change at most once (its position in the sender's journal
// is kept with the partition, on its backups too) and answers with that
// position; the sender purges a journal entry once every participant has
// it. Conflicts resolve by last writer wins on the hybrid logical clock,
// origin site as tie-break.

// Participant states.
const (
	FedStarted = "started"
	FedPaused  = "paused"
	FedStopped = "stopped"
	FedError   = "error"
)

// Federation operations.
const (
	FedOpStart        = "start"
	FedOpStop         = "stop"
	FedOpPause        = "pause"
	FedOpResume       = "resume"
	FedOpReplicateAll = "replicate-all"
	FedOpNoBacklog    = "start-with-no-backlog"
	fedOpError        = "error" // internal: the journal limit dropped the backlog
)

// Journal-full policies.
const (
	PolicyBlock = "block"
	PolicyError = "error"
)

// ErrJournalFull: the federation journal of the partition's primary is at
// its limit (policy block): a participant is not taking changes.
var ErrJournalFull = errors.New("federation journal full")

// ErrUnknownParticipant: an operation named a site that is not a
// participant.
var ErrUnknownParticipant = errors.New("unknown federation participant")

// Change is one side of a conflict: a key's value, version and whether it
// is a delete.
type Change struct {
	Value   []byte
	Version Version
	Deleted bool
}

// Resolver decides a conflict between the local state of a key and a
// change arriving from another site. Every site must use the same
// resolver, so that all reach the same value.
type Resolver interface {
	// Wins reports whether incoming replaces local.
	Wins(cache, key string, local, incoming Change) bool
}

// LastWriterWins is the default resolver: the newer version wins (hybrid
// logical clock, then origin site).
type LastWriterWins struct{}

// Wins implements Resolver.
func (LastWriterWins) Wins(_, _ string, local, incoming Change) bool {
	return incoming.Version.Compare(local.Version) > 0
}

// FedParticipant is a remote site and the state it starts in.
type FedParticipant struct {
	Site    string
	Initial string // start, stop, pause or start-with-no-backlog
}

// FedLink is a site a scheme's topology sends to from this site.
type FedLink struct {
	Site   string
	Repeat bool // also send on changes received from other sites
}

// FedOptions configure federation (nil Transport: none).
type FedOptions struct {
	Participants  []FedParticipant
	Transport     FedTransport
	Limit         int64         // journal bytes per member; default 256 MiB
	Policy        string        // block (default) or error
	BlockWait     time.Duration // block: how long a writer waits for room
	AutoReplicate bool          // error: schedule a replicate-all at once
	BatchSize     int           // default 512
	SendInterval  time.Duration // default 50ms
}

// FedTransport carries a federation request to some instance of a remote
// site (over the tunnels) and returns its answer.
type FedTransport interface {
	Ship(ctx context.Context, site string, req []byte) ([]byte, error)
}

// fedState is a service's federation: where it sends and whom it takes
// changes from.
type fedState struct {
	opts  FedOptions
	to    map[string]bool // site -> repeat
	from  map[string]bool // sites that send to us
	peers map[string]*fedPeer
}

func newFedState(o FedOptions, sc Scheme, nparts int) *fedState {
	if o.Limit <= 0 {
		o.Limit = 256 << 20
	}
	if o.Policy == "" {
		o.Policy = PolicyBlock
	}
	if o.BatchSize <= 0 {
		o.BatchSize = 512
	}
	if o.SendInterval <= 0 {
		o.SendInterval = 50 * time.Millisecond
	}
	f := &fedState{opts: o, to: map[string]bool{}, from: map[string]bool{}, peers: map[string]*fedPeer{}}
	for _, l := range sc.FedTo {
		f.to[l.Site] = l.Repeat
		f.peers[l.Site] = newFedPeer(l.Site, nparts)
	}
	for _, site := range sc.FedFrom {
		f.from[site] = true
	}
	return f
}

// snapRound is what one replicate-all chunk covered.
type snapRound struct {
	key  string // the last item sent
	last bool   // the chunk carried the mark
}

// fedPeer is the sending side's view of one receiving site.
type fedPeer struct {
	site string
	kick chan struct{}

	mu       sync.Mutex
	acked    []int64 // per partition: the receiver's position in our journal; -1 unknown
	gen      []uint64
	nb       []uint64
	inflight []bool
	// replicate-all, per partition: whether a round is under way, the
	// operator round it serves (0: a round of its own after a dropped
	// backlog), the seq its snapshot started at, and the last item sent
	// (cache NUL key).
	snapOn    []bool
	snapGen   []uint64
	snapStart []uint64
	snapKey   []string
	// lost: the partition's backlog for this participant was dropped
	// (journal limit, policy error); it needs a round of its own, and
	// until that starts purging ignores the participant for it.
	lost []bool
	// roundGen, roundAt: the operator replicate-all round this member
	// last started, and when (for the ETA).
	roundGen uint64
	roundAt  time.Time
	lastErr  string
	errAt    time.Time
	sent     []rateSample
}

type rateSample struct {
	at time.Time
	n  int
}

func newFedPeer(site string, nparts int) *fedPeer {
	p := &fedPeer{site: site, kick: make(chan struct{}, 1), acked: make([]int64, nparts), gen: make([]uint64, nparts),
		nb: make([]uint64, nparts), inflight: make([]bool, nparts),
		snapOn: make([]bool, nparts), snapGen: make([]uint64, nparts), snapStart: make([]uint64, nparts),
		snapKey: make([]string, nparts), lost: make([]bool, nparts)}
	for i := range p.acked {
		p.acked[i] = -1
	}
	return p
}

func (p *fedPeer) fail(err error) {
	p.mu.Lock()
	p.lastErr, p.errAt = err.Error(), time.Now()
	p.mu.Unlock()
}

// control returns the participant's operator state from the table.
func (t *Table) control(site string) (FedControl, bool) {
	if t == nil {
		return FedControl{}, false
	}
	for _, f := range t.Fed {
		if f.Site == site {
			return f, true
		}
	}
	return FedControl{}, false
}

// initialFed is the control state the config asks for.
func (f *fedState) initialFed() []FedControl {
	var out []FedControl
	for _, p := range f.opts.Participants {
		c := FedControl{Site: p.Site, State: FedStarted}
		switch p.Initial {
		case FedOpStop:
			c.State = FedStopped
		case FedOpPause:
			c.State = FedPaused
		case FedOpNoBacklog:
			c.NoBacklog = 1
		}
		out = append(out, c)
	}
	return out
}

// shippable reports whether journal entry j goes to site r.
func (f *fedState) shippable(j *jentry, r string) bool {
	if j.Op == opFedMark || j.Fate != fateApplied || j.Ver.Site == r || j.FedFrom == r {
		return false
	}
	repeat, ok := f.to[r]
	if !ok {
		return false
	}
	return j.FedFrom == "" || repeat
}

// journalBytes is this member's journal size (every partition it holds).
func (s *service) journalBytes() int64 { return s.jbytes.Load() }

// admit applies the journal limit to local writes (policy block).
func (s *service) admit(ctx context.Context) error {
	if s.fed == nil || s.fed.opts.Policy != PolicyBlock || s.journalBytes() < s.fed.opts.Limit {
		return nil
	}
	deadline := time.Now().Add(s.fed.opts.BlockWait)
	for time.Now().Before(deadline) {
		t := time.NewTimer(20 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		if s.journalBytes() < s.fed.opts.Limit {
			return nil
		}
	}
	return &errStatus{status: stFull, msg: fmt.Sprintf("journal of %s holds %d bytes, limit %d: a federation participant is not taking changes",
		s.self, s.journalBytes(), s.fed.opts.Limit)}
}

// fedLoop ships to one participant while the service runs.
func (s *service) fedLoop(ctx context.Context, peer *fedPeer) {
	t := time.NewTicker(s.fed.opts.SendInterval)
	defer t.Stop()
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-peer.kick:
		}
		tb, _ := s.currentTable()
		ctl, ok := tb.control(peer.site)
		if !ok {
			continue
		}
		s.checkLimit(ctx)
		if ctl.State != FedStarted {
			continue
		}
		for part := range s.parts {
			s.pmu[part].Lock()
			p := s.parts[part]
			primary := p.holds && len(p.owners) > 0 && p.owners[0] == s.self && p.epoch == tb.Parts[part].Epoch
			born := p.born
			s.pmu[part].Unlock()
			if !primary {
				continue
			}
			peer.mu.Lock()
			acked := peer.acked[part]
			peer.mu.Unlock()
			owes := false
			if acked >= 0 {
				s.pmu[part].Lock()
				owes = s.parts[part].owesAfter(max(uint64(acked), born))
				s.pmu[part].Unlock()
			}
			peer.mu.Lock()
			need := !peer.inflight[part] && (peer.acked[part] < 0 || owes ||
				peer.gen[part] < ctl.Gen || peer.nb[part] < ctl.NoBacklog || (peer.lost[part] && s.fed.opts.AutoReplicate))
			if need {
				peer.inflight[part] = true
			}
			peer.mu.Unlock()
			if !need {
				continue
			}
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			wg.Go(func() {
				defer func() { <-sem }()
				err := s.ship(ctx, peer, part, ctl)
				peer.mu.Lock()
				peer.inflight[part] = false
				peer.mu.Unlock()
				if err != nil && ctx.Err() == nil {
					peer.fail(err)
					s.log.Debug("federation: ship failed", "participant", peer.site, "partition", part, "err", err)
				}
			})
		}
	}
}

// ship sends one batch of partition part to peer: the no-backlog mark, a
// replicate-all chunk, or journal entries after the peer's position.
func (s *service) ship(ctx context.Context, peer *fedPeer, part int, ctl FedControl) error {
	peer.mu.Lock()
	acked, gen, nb := peer.acked[part], peer.gen[part], peer.nb[part]
	lost := peer.lost[part] && s.fed.opts.AutoReplicate
	peer.mu.Unlock()
	r := &req{Type: reqFedShip, Service: s.name, Site: s.site, From: s.self, Part: part, NParts: s.nparts}
	var round *snapRound
	s.pmu[part].Lock()
	p := s.parts[part]
	if !p.holds || len(p.owners) == 0 || p.owners[0] != s.self {
		s.pmu[part].Unlock()
		return nil
	}
	switch {
	case acked < 0:
		// Learn the peer's position first (an empty batch).
	case nb < ctl.NoBacklog:
		r.LastSeq, r.NoBacklog = p.lastSeq, ctl.NoBacklog
	case gen < ctl.Gen || lost:
		// Replicate-all: every item, in chunks in key order, then the mark
		// at the seq the round started at (the journal after it is
		// shipped next; what the chunks already carried arrives twice and
		// changes nothing).
		peer.mu.Lock()
		want := uint64(0) // a round of its own: the mark completes no operator round
		if gen < ctl.Gen {
			want = ctl.Gen
		}
		if want != 0 && peer.roundGen != want {
			peer.roundGen, peer.roundAt = want, time.Now()
		}
		if !peer.snapOn[part] || peer.snapGen[part] != want {
			// The round starts: from here on the journal is kept for it.
			peer.snapOn[part], peer.snapGen[part], peer.snapStart[part], peer.snapKey[part] = true, want, p.lastSeq, ""
			peer.lost[part] = false
		}
		snapStart, snapKey := peer.snapStart[part], peer.snapKey[part]
		peer.mu.Unlock()
		items := p.items()
		sortItems(items)
		i, _ := slices.BinarySearchFunc(items, snapKey, func(it item, k string) int {
			return strings.Compare(it.Cache+"\x00"+it.Key, k)
		})
		if snapKey != "" && i < len(items) && items[i].Cache+"\x00"+items[i].Key == snapKey {
			i++
		}
		end := min(len(items), i+s.fed.opts.BatchSize)
		for _, it := range items[i:end] {
			snapKey = it.Cache + "\x00" + it.Key
			if it.Ver.Site == peer.site {
				continue
			}
			op := opPut
			if it.Deleted {
				op = opDelete
			}
			if it.Key == "" {
				op = opClear
			}
			r.Ops = append(r.Ops, jentry{Op: op, Cache: it.Cache, Key: it.Key, Value: it.Value, Ver: it.Ver, Expires: it.Expires})
		}
		round = &snapRound{key: snapKey, last: end == len(items)}
		if round.last {
			r.LastSeq, r.Gen = snapStart, want
			if want == 0 {
				r.Gen = gen // keeps the receiver's round as it is
			}
			r.Snapshot = true
		}
		if len(r.Ops) == 0 && !round.last {
			r.Snapshot = true
		}
	default:
		// A position from before the partition's history began (it was
		// started again empty) is where that history begins.
		from := max(uint64(acked), p.born)
		if len(p.journal) > 0 && p.journal[0].Seq > from+1 {
			s.pmu[part].Unlock()
			return s.gap(peer, part, acked)
		}
		upTo := from
		for i := range p.journal {
			j := &p.journal[i]
			if j.Seq <= from {
				continue
			}
			if j.Seq > p.committed {
				break // not yet held by every owner here: not shipped
			}
			if len(r.Ops) >= s.fed.opts.BatchSize {
				break
			}
			upTo = j.Seq
			if s.fed.shippable(j, peer.site) {
				r.Ops = append(r.Ops, *j)
			}
		}
		if upTo == from && p.committed > upTo {
			// The journal does not reach from the peer's position to what
			// is committed: entries it needs were dropped.
			s.pmu[part].Unlock()
			return s.gap(peer, part, acked)
		}
		r.LastSeq = upTo
	}
	s.pmu[part].Unlock()

	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	b, err := s.fed.opts.Transport.Ship(cctx, peer.site, encodeReq(r))
	if err != nil {
		return err
	}
	a, err := decodeResp(b)
	if err != nil {
		return fmt.Errorf("answer from %s: %w", peer.site, err)
	}
	if a.Status != stOK {
		return &errStatus{status: a.Status, msg: a.Msg}
	}
	peer.mu.Lock()
	prev := peer.acked[part]
	peer.acked[part] = int64(a.Pos.Seq)
	peer.gen[part], peer.nb[part] = a.Pos.Gen, a.Pos.NoBacklog
	if round != nil && peer.snapOn[part] {
		peer.snapKey[part] = round.key
		if round.last {
			peer.snapOn[part] = false
		}
	}
	if n := len(r.Ops); n > 0 && prev >= 0 {
		peer.sent = append(peer.sent, rateSample{time.Now(), n})
		if len(peer.sent) > 4096 {
			peer.sent = peer.sent[len(peer.sent)-2048:]
		}
	}
	peer.mu.Unlock()
	s.updatePurge(part)
	// More to send: go again without waiting for the tick.
	if uint64(a.Pos.Seq) < s.committedOf(part) || len(r.Ops) > 0 {
		wake(peer.kick)
	}
	return nil
}

// gap handles a journal that no longer reaches back to the peer's
// position: the partition needs a replicate-all of its own (at once with
// auto-replicate-all; otherwise the participant goes to error and waits
// for the operator's replicate-all).
func (s *service) gap(peer *fedPeer, part int, acked int64) error {
	peer.mu.Lock()
	peer.lost[part] = true
	peer.mu.Unlock()
	err := fmt.Errorf("partition %d: the journal no longer holds seq %d that %s needs: a replicate-all is required", part, acked+1, peer.site)
	if !s.fed.opts.AutoReplicate {
		go s.control(s.ctx, peer.site, fedOpError, err.Error())
	}
	return err
}

func (s *service) committedOf(part int) uint64 {
	s.pmu[part].Lock()
	defer s.pmu[part].Unlock()
	return s.parts[part].committed
}

// updatePurge moves the partition's purge point to what every started or
// paused participant has acknowledged.
func (s *service) updatePurge(part int) {
	tb, _ := s.currentTable()
	upTo := uint64(1<<64 - 1)
	for site, peer := range s.fed.peers {
		ctl, _ := tb.control(site)
		peer.mu.Lock()
		a, lost := peer.acked[part], peer.lost[part]
		peer.mu.Unlock()
		if ctl.State == FedStopped || ctl.State == FedError || lost {
			continue
		}
		if a < 0 {
			upTo = 0
			continue
		}
		upTo = min(upTo, uint64(a))
	}
	s.pmu[part].Lock()
	p := s.parts[part]
	// It may also move back (a participant started again): what is
	// purged is gone, but what comes next is kept for it.
	if upTo != p.purgeTo {
		p.purgeTo = upTo
		p.purge(s.keep(), p.purgeTo)
	}
	s.pmu[part].Unlock()
}

// checkLimit applies policy error: past the journal limit, every
// participant still owed part of this member's journal is put in error,
// its backlog dropped, and (with auto replicate-all) a replicate-all
// scheduled.
func (s *service) checkLimit(ctx context.Context) {
	if s.fed.opts.Policy != PolicyError || s.journalBytes() < s.fed.opts.Limit {
		return
	}
	tb, _ := s.currentTable()
	for site, peer := range s.fed.peers {
		ctl, _ := tb.control(site)
		if ctl.State == FedStopped || ctl.State == FedError {
			continue
		}
		behind := false
		for part := range s.parts {
			s.pmu[part].Lock()
			last, purged := s.parts[part].lastSeq, s.parts[part].purgeTo
			s.pmu[part].Unlock()
			peer.mu.Lock()
			a := peer.acked[part]
			if (a >= 0 && uint64(a) < last) || (a < 0 && last > purged) {
				behind = true
			}
			peer.mu.Unlock()
		}
		if !behind {
			continue
		}
		for part := range s.parts {
			peer.mu.Lock()
			if !peer.snapOn[part] {
				peer.lost[part] = true
			}
			peer.mu.Unlock()
		}
		reason := fmt.Sprintf("journal limit of %d bytes reached on %s at %s; backlog dropped",
			s.fed.opts.Limit, s.self, time.Now().UTC().Format(time.RFC3339))
		s.log.Error("federation: participant put in error: its backlog is dropped", "participant", site, "reason", reason,
			"auto_replicate_all", s.fed.opts.AutoReplicate)
		peer.fail(errors.New(reason))
		go func() {
			if err := s.control(ctx, site, fedOpError, reason); err != nil {
				s.log.Warn("federation: could not record the error state", "participant", site, "err", err)
			}
		}()
	}
	for part := range s.parts {
		s.updatePurge(part)
	}
}

// control carries an operation to the senior, which records it in the
// table and pushes it to every member.
func (s *service) control(ctx context.Context, site, op, reason string) error {
	_, err := s.controlGen(ctx, site, op, reason)
	return err
}

// controlGen is control, returning the participant's replicate-all round
// after the operation.
func (s *service) controlGen(ctx context.Context, site, op, reason string) (uint64, error) {
	if _, ok := s.fed.to[site]; !ok {
		if !slices.ContainsFunc(s.fed.opts.Participants, func(p FedParticipant) bool { return p.Site == site }) {
			return 0, fmt.Errorf("%w: %q", ErrUnknownParticipant, site)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	for {
		sen := s.mem.Senior()
		var err error
		var gen uint64
		if sen == s.self {
			gen, err = s.applyControl(ctx, site, op, reason)
		} else if sen != "" {
			var a *resp
			a, err = s.call(ctx, sen, &req{Type: reqFedCtl, Site: site, Key: op, Prefix: reason})
			if err == nil {
				gen = a.Pos.Gen
			}
		} else {
			err = errNoTable
		}
		if err == nil {
			return gen, nil
		}
		var es *errStatus
		if errors.As(err, &es) && es.status == stError {
			return 0, errors.New(es.msg)
		}
		t := time.NewTimer(50 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return 0, fmt.Errorf("%w: %v", ErrUnavailable, err)
		case <-t.C:
		}
	}
}

// applyControl, on the senior, makes the operation part of a new table.
// It returns the participant's replicate-all round afterwards.
func (s *service) applyControl(ctx context.Context, site, op, reason string) (uint64, error) {
	s.ctlMu.Lock()
	defer s.ctlMu.Unlock()
	cur, _ := s.currentTable()
	if cur == nil {
		return 0, errNoTable
	}
	next := *cur
	next.Epoch = Epoch{Ver: cur.Epoch.Ver + 1, Author: s.self}
	next.Fed = slices.Clone(cur.Fed)
	i := slices.IndexFunc(next.Fed, func(f FedControl) bool { return f.Site == site })
	if i < 0 {
		return 0, &errStatus{status: stError, msg: fmt.Sprintf("%s: %q", ErrUnknownParticipant, site)}
	}
	c := &next.Fed[i]
	switch op {
	case FedOpStart:
		switch {
		case c.State == FedError && s.fed.opts.AutoReplicate:
			c.Gen++ // the backlog was dropped: replicate all
		case c.State == FedStopped:
			c.NoBacklog++ // what changed while stopped is not sent
		}
		c.State, c.Reason = FedStarted, ""
	case FedOpResume:
		if c.State != FedPaused {
			return 0, &errStatus{status: stError, msg: fmt.Sprintf("participant %s is %s, not paused", site, c.State)}
		}
		c.State = FedStarted
	case FedOpStop:
		c.State = FedStopped
	case FedOpPause:
		c.State = FedPaused
	case FedOpReplicateAll:
		c.Gen++
		c.State, c.Reason = FedStarted, ""
	case FedOpNoBacklog:
		c.NoBacklog++
		c.State, c.Reason = FedStarted, ""
	case fedOpError:
		if c.State == FedError {
			return c.Gen, nil
		}
		c.State, c.Reason = FedError, reason
		if s.fed.opts.AutoReplicate {
			// The partitions whose backlog was dropped replicate all of
			// their data at once; status keeps the reason.
			c.State = FedStarted
			c.Reason = reason + "; those partitions replicate all"
		}
	default:
		return 0, &errStatus{status: stError, msg: fmt.Sprintf("unknown federation operation %q", op)}
	}
	s.applyTable(&next, true)
	s.log.Info("federation: participant state changed", "participant", site, "operation", op, "state", c.State)
	s.pushTable(ctx, &next)
	return c.Gen, nil
}

// pushTable sends t to every other live member and waits (bounded).
func (s *service) pushTable(ctx context.Context, t *Table) {
	var wg sync.WaitGroup
	for _, m := range s.mem.Members() {
		if m == s.self {
			continue
		}
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			s.call(cctx, m, &req{Type: reqPushTable, Table: t})
		})
	}
	wg.Wait()
}

// fedApply commits a batch from site at the partition's primary: the
// changes after our position in site's journal, then the mark.
func (s *service) fedApply(ctx context.Context, r *req) (fedPos, error) {
	ops := make([]jentry, 0, len(r.Ops)+1)
	for _, j := range r.Ops {
		if j.Op == opFedMark || j.Ver.IsZero() {
			return fedPos{}, &errStatus{status: stError, msg: "federation batch with a mark or an unversioned change"}
		}
		if err := checkOp(&j); err != nil {
			return fedPos{}, err
		}
		// Replicate-all items carry no seq: they are not in sequence.
		ops = append(ops, jentry{Op: j.Op, Cache: j.Cache, Key: j.Key, Value: j.Value, Ver: j.Ver, Expires: j.Expires,
			FedFrom: r.Site, FedSeq: j.Seq})
	}
	ops = append(ops, jentry{Op: opFedMark, FedFrom: r.Site, FedSeq: r.LastSeq, Gen: r.Gen, NoBacklog: r.NoBacklog})
	var pos fedPos
	err := s.retry(ctx, r.Part, func(ctx context.Context, primary string) error {
		if primary == s.self {
			if _, err := s.submit(ctx, r.Part, ops); err != nil {
				return err
			}
			pos = s.position(r.Part, r.Site)
			return nil
		}
		q := *r
		q.Type, q.Ops = reqFedApply, ops
		a, err := s.call(ctx, primary, &q)
		if err != nil {
			return err
		}
		pos = a.Pos
		return nil
	})
	return pos, err
}

// primaryPosition is position, answered only by the primary.
func (s *service) primaryPosition(part int, site string) (fedPos, error) {
	s.pmu[part].Lock()
	p := s.parts[part]
	ok := p.holds && len(p.owners) > 0 && p.owners[0] == s.self
	s.pmu[part].Unlock()
	if !ok {
		return fedPos{}, errNotPrimary
	}
	return s.position(part, site), nil
}

// position is the partition's position in site's journal.
func (s *service) position(part int, site string) fedPos {
	s.pmu[part].Lock()
	defer s.pmu[part].Unlock()
	if f := s.parts[part].fed[site]; f != nil {
		return *f
	}
	return fedPos{Site: site}
}

// handleFedShip answers a batch from another site.
func (s *service) handleFedShip(ctx context.Context, r *req) *resp {
	if s.fed == nil || !s.fed.from[r.Site] {
		return &resp{Status: stRefused, Msg: fmt.Sprintf("site %s does not take %s changes from %s in its topology", s.site, s.name, r.Site)}
	}
	if r.NParts != s.nparts {
		return &resp{Status: stError, Msg: fmt.Sprintf("partition counts differ: %s has %d, %s has %d (store.partitions must agree)", r.Site, r.NParts, s.site, s.nparts)}
	}
	if r.LastSeq == 0 && len(r.Ops) == 0 && r.Gen == 0 && r.NoBacklog == 0 && !r.Snapshot {
		// A position probe: answer from the primary.
		var pos fedPos
		err := s.retry(ctx, r.Part, func(ctx context.Context, primary string) error {
			if primary == s.self {
				var err error
				pos, err = s.primaryPosition(r.Part, r.Site)
				return err
			}
			a, err := s.call(ctx, primary, &req{Type: reqFedApply, Part: r.Part, Site: r.Site, Key: "probe"})
			if err != nil {
				return err
			}
			pos = a.Pos
			return nil
		})
		if err != nil {
			return errResp(err)
		}
		return &resp{Pos: pos}
	}
	pos, err := s.fedApply(ctx, r)
	if err != nil {
		return errResp(err)
	}
	return &resp{Pos: pos}
}

// FedStatus is one participant's federation status at this member (for
// the partitions it is primary of), or summed over the site.
type FedStatus struct {
	Scheme       string    `json:"scheme"`
	Participant  string    `json:"participant"`
	State        string    `json:"state"`
	Reason       string    `json:"reason,omitempty"`
	Partitions   int       `json:"partitions"`         // partitions counted
	Unknown      int       `json:"partitions_unknown"` // whose receiver position is not known yet
	Pending      int64     `json:"pending_entries"`
	PendingBytes int64     `json:"pending_bytes"`
	LagSeconds   float64   `json:"lag_seconds"` // age of the oldest pending change
	SendRate     float64   `json:"send_rate"`   // changes acknowledged per second, last 10 s
	LastError    string    `json:"last_error,omitempty"`
	LastErrorAt  time.Time `json:"last_error_at,omitzero"`
	ReplicateAll *Progress `json:"replicate_all,omitempty"`
	JournalBytes int64     `json:"journal_bytes"` // this member's (summed: the site's)
	JournalLimit int64     `json:"journal_limit"`
	Applied      uint64    `json:"applied_from_participant"` // changes from it applied here, each once
	Duplicates   uint64    `json:"duplicates_from_participant"`
	Superseded   uint64    `json:"superseded_from_participant"` // lost to a newer version here (last writer wins)
	Produced     uint64    `json:"changes_made_here"`           // changes made at this site, counted once each (what participants must apply)
}

// Progress of a replicate-all.
type Progress struct {
	Gen        uint64  `json:"round"`
	Done       int     `json:"partitions_done"`
	Total      int     `json:"partitions"`
	Percent    float64 `json:"percent"`
	ETASeconds float64 `json:"eta_seconds"` // from the pace so far; 0 when done or not yet known
}

// fedStatus computes this member's figures.
func (s *service) fedStatus() []FedStatus {
	if s.fed == nil {
		return nil
	}
	tb, _ := s.currentTable()
	now := time.Now()
	var out []FedStatus
	sites := slices.Sorted(func(yield func(string) bool) {
		for site := range s.fed.peers {
			if !yield(site) {
				return
			}
		}
	})
	for _, site := range sites {
		peer := s.fed.peers[site]
		ctl, _ := tb.control(site)
		st := FedStatus{Scheme: s.name, Participant: site, State: ctl.State, Reason: ctl.Reason,
			JournalBytes: s.journalBytes(), JournalLimit: s.fed.opts.Limit}
		var oldest int64
		done := 0
		for part := range s.parts {
			s.pmu[part].Lock()
			p := s.parts[part]
			if p.holds && len(p.owners) > 0 && p.owners[0] == s.self {
				st.Produced += p.produced
			}
			if f := p.fed[site]; f != nil && p.holds {
				// Applied counts live on every copy; count the primary's.
				if len(p.owners) > 0 && p.owners[0] == s.self {
					st.Applied += f.Applied
					st.Duplicates += f.Dups
					st.Superseded += f.Lost
				}
			}
			if !p.holds || len(p.owners) == 0 || p.owners[0] != s.self {
				s.pmu[part].Unlock()
				continue
			}
			st.Partitions++
			peer.mu.Lock()
			acked, gen := peer.acked[part], peer.gen[part]
			peer.mu.Unlock()
			if gen >= ctl.Gen {
				done++
			}
			if acked < 0 {
				st.Unknown++
			}
			for i := range p.journal {
				j := &p.journal[i]
				if int64(j.Seq) > acked && s.fed.shippable(j, site) {
					st.Pending++
					st.PendingBytes += entrySize(j)
					if oldest == 0 || j.Ver.Wall < oldest {
						oldest = j.Ver.Wall
					}
				}
			}
			s.pmu[part].Unlock()
		}
		if oldest != 0 {
			st.LagSeconds = max(0, now.Sub(time.Unix(0, oldest)).Seconds())
		}
		peer.mu.Lock()
		n := 0
		for _, r := range peer.sent {
			if now.Sub(r.at) <= 10*time.Second {
				n += r.n
			}
		}
		st.SendRate = float64(n) / 10
		st.LastError, st.LastErrorAt = peer.lastErr, peer.errAt
		peer.mu.Unlock()
		if ctl.Gen > 0 {
			st.ReplicateAll = &Progress{Gen: ctl.Gen, Done: done, Total: st.Partitions}
			peer.mu.Lock()
			if peer.roundGen == ctl.Gen && done > 0 && done < st.Partitions {
				// This member's partitions at the pace of those done.
				el := now.Sub(peer.roundAt).Seconds()
				st.ReplicateAll.ETASeconds = el / float64(done) * float64(st.Partitions-done)
			}
			peer.mu.Unlock()
		}
		out = append(out, st)
	}
	return out
}

// mergeFedStatus sums members' figures per participant.
func mergeFedStatus(all [][]FedStatus) []FedStatus {
	idx := map[string]int{}
	var out []FedStatus
	for _, list := range all {
		for _, st := range list {
			k := st.Scheme + "\x00" + st.Participant
			i, ok := idx[k]
			if !ok {
				idx[k] = len(out)
				cp := st
				if st.ReplicateAll != nil {
					pr := *st.ReplicateAll
					cp.ReplicateAll = &pr
				}
				out = append(out, cp)
				continue
			}
			o := &out[i]
			o.Partitions += st.Partitions
			o.Unknown += st.Unknown
			o.Pending += st.Pending
			o.PendingBytes += st.PendingBytes
			o.LagSeconds = max(o.LagSeconds, st.LagSeconds)
			o.SendRate += st.SendRate
			o.JournalBytes += st.JournalBytes
			o.Applied += st.Applied
			o.Duplicates += st.Duplicates
			o.Produced += st.Produced
			o.Superseded += st.Superseded
			if st.LastErrorAt.After(o.LastErrorAt) {
				o.LastError, o.LastErrorAt = st.LastError, st.LastErrorAt
			}
			if st.ReplicateAll != nil {
				if o.ReplicateAll == nil {
					o.ReplicateAll = &Progress{Gen: st.ReplicateAll.Gen}
				}
				o.ReplicateAll.Done += st.ReplicateAll.Done
				o.ReplicateAll.Total += st.ReplicateAll.Total
				o.ReplicateAll.ETASeconds = max(o.ReplicateAll.ETASeconds, st.ReplicateAll.ETASeconds)
			}
		}
	}
	for i := range out {
		if pr := out[i].ReplicateAll; pr != nil && pr.Total > 0 {
			pr.Percent = 100 * float64(pr.Done) / float64(pr.Total)
			if pr.Done == pr.Total {
				pr.ETASeconds = 0
			}
		}
	}
	return out
}

// digest of a partition: live entries counted, and an order-independent
// hash of (cache, key, version, value).
func (p *partition) digest(now int64) (int, uint64) {
	n, sum := 0, uint64(0)
	for cache, c := range p.data {
		for k, v := range c {
			if !v.live(now) {
				continue
			}
			h := fnv.New64a()
			h.Write([]byte(cache))
			h.Write([]byte{0})
			h.Write([]byte(k))
			h.Write([]byte{0})
			h.Write([]byte(v.ver.String()))
			h.Write([]byte{0})
			h.Write(v.data)
			sum += mix(h.Sum64())
			n++
		}
	}
	return n, sum
}

// partKeys lists a partition's live entries as "cache\x00key\x00version\x00valuehash".
func (p *partition) partKeys(now int64) []string {
	var out []string
	for cache, c := range p.data {
		for k, v := range c {
			if v.live(now) {
				h := fnv.New64a()
				h.Write(v.data)
				out = append(out, cache+"\x00"+k+"\x00"+v.ver.String()+"\x00"+strconv.FormatUint(h.Sum64(), 16))
			}
		}
	}
	slices.Sort(out)
	return out
}

// Digest is one partition's digest.
type Digest struct {
	Partition int    `json:"partition"`
	Count     int    `json:"count"`
	Hash      string `json:"hash"`
}

// KeyVersion is one live entry of a partition, as verify compares them.
type KeyVersion struct {
	Cache     string `json:"cache"`
	Key       string `json:"key"`
	Version   string `json:"version"`
	ValueHash string `json:"value_hash"`
}

func parseKeyVersions(keys []string) []KeyVersion {
	var out []KeyVersion
	for _, k := range keys {
		f := strings.SplitN(k, "\x00", 4)
		if len(f) == 4 {
			out = append(out, KeyVersion{Cache: f[0], Key: f[1], Version: f[2], ValueHash: f[3]})
		}
	}
	return out
}

func encodeJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
