package cacheapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sitebridge/sitebridge/cacheapi/cachetest"
	"github.com/sitebridge/sitebridge/store"
)

var testNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const testMax = 16

// seeded returns a store holding a few entries in scope "" and "s1".
func seeded(t *testing.T) *cachetest.Memory {
	t.Helper()
	m := cachetest.New(testMax, func() time.Time { return testNow })
	for _, kv := range []struct{ scope, cache, key, value string }{
		{"", "c", "a/b", "slash"},
		{"", "c", "x y", "space"},
		{"", "c", "k", "v"},
		{"", "c", "pre/1", "p1"},
		{"", "c", "pre/2", "p2"},
		{"", "c", "\xff\xfe", "binary key"},
		{"", "d", "k", "in d"},
		{"s1", "c", "k", "scoped"},
	} {
		if err := m.Put(context.Background(), kv.scope, kv.cache, kv.key, []byte(kv.value), 0); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

// mount serves h as the admin server will: on Prefix and Prefix + "/" of a
// ServeMux that also serves other paths.
func mount(h http.Handler) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle(Prefix, h)
	mux.Handle(Prefix+"/", h)
	mux.HandleFunc("GET /api/v1/status", func(w http.ResponseWriter, r *http.Request) {})
	return mux
}

func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func get(t *testing.T, m *cachetest.Memory, scope, cache, key string) (string, bool) {
	t.Helper()
	e, ok, err := m.Get(context.Background(), scope, cache, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(e.Value), ok
}

func TestHandler(t *testing.T) {
	type check func(t *testing.T, m *cachetest.Memory, rec *httptest.ResponseRecorder)
	stored := func(scope, cache, key, want string) check {
		return func(t *testing.T, m *cachetest.Memory, _ *httptest.ResponseRecorder) {
			if got, ok := get(t, m, scope, cache, key); !ok || got != want {
				t.Errorf("stored %s/%s/%q = %q, %v; want %q", scope, cache, key, got, ok, want)
			}
		}
	}
	absent := func(scope, cache, key string) check {
		return func(t *testing.T, m *cachetest.Memory, _ *httptest.ResponseRecorder) {
			if got, ok := get(t, m, scope, cache, key); ok {
				t.Errorf("%s/%s/%q holds %q; want nothing", scope, cache, key, got)
			}
		}
	}
	header := func(name, want string) check {
		return func(t *testing.T, _ *cachetest.Memory, rec *httptest.ResponseRecorder) {
			if got := rec.Header().Get(name); got != want {
				t.Errorf("header %s = %q, want %q", name, got, want)
			}
		}
	}
	unchanged := func(t *testing.T, m *cachetest.Memory, _ *httptest.ResponseRecorder) {
		if n := m.Len(); n != 8 {
			t.Errorf("store holds %d entries, want the 8 seeded", n)
		}
	}
	big := strings.Repeat("x", testMax+1)

	for _, tc := range []struct {
		name    string
		method  string
		target  string
		body    string
		chunked bool // send the body without a Content-Length
		status  int
		code    string // of a JSON error
		want    string // the body of a success
		checks  []check
	}{
		{name: "get", method: "GET", target: "/api/v1/caches/c/k", status: 200, want: "v",
			checks: []check{header("Content-Type", "application/octet-stream"), header("Content-Length", "1"), header(HeaderExpires, "")}},
		{name: "get literal slash", method: "GET", target: "/api/v1/caches/c/a/b", status: 200, want: "slash"},
		{name: "get escaped slash", method: "GET", target: "/api/v1/caches/c/a%2Fb", status: 200, want: "slash"},
		{name: "get escaped space", method: "GET", target: "/api/v1/caches/c/x%20y", status: 200, want: "space"},
		{name: "get escaped bytes", method: "GET", target: "/api/v1/caches/c/%FF%FE", status: 200, want: "binary key"},
		{name: "get scope", method: "GET", target: "/api/v1/caches/c/k?scope=s1", status: 200, want: "scoped"},
		{name: "get empty scope is default", method: "GET", target: "/api/v1/caches/c/k?scope=", status: 200, want: "v"},
		{name: "get absent", method: "GET", target: "/api/v1/caches/c/nope", status: 404, code: CodeNotFound},
		{name: "get absent in scope", method: "GET", target: "/api/v1/caches/d/k?scope=s1", status: 404, code: CodeNotFound},
		{name: "head", method: "HEAD", target: "/api/v1/caches/c/k", status: 200, checks: []check{header("Content-Length", "1")}},
		{name: "get empty key", method: "GET", target: "/api/v1/caches/c/", status: 400, code: CodeBadName},
		{name: "put empty key", method: "PUT", target: "/api/v1/caches/c/", body: "v", status: 400, code: CodeBadName, checks: []check{unchanged}},
		{name: "get bad cache name", method: "GET", target: "/api/v1/caches/c%21/k", status: 400, code: CodeBadName},
		{name: "get bad scope", method: "GET", target: "/api/v1/caches/c/k?scope=a%2Fb", status: 400, code: CodeBadName},
		{name: "get NUL key", method: "GET", target: "/api/v1/caches/c/a%00b", status: 400, code: CodeBadName},

		{name: "put", method: "PUT", target: "/api/v1/caches/c/new", body: "hello", status: 204, checks: []check{stored("", "c", "new", "hello")}},
		{name: "put replaces", method: "PUT", target: "/api/v1/caches/c/k", body: "v2", status: 204, checks: []check{stored("", "c", "k", "v2")}},
		{name: "put chunked", method: "PUT", target: "/api/v1/caches/c/new", body: "hello", chunked: true, status: 204, checks: []check{stored("", "c", "new", "hello")}},
		{name: "put empty value", method: "PUT", target: "/api/v1/caches/c/empty", status: 204, checks: []check{stored("", "c", "empty", "")}},
		{name: "put escaped slash", method: "PUT", target: "/api/v1/caches/c/p%2Fq", body: "1", status: 204, checks: []check{stored("", "c", "p/q", "1")}},
		{name: "put escaped percent", method: "PUT", target: "/api/v1/caches/c/100%25", body: "1", status: 204, checks: []check{stored("", "c", "100%", "1")}},
		{name: "put plus stays plus", method: "PUT", target: "/api/v1/caches/c/a+b", body: "1", status: 204, checks: []check{stored("", "c", "a+b", "1")}},
		{name: "put trailing slash key", method: "PUT", target: "/api/v1/caches/c/dir/", body: "1", status: 204, checks: []check{stored("", "c", "dir/", "1")}},
		{name: "put escaped dots", method: "PUT", target: "/api/v1/caches/c/%2E%2E", body: "1", status: 204, checks: []check{stored("", "c", "..", "1")}},
		{name: "put scope", method: "PUT", target: "/api/v1/caches/c/k?scope=s2", body: "x", status: 204, checks: []check{stored("s2", "c", "k", "x"), stored("", "c", "k", "v")}},
		{name: "put max size", method: "PUT", target: "/api/v1/caches/c/big", body: big[1:], status: 204, checks: []check{stored("", "c", "big", big[1:])}},
		{name: "put too large", method: "PUT", target: "/api/v1/caches/c/big", body: big, status: 413, code: CodeTooLarge, checks: []check{unchanged}},
		{name: "put too large chunked", method: "PUT", target: "/api/v1/caches/c/big", body: big, chunked: true, status: 413, code: CodeTooLarge, checks: []check{unchanged}},
		{name: "put ttl", method: "PUT", target: "/api/v1/caches/c/t?ttl=30s", body: "1", status: 204, checks: []check{
			func(t *testing.T, m *cachetest.Memory, _ *httptest.ResponseRecorder) {
				e, _, _ := m.Get(context.Background(), "", "c", "t")
				if !e.Expires.Equal(testNow.Add(30 * time.Second)) {
					t.Errorf("expires %v, want now+30s", e.Expires)
				}
			}}},
		{name: "put ttl zero", method: "PUT", target: "/api/v1/caches/c/t?ttl=0", body: "1", status: 204, checks: []check{stored("", "c", "t", "1")}},
		{name: "put bad ttl", method: "PUT", target: "/api/v1/caches/c/t?ttl=soon", body: "1", status: 400, code: CodeBadRequest, checks: []check{unchanged}},
		{name: "put negative ttl", method: "PUT", target: "/api/v1/caches/c/t?ttl=-1s", body: "1", status: 400, code: CodeBadRequest, checks: []check{unchanged}},
		{name: "put bad query", method: "PUT", target: "/api/v1/caches/c/t?ttl=%zz", body: "1", status: 400, code: CodeBadRequest, checks: []check{unchanged}},
		{name: "put bad name", method: "PUT", target: "/api/v1/caches/no%20spaces/k", body: "1", status: 400, code: CodeBadName, checks: []check{unchanged}},

		{name: "delete", method: "DELETE", target: "/api/v1/caches/c/a%2Fb", status: 204, checks: []check{absent("", "c", "a/b")}},
		{name: "delete absent", method: "DELETE", target: "/api/v1/caches/c/nope", status: 404, code: CodeNotFound, checks: []check{unchanged}},
		{name: "clear", method: "DELETE", target: "/api/v1/caches/c", status: 204, checks: []check{absent("", "c", "k"), stored("", "d", "k", "in d"), stored("s1", "c", "k", "scoped")}},
		{name: "clear scope", method: "DELETE", target: "/api/v1/caches/c?scope=s1", status: 204, checks: []check{absent("s1", "c", "k"), stored("", "c", "k", "v")}},
		{name: "clear bad name", method: "DELETE", target: "/api/v1/caches/c%2Fd", status: 400, code: CodeBadName, checks: []check{unchanged}},

		{name: "caches", method: "GET", target: "/api/v1/caches", status: 200,
			want:   `{"caches":[{"name":"c","size":6,"scheme":"default","backups":1},{"name":"d","size":1,"scheme":"default","backups":1}]}` + "\n",
			checks: []check{header("Content-Type", "application/json")}},
		{name: "caches slash", method: "GET", target: "/api/v1/caches/", status: 200,
			want: `{"caches":[{"name":"c","size":6,"scheme":"default","backups":1},{"name":"d","size":1,"scheme":"default","backups":1}]}` + "\n"},
		{name: "caches scope", method: "GET", target: "/api/v1/caches?scope=s1", status: 200,
			want: `{"caches":[{"name":"c","size":1,"scheme":"default","backups":1}]}` + "\n"},
		{name: "caches empty scope", method: "GET", target: "/api/v1/caches?scope=none", status: 200, want: `{"caches":[]}` + "\n"},

		{name: "keys", method: "GET", target: "/api/v1/caches/d", status: 200, want: `{"keys":["k"],"next":""}` + "\n"},
		{name: "keys prefix", method: "GET", target: "/api/v1/caches/c?prefix=pre/", status: 200, want: `{"keys":["pre/1","pre/2"],"next":""}` + "\n"},
		{name: "keys page", method: "GET", target: "/api/v1/caches/c?prefix=pre/&limit=1", status: 200, want: `{"keys":["pre/1"],"next":"pre/1"}` + "\n"},
		{name: "keys cursor", method: "GET", target: "/api/v1/caches/c?prefix=pre/&limit=1&cursor=pre/1", status: 200, want: `{"keys":["pre/2"],"next":""}` + "\n"},
		{name: "keys empty cache", method: "GET", target: "/api/v1/caches/nothing", status: 200, want: `{"keys":[],"next":""}` + "\n"},
		{name: "keys path encoding", method: "GET", target: "/api/v1/caches/c?encoding=path&limit=2", status: 200,
			want: `{"keys":["a%2Fb","k"],"next":"k","encoding":"path"}` + "\n"},
		{name: "keys path encoding binary", method: "GET", target: "/api/v1/caches/c?encoding=path&cursor=x%20y", status: 200,
			want: `{"keys":["%FF%FE"],"next":"","encoding":"path"}` + "\n"},
		{name: "keys limit max", method: "GET", target: "/api/v1/caches/d?limit=10000", status: 200, want: `{"keys":["k"],"next":""}` + "\n"},
		{name: "keys limit zero", method: "GET", target: "/api/v1/caches/c?limit=0", status: 400, code: CodeBadRequest},
		{name: "keys limit too big", method: "GET", target: "/api/v1/caches/c?limit=10001", status: 400, code: CodeBadRequest},
		{name: "keys limit not a number", method: "GET", target: "/api/v1/caches/c?limit=ten", status: 400, code: CodeBadRequest},
		{name: "keys bad encoding", method: "GET", target: "/api/v1/caches/c?encoding=base64", status: 400, code: CodeBadRequest},

		{name: "post key", method: "POST", target: "/api/v1/caches/c/k", body: "x", status: 405, code: CodeMethodNotAllowed,
			checks: []check{header("Allow", "GET, HEAD, PUT, DELETE"), unchanged}},
		{name: "put cache", method: "PUT", target: "/api/v1/caches/c", body: "x", status: 405, code: CodeMethodNotAllowed,
			checks: []check{header("Allow", "GET, HEAD, DELETE"), unchanged}},
		{name: "delete caches", method: "DELETE", target: "/api/v1/caches", status: 405, code: CodeMethodNotAllowed,
			checks: []check{header("Allow", "GET, HEAD"), unchanged}},
		{name: "patch caches slash", method: "PATCH", target: "/api/v1/caches/", status: 405, code: CodeMethodNotAllowed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := seeded(t)
			srv := mount(Handler(m, Options{Log: testLog(t)}))
			var body io.Reader = strings.NewReader(tc.body)
			if tc.chunked {
				body = io.MultiReader(body) // hides the length
			}
			req := httptest.NewRequest(tc.method, tc.target, body)
			rec := httptest.NewRecorder()
			srv.ServeHTTP(rec, req)
			if rec.Code != tc.status {
				t.Fatalf("status %d, want %d; body %s", rec.Code, tc.status, rec.Body)
			}
			if tc.code != "" {
				var e ErrorResponse
				if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Code != tc.code || e.Error == "" {
					t.Errorf("error body %q (%v), want code %q and a message", rec.Body, err, tc.code)
				}
			} else if got := rec.Body.String(); got != tc.want {
				t.Errorf("body %q, want %q", got, tc.want)
			}
			for _, c := range tc.checks {
				c(t, m, rec)
			}
		})
	}
}

func TestGetHeaders(t *testing.T) {
	m := seeded(t)
	srv := mount(Handler(m, Options{}))
	srv.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("PUT", "/api/v1/caches/c/t?ttl=1500ms", strings.NewReader("x")))
	rec := httptest.NewRecorder()
	srv.ServeHTTP(rec, httptest.NewRequest("GET", "/api/v1/caches/c/t", nil))
	if rec.Code != 200 {
		t.Fatalf("status %d", rec.Code)
	}
	e, _, _ := m.Get(context.Background(), "", "c", "t")
	v, err := ParseVersion(rec.Header().Get(HeaderVersion))
	if err != nil || v != e.Version || v.Site != "test" {
		t.Errorf("version header %q: %v, %v; want %v", rec.Header().Get(HeaderVersion), v, err, e.Version)
	}
	exp, err := time.Parse(time.RFC3339Nano, rec.Header().Get(HeaderExpires))
	if err != nil || !exp.Equal(testNow.Add(1500*time.Millisecond)) {
		t.Errorf("expires header %q: %v", rec.Header().Get(HeaderExpires), err)
	}
}

