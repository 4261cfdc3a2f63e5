// Package store is the site store: named caches of key -> value split into
// partitions across the instances of a site, each partition held by a
// primary and its backups, with an ordered journal of changes per
// partition (which federation ships to other sites).
//
// Each scheme of the config is one distributed service in the Coherence
// sense: its own partition table, made by the senior member, with the
// scheme's backup count. A write is acknowledged once the partition's
// primary and every backup hold it, so losing any one instance loses no
// acknowledged write. Any instance accepts a request and forwards it to the
// partition's primary over the transport the gateway provides.
package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sitebridge/sitebridge/config"
)

// Scheme is one cache scheme: a distributed service with its own backups.
type Scheme struct {
	Name        string
	BackupCount int
	Expiry      time.Duration // default TTL of puts that name none; 0: never
	// Federation: the sites this site sends the scheme's changes to, and
	// the sites it takes them from (its topology's edges at this site).
	FedTo   []FedLink
	FedFrom []string
}

// Mapping maps cache names matching Pattern ('*' matches any run of
// characters) to a scheme. The first matching mapping wins.
type Mapping struct {
	Pattern string
	Scheme  string
}

// Options configure a Store.
type Options struct {
	Self           string // this member's name
	Site           string // this site's name (the origin of its writes)
	Partitions     int    // default 257
	Schemes        []Scheme
	Mappings       []Mapping
	MaxValueSize   int           // default 1 MiB
	RequestTimeout time.Duration // default 15s
	JournalRetain  int           // entries kept per partition; default 1024
	Membership     Membership
	Transport      Transport
	Fed            FedOptions
	// Resolver decides conflicts with changes from other sites, per scheme
	// name; schemes not named use LastWriterWins.
	Resolvers map[string]Resolver
	Log       *slog.Logger
}

// Store is one member's part of the site store.
type Store struct {
	opts     Options
	clock    *Clock
	services map[string]*service
	order    []string // scheme names in config order
	log      *slog.Logger

	mu      sync.Mutex
	running bool
}

// New builds a store; Run starts it.
func New(o Options) (*Store, error) {
	if o.Self == "" || o.Membership == nil || o.Transport == nil {
		return nil, errors.New("store: Self, Membership and Transport are required")
	}
	if o.Partitions <= 0 {
		o.Partitions = 257
	}
	if o.Partitions > maxParts {
		return nil, fmt.Errorf("store: at most %d partitions", maxParts)
	}
	if o.MaxValueSize <= 0 {
		o.MaxValueSize = 1 << 20
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 15 * time.Second
	}
	if o.JournalRetain == 0 {
		o.JournalRetain = 1024
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if len(o.Schemes) == 0 {
		o.Schemes = []Scheme{{Name: "default", BackupCount: 1}}
	}
	if len(o.Mappings) == 0 {
		o.Mappings = []Mapping{{Pattern: "*", Scheme: o.Schemes[0].Name}}
	}
	st := &Store{opts: o, clock: &Clock{Site: o.Site}, services: map[string]*service{}, log: o.Log}
	for _, sc := range o.Schemes {
		if _, dup := st.services[sc.Name]; dup {
			return nil, fmt.Errorf("store: scheme %q twice", sc.Name)
		}
		svc := newService(sc.Name, o.Partitions, sc.BackupCount, o.Self, o.Site,
			o.Membership, o.Transport, st.clock, o.Log, o.RequestTimeout, o.JournalRetain)
		if len(sc.FedTo) > 0 || len(sc.FedFrom) > 0 {
			if o.Fed.Transport == nil {
				return nil, fmt.Errorf("store: scheme %q is federated but there is no federation transport", sc.Name)
			}
			svc.fed = newFedState(o.Fed, sc, o.Partitions)
			for _, p := range svc.parts {
				p.purgeTo = 0 // nothing is acknowledged by anyone yet
			}
		}
		if r := o.Resolvers[sc.Name]; r != nil {
			svc.resolver = r
		}
		st.services[sc.Name] = svc
		st.order = append(st.order, sc.Name)
	}
	for _, m := range o.Mappings {
		if st.services[m.Scheme] == nil {
			return nil, fmt.Errorf("store: mapping %q names unknown scheme %q", m.Pattern, m.Scheme)
		}
	}
	return st, nil
}

// Run runs the store until ctx ends.
func (st *Store) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, s := range st.services {
		s.ctx = ctx
	}
	st.mu.Lock()
	st.running = true
	st.mu.Unlock()
	for _, s := range st.services {
		wg.Go(func() { s.run(ctx) })
	}
	wg.Wait()
}

