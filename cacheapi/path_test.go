package cacheapi

import (
	"errors"
	"net/url"
	"path"
	"testing"

	"github.com/sitebridge/sitebridge/store"
)

var pathCases = []struct {
	path    string
	want    target
	wantErr bool
	noRoute bool
}{
	{path: "/api/v1/caches", want: target{route: routeCaches}},
	{path: "/api/v1/caches/", want: target{route: routeCaches}},
	{path: "/api/v1/caches/c", want: target{route: routeCache, cache: "c"}},
	{path: "/api/v1/caches/c/", want: target{route: routeKey, cache: "c"}},
	{path: "/api/v1/caches/c/k", want: target{route: routeKey, cache: "c", key: "k"}},
	{path: "/api/v1/caches/c/a/b", want: target{route: routeKey, cache: "c", key: "a/b"}},
	{path: "/api/v1/caches/c/a%2Fb", want: target{route: routeKey, cache: "c", key: "a/b"}},
	{path: "/api/v1/caches/c/a%2fb/", want: target{route: routeKey, cache: "c", key: "a/b/"}},
	{path: "/api/v1/caches/c/x%20y", want: target{route: routeKey, cache: "c", key: "x y"}},
	{path: "/api/v1/caches/c/a+b", want: target{route: routeKey, cache: "c", key: "a+b"}},
	{path: "/api/v1/caches/c/%FF%00", want: target{route: routeKey, cache: "c", key: "\xff\x00"}},
	{path: "/api/v1/caches/c%2Fd/k", want: target{route: routeKey, cache: "c/d", key: "k"}},
	{path: "/api/v1/caches//k", want: target{route: routeKey, key: "k"}},
	{path: "/api/v1/caches/c/%zz", wantErr: true},
	{path: "/api/v1/caches/%/k", wantErr: true},
	{path: "/api/v1/cachesX", wantErr: true, noRoute: true},
	{path: "/api/v1/cache", wantErr: true, noRoute: true},
	{path: "", wantErr: true, noRoute: true},
}

func TestParsePath(t *testing.T) {
	for _, tc := range pathCases {
		got, err := parsePath(Prefix, tc.path)
		if (err != nil) != tc.wantErr || errors.Is(err, errNoRoute) != tc.noRoute || got != tc.want {
			t.Errorf("parsePath(%q) = %+v, %v; want %+v (error %v, no route %v)", tc.path, got, err, tc.want, tc.wantErr, tc.noRoute)
		}
	}
}

func TestKeyPath(t *testing.T) {
	for _, tc := range []struct{ cache, key, want string }{
		{"c", "k", "/api/v1/caches/c/k"},
		{"c", "a/b", "/api/v1/caches/c/a%2Fb"},
		{"c", "x y", "/api/v1/caches/c/x%20y"},
		{"c", ".", "/api/v1/caches/c/%2E"},
		{"c", "..", "/api/v1/caches/c/%2E%2E"},
		{"c", "...", "/api/v1/caches/c/..."},
		{"c", "?#;,", "/api/v1/caches/c/%3F%23%3B%2C"},
	} {
		if got := KeyPath(tc.cache, tc.key); got != tc.want {
			t.Errorf("KeyPath(%q, %q) = %q, want %q", tc.cache, tc.key, got, tc.want)
		}
	}
}

func TestParseVersion(t *testing.T) {
	for _, v := range []store.Version{{}, {Wall: 1772366400000000001, Logical: 7, Site: "cloud"}, {Wall: -5, Site: "a@b"}} {
		got, err := ParseVersion(v.String())
		if err != nil || got != v {
			t.Errorf("ParseVersion(%q) = %v, %v", v.String(), got, err)
		}
	}
	for _, s := range []string{"", "1.2", "1@s", "x.1@s", "1.x@s", "1.4294967296@s"} {
		if _, err := ParseVersion(s); err == nil {
			t.Errorf("ParseVersion(%q) succeeded", s)
		}
	}
}

// FuzzParsePath checks that parsePath never panics, and that every cache
// name and key survives KeyPath, the request-target parsing a server does
// and parsePath unchanged, with a path that a ServeMux would not clean.
func FuzzParsePath(f *testing.F) {
	for _, tc := range pathCases {
		f.Add("c", tc.path)
	}
	for _, k := range []string{"a/b", "a%2Fb", "x y", ".", "..", "/", "//", "a/../b", "\xff\x00", "?#", "ünï"} {
		f.Add("c", k)
	}
	f.Fuzz(func(t *testing.T, cache, key string) {
		parsePath(Prefix, key)
		parsePath(Prefix, Prefix+"/"+key)

		p := KeyPath(cache, key)
		u, err := url.ParseRequestURI(p)
		if err != nil {
			t.Fatalf("KeyPath(%q, %q) = %q, which does not parse: %v", cache, key, p, err)
		}
		got, err := parsePath(Prefix, u.EscapedPath())
		if want := (target{route: routeKey, cache: cache, key: key}); err != nil || got != want {
			t.Fatalf("KeyPath(%q, %q) = %q parses as %+v, %v", cache, key, p, got, err)
		}
		if cache != "" && key != "" && path.Clean(p) != p {
			t.Fatalf("KeyPath(%q, %q) = %q, which path cleaning changes to %q", cache, key, p, path.Clean(p))
		}
		if cache != "" {
			got, err = parsePath(Prefix, CachePath(cache))
			if want := (target{route: routeCache, cache: cache}); err != nil || got != want {
				t.Fatalf("CachePath(%q) parses as %+v, %v", cache, got, err)
			}
		}
	})
}
