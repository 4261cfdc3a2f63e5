package store

import (
	"bytes"
	"slices"
	"strings"
	"sync/atomic"
	"time"
)

// value is one key's current state in a partition.
type value struct {
	data    []byte
	ver     Version
	expires int64 // Unix nanoseconds; 0: never
	deleted bool  // a versioned tombstone
}

func (v *value) live(now int64) bool {
	return !v.deleted && (v.expires == 0 || v.expires > now)
}

// partition is one member's copy of one partition of a service: the data,
// the journal and, on the primary, the commit queue. Its fields are guarded
// by the owning service's partition lock (partition.mu).
type partition struct {
	id int

	// What this member holds.
	holds     bool
	data      map[string]map[string]*value // cache -> key -> value
	journal   []jentry                     // contiguous: journal[i].Seq == journal[0].Seq+i
	lastSeq   uint64
	lastEpoch Epoch
	// born: the seq this copy's history starts after. A partition that no
	// live member held starts again empty, numbering its changes from a
	// new base above any seq its earlier history can have used, so that
	// other sites, which remember positions in the old history, neither
	// skip the new changes as already applied nor count them as a gap.
	born        uint64
	syncedEpoch Epoch         // the last epoch under which this copy was complete
	jbytes      int64         // bytes of the journal entries held
	acct        *atomic.Int64 // the member's total of jbytes (nil: not counted)
	// produced counts the changes made at this site (not received from
	// others) ever journaled in the partition.
	produced uint64
	// committed: on the primary, the last seq every owner holds (only
	// those changes are shipped to other sites).
	committed uint64
	// purgeTo: journal entries up to here may go (every federation
	// participant has them); the primary advances it, backups learn it.
	purgeTo uint64
	// fed: per sending site, how far its journal has been applied here,
	// kept with the partition (and so with its backups).
	fed map[string]*fedPos
	// clears: per cache, the version of its last clear; older changes
	// arriving later (from other sites) are ignored.
	clears map[string]Version

	// Its place in the current table.
	epoch  Epoch
	owners []string
	fresh  bool

	// Primary only: backups synced under epoch, and the commit queue.
	synced     map[string]bool
	queue      []*pending
	committing bool

	// Backup only: a snapshot being received.
	staging *partition
	stageID Epoch
}

// pending is a write waiting in a primary's commit queue. ops with Seq 0;
// an empty ops list asks only that the backups be synced.
type pending struct {
	ops     []jentry
	done    chan struct{}
	err     error
	existed []bool
}

func newPartition(id int, purgeTo uint64) *partition { return &partition{id: id, purgeTo: purgeTo} }

// reset drops everything this member holds of the partition.
func (p *partition) reset() {
	p.holds = false
	p.data = nil
	p.journal = nil
	p.lastSeq = 0
	p.born = 0
	p.lastEpoch = Epoch{}
	p.syncedEpoch = Epoch{}
	p.staging = nil
	p.synced = nil
	p.addBytes(-p.jbytes)
	p.fed = nil
	p.produced = 0
	p.clears = nil
}

// hold starts holding an empty copy.
func (p *partition) hold() {
	p.reset()
	p.holds = true
	p.data = map[string]map[string]*value{}
}

func (p *partition) get(cache, key string) *value {
	return p.data[cache][key]
}

// existed reports whether key holds a live value now.
func (p *partition) existed(cache, key string, now int64) bool {
	v := p.get(cache, key)
	return v != nil && v.live(now)
}

// addBytes changes the journal's byte count and the member's total.
func (p *partition) addBytes(n int64) {
	p.jbytes += n
	if p.acct != nil {
		p.acct.Add(n)
	}
}

// entrySize is what a journal entry counts against the journal limit.
func entrySize(j *jentry) int64 { return int64(len(j.Value) + len(j.Key) + len(j.Cache) + 64) }

// fedOf returns the partition's position in site's journal, creating it.
func (p *partition) fedOf(site string) *fedPos {
	if p.fed == nil {
		p.fed = map[string]*fedPos{}
	}
	f := p.fed[site]
	if f == nil {
		f = &fedPos{Site: site}
		p.fed[site] = f
	}
	return f
}

