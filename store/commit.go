package store

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"
)

// Limits of one replication or snapshot message.
const (
	maxBatchOps   = 512
	maxBatchBytes = 4 << 20
)

// submit queues ops on partition part, whose primary this member must be,
// and waits for their commit: numbered, held by every backup, applied
// here. An empty ops list only syncs the backups.
func (s *service) submit(ctx context.Context, part int, ops []jentry) ([]bool, error) {
	if len(ops) > 0 && ops[0].FedFrom == "" {
		if err := s.admit(ctx); err != nil {
			return nil, err
		}
	}
	w := &pending{ops: ops, done: make(chan struct{})}
	s.pmu[part].Lock()
	p := s.parts[part]
	if p.epoch.Ver == 0 {
		s.pmu[part].Unlock()
		return nil, &errStatus{status: stNoTable}
	}
	if len(p.owners) == 0 || p.owners[0] != s.self || !p.holds {
		s.pmu[part].Unlock()
		return nil, errNotPrimary
	}
	p.queue = append(p.queue, w)
	if !p.committing {
		p.committing = true
		if !s.spawn(func() { s.commitLoop(part) }) {
			p.committing = false
			p.queue = p.queue[:len(p.queue)-1]
			s.pmu[part].Unlock()
			return nil, ErrStopped
		}
	}
	s.pmu[part].Unlock()
	select {
	case <-w.done:
		return w.existed, w.err
	case <-ctx.Done():
		// The write may still commit; the caller learns only that it timed out.
		return nil, ctx.Err()
	}
}

// commitLoop is the partition's committer: it takes batches from the queue
// until it is empty. One runs per partition at a time (p.committing).
func (s *service) commitLoop(part int) {
	for {
		s.pmu[part].Lock()
		p := s.parts[part]
		if len(p.queue) == 0 || s.ctx.Err() != nil {
			p.queue = failQueue(p.queue, ErrStopped)
			p.committing = false
			s.pmu[part].Unlock()
			return
		}
		var batch []*pending
		var entries []jentry
		size := 0
		now := time.Now().UnixNano()
		// Existence is judged against the data plus the batch's own earlier
		// changes.
		overlay := map[[2]string]bool{}
		isLive := func(cache, key string) bool {
			if v, ok := overlay[[2]string{cache, key}]; ok {
				return v
			}
			return p.existed(cache, key, now)
		}
		// localOf is the key's current state, the batch's own earlier
		// changes included; a clear newer than the entry counts as a delete.
		overCh := map[[2]string]Change{}
		localOf := func(cache, key string) (Change, bool) {
			if c, ok := overCh[[2]string{cache, key}]; ok {
				return c, true
			}
			cv := p.clearVer(cache)
			if v := p.get(cache, key); v != nil && v.ver.Compare(cv) > 0 {
				return Change{Value: v.data, Version: v.ver, Deleted: v.deleted}, true
			}
			if !cv.IsZero() {
				return Change{Version: cv, Deleted: true}, true
			}
			return Change{}, false
		}
		fedSeq := map[string]uint64{} // positions in senders' journals, batch included
		fedAt := func(site string) uint64 {
			if v, ok := fedSeq[site]; ok {
				return v
			}
			if f := p.fed[site]; f != nil {
				return f.Seq
			}
			return 0
		}
		seq := p.lastSeq
		for len(p.queue) > 0 && len(entries) < maxBatchOps && size < maxBatchBytes {
			w := p.queue[0]
			p.queue = p.queue[1:]
			batch = append(batch, w)
			w.existed = make([]bool, len(w.ops))
			for i := range w.ops {
				j := w.ops[i]
				if j.FedFrom != "" {
					// A change from another site: skipped when already
					// applied (a resend), marked duplicate or superseded when its version is
					// here already; it keeps its version.
					if j.Op != opFedMark && j.FedSeq != 0 && j.FedSeq <= fedAt(j.FedFrom) {
						continue
					}
					if j.Op == opPut || j.Op == opDelete {
						in := Change{Value: j.Value, Version: j.Ver, Deleted: j.Op == opDelete}
						if local, ok := localOf(j.Cache, j.Key); ok {
							switch {
							case local.Version == j.Ver:
								j.Fate = fateDuplicate
							case !s.resolver.Wins(j.Cache, j.Key, local, in):
								j.Fate = fateSuperseded
							}
						}
					}
					if j.FedSeq > fedAt(j.FedFrom) {
						fedSeq[j.FedFrom] = j.FedSeq
					}
					s.clock.Observe(j.Ver)
				}
				seq++
				j.Seq, j.Epoch = seq, p.epoch
				if j.Ver.IsZero() {
					j.Ver = s.clock.Next()
				}
				w.existed[i] = isLive(j.Cache, j.Key)
				switch {
				case j.Fate != fateApplied || j.Op == opFedMark:
				case j.Op == opPut:
					overlay[[2]string{j.Cache, j.Key}] = true
					overCh[[2]string{j.Cache, j.Key}] = Change{Value: j.Value, Version: j.Ver}
				case j.Op == opDelete:
					overlay[[2]string{j.Cache, j.Key}] = false
					overCh[[2]string{j.Cache, j.Key}] = Change{Version: j.Ver, Deleted: true}
				case j.Op == opClear:
					for k := range overlay {
						if k[0] == j.Cache {
							overlay[k] = false
							overCh[k] = Change{Version: j.Ver, Deleted: true}
						}
					}
				}
				entries = append(entries, j)
				size += len(j.Value) + len(j.Key) + 64
			}
		}
		s.pmu[part].Unlock()

		err := s.replicate(part, entries)

		s.pmu[part].Lock()
		p = s.parts[part]
		// Applied on success, and also when the replication failed while
		// this member is still primary: the numbers are used and may sit on
		// some backup, so they are never reused for other changes. The
		// writers of a failed batch get an error: their change is in doubt.
		if err == nil || (p.holds && len(p.owners) > 0 && p.owners[0] == s.self && p.lastSeq+1 == entries0(entries, p.lastSeq+1)) {
			for i := range entries {
				p.apply(&entries[i])
			}
			if err == nil {
				p.committed = p.lastSeq
			} else {
				p.synced = map[string]bool{}
			}
			p.purge(s.keep(), p.purgeTo)
		}
		s.pmu[part].Unlock()
		if err == nil && s.fed != nil && slices.ContainsFunc(entries, func(j jentry) bool { return j.Op != opFedMark }) {
			// Ship it now rather than at the next send interval: the loop
			// sends one batch per partition at a time, so under load what
			// commits meanwhile still leaves together.
			for _, peer := range s.fed.peers {
				wake(peer.kick)
			}
		}
		for _, w := range batch {
			w.err = err
			close(w.done)
		}
	}
}

