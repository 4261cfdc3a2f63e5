package cacheclient

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sitebridge/sitebridge/cacheapi"
	"github.com/sitebridge/sitebridge/cacheapi/cachetest"
	"github.com/sitebridge/sitebridge/store"
)

const token = "s3cret"

// newServer serves the cache API over m as the admin endpoint does: on
// both prefix patterns, behind a bearer token.
func newServer(t *testing.T, m store.Cache) *httptest.Server {
	t.Helper()
	h := cacheapi.Handler(m, cacheapi.Options{Log: slog.New(slog.NewTextHandler(t.Output(), nil))})
	guarded := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+token {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			w.Write([]byte(`{"error":"missing or wrong bearer token"}`))
			return
		}
		h.ServeHTTP(w, r)
	})
	mux := http.NewServeMux()
	mux.Handle(cacheapi.Prefix, guarded)
	mux.Handle(cacheapi.Prefix+"/", guarded)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func newClient(t *testing.T, srv *httptest.Server, opts ...Option) *Client {
	c := New(strings.TrimPrefix(srv.URL, "http://"), append([]Option{WithToken(token)}, opts...)...)
	t.Cleanup(c.CloseIdleConnections)
	return c
}

func TestRoundTrip(t *testing.T) {
	ctx := context.Background()
	m := cachetest.New(1<<10, nil)
	c := newClient(t, newServer(t, m))

	keys := []string{"k", "a/b", "a//b", ".", "..", "x y", "100%", "?#&=", "\xff\xfe", "ünï", "trail/"}
	for _, k := range keys {
		if err := c.Put(ctx, "c", k, []byte("v:"+k), 0); err != nil {
			t.Fatalf("Put %q: %v", k, err)
		}
	}
	for _, k := range keys {
		v, ok, err := c.Get(ctx, "c", k)
		if err != nil || !ok || string(v) != "v:"+k {
			t.Errorf("Get %q = %q, %v, %v", k, v, ok, err)
		}
	}
	if v, ok, err := c.Get(ctx, "c", "absent"); err != nil || ok || v != nil {
		t.Errorf("Get absent = %q, %v, %v; want nothing", v, ok, err)
	}

	// Put with a TTL; GetEntry reports version and expiry.
	before := time.Now()
	if err := c.Put(ctx, "c", "ttl", []byte("t"), time.Hour); err != nil {
		t.Fatal(err)
	}
	e, ok, err := c.GetEntry(ctx, "c", "ttl")
	want, _, _ := m.Get(ctx, "", "c", "ttl")
	if err != nil || !ok || string(e.Value) != "t" || e.Version != want.Version || !e.Expires.Equal(want.Expires) || e.Expires.Before(before.Add(time.Hour)) {
		t.Errorf("GetEntry = %+v, %v, %v; want %+v", e, ok, err, want)
	}
	if e, _, _ := c.GetEntry(ctx, "c", "k"); !e.Expires.IsZero() || e.Version.IsZero() {
		t.Errorf("GetEntry without ttl = %+v", e)
	}
	if err := c.Put(ctx, "c", "empty", nil, 0); err != nil {
		t.Fatal(err)
	}
	if v, ok, err := c.Get(ctx, "c", "empty"); err != nil || !ok || len(v) != 0 {
		t.Errorf("Get empty = %q, %v, %v", v, ok, err)
	}

	// Keys, page by page, exact whatever their bytes.
	var all []string
	for cursor := ""; ; {
		p, err := c.Keys(ctx, "c", "", cursor, 3)
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Keys) > 3 {
			t.Fatalf("page of %d keys, limit 3", len(p.Keys))
		}
		all = append(all, p.Keys...)
		if p.Next == "" {
			break
		}
		cursor = p.Next
	}
	wantKeys := append(slices.Clone(keys), "ttl", "empty")
	slices.Sort(wantKeys)
	if !slices.Equal(all, wantKeys) {
		t.Errorf("Keys = %q\nwant   %q", all, wantKeys)
	}
	if p, err := c.Keys(ctx, "c", "a/", "", 0); err != nil || !slices.Equal(p.Keys, []string{"a//b", "a/b"}) || p.Next != "" {
		t.Errorf("Keys prefix a/ = %q, %v", p, err)
	}

	// Caches and scopes.
	if err := c.Scoped("s1").Put(ctx, "d", "k", []byte("scoped"), 0); err != nil {
		t.Fatal(err)
	}
	infos, err := c.Caches(ctx)
	if err != nil || len(infos) != 1 || infos[0].Name != "c" || infos[0].Size != int64(len(wantKeys)) {
		t.Errorf("Caches = %+v, %v", infos, err)
	}
	s1 := newClient(t, newServer(t, m), WithScope("s1"))
	if infos, err := s1.Caches(ctx); err != nil || len(infos) != 1 || infos[0].Name != "d" {
		t.Errorf("Caches of s1 = %+v, %v", infos, err)
	}
	if v, _, _ := s1.Get(ctx, "d", "k"); string(v) != "scoped" {
		t.Errorf("Get in s1 = %q", v)
	}

	// Delete and Clear.
	if existed, err := c.Delete(ctx, "c", "a/b"); err != nil || !existed {
		t.Errorf("Delete = %v, %v", existed, err)
	}
	if existed, err := c.Delete(ctx, "c", "a/b"); err != nil || existed {
		t.Errorf("Delete again = %v, %v", existed, err)
	}
	if err := c.Clear(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	if infos, err := c.Caches(ctx); err != nil || len(infos) != 0 {
		t.Errorf("Caches after Clear = %+v, %v", infos, err)
	}
	if p, err := c.Keys(ctx, "c", "", "", 10); err != nil || len(p.Keys) != 0 {
		t.Errorf("Keys after Clear = %+v, %v", p, err)
	}
}