func TestErrorMapping(t *testing.T) {
	for _, tc := range []struct {
		err        error
		status     int
		code       string
		retryAfter string
	}{
		{fmt.Errorf("%w: cache %q", store.ErrBadName, "x"), 400, CodeBadName, ""},
		{fmt.Errorf("%w: 3 MiB", store.ErrTooLarge), 413, CodeTooLarge, ""},
		{fmt.Errorf("partition 7: %w", store.ErrUnavailable), 503, CodeUnavailable, "1"},
		{store.ErrStopped, 503, CodeStopped, ""},
		{fmt.Errorf("forwarding: %w", context.DeadlineExceeded), 503, CodeUnavailable, "1"},
		{errors.New("disk on fire"), 500, CodeInternal, ""},
	} {
		for _, r := range []struct{ method, target string }{
			{"GET", "/api/v1/caches"},
			{"GET", "/api/v1/caches/c"},
			{"DELETE", "/api/v1/caches/c"},
			{"GET", "/api/v1/caches/c/k"},
			{"PUT", "/api/v1/caches/c/k"},
			{"DELETE", "/api/v1/caches/c/k"},
		} {
			m := seeded(t)
			m.Fail(tc.err)
			rec := httptest.NewRecorder()
			mount(Handler(m, Options{Log: testLog(t)})).ServeHTTP(rec, httptest.NewRequest(r.method, r.target, strings.NewReader("v")))
			var e ErrorResponse
			json.Unmarshal(rec.Body.Bytes(), &e)
			if rec.Code != tc.status || e.Code != tc.code || e.Error != tc.err.Error() || rec.Header().Get("Retry-After") != tc.retryAfter {
				t.Errorf("%s %s with %q: %d %+v Retry-After %q; want %d %s %q",
					r.method, r.target, tc.err, rec.Code, e, rec.Header().Get("Retry-After"), tc.status, tc.code, tc.retryAfter)
			}
		}
	}
}