// positions lists the partition's federation positions (for snapshots).
func (p *partition) positions() []fedPos {
	var out []fedPos
	for _, f := range p.fed {
		out = append(out, *f)
	}
	// This site's own count travels as the entry with no site.
	out = append(out, fedPos{Applied: p.produced})
	slices.SortFunc(out, func(a, b fedPos) int { return strings.Compare(a.Site, b.Site) })
	return out
}

// apply applies one numbered change to the data and appends it to the
// journal. Changes are applied in sequence order; an older version of a key
// never overwrites a newer one (sites exchange changes, last writer wins).
func (p *partition) apply(j *jentry) {
	if j.FedFrom == "" && j.Op != opFedMark {
		p.produced++
	}
	if j.FedFrom != "" {
		f := p.fedOf(j.FedFrom)
		switch {
		case j.Op == opFedMark:
			f.Seq = max(f.Seq, j.FedSeq)
			f.Gen = max(f.Gen, j.Gen)
			f.NoBacklog = max(f.NoBacklog, j.NoBacklog)
		case j.Fate == fateDuplicate:
			f.Dups++
		case j.Fate == fateSuperseded:
			f.Lost++
		default:
			f.Applied++
		}
		if j.FedSeq > f.Seq {
			f.Seq = j.FedSeq
		}
	}
	switch j.Op {
	case opPut, opDelete:
		if j.Fate != fateApplied {
			break
		}
		c := p.data[j.Cache]
		if c == nil {
			c = map[string]*value{}
			p.data[j.Cache] = c
		}
		// A change received from another site was judged by the primary
		// (the resolver); local changes carry the newest versions.
		if j.FedFrom == "" {
			if old := c[j.Key]; old != nil && old.ver.Compare(j.Ver) > 0 {
				break
			}
			if cv, ok := p.clears[j.Cache]; ok && cv.Compare(j.Ver) > 0 {
				break
			}
		}
		if j.Op == opPut {
			c[j.Key] = &value{data: j.Value, ver: j.Ver, expires: j.Expires}
		} else {
			c[j.Key] = &value{ver: j.Ver, deleted: true}
		}
	case opClear:
		if p.clears == nil {
			p.clears = map[string]Version{}
		}
		if cv, ok := p.clears[j.Cache]; !ok || cv.Compare(j.Ver) < 0 {
			p.clears[j.Cache] = j.Ver
		}
		for k, v := range p.data[j.Cache] {
			if v.ver.Compare(j.Ver) < 0 {
				delete(p.data[j.Cache], k)
			}
		}
		if len(p.data[j.Cache]) == 0 {
			delete(p.data, j.Cache)
		}
	}
	p.journal = append(p.journal, *j)
	p.addBytes(entrySize(j))
	p.lastSeq, p.lastEpoch = j.Seq, j.Epoch
}

// epochAt returns the epoch of the journaled change seq, if this copy can
// tell (seq 0 is the empty history, which every copy shares).
func (p *partition) epochAt(seq uint64) (Epoch, bool) {
	switch {
	case seq == 0:
		return Epoch{}, true
	case seq == p.lastSeq:
		return p.lastEpoch, true
	case len(p.journal) == 0 || seq < p.journal[0].Seq || seq > p.lastSeq:
		return Epoch{}, false
	}
	return p.journal[seq-p.journal[0].Seq].Epoch, true
}

// since returns the journal entries after seq, if the journal still has
// them all.
func (p *partition) since(seq uint64) ([]jentry, bool) {
	if seq == p.lastSeq {
		return nil, true
	}
	if len(p.journal) == 0 || seq+1 < p.journal[0].Seq || seq > p.lastSeq {
		return nil, false
	}
	return p.journal[seq+1-p.journal[0].Seq:], true
}

