package config

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Defaults and bounds of the store section, applied by [Config.SetDefaults]
// and checked by [Config.Validate].
const (
	DefaultPartitions     = 257
	DefaultMaxValueSize   = 1 << 20
	DefaultRequestTimeout = 15 * time.Second
	DefaultJournalRetain  = 1024
	DefaultBackupCount    = 1
	DefaultScheme         = "default" // name of the scheme used when none is configured

	MaxPartitions   = 8191
	MinMaxValueSize = 1 << 10  // lower bound for store.max-value-size
	MaxMaxValueSize = 64 << 20 // upper bound for store.max-value-size
	MaxBackupCount  = 6
	maxCacheName    = 128 // bytes of a cache name, scope or pattern
)

// Store configures the site store: named caches of key → value, split into
// partitions that the members of the site own as primaries and backups, and
// federated to other sites (ARCHITECTURE section 7).
//
// Cache names map to schemes through Caches. After SetDefaults, Schemes and
// Caches are never empty and every scheme has its BackupCount.
type Store struct {
	// Partitions is the number of partitions per site, 1 to 8191. Default
	// 257. Both sites must agree; the hello checks it.
	Partitions int `yaml:"partitions"`
	// MaxValueSize is the largest value a put accepts, 1 KiB to 64 MiB.
	// Default 1 MiB.
	MaxValueSize ByteSize `yaml:"max-value-size"`
	// RequestTimeout bounds the time one cache request spends retrying
	// inside the site (partition moves, failover) before it fails as
	// unavailable (HTTP 503). Default 15s.
	RequestTimeout Duration `yaml:"request-timeout"`
	// JournalRetain is the number of journal entries kept per partition
	// when no federation participant needs them. Default 1024; an explicit
	// 0 in a file is kept (in Go, SetDefaults replaces 0 with the default).
	JournalRetain int `yaml:"journal-retain"`
	// Scope is the scope of API requests that name none. Optional; when
	// set, 1-128 characters of A-Z, a-z, 0-9, '.', '_' and '-' (the rule
	// for cache names).
	Scope string `yaml:"scope"`
	// Schemes are the cache schemes, with unique names. Default: one
	// scheme named "default" with one backup.
	Schemes []Scheme `yaml:"schemes"`
	// Caches maps cache names to schemes; the first entry whose pattern
	// matches a name wins. Default: every name ("*") to the first scheme.
	// A cache whose name matches no entry is refused.
	Caches []CacheMapping `yaml:"caches"`
}

// Scheme is how the caches mapped to it are kept.
type Scheme struct {
	// Name is required and unique; same rule as instance names.
	Name string `yaml:"name"`
	// BackupCount is the number of backups of each partition besides its
	// primary, 0 to 6. nil (the key left out) means 1; SetDefaults fills it
	// in. Use [Scheme.Backups] to read it.
	BackupCount *int `yaml:"backup-count"`
	// Expiry is the time to live of entries put without one. 0 (default)
	// means they never expire.
	Expiry Duration `yaml:"expiry"`
	// Federation names the federation topology that ships these caches to
	// other sites: an entry of [Federation.Topologies]. Optional.
	Federation string `yaml:"federation"`
}

// Backups returns the scheme's backup count: BackupCount, or
// DefaultBackupCount when it is nil.
func (s Scheme) Backups() int {
	if s.BackupCount == nil {
		return DefaultBackupCount
	}
	return *s.BackupCount
}

// CacheMapping maps the cache names matching Pattern to a scheme.
type CacheMapping struct {
	// Pattern is a cache name in which '*' stands for any run of
	// characters (including none), such as "trades-*" or "*". Required and
	// unique; 1-128 characters of A-Z, a-z, 0-9, '.', '_', '-' and '*'.
	Pattern string `yaml:"pattern"`
	// Scheme names an entry of Store.Schemes.
	Scheme string `yaml:"scheme"`
}

// Scheme returns the scheme with the given name.
func (s Store) Scheme(name string) (Scheme, bool) {
	i := slices.IndexFunc(s.Schemes, func(sc Scheme) bool { return sc.Name == name })
	if i < 0 {
		return Scheme{}, false
	}
	return s.Schemes[i], true
}

// SchemeFor returns the scheme of the cache named cache (as the caller
// named it, without its scope). As in Coherence, the first entry of Caches
// whose pattern matches the name wins, so list specific patterns before
// general ones. It reports false when no pattern matches: such a cache is
// refused.
func (s Store) SchemeFor(cache string) (Scheme, bool) {
	for _, m := range s.Caches {
		if MatchPattern(m.Pattern, cache) {
			return s.Scheme(m.Scheme)
		}
	}
	return Scheme{}, false
}