// slowCache blocks every Put until its context ends.
type slowCache struct{ *cachetest.Memory }

func (slowCache) Put(ctx context.Context, scope, cache, key string, value []byte, ttl time.Duration) error {
	<-ctx.Done()
	return ctx.Err()
}

func TestTimeout(t *testing.T) {
	h := mount(Handler(slowCache{seeded(t)}, Options{Timeout: 20 * time.Millisecond, Log: testLog(t)}))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("PUT", "/api/v1/caches/c/k", strings.NewReader("v")))
	if rec.Code != 503 || rec.Header().Get("Retry-After") != "1" || !strings.Contains(rec.Body.String(), CodeUnavailable) {
		t.Fatalf("%d %v %s; want 503 unavailable", rec.Code, rec.Header(), rec.Body)
	}
}

// TestOverHTTP checks what a recorder cannot: a real server and client,
// keys whose escaping a ServeMux would otherwise clean, and a large body
// refused before it is read.
func TestOverHTTP(t *testing.T) {
	m := cachetest.New(1<<10, nil)
	srv := httptest.NewServer(mount(Handler(m, Options{Log: testLog(t)})))
	defer srv.Close()
	for _, key := range []string{"a//b", "..", ".", "a/../b", "/lead", "trail/", "x y", "100%", "?q=1#f", "\xff", "ünï"} {
		req, _ := http.NewRequest("PUT", srv.URL+KeyPath("c", key), strings.NewReader("v:"+key))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 204 {
			t.Errorf("PUT %q: %s", key, resp.Status)
			continue
		}
		resp, err = http.Get(srv.URL + KeyPath("c", key))
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(got) != "v:"+key {
			t.Errorf("GET %q: %s %q", key, resp.Status, got)
		}
	}
	if n := m.Len(); n != 11 {
		t.Errorf("store holds %d keys, want 11", n)
	}

	req, _ := http.NewRequest("PUT", srv.URL+KeyPath("c", "big"), strings.NewReader(strings.Repeat("x", 8<<20)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 413 {
		t.Errorf("8 MiB PUT: %s, want 413", resp.Status)
	}
}