// Serve answers a request another member sent over the transport.
func (st *Store) Serve(ctx context.Context, b []byte) []byte {
	r, err := decodeReq(b)
	if err != nil {
		st.log.Warn("store: refused a malformed request", "err", err)
		return encodeResp(&resp{Status: stError, Msg: err.Error()})
	}
	s := st.services[r.Service]
	if s == nil {
		return encodeResp(&resp{Status: stError, Msg: fmt.Sprintf("unknown store service %q", r.Service)})
	}
	st.mu.Lock()
	running := st.running
	st.mu.Unlock()
	if !running {
		return encodeResp(&resp{Status: stNoTable, Msg: "store not started"})
	}
	return encodeResp(s.handle(ctx, r))
}

// MaxValueSize is the largest value Put accepts.
func (st *Store) MaxValueSize() int { return st.opts.MaxValueSize }

// schemeOf finds the scheme of an (unscoped) cache name.
func (st *Store) schemeOf(cache string) (*service, Scheme, error) {
	for _, m := range st.opts.Mappings {
		if config.MatchPattern(m.Pattern, cache) {
			for _, sc := range st.opts.Schemes {
				if sc.Name == m.Scheme {
					return st.services[sc.Name], sc, nil
				}
			}
		}
	}
	return nil, Scheme{}, fmt.Errorf("%w: no cache mapping matches %q", ErrBadName, cache)
}

func checkName(what, s string) error {
	if s == "" || len(s) > MaxCacheName {
		return fmt.Errorf("%w: %s must be 1-%d characters", ErrBadName, what, MaxCacheName)
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("%w: %s %q: only letters, digits, '.', '_' and '-'", ErrBadName, what, s)
		}
	}
	return nil
}

func checkKey(k string) error {
	if k == "" || len(k) > MaxKey {
		return fmt.Errorf("%w: a key must be 1-%d bytes", ErrBadName, MaxKey)
	}
	if strings.IndexByte(k, 0) >= 0 {
		return fmt.Errorf("%w: a key may not contain NUL", ErrBadName)
	}
	return nil
}

// checkOp validates an operation arriving from another member.
func checkOp(j *jentry) error {
	if j.Cache == "" || len(j.Cache) > 2*MaxCacheName+1 {
		return fmt.Errorf("%w: cache", ErrBadName)
	}
	if j.Op != opClear {
		return checkKey(j.Key)
	}
	return nil
}

// scoped is the internal name of a cache in a scope.
func scoped(scope, cache string) string {
	if scope == "" {
		return cache
	}
	return scope + "/" + cache
}

// resolve validates names and finds the service.
func (st *Store) resolve(scope, cache string) (*service, Scheme, string, error) {
	if scope != "" {
		if err := checkName("scope", scope); err != nil {
			return nil, Scheme{}, "", err
		}
	}
	if err := checkName("cache name", cache); err != nil {
		return nil, Scheme{}, "", err
	}
	s, sc, err := st.schemeOf(cache)
	return s, sc, scoped(scope, cache), err
}

