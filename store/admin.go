package store

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// ServiceStatus is one scheme's partition table as this member sees it,
// with what this member holds.
type ServiceStatus struct {
	Scheme     string           `json:"scheme"`
	Backups    int              `json:"backup_count"`
	Lineage    string           `json:"lineage,omitempty"`
	Epoch      Epoch            `json:"table_epoch"`
	Settled    bool             `json:"settled"`   // every partition at its target owners, all synced
	Primaries  map[string]int   `json:"primaries"` // member -> partitions it is primary of
	Partitions []PartitionState `json:"partitions"`
}

// PartitionState is one partition: its table entry and this member's copy.
type PartitionState struct {
	ID     int      `json:"id"`
	Epoch  Epoch    `json:"epoch"`
	Owners []string `json:"owners"`
	Synced []string `json:"synced"`
	// This member's copy, when it holds one.
	Held    bool   `json:"held"`
	LastSeq uint64 `json:"last_seq,omitempty"`
	Entries int    `json:"entries,omitempty"` // keys held, tombstones included
	Journal int    `json:"journal,omitempty"` // journal entries retained
}

// Status reports every scheme's table and this member's copies.
func (st *Store) Status() []ServiceStatus {
	var out []ServiceStatus
	for _, name := range st.order {
		s := st.services[name]
		t, _ := s.currentTable()
		ss := ServiceStatus{Scheme: name, Backups: s.backups, Primaries: map[string]int{}, Partitions: []PartitionState{}}
		if t != nil {
			ss.Lineage, ss.Epoch = t.Lineage, t.Epoch
			ss.Settled = t.settled(s.mem.Members(), s.backups)
		}
		for i := range s.parts {
			ps := PartitionState{ID: i}
			if t != nil {
				pt := t.Parts[i]
				ps.Epoch, ps.Owners, ps.Synced = pt.Epoch, pt.Owners, pt.Synced
				ss.Primaries[pt.Primary()]++
			}
			s.pmu[i].Lock()
			if p := s.parts[i]; p.holds {
				ps.Held, ps.LastSeq, ps.Journal = true, p.lastSeq, len(p.journal)
				for _, c := range p.data {
					ps.Entries += len(c)
				}
			}
			s.pmu[i].Unlock()
			ss.Partitions = append(ss.Partitions, ps)
		}
		out = append(out, ss)
	}
	return out
}

// Joined reports whether this member has taken up its share of every
// scheme: each partition that rendezvous hashing places on it (over the
// live members) lists it as an owner holding a complete copy. It latches:
// once true it stays true, so the moves after another member fails do not
// make the survivors look unready. While false, it names what it waits
// for. A restarted member is thus "not joined" until it holds its data
// again, which is what a rolling restart must wait for before stopping the
// next member.
func (st *Store) Joined() (bool, string) {
	for _, name := range st.order {
		s := st.services[name]
		if s.joined.Load() {
			continue
		}
		t, _ := s.currentTable()
		if t == nil {
			return false, fmt.Sprintf("the partition table of scheme %s", name)
		}
		live := s.mem.Members()
		if !slices.Contains(live, s.self) {
			live = append(live, s.self)
		}
		slices.Sort(live)
		missing := 0
		for p := range t.Parts {
			pt := &t.Parts[p]
			if slices.Contains(target(p, live, s.backups), s.self) && !slices.Contains(pt.Synced, s.self) {
				missing++
			}
		}
		if missing > 0 {
			return false, fmt.Sprintf("%d partitions of scheme %s to be copied here", missing, name)
		}
		s.joined.Store(true)
	}
	return true, ""
}

// JournalEntry is a journaled change as the admin API shows it.
type JournalEntry struct {
	Seq     uint64    `json:"seq"`
	Epoch   Epoch     `json:"epoch"`
	Op      string    `json:"op"` // put, delete, clear
	Cache   string    `json:"cache"`
	Key     string    `json:"key,omitempty"`
	Size    int       `json:"size,omitempty"` // value bytes
	Version Version   `json:"version"`
	Expires time.Time `json:"expires,omitzero"`
}

// ErrNotHeld: this member holds no copy of the partition.
var ErrNotHeld = errors.New("partition not held by this member")

// Journal returns this member's journal of a partition from seq from on,
// at most limit entries, and the partition's last seq.
func (st *Store) Journal(scheme string, part int, from uint64, limit int) ([]JournalEntry, uint64, error) {
	s := st.services[scheme]
	if s == nil {
		return nil, 0, fmt.Errorf("%w: no scheme %q", ErrBadName, scheme)
	}
	if part < 0 || part >= s.nparts {
		return nil, 0, fmt.Errorf("%w: partition %d out of range 0-%d", ErrBadName, part, s.nparts-1)
	}
	s.pmu[part].Lock()
	defer s.pmu[part].Unlock()
	p := s.parts[part]
	if !p.holds {
		return nil, 0, ErrNotHeld
	}
	out := []JournalEntry{}
	names := map[byte]string{opPut: "put", opDelete: "delete", opClear: "clear"}
	for _, j := range p.journal {
		if j.Seq < from || len(out) >= limit {
			continue
		}
		e := JournalEntry{Seq: j.Seq, Epoch: j.Epoch, Op: names[j.Op], Cache: j.Cache, Key: j.Key, Size: len(j.Value), Version: j.Ver}
		if j.Expires != 0 {
			e.Expires = time.Unix(0, j.Expires)
		}
		out = append(out, e)
	}
	return out, p.lastSeq, nil
}
