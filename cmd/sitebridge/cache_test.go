package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sitebridge/sitebridge/cacheapi"
	"github.com/sitebridge/sitebridge/cacheapi/cachetest"
	"github.com/sitebridge/sitebridge/store"
)

// cacheServer serves the cache API over a fresh in-memory store, behind
// the bearer token "s3cret", and returns the store and its host:port.
func cacheServer(t *testing.T) (*cachetest.Memory, string) {
	t.Helper()
	t.Setenv("SITEBRIDGE_ADMIN", "")
	t.Setenv("SITEBRIDGE_TOKEN", "")
	m := cachetest.New(64, nil)
	h := cacheapi.Handler(m, cacheapi.Options{})
	guarded := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer s3cret" {
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
	return m, strings.TrimPrefix(srv.URL, "http://")
}

func TestCacheCommand(t *testing.T) {
	m, addr := cacheServer(t)
	conn := []string{"--admin", addr, "--token", "s3cret"}
	cache := func(args ...string) (string, string, error) {
		t.Helper()
		// The connection flags go right after the command, before any "--".
		return runCmd(t, append(append([]string{"cache", args[0]}, conn...), args[1:]...)...)
	}
	mustCache := func(args ...string) string {
		t.Helper()
		out, errOut, err := cache(args...)
		if err != nil {
			t.Fatalf("cache %q: %v\n%s", args, err, errOut)
		}
		return out
	}

	mustCache("put", "c", "k", "hello")
	mustCache("put", "c", "a/b c", "slashed")
	mustCache("put", "--ttl", "1h", "c", "t", "expiring") // flags before the arguments
	mustCache("put", "c", "--", "-dash", "-value")
	mustCache("put", "other", "k", "x", "--scope", "s1")
	if out := mustCache("get", "c", "k"); out != "hello" {
		t.Errorf("get = %q", out)
	}
	if out := mustCache("get", "c", "a/b c"); out != "slashed" {
		t.Errorf("get a/b c = %q", out)
	}
	if out := mustCache("get", "c", "--", "-dash"); out != "-value" {
		t.Errorf("get -dash = %q", out)
	}
	if out := mustCache("get", "other", "k", "--scope", "s1"); out != "x" {
		t.Errorf("get in scope s1 = %q", out)
	}

	var e entryJSON
	out := mustCache("get", "c", "t", "-o", "json")
	if err := json.Unmarshal([]byte(out), &e); err != nil || e.Value == nil || *e.Value != "expiring" ||
		e.Expires == nil || time.Until(*e.Expires) < 59*time.Minute || e.Version.IsZero() {
		t.Errorf("get -o json: %v\n%s", err, out)
	}

	// Standard input.
	var o, se bytes.Buffer
	if err := cmdCache(context.Background(), append([]string{"put", "c", "bin", "-"}, conn...), bytes.NewReader([]byte{0xff, 0, 1}), &o, &se); err != nil {
		t.Fatal(err)
	}
	if v, _, _ := m.Get(context.Background(), "", "c", "bin"); !bytes.Equal(v.Value, []byte{0xff, 0, 1}) {
		t.Errorf("put - stored %q", v.Value)
	}
	if out := mustCache("get", "c", "bin", "-o", "json"); !strings.Contains(out, `"value_base64": "/wAB"`) {
		t.Errorf("get -o json of a binary value:\n%s", out)
	}

	// Listings.
	out = mustCache("ls")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 2 ||
		strings.Join(strings.Fields(lines[0]), " ") != "CACHE SIZE SCHEME BACKUPS" ||
		strings.Join(strings.Fields(lines[1]), " ") != "c 5 default 1" {
		t.Errorf("ls:\n%s", out)
	}
	var cr cacheapi.CachesResponse
	if out := mustCache("ls", "-o", "json", "--scope", "s1"); json.Unmarshal([]byte(out), &cr) != nil || len(cr.Caches) != 1 || cr.Caches[0].Name != "other" {
		t.Errorf("ls -o json --scope s1:\n%s", out)
	}
	if out := mustCache("ls", "c"); out != "-dash\na/b c\nbin\nk\nt\n" {
		t.Errorf("ls c = %q", out)
	}
	if out := mustCache("ls", "c", "--prefix", "a/"); out != "a/b c\n" {
		t.Errorf("ls c --prefix a/ = %q", out)
	}
	out, errOut, err := cache("ls", "c", "--limit", "2")
	if err != nil || out != "-dash\na/b c\n" || !strings.Contains(errOut, `--cursor "a/b c"`) {
		t.Errorf("ls c --limit 2: %v %q %q", err, out, errOut)
	}
	if out := mustCache("ls", "c", "--limit", "2", "--cursor", "a/b c"); out != "bin\nk\n" {
		t.Errorf("ls c --cursor = %q", out)
	}
	if out := mustCache("ls", "c", "--limit", "2", "--all"); out != "-dash\na/b c\nbin\nk\nt\n" {
		t.Errorf("ls c --all = %q", out)
	}
	var kr cacheapi.KeysResponse
	if out := mustCache("ls", "c", "--limit", "1", "--all", "-o", "json"); json.Unmarshal([]byte(out), &kr) != nil || len(kr.Keys) != 5 || kr.Next != "" {
		t.Errorf("ls c --all -o json:\n%s", out)
	}

	// Absent keys: exit 1 with a message.
	for _, args := range [][]string{{"get", "c", "nope"}, {"del", "c", "nope"}} {
		out, _, err := cache(args...)
		if err == nil || exitCode(err) != 1 || !strings.Contains(err.Error(), "not found") || out != "" {
			t.Errorf("%q: %v (out %q), want exit 1 and not found", args, err, out)
		}
	}
	mustCache("del", "c", "k")
	if _, ok, _ := m.Get(context.Background(), "", "c", "k"); ok {
		t.Error("del left the key")
	}
	mustCache("clear", "c")
	if out := mustCache("ls", "c"); out != "" {
		t.Errorf("ls after clear = %q", out)
	}

	// Server errors: exit 1 with the API's message.
	m.Fail(fmt.Errorf("partition 3: %w", store.ErrUnavailable))
	if _, _, err := cache("get", "c", "k"); exitCode(err) != 1 || !strings.Contains(err.Error(), "partition 3: store unavailable (HTTP 503)") {
		t.Errorf("unavailable store: %v", err)
	}
	m.Fail(nil)
	if _, _, err := cache("put", "c", "k", strings.Repeat("x", 65)); exitCode(err) != 1 || !errors.Is(err, store.ErrTooLarge) {
		t.Errorf("oversized put: %v", err)
	}
	if _, _, err := cache("put", "bad name", "k", "v"); exitCode(err) != 1 || !errors.Is(err, store.ErrBadName) {
		t.Errorf("bad cache name: %v", err)
	}
	if _, _, err := runCmd(t, "cache", "ls", "--admin", addr); exitCode(err) != 1 || !strings.Contains(err.Error(), "bearer token") {
		t.Errorf("without the token: %v", err)
	}

	// The environment supplies --admin and --token.
	t.Setenv("SITEBRIDGE_ADMIN", "http://"+addr)
	t.Setenv("SITEBRIDGE_TOKEN", "s3cret")
	if _, _, err := runCmd(t, "cache", "put", "c", "env", "v"); err != nil {
		t.Errorf("with the environment: %v", err)
	}
	if out, _, err := runCmd(t, "cache", "get", "c", "env"); err != nil || out != "v" {
		t.Errorf("with the environment: %q %v", out, err)
	}
}