// entries0 is the seq of the first entry, or def for an empty batch.
func entries0(e []jentry, def uint64) uint64 {
	if len(e) == 0 {
		return def
	}
	return e[0].Seq
}

// replicate brings every backup of the partition up to date (syncing the
// ones not known synced under the current epoch) and sends them entries.
// It retries within the request timeout while this member stays primary.
func (s *service) replicate(part int, entries []jentry) error {
	deadline := time.Now().Add(s.timeout)
	backoff := 5 * time.Millisecond
	for {
		s.pmu[part].Lock()
		p := s.parts[part]
		if !p.holds || len(p.owners) == 0 || p.owners[0] != s.self {
			s.pmu[part].Unlock()
			return errNotPrimary
		}
		epoch := p.epoch
		backups := slices.Clone(p.owners[1:])
		s.pmu[part].Unlock()

		errs := make([]error, len(backups))
		var wg sync.WaitGroup
		for i, b := range backups {
			wg.Go(func() {
				ctx, cancel := context.WithDeadline(s.ctx, deadline)
				defer cancel()
				errs[i] = s.replicateTo(ctx, part, epoch, b, entries)
			})
		}
		wg.Wait()
		err := errors.Join(errs...)
		if err == nil {
			s.pmu[part].Lock()
			same := s.parts[part].epoch == epoch
			s.pmu[part].Unlock()
			if same {
				return nil
			}
			continue // the owners changed meanwhile: send to the new ones
		}
		if s.ctx.Err() != nil {
			return ErrStopped
		}
		if time.Now().Add(backoff).After(deadline) {
			return err
		}
		var es *errStatus
		if errors.As(err, &es) && es.status == stStale {
			s.askSenior(s.ctx)
		}
		time.Sleep(backoff)
		backoff = min(2*backoff, 200*time.Millisecond)
	}
}

// replicateTo syncs backup b under epoch if needed, then sends it entries.
func (s *service) replicateTo(ctx context.Context, part int, epoch Epoch, b string, entries []jentry) error {
	s.pmu[part].Lock()
	synced := s.parts[part].synced[b]
	s.pmu[part].Unlock()
	if !synced {
		if err := s.syncBackup(ctx, part, epoch, b); err != nil {
			return err
		}
	}
	for len(entries) > 0 {
		n := min(len(entries), maxBatchOps)
		s.pmu[part].Lock()
		purge := s.parts[part].purgeTo
		s.pmu[part].Unlock()
		_, err := s.call(ctx, b, &req{Type: reqReplicate, Part: part, Epoch: epoch, Ops: entries[:n], Purge: purge})
		var es *errStatus
		if errors.As(err, &es) && es.status == stNeedSync {
			s.pmu[part].Lock()
			delete(s.parts[part].synced, b)
			s.pmu[part].Unlock()
		}
		if err != nil {
			return err
		}
		entries = entries[n:]
	}
	return nil
}

