package store

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"time"
)

// handle answers a request from another member.
func (s *service) handle(ctx context.Context, r *req) *resp {
	if r.Part < 0 || r.Part >= s.nparts {
		return &resp{Status: stError, Msg: "partition out of range"}
	}
	switch r.Type {
	case reqState:
		return &resp{State: s.localState()}
	case reqTable:
		t, _ := s.currentTable()
		if t == nil {
			return &resp{Status: stNoTable}
		}
		return &resp{Table: t}
	case reqPushTable:
		s.applyTable(r.Table, r.From == s.mem.Senior())
		return &resp{}
	case reqKick:
		wake(s.kick)
		return &resp{}
	case reqWrite:
		for i := range r.Ops {
			if err := checkOp(&r.Ops[i]); err != nil {
				return errResp(err)
			}
		}
		existed, err := s.submit(ctx, r.Part, r.Ops)
		if err != nil {
			return s.errAnswer(err)
		}
		return &resp{Results: existed}
	case reqRead:
		it, found, err := s.readLocal(r.Part, r.Cache, r.Key)
		if err != nil {
			return s.errAnswer(err)
		}
		return &resp{Found: found, Item: it}
	case reqProbe:
		return s.probe(r)
	case reqInstall:
		return s.install(r)
	case reqReplicate:
		return s.replicated(r)
	case reqList, reqSizes:
		return s.listLocal(r)
	case reqJournal:
		return s.journalLocal(r)
	case reqFedApply:
		if s.fed == nil {
			return &resp{Status: stRefused, Msg: "scheme " + s.name + " is not federated here"}
		}
		if r.Key == "probe" {
			pos, err := s.primaryPosition(r.Part, r.Site)
			if err != nil {
				return s.errAnswer(err)
			}
			return &resp{Pos: pos}
		}
		if _, err := s.submit(ctx, r.Part, r.Ops); err != nil {
			return s.errAnswer(err)
		}
		return &resp{Pos: s.position(r.Part, r.Site)}
	case reqFedCtl:
		if s.fed == nil {
			return &resp{Status: stError, Msg: "scheme " + s.name + " is not federated"}
		}
		if s.mem.Senior() != s.self {
			return &resp{Status: stNoTable, Msg: "not the senior"}
		}
		gen, err := s.applyControl(ctx, r.Site, r.Key, r.Prefix)
		if err != nil {
			return errResp(err)
		}
		return &resp{Pos: fedPos{Gen: gen}}
	case reqFedStatus:
		return &resp{Msg: encodeJSON(s.fedStatus())}
	case reqDigest:
		return s.digestLocal(r)
	case reqPartKeys:
		s.pmu[r.Part].Lock()
		defer s.pmu[r.Part].Unlock()
		p := s.parts[r.Part]
		if !p.holds || len(p.owners) == 0 || p.owners[0] != s.self {
			return &resp{Status: stNotPrimary}
		}
		return &resp{Keys: p.partKeys(time.Now().UnixNano())}
	}
	return &resp{Status: stError, Msg: "unknown request"}
}

// errAnswer turns a local error into an answer, attaching our table when
// the caller's view looks stale.
func (s *service) errAnswer(err error) *resp {
	a := errResp(err)
	if a.Status == stNotPrimary || a.Status == stStale {
		a.Table, _ = s.currentTable()
	}
	return a
}

func errResp(err error) *resp {
	if es, ok := err.(*errStatus); ok {
		return &resp{Status: es.status, Msg: es.msg}
	}
	switch {
	case errors.Is(err, ErrTooLarge):
		return &resp{Status: stTooLarge, Msg: err.Error()}
	case errors.Is(err, ErrBadName):
		return &resp{Status: stBadName, Msg: err.Error()}
	}
	return &resp{Status: stError, Msg: err.Error()}
}

