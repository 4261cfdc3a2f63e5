package store

import (
	"bytes"
	"slices"
	"strings"
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
	holds       bool
	data        map[string]map[string]*value // cache -> key -> value
	journal     []jentry                     // contiguous: journal[i].Seq == journal[0].Seq+i
	lastSeq     uint64
	lastEpoch   Epoch
	syncedEpoch Epoch // the last epoch under which this copy was complete

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

func newPartition(id int) *partition { return &partition{id: id} }

// reset drops everything this member holds of the partition.
func (p *partition) reset() {
	p.holds = false
	p.data = nil
	p.journal = nil
	p.lastSeq = 0
	p.lastEpoch = Epoch{}
	p.syncedEpoch = Epoch{}
	p.staging = nil
	p.synced = nil
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

// apply applies one numbered change to the data and appends it to the
// journal. Changes are applied in sequence order; an older version of a key
// never overwrites a newer one (that matters once sites exchange changes).
func (p *partition) apply(j *jentry) {
	switch j.Op {
	case opPut, opDelete:
		c := p.data[j.Cache]
		if c == nil {
			c = map[string]*value{}
			p.data[j.Cache] = c
		}
		if old := c[j.Key]; old != nil && old.ver.Compare(j.Ver) > 0 {
			break
		}
		if j.Op == opPut {
			c[j.Key] = &value{data: j.Value, ver: j.Ver, expires: j.Expires}
		} else {
			c[j.Key] = &value{ver: j.Ver, deleted: true}
		}
	case opClear:
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

// purge trims the journal to its newest keep entries.
func (p *partition) purge(keep int) {
	if n := len(p.journal) - keep; n > 0 {
		p.journal = slices.Clone(p.journal[n:])
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
	return out
}

// install adds snapshot items to a staging copy.
func (p *partition) install(items []item) {
	for _, it := range items {
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