// syncBackup makes backup b hold the partition as this primary does (up to
// its last applied change): a delta of journal entries when b's copy is a
// prefix of ours, else a snapshot. It runs inside the committer (or with
// the partition otherwise quiet), so the copy does not change meanwhile.
func (s *service) syncBackup(ctx context.Context, part int, epoch Epoch, b string) error {
	a, err := s.call(ctx, b, &req{Type: reqProbe, Part: part, Epoch: epoch})
	if err != nil {
		return err
	}
	s.pmu[part].Lock()
	p := s.parts[part]
	if p.epoch != epoch {
		s.pmu[part].Unlock()
		return &errStatus{status: stStale, msg: "epoch changed during sync"}
	}
	var delta []jentry
	useDelta := false
	if a.Holds && a.LastSeq <= p.lastSeq {
		if ep, ok := p.epochAt(a.LastSeq); ok && ep == a.LastEp {
			delta, useDelta = p.since(a.LastSeq)
			delta = slices.Clone(delta)
		}
	}
	var items []item
	var journal []jentry
	var positions []fedPos
	lastSeq, lastEp, purge, born := p.lastSeq, p.lastEpoch, p.purgeTo, p.born
	if !useDelta {
		items = p.items()
		journal = slices.Clone(p.journal)
		positions = p.positions()
	}
	s.pmu[part].Unlock()

	if useDelta {
		for {
			n := min(len(delta), maxBatchOps)
			_, err := s.call(ctx, b, &req{Type: reqInstall, Part: part, Epoch: epoch, Ops: delta[:n],
				Last: n == len(delta), LastSeq: lastSeq, LastEp: lastEp, Purge: purge, Born: born})
			if err != nil {
				return err
			}
			delta = delta[n:]
			if len(delta) == 0 {
				break
			}
		}
	} else {
		first := true
		for {
			// A chunk of items, then the journal with the last chunk.
			n, size := 0, 0
			for n < len(items) && size < maxBatchBytes {
				size += len(items[n].Value) + len(items[n].Key) + 48
				n++
			}
			last := n == len(items)
			r := &req{Type: reqInstall, Part: part, Epoch: epoch, Snapshot: true, First: first, Last: last,
				Items: items[:n], LastSeq: lastSeq, LastEp: lastEp, Purge: purge, Born: born}
			if last {
				r.Ops, r.Positions = journal, positions
			}
			if _, err := s.call(ctx, b, r); err != nil {
				return err
			}
			items, first = items[n:], false
			if last {
				break
			}
		}
		s.log.Debug("store: backup synced by snapshot", "partition", part, "backup", b, "epoch", epoch, "last_seq", lastSeq)
	}
	s.pmu[part].Lock()
	if p := s.parts[part]; p.epoch == epoch && p.synced != nil {
		p.synced[b] = true
	}
	s.pmu[part].Unlock()
	return nil
}

// syncLoop keeps the backups of the partitions this member is primary of
// synced even when nobody writes, and tells the senior when a round made
// progress, so moves complete.
func (s *service) syncLoop(ctx context.Context) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.syncCh:
		}
		var todo []int
		for i := range s.parts {
			s.pmu[i].Lock()
			p := s.parts[i]
			if p.holds && len(p.owners) > 0 && p.owners[0] == s.self && !p.committing && len(p.queue) == 0 {
				for _, b := range p.owners[1:] {
					if !p.synced[b] {
						todo = append(todo, i)
						break
					}
				}
			}
			s.pmu[i].Unlock()
		}
		if len(todo) == 0 {
			continue
		}
		var wg sync.WaitGroup
		sem := make(chan struct{}, 16)
		progress := false
		var mu sync.Mutex
		for _, i := range todo {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				cctx, cancel := context.WithTimeout(ctx, s.timeout)
				defer cancel()
				if _, err := s.submit(cctx, i, nil); err == nil {
					mu.Lock()
					progress = true
					mu.Unlock()
				} else {
					s.log.Debug("store: backup sync failed", "partition", i, "err", err)
				}
			})
		}
		wg.Wait()
		if progress {
			s.askSenior(ctx)
		}
	}
}