// digestLocal answers digests of the partitions asked that this member is
// primary of ("part:count:hash" in Keys) and names the others.
func (s *service) digestLocal(r *req) *resp {
	a := &resp{}
	now := time.Now().UnixNano()
	for _, part := range r.Parts {
		if part < 0 || part >= s.nparts {
			continue
		}
		s.pmu[part].Lock()
		p := s.parts[part]
		if !p.holds || len(p.owners) == 0 || p.owners[0] != s.self {
			a.Missing = append(a.Missing, part)
		} else {
			n, h := p.digest(now)
			a.Keys = append(a.Keys, strconv.Itoa(part)+":"+strconv.Itoa(n)+":"+strconv.FormatUint(h, 16))
		}
		s.pmu[part].Unlock()
	}
	return a
}

// readLocal reads key at this member, which must be the primary.
func (s *service) readLocal(part int, cache, key string) (item, bool, error) {
	s.pmu[part].Lock()
	defer s.pmu[part].Unlock()
	p := s.parts[part]
	if p.epoch.Ver == 0 {
		return item{}, false, &errStatus{status: stNoTable}
	}
	if !p.holds || len(p.owners) == 0 || p.owners[0] != s.self {
		return item{}, false, errNotPrimary
	}
	v := p.get(cache, key)
	if v == nil || !v.live(time.Now().UnixNano()) {
		return item{}, false, nil
	}
	return item{Cache: cache, Key: key, Value: v.data, Ver: v.ver, Expires: v.expires}, true, nil
}

// probe tells a primary what this member holds of a partition.
func (s *service) probe(r *req) *resp {
	s.pmu[r.Part].Lock()
	defer s.pmu[r.Part].Unlock()
	p := s.parts[r.Part]
	if p.epoch != r.Epoch {
		return s.staleLocked(p, r)
	}
	return &resp{Holds: p.holds, LastSeq: p.lastSeq, LastEp: p.lastEpoch}
}

// staleLocked answers a request whose epoch is not ours. When the sender is
// ahead, ask the senior for the table.
func (s *service) staleLocked(p *partition, r *req) *resp {
	if r.Epoch.Compare(p.epoch) > 0 {
		go s.askSenior(context.Background())
	}
	return &resp{Status: stStale, Msg: "partition " + strconv.Itoa(r.Part) + " epoch " + p.epoch.String() + ", sender " + r.Epoch.String()}
}

// observe moves this member's clock past the versions of entries it
// takes from a primary, so that a change it makes as primary later (after
// a failover, or in a partition that starts again empty: its seq base) is
// newer than what it holds, whatever the clocks of the members.
func (s *service) observe(ops []jentry) {
	var newest Version
	for i := range ops {
		if ops[i].Ver.Compare(newest) > 0 {
			newest = ops[i].Ver
		}
	}
	if !newest.IsZero() {
		s.clock.Observe(newest)
	}
}

// install receives a delta or a snapshot chunk from the primary.
func (s *service) install(r *req) *resp {
	s.pmu[r.Part].Lock()
	defer s.pmu[r.Part].Unlock()
	p := s.parts[r.Part]
	if p.epoch != r.Epoch || len(p.owners) == 0 || p.owners[0] != r.From || !slices.Contains(p.owners, s.self) {
		return s.staleLocked(p, r)
	}
	if !r.Snapshot {
		if !p.holds {
			return &resp{Status: stNeedSync, Msg: "delta for a partition not held"}
		}
		for i := range r.Ops {
			j := &r.Ops[i]
			if j.Seq <= p.lastSeq {
				continue
			}
			if j.Seq != p.lastSeq+1 {
				return &resp{Status: stNeedSync, Msg: "gap in delta"}
			}
			p.apply(j)
		}
		s.observe(r.Ops)
		if r.Last {
			if p.lastSeq != r.LastSeq {
				return &resp{Status: stNeedSync, Msg: "delta did not reach the primary's last change"}
			}
			p.syncedEpoch = r.Epoch
			p.purgeTo, p.born = r.Purge, r.Born
			p.purge(s.keep(), p.purgeTo)
		}
		return &resp{}
	}
	if r.First {
		p.staging = newPartition(r.Part, 0)
		p.staging.hold()
		p.stageID = r.Epoch
	}
	if p.staging == nil || p.stageID != r.Epoch {
		return &resp{Status: stNeedSync, Msg: "snapshot chunk without its start"}
	}
	p.staging.install(r.Items)
	var newest Version
	for i := range r.Items {
		if r.Items[i].Ver.Compare(newest) > 0 {
			newest = r.Items[i].Ver
		}
	}
	if !newest.IsZero() {
		s.clock.Observe(newest)
	}
	s.observe(r.Ops)
	if r.Last {
		st := p.staging
		p.staging = nil
		p.holds, p.data = true, st.data
		p.setJournal(slices.Clone(r.Ops))
		p.lastSeq, p.lastEpoch, p.syncedEpoch, p.purgeTo, p.born = r.LastSeq, r.LastEp, r.Epoch, r.Purge, r.Born
		p.fed, p.produced = nil, 0
		for _, f := range r.Positions {
			if f.Site == "" {
				p.produced = f.Applied
				continue
			}
			*p.fedOf(f.Site) = f
		}
	}
	return &resp{}
}