// MatchPattern reports whether name matches the cache-name pattern, in
// which '*' matches any run of bytes (including none) and every other byte
// matches itself; matching is case-sensitive. It does not check the
// pattern's syntax.
func MatchPattern(pattern, name string) bool {
	p, n := 0, 0
	star, mark := -1, 0 // the last '*' seen, and where in name it started matching
	for n < len(name) {
		switch {
		case p < len(pattern) && pattern[p] == '*':
			star, mark = p, n
			p++
		case p < len(pattern) && pattern[p] == name[n]:
			p++
			n++
		case star >= 0: // let the last '*' swallow one more byte
			mark++
			p, n = star+1, mark
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}

// clone returns a deep copy of s.
func (s Store) clone() Store {
	s.Schemes = slices.Clone(s.Schemes)
	for i, sc := range s.Schemes {
		if sc.BackupCount != nil {
			s.Schemes[i].BackupCount = new(*sc.BackupCount)
		}
	}
	s.Caches = slices.Clone(s.Caches)
	return s
}

// applyDefaults fills in the store defaults; see Config.applyDefaults.
func (s *Store) applyDefaults(isSet func(path string) bool) {
	if s.Partitions == 0 && !isSet("store.partitions") {
		s.Partitions = DefaultPartitions
	}
	if s.MaxValueSize == 0 && !isSet("store.max-value-size") {
		s.MaxValueSize = DefaultMaxValueSize
	}
	if s.RequestTimeout == 0 && !isSet("store.request-timeout") {
		s.RequestTimeout = Duration(DefaultRequestTimeout)
	}
	if s.JournalRetain == 0 && !isSet("store.journal-retain") {
		s.JournalRetain = DefaultJournalRetain
	}
	if len(s.Schemes) == 0 {
		s.Schemes = []Scheme{{Name: DefaultScheme}}
	}
	for i := range s.Schemes {
		if s.Schemes[i].BackupCount == nil {
			s.Schemes[i].BackupCount = new(DefaultBackupCount)
		}
	}
	if len(s.Caches) == 0 {
		s.Caches = []CacheMapping{{Pattern: "*", Scheme: s.Schemes[0].Name}}
	}
}

func (c *Config) validateStore(v *validator) {
	s := &c.Store
	if s.Partitions < 1 || s.Partitions > MaxPartitions {
		v.add("store.partitions", "must be from 1 to %d, got %d", MaxPartitions, s.Partitions)
	}
	if s.MaxValueSize < MinMaxValueSize || s.MaxValueSize > MaxMaxValueSize {
		v.add("store.max-value-size", "must be from %s to %s, got %s",
			ByteSize(MinMaxValueSize), ByteSize(MaxMaxValueSize), s.MaxValueSize)
	}
	v.positive("store.request-timeout", s.RequestTimeout)
	if s.JournalRetain < 0 {
		v.add("store.journal-retain", "must not be negative, got %d", s.JournalRetain)
	}
	if s.Scope != "" && !validCacheName(s.Scope) {
		v.add("store.scope", "invalid scope %q: want 1-%d characters of A-Z, a-z, 0-9, '.', '_' and '-'", s.Scope, maxCacheName)
	}

	// names holds every scheme name as written, so that a mapping to a
	// scheme whose own name is bad is reported once, at that name.
	names := map[string]int{}
	for i, sc := range s.Schemes {
		path := fmt.Sprintf("store.schemes[%d]", i)
		if j, dup := names[sc.Name]; dup && sc.Name != "" {
			v.add(path+".name", "duplicate scheme name %q (also store.schemes[%d])", sc.Name, j)
		} else {
			v.name(path+".name", sc.Name, true)
			names[sc.Name] = i
		}
		if n := sc.Backups(); n < 0 || n > MaxBackupCount {
			v.add(path+".backup-count", "must be from 0 to %d, got %d", MaxBackupCount, n)
		}
		if sc.Expiry < 0 {
			v.add(path+".expiry", "must not be negative")
		}
		v.name(path+".federation", sc.Federation, false)
	}

	patterns := map[string]int{}
	for i, m := range s.Caches {
		path := fmt.Sprintf("store.caches[%d]", i)
		switch {
		case m.Pattern == "":
			v.add(path+".pattern", "is required")
		case !validPattern(m.Pattern):
			v.add(path+".pattern", "invalid pattern %q: want 1-%d characters of A-Z, a-z, 0-9, '.', '_', '-' and '*'", m.Pattern, maxCacheName)
		default:
			if j, dup := patterns[m.Pattern]; dup {
				v.add(path+".pattern", "duplicate pattern %q (also store.caches[%d])", m.Pattern, j)
				break
			}
			patterns[m.Pattern] = i
			// '*' is not a cache name character, so an earlier pattern
			// matches this one, read as a name, exactly when it matches
			// every name this one does: this entry could never be used.
			for j, prev := range s.Caches[:i] {
				if validPattern(prev.Pattern) && MatchPattern(prev.Pattern, m.Pattern) {
					v.add(path+".pattern", "pattern %q is never used: every name it matches matches store.caches[%d] (%q) first", m.Pattern, j, prev.Pattern)
					break
				}
			}
		}
		if _, known := names[m.Scheme]; !known {
			if m.Scheme == "" {
				v.add(path+".scheme", "is required")
			} else {
				v.add(path+".scheme", "unknown scheme %q%s", m.Scheme, suggestScheme(m.Scheme, s.Schemes))
			}
		}
	}
}

// suggestScheme returns a hint for an unknown scheme name: the closest
// defined one, or the list of defined ones.
func suggestScheme(name string, schemes []Scheme) string {
	known := map[string]int{}
	var defined []string
	for i, sc := range schemes {
		if _, dup := known[sc.Name]; sc.Name != "" && !dup {
			known[sc.Name] = i
			defined = append(defined, strconv.Quote(sc.Name))
		}
	}
	if hint := suggest(name, known); hint != "" || len(defined) == 0 {
		return hint
	}
	return " (defined: " + strings.Join(defined, ", ") + ")"
}

// validCacheName checks the rule for cache names and scopes: 1-128
// characters of A-Z, a-z, 0-9, '.', '_' and '-'.
func validCacheName(s string) bool {
	return len(s) > 0 && len(s) <= maxCacheName && strings.Trim(s, cacheNameChars) == ""
}

// validPattern checks a cache-name pattern: a cache name that may also
// contain '*'.
func validPattern(s string) bool {
	return len(s) > 0 && len(s) <= maxCacheName && strings.Trim(s, cacheNameChars+"*") == ""
}

const cacheNameChars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"