// Put implements Cache.
func (st *Store) Put(ctx context.Context, scope, cache, key string, value []byte, ttl time.Duration) error {
	s, sc, name, err := st.resolve(scope, cache)
	if err != nil {
		return err
	}
	if err := checkKey(key); err != nil {
		return err
	}
	if len(value) > st.opts.MaxValueSize {
		return fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, len(value), st.opts.MaxValueSize)
	}
	if ttl < 0 {
		return fmt.Errorf("%w: negative ttl", ErrBadName)
	}
	if ttl == 0 {
		ttl = sc.Expiry
	}
	j := jentry{Op: opPut, Cache: name, Key: key, Value: value}
	if ttl > 0 {
		j.Expires = time.Now().Add(ttl).UnixNano()
	}
	_, err = s.write(ctx, PartitionOf(name, key, s.nparts), []jentry{j})
	return err
}

// Delete implements Cache.
func (st *Store) Delete(ctx context.Context, scope, cache, key string) (bool, error) {
	s, _, name, err := st.resolve(scope, cache)
	if err != nil {
		return false, err
	}
	if err := checkKey(key); err != nil {
		return false, err
	}
	existed, err := s.write(ctx, PartitionOf(name, key, s.nparts), []jentry{{Op: opDelete, Cache: name, Key: key}})
	if err != nil {
		return false, err
	}
	return len(existed) == 1 && existed[0], nil
}

// Clear implements Cache: a versioned clear op in every partition.
func (st *Store) Clear(ctx context.Context, scope, cache string) error {
	s, _, name, err := st.resolve(scope, cache)
	if err != nil {
		return err
	}
	ver := st.clock.Next()
	errs := make([]error, s.nparts)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for p := range s.nparts {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			_, errs[p] = s.write(ctx, p, []jentry{{Op: opClear, Cache: name, Ver: ver}})
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// Get implements Cache.
func (st *Store) Get(ctx context.Context, scope, cache, key string) (Entry, bool, error) {
	s, _, name, err := st.resolve(scope, cache)
	if err != nil {
		return Entry{}, false, err
	}
	if err := checkKey(key); err != nil {
		return Entry{}, false, err
	}
	it, found, err := s.read(ctx, PartitionOf(name, key, s.nparts), name, key)
	if err != nil || !found {
		return Entry{}, false, err
	}
	e := Entry{Value: it.Value, Version: it.Ver}
	if it.Expires != 0 {
		e.Expires = time.Unix(0, it.Expires)
	}
	return e, true, nil
}

// Caches implements Cache.
func (st *Store) Caches(ctx context.Context, scope string) ([]CacheInfo, error) {
	if scope != "" {
		if err := checkName("scope", scope); err != nil {
			return nil, err
		}
	}
	var out []CacheInfo
	for _, name := range st.order {
		s := st.services[name]
		sizes, err := s.sizes(ctx)
		if err != nil {
			return nil, err
		}
		for c, n := range sizes {
			sc, cname, ok := strings.Cut(c, "/")
			if !ok {
				sc, cname = "", c
			}
			if sc != scope || n == 0 {
				continue
			}
			_, scheme, err := st.schemeOf(cname)
			if err != nil || scheme.Name != name {
				continue
			}
			out = append(out, CacheInfo{Name: cname, Size: n, Scheme: name, Backups: scheme.BackupCount})
		}
	}
	slices.SortFunc(out, func(a, b CacheInfo) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Keys implements Cache.
func (st *Store) Keys(ctx context.Context, scope, cache, prefix, cursor string, limit int) (Page, error) {
	s, _, name, err := st.resolve(scope, cache)
	if err != nil {
		return Page{}, err
	}
	if limit < 1 || limit > 10000 {
		return Page{}, fmt.Errorf("%w: limit must be 1-10000", ErrBadName)
	}
	keys, err := s.keys(ctx, name, prefix, cursor, limit+1)
	if err != nil {
		return Page{}, err
	}
	pg := Page{Keys: keys}
	if len(keys) > limit {
		pg.Keys = keys[:limit]
		pg.Next = pg.Keys[limit-1]
	}
	return pg, nil
}

var _ Cache = (*Store)(nil)
