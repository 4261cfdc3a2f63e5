// Package cachetest provides [Memory], an in-memory [store.Cache] for
// tests of the cache API, its Go client and the CLI. It checks names as
// the store does and honours TTLs, but it has no partitions, no backups and
// no site: use it to test the layers above the store, not the store.
package cachetest

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sitebridge/sitebridge/store"
)

// Memory is a map-backed store.Cache. The zero value is not usable; call
// [New]. It is safe for concurrent use.
type Memory struct {
	maxValue int
	now      func() time.Time

	mu    sync.Mutex
	fail  error
	clock store.Clock
	data  map[string]map[string]map[string]store.Entry // scope → cache → key
}

var _ store.Cache = (*Memory)(nil)

// New returns an empty Memory that accepts values of up to maxValue bytes
// and reads the time from now (nil: time.Now).
func New(maxValue int, now func() time.Time) *Memory {
	if now == nil {
		now = time.Now
	}
	m := &Memory{maxValue: maxValue, now: now, data: map[string]map[string]map[string]store.Entry{}}
	m.clock = store.Clock{Site: "test", Now: now}
	return m
}

// Fail makes every later call return err (nil: succeed again).
func (m *Memory) Fail(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.fail = err
}

// Len returns the number of live entries of every scope and cache.
func (m *Memory) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, caches := range m.data {
		for _, entries := range caches {
			for _, e := range entries {
				if m.live(e) {
					n++
				}
			}
		}
	}
	return n
}

// MaxValueSize implements store.Cache.
func (m *Memory) MaxValueSize() int { return m.maxValue }

// Put implements store.Cache.
func (m *Memory) Put(ctx context.Context, scope, cache, key string, value []byte, ttl time.Duration) error {
	if err := m.check(ctx, scope, cache, key); err != nil {
		return err
	}
	if len(value) > m.maxValue {
		return fmt.Errorf("%w: %d bytes, the limit is %d", store.ErrTooLarge, len(value), m.maxValue)
	}
	if ttl < 0 {
		return fmt.Errorf("negative ttl %v", ttl)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return m.fail
	}
	e := store.Entry{Value: slices.Clone(value), Version: m.clock.Next()}
	if ttl > 0 {
		e.Expires = m.now().Add(ttl)
	}
	caches := m.data[scope]
	if caches == nil {
		caches = map[string]map[string]store.Entry{}
		m.data[scope] = caches
	}
	entries := caches[cache]
	if entries == nil {
		entries = map[string]store.Entry{}
		caches[cache] = entries
	}
	entries[key] = e
	return nil
}

// Get implements store.Cache.
func (m *Memory) Get(ctx context.Context, scope, cache, key string) (store.Entry, bool, error) {
	if err := m.check(ctx, scope, cache, key); err != nil {
		return store.Entry{}, false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return store.Entry{}, false, m.fail
	}
	e, ok := m.data[scope][cache][key]
	if !ok || !m.live(e) {
		return store.Entry{}, false, nil
	}
	e.Value = slices.Clone(e.Value)
	return e, true, nil
}

// Delete implements store.Cache.
func (m *Memory) Delete(ctx context.Context, scope, cache, key string) (bool, error) {
	if err := m.check(ctx, scope, cache, key); err != nil {
		return false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return false, m.fail
	}
	e, ok := m.data[scope][cache][key]
	delete(m.data[scope][cache], key)
	return ok && m.live(e), nil
}

// Clear implements store.Cache.
func (m *Memory) Clear(ctx context.Context, scope, cache string) error {
	if err := m.check(ctx, scope, cache, "-"); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return m.fail
	}
	delete(m.data[scope], cache)
	return nil
}

// Caches implements store.Cache.
func (m *Memory) Caches(ctx context.Context, scope string) ([]store.CacheInfo, error) {
	if err := m.check(ctx, scope, "-", "-"); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return nil, m.fail
	}
	var infos []store.CacheInfo
	for name, entries := range m.data[scope] {
		var n int64
		for _, e := range entries {
			if m.live(e) {
				n++
			}
		}
		if n > 0 {
			infos = append(infos, store.CacheInfo{Name: name, Size: n, Scheme: "default", Backups: 1})
		}
	}
	slices.SortFunc(infos, func(a, b store.CacheInfo) int { return strings.Compare(a.Name, b.Name) })
	return infos, nil
}

// Keys implements store.Cache. The cursor is the last key of the previous
// page.
func (m *Memory) Keys(ctx context.Context, scope, cache, prefix, cursor string, limit int) (store.Page, error) {
	if err := m.check(ctx, scope, cache, "-"); err != nil {
		return store.Page{}, err
	}
	if limit < 1 || limit > 10000 {
		return store.Page{}, fmt.Errorf("limit %d out of range", limit)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return store.Page{}, m.fail
	}
	var keys []string
	for k, e := range m.data[scope][cache] {
		if strings.HasPrefix(k, prefix) && k > cursor && m.live(e) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	var p store.Page
	if len(keys) > limit {
		keys = keys[:limit]
		p.Next = keys[limit-1]
	}
	p.Keys = keys
	return p, nil
}

func (m *Memory) live(e store.Entry) bool {
	return e.Expires.IsZero() || m.now().Before(e.Expires)
}

// check validates names as the store does, and the context.
func (m *Memory) check(ctx context.Context, scope, cache, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if scope != "" && !validName(scope) {
		return fmt.Errorf("%w: scope %q", store.ErrBadName, scope)
	}
	if !validName(cache) {
		return fmt.Errorf("%w: cache %q", store.ErrBadName, cache)
	}
	if key == "" || len(key) > store.MaxKey || strings.IndexByte(key, 0) >= 0 {
		return fmt.Errorf("%w: key of %d bytes", store.ErrBadName, len(key))
	}
	return nil
}

func validName(s string) bool {
	if s == "" || len(s) > store.MaxCacheName {
		return false
	}
	for _, c := range []byte(s) {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}