func TestCacheUsageErrors(t *testing.T) {
	_, addr := cacheServer(t)
	for _, args := range [][]string{
		{"cache"},
		{"cache", "bogus"},
		{"cache", "put", "c", "k"},
		{"cache", "put", "c", "k", "v", "extra"},
		{"cache", "put", "c", "k", "v", "--ttl", "soon"},
		{"cache", "put", "c", "k", "v", "--ttl", "-1s"},
		{"cache", "put", "c", "k", "v", "--nope"},
		{"cache", "get", "c"},
		{"cache", "get", "c", "k", "-o", "xml"},
		{"cache", "del", "c"},
		{"cache", "clear"},
		{"cache", "clear", "c", "d"},
		{"cache", "ls", "c", "d"},
		{"cache", "ls", "--prefix", "p"},
		{"cache", "ls", "--all"},
		{"cache", "ls", "c", "--limit", "0"},
		{"cache", "ls", "c", "--limit", "10001"},
		{"cache", "ls", "c", "--prefix", "p", "--limit", "-1"},
		{"cache", "ls", "-o", "yaml"},
	} {
		_, _, err := runCmd(t, append(args, "--admin", addr, "--token", "s3cret")...)
		if !errors.Is(err, errUsage) || exitCode(err) != 2 {
			t.Errorf("%q: err %v (exit %d), want a usage error (exit 2)", args, err, exitCode(err))
		}
	}
	if out, _, err := runCmd(t, "cache", "help"); err != nil || !strings.Contains(out, "sitebridge cache put CACHE KEY VALUE") {
		t.Errorf("cache help: %v\n%s", err, out)
	}
	if _, errOut, err := runCmd(t, "cache", "put", "-h"); exitCode(err) != 2 || !strings.Contains(errOut, "-ttl") {
		t.Errorf("cache put -h: %v\n%s", err, errOut)
	}
}