// replicated applies entries the primary committed.
func (s *service) replicated(r *req) *resp {
	s.pmu[r.Part].Lock()
	defer s.pmu[r.Part].Unlock()
	p := s.parts[r.Part]
	if p.epoch != r.Epoch || len(p.owners) == 0 || p.owners[0] != r.From || !slices.Contains(p.owners, s.self) {
		return s.staleLocked(p, r)
	}
	if !p.holds || p.syncedEpoch != r.Epoch {
		return &resp{Status: stNeedSync}
	}
	for i := range r.Ops {
		j := &r.Ops[i]
		if j.Seq <= p.lastSeq {
			if ep, ok := p.epochAt(j.Seq); ok && ep == j.Epoch {
				continue // a resend of what we hold
			}
			p.syncedEpoch = Epoch{}
			return &resp{Status: stNeedSync, Msg: "conflicting history"}
		}
		if j.Seq != p.lastSeq+1 {
			p.syncedEpoch = Epoch{}
			return &resp{Status: stNeedSync, Msg: "gap"}
		}
		p.apply(j)
	}
	s.observe(r.Ops)
	p.purgeTo = r.Purge
	p.purge(s.keep(), p.purgeTo)
	return &resp{}
}

// listLocal answers key listings and sizes for the partitions asked that
// this member is primary of, and names the others.
func (s *service) listLocal(r *req) *resp {
	a := &resp{}
	if r.Type == reqSizes {
		a.Sizes = map[string]int64{}
	}
	now := time.Now().UnixNano()
	limit := r.Limit
	for _, part := range r.Parts {
		if part < 0 || part >= s.nparts {
			continue
		}
		s.pmu[part].Lock()
		p := s.parts[part]
		if !p.holds || len(p.owners) == 0 || p.owners[0] != s.self {
			a.Missing = append(a.Missing, part)
		} else if r.Type == reqSizes {
			p.sizes(a.Sizes, now)
		} else {
			a.Keys = append(a.Keys, p.keys(r.Cache, r.Prefix, r.Cursor, limit, now)...)
		}
		s.pmu[part].Unlock()
	}
	if r.Type == reqList {
		slices.Sort(a.Keys)
		if len(a.Keys) > limit {
			a.Keys = a.Keys[:limit]
		}
	}
	return a
}

// journalLocal returns journal entries of a partition this member holds,
// from seq r.LastSeq on (at most r.Limit).
func (s *service) journalLocal(r *req) *resp {
	s.pmu[r.Part].Lock()
	defer s.pmu[r.Part].Unlock()
	p := s.parts[r.Part]
	if !p.holds {
		return &resp{Status: stNeedSync, Msg: "partition not held here"}
	}
	a := &resp{Holds: true, LastSeq: p.lastSeq, LastEp: p.lastEpoch}
	for _, j := range p.journal {
		if j.Seq >= r.LastSeq && len(a.Entries) < max(r.Limit, 1) {
			a.Entries = append(a.Entries, j)
		}
	}
	return a
}
