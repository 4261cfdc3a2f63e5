// Package cacheapi serves a site's caches ([store.Cache]) over HTTP, on the
// admin endpoint, and defines that HTTP contract for the Go client
// (package cacheclient) and the CLI.
//
// # Endpoints
//
// Paths are under [Prefix] (/api/v1/caches). {cache} is one path segment;
// {key} is the rest of the path, so it may contain '/' either literally or
// escaped as %2F, and any other byte percent-escaped: a/b, a%2Fb and
// x%20y name the keys "a/b", "a/b" and "x y". Clients should escape '/' in
// keys (as [KeyPath] does): a literal "//" or a "." or ".." segment is
// cleaned, with a redirect, by http.ServeMux before it reaches the
// handler.
//
//	GET    /api/v1/caches                   200 {"caches":[{"name","size","scheme","backups"}]}
//	GET    /api/v1/caches/{cache}           200 {"keys":[...],"next":"..."}  (?prefix= &limit=1..10000, default 100 &cursor= &encoding=path)
//	DELETE /api/v1/caches/{cache}           204 (every entry removed)
//	PUT    /api/v1/caches/{cache}/{key}     204 (body: the value; ?ttl=30s, a Go duration, 0 or absent: no expiry)
//	GET    /api/v1/caches/{cache}/{key}     200 raw value, application/octet-stream, X-Sitebridge-Version, X-Sitebridge-Expires
//	DELETE /api/v1/caches/{cache}/{key}     204 when it existed, 404 not-found when it did not
//
// HEAD is accepted wherever GET is. Every request may carry ?scope=NAME;
// absent or empty means [Options.DefaultScope]. Other query parameters are
// ignored.
//
// # Key listings
//
// Keys are strings in JSON, and encoding/json replaces bytes that are not
// valid UTF-8 with U+FFFD, so such keys do not survive a plain listing.
// With ?encoding=path every key and the next cursor are sent escaped as
// by [url.PathEscape] (pure ASCII, exact); the Go client always asks for
// that. Cursors are opaque: pass next back unchanged as ?cursor=.
//
// # Errors
//
// Errors are JSON, {"error":"message","code":"..."} ([ErrorResponse]):
//
//	400 bad-name            store.ErrBadName: empty, too long or invalid cache, key or scope (an empty key included)
//	400 bad-request         malformed request: bad ttl, limit, encoding, query or percent-escape
//	404 not-found           no such key (GET, DELETE), or a path outside the API
//	405 method-not-allowed  with an Allow header
//	413 too-large           store.ErrTooLarge, or a body over the store's MaxValueSize (nothing is stored)
//	503 unavailable         store.ErrUnavailable or a timeout; with Retry-After: 1
//	503 journal-full        store.ErrJournalFull: a federation participant is not taking
//	                        changes and the journal limit (policy block) is reached
//	503 stopped             store.ErrStopped: the store is shutting down
//	500 internal            anything else
package cacheapi

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"

	"github.com/sitebridge/sitebridge/store"
)

// Prefix is the path under which the API is served. The admin server
// mounts [Handler] on both Prefix and Prefix + "/".
const Prefix = "/api/v1/caches"

// Response headers of GET /api/v1/caches/{cache}/{key}.
const (
	// HeaderVersion is the entry's version as <wall>.<logical>@<site>
	// (store.Version.String); see [ParseVersion].
	HeaderVersion = "X-Sitebridge-Version"
	// HeaderExpires is the entry's expiry in RFC 3339 with nanoseconds,
	// UTC; absent when the entry does not expire.
	HeaderExpires = "X-Sitebridge-Expires"
)

// Error codes of [ErrorResponse].
const (
	CodeBadName          = "bad-name"
	CodeTooLarge         = "too-large"
	CodeUnavailable      = "unavailable"
	CodeStopped          = "stopped"
	CodeJournalFull      = "journal-full"
	CodeNotFound         = "not-found"
	CodeBadRequest       = "bad-request"
	CodeMethodNotAllowed = "method-not-allowed"
	CodeInternal         = "internal"
)

// EncodingPath is the value of ?encoding= that asks a key listing to send
// its keys and cursor escaped with url.PathEscape.
const EncodingPath = "path"

// Limits of ?limit= on a key listing.
const (
	DefaultLimit = 100
	MaxLimit     = 10000
)

// ErrorResponse is the body of every error response.
type ErrorResponse struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

// CachesResponse is the body of GET /api/v1/caches.
type CachesResponse struct {
	Caches []store.CacheInfo `json:"caches"`
}

// KeysResponse is the body of GET /api/v1/caches/{cache}.
type KeysResponse struct {
	Keys []string `json:"keys"`
	// Next is the cursor of the following page; empty on the last page.
	Next string `json:"next"`
	// Encoding is "path" when Keys and Next are path-escaped.
	Encoding string `json:"encoding,omitempty"`
}

// CachePath returns the escaped path of a cache: Prefix/{cache}.
func CachePath(cache string) string {
	return Prefix + "/" + escapeSegment(cache)
}

// KeyPath returns the escaped path of a key: Prefix/{cache}/{key}, with
// every byte of cache and key that is not safe in a path segment, '/'
// included, percent-escaped, and a key of "." or ".." escaped too, so that
// no path cleaning can alter it.
func KeyPath(cache, key string) string {
	return CachePath(cache) + "/" + escapeSegment(key)
}

func escapeSegment(s string) string {
	switch s {
	case ".":
		return "%2E"
	case "..":
		return "%2E%2E"
	}
	return url.PathEscape(s)
}

// ParseVersion parses a version in the form of [HeaderVersion],
// <wall>.<logical>@<site>.
func ParseVersion(s string) (store.Version, error) {
	clock, site, ok := strings.Cut(s, "@")
	wall, logical, ok2 := strings.Cut(clock, ".")
	if !ok || !ok2 {
		return store.Version{}, fmt.Errorf("version %q: want WALL.LOGICAL@SITE", s)
	}
	w, err := strconv.ParseInt(wall, 10, 64)
	if err != nil {
		return store.Version{}, fmt.Errorf("version %q: wall: %w", s, err)
	}
	l, err := strconv.ParseUint(logical, 10, 32)
	if err != nil {
		return store.Version{}, fmt.Errorf("version %q: logical: %w", s, err)
	}
	return store.Version{Wall: w, Logical: uint32(l), Site: site}, nil
}