// purge trims the journal to its newest keep entries, but never past
// upTo (entries after it are still needed by a federation participant).
// It returns the bytes freed.
func (p *partition) purge(keep int, upTo uint64) int64 {
	n := max(len(p.journal)-keep, 0)
	for n > 0 && p.journal[n-1].Seq > upTo {
		n--
	}
	if n == 0 {
		return 0
	}
	var freed int64
	for i := range n {
		freed += entrySize(&p.journal[i])
	}
	p.journal = slices.Clone(p.journal[n:])
	p.addBytes(-freed)
	return freed
}

// setJournal replaces the journal (snapshot install).
func (p *partition) setJournal(j []jentry) {
	p.journal = j
	p.addBytes(-p.jbytes)
	for i := range j {
		p.addBytes(entrySize(&j[i]))
	}
}

// sweep drops expired values and tombstones older than tombstoneTTL.
func (p *partition) sweep(now int64, tombstoneTTL time.Duration) {
	for cache, c := range p.data {
		for k, v := range c {
			if (v.deleted && v.ver.Wall < now-int64(tombstoneTTL)) || (!v.deleted && v.expires != 0 && v.expires <= now) {
				delete(c, k)
			}
		}
		if len(c) == 0 {
			delete(p.data, cache)
		}
	}
}

// items lists the copy's data (tombstones included) for a snapshot.
func (p *partition) items() []item {
	var out []item
	for cache, c := range p.data {
		for k, v := range c {
			out = append(out, item{Cache: cache, Key: k, Value: v.data, Ver: v.ver, Expires: v.expires, Deleted: v.deleted})
		}
	}
	// A cache's last clear travels as an item with an empty key.
	for cache, v := range p.clears {
		out = append(out, item{Cache: cache, Ver: v, Deleted: true})
	}
	return out
}

// clearVer is the version of the cache's last clear (zero: none).
func (p *partition) clearVer(cache string) Version { return p.clears[cache] }

// install adds snapshot items to a staging copy.
func (p *partition) install(items []item) {
	for _, it := range items {
		if it.Key == "" {
			if p.clears == nil {
				p.clears = map[string]Version{}
			}
			p.clears[it.Cache] = it.Ver
			continue
		}
		c := p.data[it.Cache]
		if c == nil {
			c = map[string]*value{}
			p.data[it.Cache] = c
		}
		c[it.Key] = &value{data: it.Value, ver: it.Ver, expires: it.Expires, deleted: it.Deleted}
	}
}

// keys lists the live keys of cache after cursor with prefix, sorted, at
// most limit.
func (p *partition) keys(cache, prefix, cursor string, limit int, now int64) []string {
	var out []string
	for k, v := range p.data[cache] {
		if v.live(now) && strings.HasPrefix(k, prefix) && k > cursor {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	if len(out) > limit {
		out = out[:limit]
	}
	return out
}

// sizes adds the live entries of each cache to m.
func (p *partition) sizes(m map[string]int64, now int64) {
	for cache, c := range p.data {
		for _, v := range c {
			if v.live(now) {
				m[cache]++
			}
		}
	}
}

// digest-friendly ordering for tests.
func sortItems(items []item) {
	slices.SortFunc(items, func(a, b item) int {
		if c := strings.Compare(a.Cache, b.Cache); c != 0 {
			return c
		}
		return bytes.Compare([]byte(a.Key), []byte(b.Key))
	})
}

// owesAfter reports whether a participant whose position in this journal
// is from must be sent a batch: a committed entry after from is not a
// federation mark, or the journal no longer reaches back to from (ship
// then finds the gap). Marks alone are not sent for: a mark records a
// batch received from a site, so answering one with a batch that only
// moves the position would have the other site journal a mark of its
// own, and the two would trade marks for ever while idle.
func (p *partition) owesAfter(from uint64) bool {
	if p.committed <= from {
		return false
	}
	if len(p.journal) == 0 || p.journal[0].Seq > from+1 {
		return true
	}
	for i := len(p.journal) - 1; i >= 0 && p.journal[i].Seq > from; i-- {
		if j := &p.journal[i]; j.Seq <= p.committed && j.Op != opFedMark {
			return true
		}
	}
	return false
}
