package store

import (
	"context"
	"errors"
	"time"
)

// Errors returned by the cache API. Callers test them with errors.Is.
var (
	// ErrBadName: a cache name, key or scope is empty, too long or uses
	// characters outside the allowed set.
	ErrBadName = errors.New("bad name")
	// ErrTooLarge: a value is larger than the configured limit.
	ErrTooLarge = errors.New("value too large")
	// ErrUnavailable: the site could not complete the request in time (no
	// partition table yet, the partition's owners unreachable, moves that
	// did not settle before the deadline). The request may be retried.
	ErrUnavailable = errors.New("store unavailable")
	// ErrStopped: the store is shutting down.
	ErrStopped = errors.New("store stopped")
)

// Limits on names (cache, scope and key).
const (
	MaxCacheName = 128     // bytes of a cache or scope name: [A-Za-z0-9._-]
	MaxKey       = 4 << 10 // bytes of a key: any bytes but NUL
)

// CacheInfo describes one cache of the site.
type CacheInfo struct {
	Name    string `json:"name"`    // as the caller named it (scope removed)
	Size    int64  `json:"size"`    // live entries across the site's partitions
	Scheme  string `json:"scheme"`  // the scheme the name maps to
	Backups int    `json:"backups"` // that scheme's backup count
}

// Entry is a value read from a cache.
type Entry struct {
	Value   []byte
	Version Version   // when and where it was last written
	Expires time.Time // zero: never
}

// Page is one page of a key listing.
type Page struct {
	Keys []string
	// Next is the cursor for the following page; empty when this page is
	// the last.
	Next string
}

// Cache is what the cache API (HTTP, CLI, Go client) needs from the site
// store. Every method may be called on any instance of the site: requests
// are forwarded to the partition's primary inside the site. Scope may be
// empty; a non-empty scope keeps its caches apart from other scopes'.
type Cache interface {
	// Put stores value under key. ttl 0 means no expiry. It returns once
	// the partition's primary and its backups hold the change.
	Put(ctx context.Context, scope, cache, key string, value []byte, ttl time.Duration) error
	// Get returns the entry under key; ok is false when there is none.
	Get(ctx context.Context, scope, cache, key string) (e Entry, ok bool, err error)
	// Delete removes key; existed reports whether it was there.
	Delete(ctx context.Context, scope, cache, key string) (existed bool, err error)
	// Clear removes every entry of the cache.
	Clear(ctx context.Context, scope, cache string) error
	// Caches lists the caches of the scope that hold at least one entry.
	Caches(ctx context.Context, scope string) ([]CacheInfo, error)
	// Keys lists the keys of a cache in byte order, starting after cursor
	// (empty: from the start), only those with the prefix, at most limit
	// (1-10000).
	Keys(ctx context.Context, scope, cache, prefix, cursor string, limit int) (Page, error)
	// MaxValueSize is the largest value Put accepts.
	MaxValueSize() int
}
