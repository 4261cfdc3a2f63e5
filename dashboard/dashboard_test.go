package dashboard

import (
	"encoding/json"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sitebridge/sitebridge/store"
)

func get(t *testing.T, srv *httptest.Server, method, path string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// TestHandler serves the page and its assets, mounted as the admin
// endpoint mounts it, with headers that forbid framing and inline scripts.
func TestHandler(t *testing.T) {
	mux := http.NewServeMux()
	mux.Handle("GET /{$}", Handler())
	mux.Handle("GET /ui/", Handler())
	mux.HandleFunc("GET /api/v1/other", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "other") })
	srv := httptest.NewServer(mux)
	defer srv.Close()

	resp, body := get(t, srv, http.MethodGet, "/")
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET /: %s %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	for _, want := range []string{`<script src="ui/app.js" defer></script>`, `href="ui/style.css"`, `id="sites"`, `id="links"`, `id="fed"`, `id="cache-sites"`, `id="demo"`, `id="auth"`} {
		if !strings.Contains(body, want) {
			t.Errorf("index.html lacks %s", want)
		}
	}
	csp := resp.Header.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'self'", "script-src 'self'", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("Content-Security-Policy %q lacks %q", csp, want)
		}
	}
	if resp.Header.Get("X-Frame-Options") != "DENY" || resp.Header.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("headers: %v", resp.Header)
	}

	for path, ctype := range map[string]string{"/ui/app.js": "javascript", "/ui/style.css": "text/css", "/ui/favicon.svg": "image/svg+xml"} {
		resp, body := get(t, srv, http.MethodGet, path)
		if resp.StatusCode != http.StatusOK || !strings.Contains(resp.Header.Get("Content-Type"), ctype) || len(body) == 0 {
			t.Errorf("GET %s: %s %q, %d bytes", path, resp.Status, resp.Header.Get("Content-Type"), len(body))
		}
	}
	resp, body = get(t, srv, http.MethodHead, "/")
	if resp.StatusCode != http.StatusOK || body != "" {
		t.Errorf("HEAD /: %s, %d bytes", resp.Status, len(body))
	}
	for _, path := range []string{"/ui/", "/ui/missing.js", "/ui/index.html", "/nothing", "/ui/../go.mod"} {
		if resp, _ := get(t, srv, http.MethodGet, path); resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %s, want 404", path, resp.Status)
		}
	}
	if resp, _ := get(t, srv, http.MethodPost, "/"); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /: %s, want 405", resp.Status)
	}
	if resp, body := get(t, srv, http.MethodGet, "/api/v1/other"); resp.StatusCode != http.StatusOK || body != "other" {
		t.Errorf("the mount took over other paths: GET /api/v1/other: %s %q", resp.Status, body)
	}
	// Called directly (mounted on "/"), other methods are refused too.
	rec := httptest.NewRecorder()
	Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodDelete, "/ui/app.js", nil))
	if rec.Code != http.StatusMethodNotAllowed || rec.Header().Get("Allow") != "GET, HEAD" {
		t.Errorf("DELETE /ui/app.js: %d %v", rec.Code, rec.Header())
	}
}

// TestAssetsSelfContained: the page works offline. Nothing is loaded from
// another origin, there is no inline script or style attribute (the
// Content-Security-Policy would block them), and every asset index.html
// names is embedded.
func TestAssetsSelfContained(t *testing.T) {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		t.Fatal(err)
	}
	external := regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}`)
	err = fs.WalkDir(sub, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(sub, path)
		if err != nil {
			return err
		}
		s := strings.ReplaceAll(string(b), "http://www.w3.org/2000/svg", "") // the SVG namespace is a name, not a fetch
		if m := external.FindString(s); m != "" {
			t.Errorf("%s refers to another origin: %q", path, m)
		}
		if strings.HasSuffix(path, ".html") {
			if regexp.MustCompile(`<script(?:\s[^>]*)?>\s*[^<\s]`).MatchString(s) || strings.Contains(s, " style=") || regexp.MustCompile(`\son[a-z]+=`).MatchString(s) {
				t.Errorf("%s has an inline script, handler or style", path)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	index, err := fs.ReadFile(sub, "index.html")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`(?:src|href)="ui/([^"]+)"`).FindAllStringSubmatch(string(index), -1) {
		if _, err := fs.Stat(sub, m[1]); err != nil {
			t.Errorf("index.html names ui/%s, which is not embedded: %v", m[1], err)
		}
	}
	js, err := fs.ReadFile(sub, "app.js")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(js), "style=") {
		t.Error("app.js builds HTML with a style attribute, which the Content-Security-Policy blocks")
	}
}

// TestTopologyJSON pins the JSON names the page reads.
func TestTopologyJSON(t *testing.T) {
	top := Topology{Title: "x", Observer: "cloud1", Time: time.Unix(0, 0).UTC(), Sites: []Site{{
		Name: "cloud", FedOps: "api/v1/federation",
		Instances: []Instance{{Name: "cloud1", Site: "cloud", State: StateRunning, Seen: SeenSelf, Epoch: 7, Ops: "o",
			Tunnels:  []Tunnel{{Peer: "onprem1", Site: "onprem", Active: 3, Services: []string{"a"}}},
			Services: []Service{{Name: "a", Role: RoleAccept, Addr: "h:1", Up: true, Active: 2}}}},
		Caches:     []store.CacheInfo{{Name: "trades", Size: 5, Scheme: "trades"}},
		Federation: []store.FedStatus{{Scheme: "trades", Participant: "onprem", State: "started", ReplicateAll: &store.Progress{Percent: 50}}},
	}}, Demo: &Demo{Trades: 5, Add: LoadJob{Running: true, Site: "cloud", Total: 5, Done: 2}}}
	b, err := json.Marshal(top)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, want := range []string{`"title":"x"`, `"observer":"cloud1"`, `"sites":[{"name":"cloud"`, `"state":"running"`, `"seen":"self"`,
		`"epoch":7`, `"ops":"o"`, `"tunnels":[{"peer":"onprem1","site":"onprem","dialled":false,"active_connections":3`,
		`"services":[{"name":"a","role":"accept","addr":"h:1","up":true,"active_connections":2}]`,
		`"caches":[{"name":"trades","size":5`, `"participant":"onprem"`, `"replicate_all":{`, `"percent":50`,
		`"fed_ops":"api/v1/federation"`, `"demo":{"trades":5,"add":{"running":true,"site":"cloud","total":5,"done":2`} {
		if !strings.Contains(s, want) {
			t.Errorf("JSON lacks %s:\n%s", want, s)
		}
	}
}
