package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// retry runs attempt against the partition's primary until it succeeds,
// fails for good, or the request budget ends. Not-primary, stale, no-table
// and transport errors are retried (after refreshing the table when the
// answer carries a newer one): moves and failovers happen inside the site
// and are not the client's problem.
func (s *service) retry(ctx context.Context, part int, attempt func(ctx context.Context, primary string) error) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	backoff := 2 * time.Millisecond
	var last error
	for {
		t, changed := s.currentTable()
		if t != nil {
			primary := t.Parts[part].Primary()
			err := attempt(ctx, primary)
			if err == nil {
				return nil
			}
			var es *errStatus
			if errors.As(err, &es) {
				switch es.status {
				case stTooLarge:
					return fmt.Errorf("%w: %s", ErrTooLarge, es.msg)
				case stBadName:
					return fmt.Errorf("%w: %s", ErrBadName, es.msg)
				case stFull:
					return fmt.Errorf("%w: %s", ErrJournalFull, es.msg)
				case stRefused:
					return fmt.Errorf("store: refused: %s", es.msg)
				case stError:
					return fmt.Errorf("store: %s", es.msg)
				}
			}
			if errors.Is(err, ErrStopped) {
				return err
			}
			last = err
		} else {
			last = errNoTable
		}
		timer := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			timer.Stop()
			if s.ctx != nil && s.ctx.Err() != nil {
				return ErrStopped
			}
			return fmt.Errorf("%w: partition %d of %s: %v", ErrUnavailable, part, s.name, last)
		case <-changed:
		case <-timer.C:
		}
		timer.Stop()
		backoff = min(2*backoff, 100*time.Millisecond)
	}
}

// write commits ops on a partition through its primary.
func (s *service) write(ctx context.Context, part int, ops []jentry) ([]bool, error) {
	var existed []bool
	err := s.retry(ctx, part, func(ctx context.Context, primary string) error {
		if primary == s.self {
			var err error
			existed, err = s.submit(ctx, part, ops)
			return err
		}
		a, err := s.call(ctx, primary, &req{Type: reqWrite, Part: part, Ops: ops})
		if err != nil {
			return err
		}
		existed = a.Results
		return nil
	})
	return existed, err
}

// read reads a key at the partition's primary.
func (s *service) read(ctx context.Context, part int, cache, key string) (item, bool, error) {
	var it item
	var found bool
	err := s.retry(ctx, part, func(ctx context.Context, primary string) error {
		if primary == s.self {
			var err error
			it, found, err = s.readLocal(part, cache, key)
			return err
		}
		a, err := s.call(ctx, primary, &req{Type: reqRead, Part: part, Cache: cache, Key: key})
		if err != nil {
			return err
		}
		it, found = a.Item, a.Found
		return nil
	})
	return it, found, err
}

// fanout asks each partition's primary (grouped by member) with a list or
// sizes request, retrying the partitions a member turned out not to be
// primary of.
func (s *service) fanout(ctx context.Context, r req, each func(a *resp)) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	todo := make([]int, s.nparts)
	for i := range todo {
		todo[i] = i
	}
	backoff := 5 * time.Millisecond
	for len(todo) > 0 {
		t, changed := s.currentTable()
		if t != nil {
			groups := map[string][]int{}
			for _, p := range todo {
				groups[t.Parts[p].Primary()] = append(groups[t.Parts[p].Primary()], p)
			}
			var next []int
			for m, parts := range groups {
				q := r
				q.Parts = parts
				var a *resp
				var err error
				if m == s.self {
					a = s.handle(ctx, &q)
				} else if m != "" {
					a, err = s.call(ctx, m, &q)
				}
				if m == "" || err != nil {
					next = append(next, parts...)
					continue
				}
				each(a)
				next = append(next, a.Missing...)
			}
			slices.Sort(next)
			todo = next
			if len(todo) == 0 {
				return nil
			}
		}
		timer := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			timer.Stop()
			return fmt.Errorf("%w: %d partitions of %s did not answer", ErrUnavailable, len(todo), s.name)
		case <-changed:
		case <-timer.C:
		}
		timer.Stop()
		backoff = min(2*backoff, 100*time.Millisecond)
	}
	return nil
}

func (s *service) sizes(ctx context.Context) (map[string]int64, error) {
	out := map[string]int64{}
	err := s.fanout(ctx, req{Type: reqSizes}, func(a *resp) {
		for k, v := range a.Sizes {
			out[k] += v
		}
	})
	return out, err
}

func (s *service) keys(ctx context.Context, cache, prefix, cursor string, limit int) ([]string, error) {
	var out []string
	err := s.fanout(ctx, req{Type: reqList, Cache: cache, Prefix: prefix, Cursor: cursor, Limit: limit}, func(a *resp) {
		out = append(out, a.Keys...)
	})
	slices.Sort(out)
	if len(out) > limit {
		out = out[:limit]
	}
	return out, err
}