func TestErrors(t *testing.T) {
	ctx := context.Background()
	m := cachetest.New(8, nil)
	srv := newServer(t, m)
	c := newClient(t, srv)

	var ae *APIError
	err := c.Put(ctx, "c", "k", bytes.Repeat([]byte("x"), 9), 0)
	if !errors.Is(err, store.ErrTooLarge) || !errors.As(err, &ae) || ae.Status != 413 || ae.Code != cacheapi.CodeTooLarge {
		t.Errorf("oversized Put: %#v", err)
	}
	if m.Len() != 0 {
		t.Error("oversized Put stored something")
	}
	if _, _, err := c.Get(ctx, "bad name", "k"); !errors.Is(err, store.ErrBadName) || errors.Is(err, store.ErrTooLarge) {
		t.Errorf("bad cache name: %v", err)
	}
	if _, err := c.Keys(ctx, "c", "", "", 10001); !errors.As(err, &ae) || ae.Code != cacheapi.CodeBadRequest {
		t.Errorf("limit 10001: %v", err)
	}
	for _, f := range []func() error{
		func() error { return c.Put(ctx, "", "k", nil, 0) },
		func() error { return c.Put(ctx, "c", "", nil, 0) },
		func() error { _, _, err := c.Get(ctx, "c", ""); return err },
		func() error { _, err := c.Delete(ctx, "", "k"); return err },
		func() error { return c.Clear(ctx, "") },
		func() error { _, err := c.Keys(ctx, "", "", "", 0); return err },
	} {
		if err := f(); !errors.Is(err, store.ErrBadName) {
			t.Errorf("empty name: %v, want ErrBadName", err)
		}
	}

	for _, tc := range []struct {
		fail error
		want error
	}{
		{fmt.Errorf("partition 3: %w", store.ErrUnavailable), store.ErrUnavailable},
		{store.ErrStopped, store.ErrStopped},
		{fmt.Errorf("%w: cache", store.ErrBadName), store.ErrBadName},
		{fmt.Errorf("%w: too big", store.ErrTooLarge), store.ErrTooLarge},
	} {
		m.Fail(tc.fail)
		for _, err := range []error{
			c.Put(ctx, "c", "k", []byte("v"), 0),
			func() error { _, _, err := c.Get(ctx, "c", "k"); return err }(),
			func() error { _, err := c.Delete(ctx, "c", "k"); return err }(),
			c.Clear(ctx, "c"),
			func() error { _, err := c.Caches(ctx); return err }(),
			func() error { _, err := c.Keys(ctx, "c", "", "", 0); return err }(),
		} {
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.fail.Error()) {
				t.Errorf("store failing with %q: client got %v", tc.fail, err)
			}
		}
	}
	m.Fail(errors.New("boom"))
	if err := c.Put(ctx, "c", "k", nil, 0); !errors.As(err, &ae) || ae.Status != 500 || ae.Code != cacheapi.CodeInternal ||
		errors.Is(err, store.ErrUnavailable) || err.Error() != "boom (HTTP 500)" {
		t.Errorf("internal error: %v", err)
	}
	m.Fail(nil)

	noToken := New(srv.URL)
	defer noToken.CloseIdleConnections()
	if _, err := noToken.Caches(ctx); !errors.As(err, &ae) || ae.Status != 401 || ae.Message != "missing or wrong bearer token" {
		t.Errorf("without a token: %v", err)
	}
	// Not the cache API (nothing mounted there): a 404 is an error, not
	// an absent key.
	other := New(srv.URL+"/elsewhere", WithToken(token))
	defer other.CloseIdleConnections()
	if _, ok, err := other.Get(ctx, "c", "k"); ok || !errors.As(err, &ae) || ae.Status != 404 {
		t.Errorf("Get from a path without the API: %v %v", ok, err)
	}
	if _, err := New("ftp://x").Caches(ctx); err == nil {
		t.Error("ftp URL accepted")
	}
}

