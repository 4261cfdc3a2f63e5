package store

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ServeFed answers a federation request that arrived over a tunnel from
// site (the tunnel's authenticated peer site; the payload cannot claim
// another).
func (st *Store) ServeFed(ctx context.Context, site string, b []byte) []byte {
	r, err := decodeReq(b)
	if err != nil {
		st.log.Warn("federation: refused a malformed batch", "from_site", site, "err", err)
		return encodeResp(&resp{Status: stError, Msg: err.Error()})
	}
	if r.Type != reqFedShip {
		return encodeResp(&resp{Status: stRefused, Msg: "only federation batches are taken from other sites"})
	}
	if r.Part < 0 || r.Part >= st.opts.Partitions {
		return encodeResp(&resp{Status: stError, Msg: "partition out of range"})
	}
	r.Site = site
	s := st.services[r.Service]
	if s == nil {
		return encodeResp(&resp{Status: stRefused, Msg: fmt.Sprintf("site %s has no scheme %q", st.opts.Site, r.Service)})
	}
	st.mu.Lock()
	running := st.running
	st.mu.Unlock()
	if !running {
		return encodeResp(&resp{Status: stNoTable, Msg: "store not started"})
	}
	return encodeResp(s.handleFedShip(ctx, r))
}

// Federated reports whether any scheme is federated.
func (st *Store) Federated() bool {
	for _, s := range st.services {
		if s.fed != nil {
			return true
		}
	}
	return false
}

// FedStatus reports every federated scheme's participants, summed over the
// site's live members.
func (st *Store) FedStatus(ctx context.Context) ([]FedStatus, error) {
	var out []FedStatus
	for _, name := range st.order {
		s := st.services[name]
		if s.fed == nil {
			continue
		}
		members := s.mem.Members()
		all := make([][]FedStatus, len(members))
		var wg sync.WaitGroup
		var firstErr error
		var mu sync.Mutex
		for i, m := range members {
			wg.Go(func() {
				if m == s.self {
					all[i] = s.fedStatus()
					return
				}
				cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
				defer cancel()
				a, err := s.call(cctx, m, &req{Type: reqFedStatus})
				if err == nil {
					err = json.Unmarshal([]byte(a.Msg), &all[i])
				}
				if err != nil {
					mu.Lock()
					firstErr = fmt.Errorf("%w: federation status of %s: %v", ErrUnavailable, m, err)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if firstErr != nil {
			return nil, firstErr
		}
		out = append(out, mergeFedStatus(all)...)
	}
	return out, nil
}

// FedControl applies an operation (start, stop, pause, resume,
// replicate-all, start-with-no-backlog) to a participant of every
// federated scheme that has it.
func (st *Store) FedControl(ctx context.Context, participant, op string) error {
	switch op {
	case FedOpStart, FedOpStop, FedOpPause, FedOpResume, FedOpReplicateAll, FedOpNoBacklog:
	default:
		return fmt.Errorf("%w: unknown federation operation %q", ErrBadName, op)
	}
	found := false
	for _, name := range st.order {
		s := st.services[name]
		if s.fed == nil || !slices.ContainsFunc(s.fed.opts.Participants, func(p FedParticipant) bool { return p.Site == participant }) {
			continue
		}
		found = true
		if err := s.control(ctx, participant, op, ""); err != nil {
			return fmt.Errorf("scheme %s: %w", name, err)
		}
	}
	if !found {
		return fmt.Errorf("%w: %q", ErrUnknownParticipant, participant)
	}
	return nil
}

// Schemes lists the scheme names in config order.
func (st *Store) Schemes() []string { return slices.Clone(st.order) }

// Digests returns the digest of every partition of a scheme.
func (st *Store) Digests(ctx context.Context, scheme string) ([]Digest, error) {
	s := st.services[scheme]
	if s == nil {
		return nil, fmt.Errorf("%w: no scheme %q", ErrBadName, scheme)
	}
	out := make([]Digest, 0, s.nparts)
	err := s.fanout(ctx, req{Type: reqDigest}, func(a *resp) {
		for _, k := range a.Keys {
			f := strings.SplitN(k, ":", 3)
			if len(f) != 3 {
				continue
			}
			p, _ := strconv.Atoi(f[0])
			n, _ := strconv.Atoi(f[1])
			out = append(out, Digest{Partition: p, Count: n, Hash: f[2]})
		}
	})
	slices.SortFunc(out, func(a, b Digest) int { return a.Partition - b.Partition })
	return out, err
}

// PartitionKeys lists every live entry of a partition with its version.
func (st *Store) PartitionKeys(ctx context.Context, scheme string, part int) ([]KeyVersion, error) {
	s := st.services[scheme]
	if s == nil {
		return nil, fmt.Errorf("%w: no scheme %q", ErrBadName, scheme)
	}
	if part < 0 || part >= s.nparts {
		return nil, fmt.Errorf("%w: partition %d out of range", ErrBadName, part)
	}
	var keys []string
	err := s.retry(ctx, part, func(ctx context.Context, primary string) error {
		if primary == s.self {
			s.pmu[part].Lock()
			p := s.parts[part]
			ok := p.holds && len(p.owners) > 0 && p.owners[0] == s.self
			if ok {
				keys = p.partKeys(time.Now().UnixNano())
			}
			s.pmu[part].Unlock()
			if !ok {
				return errNotPrimary
			}
			return nil
		}
		a, err := s.call(ctx, primary, &req{Type: reqPartKeys, Part: part})
		if err != nil {
			return err
		}
		keys = a.Keys
		return nil
	})
	return parseKeyVersions(keys), err
}

// LocalFedStatus is this member's own federation figures (for the
// partitions it is primary of), without asking other members: what a
// metrics scrape of this instance reports.
func (st *Store) LocalFedStatus() []FedStatus {
	var out []FedStatus
	for _, name := range st.order {
		out = append(out, st.services[name].fedStatus()...)
	}
	return out
}
