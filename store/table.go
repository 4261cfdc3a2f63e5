package store

import (
	"hash/fnv"
	"slices"
)

// PartitionOf maps a (scoped) cache name and key to a partition. Both sites
// of a federation use the same function and partition count.
func PartitionOf(cache, key string, partitions int) int {
	h := fnv.New64a()
	h.Write([]byte(cache))
	h.Write([]byte{0})
	h.Write([]byte(key))
	return int(h.Sum64() % uint64(partitions))
}

// rank orders members for a partition by rendezvous (highest random weight)
// hashing: when a member joins or leaves, only the partitions it ranks
// first (or among the first n) for change hands.
func rank(part int, members []string) []string {
	type scored struct {
		name  string
		score uint64
	}
	s := make([]scored, len(members))
	for i, m := range members {
		h := fnv.New64a()
		h.Write([]byte(m))
		h.Write([]byte{0, byte(part >> 8), byte(part)})
		s[i] = scored{m, mix(h.Sum64())}
	}
	slices.SortFunc(s, func(a, b scored) int {
		switch {
		case a.score > b.score:
			return -1
		case a.score < b.score:
			return 1
		case a.name < b.name:
			return -1
		case a.name > b.name:
			return 1
		}
		return 0
	})
	out := make([]string, len(s))
	for i := range s {
		out[i] = s[i].name
	}
	return out
}

// mix is a 64-bit finalizer (splitmix64) so nearby inputs score apart.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// target is the owners a partition should have: the first 1+backups
// members by rank.
func target(part int, live []string, backups int) []string {
	r := rank(part, live)
	return r[:min(len(r), 1+backups)]
}

// holding is what the senior learned from a member's state about one
// partition.
type holding struct {
	synced  Epoch
	lastSeq uint64
}

// views maps member -> partition -> holding, for members that answered.
type views map[string]map[int]holding

// nextTable computes the successor of prev (nil: a new history) for the
// live members, from what the answering members hold. It returns nil when
// nothing changes. Rules, per partition:
//
//   - The primary stays while it is live and holds the partition.
//   - Otherwise the live holder with the newest synced epoch (then the
//     longest journal) becomes primary: every acknowledged write is held by
//     every owner synced under the last epoch in which one was acknowledged,
//     and by everyone synced later.
//   - No live holder: the partition starts fresh, unless a live member did
//     not answer (it might hold it); then it waits.
//   - A live primary hands over to the first-ranked member only once that
//     member is a synced owner; owners outside the target stay until every
//     target owner is synced, so redundancy never drops during a move.
//
// A partition's epoch changes exactly when its owners change.
func nextTable(prev *Table, lineage string, author string, nparts, backups int, live []string, v views) *Table {
	next := &Table{Lineage: lineage, Parts: make([]PartTable, nparts)}
	if prev != nil {
		next.Fed = slices.Clone(prev.Fed)
		next.Epoch = Epoch{Ver: prev.Epoch.Ver + 1, Author: author}
	} else {
		next.Epoch = Epoch{Ver: 1, Author: author}
	}
	isLive := func(m string) bool { return slices.Contains(live, m) }
	answered := func(m string) bool { _, ok := v[m]; return ok }
	allAnswered := true
	for _, m := range live {
		if !answered(m) {
			allAnswered = false
		}
	}
	changed := prev == nil
	for p := range nparts {
		var pt PartTable
		if prev != nil && p < len(prev.Parts) {
			pt = prev.Parts[p]
		}
		held := func(m string) (holding, bool) {
			h, ok := v[m][p]
			return h, ok
		}
		syncedOwner := func(m string) bool {
			h, ok := held(m)
			return ok && h.synced == pt.Epoch && slices.Contains(pt.Owners, m)
		}
		tgt := target(p, live, backups)
		np := PartTable{Epoch: pt.Epoch}
		primary := pt.Primary()
		if _, ok := held(primary); primary == "" || !isLive(primary) || (answered(primary) && !ok) {
			primary = ""
			var best holding
			for _, m := range live {
				if h, ok := held(m); ok && (primary == "" || h.synced.Compare(best.synced) > 0 ||
					(h.synced == best.synced && h.lastSeq > best.lastSeq)) {
					primary, best = m, h
				}
			}
			if primary == "" {
				if !allAnswered || len(tgt) == 0 {
					next.Parts[p] = pt // wait for the silent member, or for members
					continue
				}
				primary, np.Fresh = tgt[0], true
			}
		} else if !answered(primary) {
			next.Parts[p] = pt // its primary did not answer: leave it be
			continue
		}
		if len(tgt) > 0 && primary != tgt[0] && syncedOwner(tgt[0]) {
			primary = tgt[0]
		}
		owners := []string{primary}
		allSynced := true
		for _, m := range tgt {
			if m != primary {
				owners = append(owners, m)
				if !syncedOwner(m) {
					allSynced = false
				}
			}
		}
		if !allSynced {
			for _, m := range pt.Owners {
				if isLive(m) && !slices.Contains(owners, m) && syncedOwner(m) {
					owners = append(owners, m)
				}
			}
		}
		np.Owners = owners
		if np.Fresh || !slices.Equal(owners, pt.Owners) {
			np.Epoch = next.Epoch
			changed = true
		}
		// Synced: who holds it fully under np.Epoch as far as the senior
		// knows (the primary always does).
		np.Synced = []string{primary}
		if np.Epoch == pt.Epoch {
			for _, m := range owners[1:] {
				if syncedOwner(m) {
					np.Synced = append(np.Synced, m)
				}
			}
		}
		if !slices.Equal(np.Synced, pt.Synced) {
			changed = true
		}
		next.Parts[p] = np
	}
	if !changed {
		return nil
	}
	return next
}

// settled reports whether every partition has its target owners, all
// synced.
func (t *Table) settled(live []string, backups int) bool {
	for p := range t.Parts {
		pt := &t.Parts[p]
		if !slices.Equal(pt.Owners, target(p, live, backups)) || len(pt.Synced) != len(pt.Owners) {
			return false
		}
	}
	return true
}