func TestCodelessErrors(t *testing.T) {
	for _, tc := range []struct {
		e    APIError
		want error
	}{
		{APIError{Status: 503}, store.ErrUnavailable},
		{APIError{Status: 413}, store.ErrTooLarge},
		{APIError{Status: 503, Code: cacheapi.CodeStopped}, store.ErrStopped},
	} {
		if !errors.Is(&tc.e, tc.want) {
			t.Errorf("%+v is not %v", tc.e, tc.want)
		}
	}
	if errors.Is(&APIError{Status: 400}, store.ErrBadName) {
		t.Error("a 400 without a code is ErrBadName")
	}
}

func TestBaseURL(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:9100":          "http://127.0.0.1:9100",
		"[::1]:9100":              "http://[::1]:9100",
		"http://h:1/":             "http://h:1",
		"https://h:1":             "https://h:1",
		"http://h:1/proxy/admin/": "http://h:1/proxy/admin",
	} {
		if got, err := baseURL(in); err != nil || got != want {
			t.Errorf("baseURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "ftp://h", "http://", "http://h:1:2:3%"} {
		if got, err := baseURL(in); err == nil {
			t.Errorf("baseURL(%q) = %q, want an error", in, got)
		}
	}
}

// TestConcurrent drives one client from many goroutines, as the benchmark
// does.
func TestConcurrent(t *testing.T) {
	ctx := context.Background()
	m := cachetest.New(1<<10, nil)
	c := newClient(t, newServer(t, m))
	var wg sync.WaitGroup
	for g := range 32 {
		wg.Go(func() {
			for i := range 20 {
				k := fmt.Sprintf("g%d/%d", g, i)
				if err := c.Put(ctx, "c", k, []byte(k), 0); err != nil {
					t.Error(err)
					return
				}
				if v, ok, err := c.Get(ctx, "c", k); err != nil || !ok || string(v) != k {
					t.Errorf("Get %s = %q %v %v", k, v, ok, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if n := m.Len(); n != 32*20 {
		t.Errorf("%d entries, want %d", n, 32*20)
	}
}
