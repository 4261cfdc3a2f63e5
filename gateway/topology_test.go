package gateway

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sitebridge/sitebridge/config"
)

// TestMemberAdmin: a member listening on every address is asked at its
// gossip address's host.
func TestMemberAdmin(t *testing.T) {
	for _, c := range []struct{ admin, gossip, want string }{
		{"10.0.0.5:9100", "10.0.0.5:7946", "10.0.0.5:9100"},
		{"0.0.0.0:9100", "10.0.0.6:7946", "10.0.0.6:9100"},
		{"[::]:9100", "[fd00::7]:7946", "[fd00::7]:9100"},
		{":9100", "10.0.0.8:7946", "10.0.0.8:9100"},
		{"admin.example:9100", "10.0.0.9:7946", "admin.example:9100"},
		{"", "10.0.0.9:7946", ""},
	} {
		if got := memberAdmin(MemberStatus{Admin: c.admin, Addr: c.gossip}); got != c.want {
			t.Errorf("memberAdmin(%q, gossip %q) = %q, want %q", c.admin, c.gossip, got, c.want)
		}
	}
}

// TestAdminRefusesCrossOriginPosts: a web page in a local browser cannot
// press the admin endpoint's buttons (stop, reload, federation, caches);
// command-line clients, which send no Origin, can.
func TestAdminRefusesCrossOriginPosts(t *testing.T) {
	e := newEnv(t, "cloud/cloud1")
	cfg := e.parse(cloudYAML("cloud1", e.echoB), listenOn("127.0.0.1:0", "127.0.0.1:0"))
	s, err := NewSupervisor(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	h := s.adminServer().Handler
	for _, tc := range []struct {
		name, method, path string
		headers            map[string]string
		want               int
	}{
		{"cli stop", "POST", "/api/v1/stop", nil, http.StatusConflict}, // not running: reached the handler
		{"cross-site stop", "POST", "/api/v1/stop", map[string]string{"Sec-Fetch-Site": "cross-site"}, http.StatusForbidden},
		{"foreign origin reload", "POST", "/api/v1/reload", map[string]string{"Origin": "http://evil.example"}, http.StatusForbidden},
		{"foreign origin cache put", "PUT", "/api/v1/caches/c/k", map[string]string{"Origin": "http://evil.example"}, http.StatusForbidden},
		{"cross-site read", "GET", "/healthz", map[string]string{"Sec-Fetch-Site": "cross-site"}, http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(tc.method, "http://127.0.0.1:9100"+tc.path, strings.NewReader("v"))
			for k, v := range tc.headers {
				req.Header.Set(k, v)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tc.want {
				t.Errorf("%s %s: %d %s, want %d", tc.method, tc.path, rec.Code, rec.Body, tc.want)
			}
		})
	}
}

// TestStartWhileStoppingStartsAgain: a start asked for right after a stop,
// while the instance is still shutting down, is not refused as "running":
// the instance starts again, as a new instance, once it has stopped.
func TestStartWhileStoppingStartsAgain(t *testing.T) {
	e := newEnv(t, "cloud/cloud1")
	s := runSupervisor(t, e.parse(cloudYAML("cloud1", e.echoB), listenOn("127.0.0.1:0", "127.0.0.1:0")))
	first := waitCurrent(t, s, nil)
	if s.Start() {
		t.Fatal("Start of a running instance reported true")
	}
	if !s.Stop() {
		t.Fatal("Stop of a running instance reported false")
	}
	if !s.Start() {
		t.Fatal("Start right after Stop was refused")
	}
	second := waitCurrent(t, s, first)

	// Stop, start while stopping, stop again: the last word is stop, and
	// the instance stays stopped until the next start.
	if !s.Stop() || !s.Start() || !s.Stop() {
		t.Fatal("stop, start, stop: one of them was refused")
	}
	deadline := time.Now().Add(20 * time.Second)
	for s.Current() != nil {
		if time.Now().After(deadline) {
			t.Fatal("still running 20s after the last stop")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for end := time.Now().Add(500 * time.Millisecond); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if s.Current() != nil {
			t.Fatal("the instance started again by itself after stop, start, stop")
		}
	}
	if !s.Start() {
		t.Fatal("Start of a stopped instance was refused")
	}
	waitCurrent(t, s, second)
}

// runSupervisor runs a supervisor for cfg until the test ends; Run must
// then return without error.
func runSupervisor(t *testing.T, cfg *config.Config) *Supervisor {
	t.Helper()
	s, err := NewSupervisor(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, nil) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return s
}

// waitCurrent polls until the supervisor runs an instance other than not.
func waitCurrent(t *testing.T, s *Supervisor, not *Instance) *Instance {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if in := s.Current(); in != nil && in != not {
			return in
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("no (new) instance running within 20s")
	return nil
}

// TestStatusDuringRestarts: the dashboard and probes read an instance's
// status while the drill stops and starts it. An instance is visible only
// once it has bound its listeners and joined its cluster; before, status
// read the cluster field while binding wrote it (found by -race in CI; the
// race detector is what fails this test without the fix).
func TestStatusDuringRestarts(t *testing.T) {
	e := newEnv(t, "cloud/cloud1")
	s := runSupervisor(t, e.parse(withGossipKey(cloudYAML("cloud1", e.echoB)), both(listenOn("127.0.0.1:0", "127.0.0.1:0"), clustered("cloud"))))
	polls := make(chan int, 1)
	pollCtx, stopPolling := context.WithCancel(context.Background())
	go func() {
		n := 0
		for pollCtx.Err() == nil {
			if st := s.status(); st.State != "running" && st.State != "stopped" {
				t.Errorf("state %q", st.State)
			}
			s.ready()
			n++
		}
		polls <- n
	}()
	defer func() {
		stopPolling()
		if n := <-polls; n == 0 {
			t.Error("no status read while restarting")
		}
	}()
	in := waitCurrent(t, s, nil)
	for range 5 {
		if !s.Stop() || !s.Start() {
			t.Fatal("stop or start refused")
		}
		in = waitCurrent(t, s, in)
	}
}
