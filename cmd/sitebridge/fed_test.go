package main

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sitebridge/sitebridge/store"
)

// fakeFedSite serves canned answers for the federation admin API of one
// site, behind the bearer token "s3cret".
type fakeFedSite struct {
	site   string
	scheme string

	mu       sync.Mutex
	polls    int                           // digest requests so far
	digests  func(poll int) []store.Digest // poll counts from 1
	keys     map[int][]store.KeyVersion    // by partition
	status   []store.FedStatus             // participants
	ops      []string                      // participant/op posted
	known    map[string]bool               // participants operations accept
	failCode int                           // when set, every operation fails with this status
	failMsg  string                        // and message
}

// serve starts the site's admin endpoint and returns its host:port.
func (f *fakeFedSite) serve(t *testing.T) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/federation", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		fedWriteJSON(w, 200, map[string]any{"instance": f.site + "1", "site": f.site, "participants": f.status})
	})
	mux.HandleFunc("POST /api/v1/federation/{participant}/{op}", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		p, op := r.PathValue("participant"), r.PathValue("op")
		switch {
		case f.failCode != 0:
			fedWriteJSON(w, f.failCode, map[string]string{"error": f.failMsg, "code": "unavailable"})
		case !f.known[p]:
			fedWriteJSON(w, 404, map[string]string{"error": `unknown federation participant: "` + p + `"`, "code": "unknown-participant"})
		default:
			f.ops = append(f.ops, p+"/"+op)
			fedWriteJSON(w, 200, map[string]string{"participant": p, "operation": op, "result": "done"})
		}
	})
	mux.HandleFunc("GET /api/v1/federation/digests", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.polls++
		fedWriteJSON(w, 200, map[string]any{"site": f.site, "scheme": f.schemeOf(r), "partitions": f.digests(f.polls)})
	})
	mux.HandleFunc("GET /api/v1/federation/partitions/{part}/keys", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		part, _ := strconv.Atoi(r.PathValue("part"))
		keys := f.keys[part]
		if keys == nil {
			keys = []store.KeyVersion{}
		}
		fedWriteJSON(w, 200, map[string]any{"site": f.site, "scheme": f.schemeOf(r), "partition": part, "keys": keys})
	})
	guarded := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer s3cret" {
			fedWriteJSON(w, 401, map[string]string{"error": "missing or wrong bearer token", "code": "unauthorized"})
			return
		}
		mux.ServeHTTP(w, r)
	})
	srv := httptest.NewServer(guarded)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func (f *fakeFedSite) schemeOf(r *http.Request) string {
	if s := r.URL.Query().Get("scheme"); s != "" {
		return s
	}
	return f.scheme
}

func fedWriteJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// fedDigests returns n partitions of 2 entries each, with partitions in
// odd giving another hash.
func fedDigests(n int, odd ...int) []store.Digest {
	var ds []store.Digest
	for i := range n {
		h := "h" + strconv.Itoa(i)
		if slices.Contains(odd, i) {
			h = "other"
		}
		ds = append(ds, store.Digest{Partition: i, Count: 2, Hash: h})
	}
	return ds
}

func clearFedEnv(t *testing.T) {
	t.Setenv("SITEBRIDGE_ADMIN", "")
	t.Setenv("SITEBRIDGE_TOKEN", "")
}

func TestFedStatus(t *testing.T) {
	clearFedEnv(t)
	f := &fakeFedSite{site: "cloud", scheme: "default", status: []store.FedStatus{
		{Scheme: "default", Participant: "onprem", State: "started", Partitions: 257, Pending: 12, PendingBytes: 3 << 20,
			LagSeconds: 1.25, SendRate: 40.5, Applied: 1000, Duplicates: 3, LastError: "dial onprem: refused",
			LastErrorAt:  time.Now().Add(-time.Minute),
			ReplicateAll: &store.Progress{Gen: 2, Done: 146, Total: 257, Percent: 56.8, ETASeconds: 12}},
		{Scheme: "default", Participant: "edge", State: "error", Reason: "journal limit of 1024 bytes reached"},
	}}
	addr := f.serve(t)

	out, _, err := runCmd(t, "fed", "status", "--admin", addr, "--token", "s3cret")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	fields := func(i int) string {
		if i >= len(lines) {
			return ""
		}
		return strings.Join(strings.Fields(lines[i]), " ")
	}
	for i, want := range []string{
		"instance cloud1 site cloud",
		"SCHEME PARTICIPANT STATE PENDING BYTES LAG SEND/S APPLIED DUPS LAST-ERROR",
		"default onprem started 12 3.0MiB 1.3s 40.5 1000 3 dial onprem: refused (1m",
		"default edge error 0 0B 0s 0.0 0 0 -",
		"onprem: replicate-all round 2: 57% (146/257 partitions), ETA 12s",
		"edge: reason: journal limit of 1024 bytes reached",
	} {
		// The error's age is the only figure that depends on timing.
		if got := fields(i); got != want && !(i == 2 && strings.HasPrefix(got, want)) {
			t.Errorf("line %d = %q, want %q\n%s", i, got, want, out)
		}
	}

	// Flags after the command, token from the environment.
	t.Setenv("SITEBRIDGE_TOKEN", "s3cret")
	out, _, err = runCmd(t, "fed", "status", "-o", "json", "--admin", "http://"+addr)
	if err != nil {
		t.Fatal(err)
	}
	var got []store.FedStatus
	if err := json.Unmarshal([]byte(out), &got); err != nil || len(got) != 2 || got[0].Participant != "onprem" ||
		got[0].ReplicateAll == nil || got[0].ReplicateAll.Done != 146 || got[1].Reason == "" {
		t.Errorf("status -o json: %v\n%s", err, out)
	}

	t.Setenv("SITEBRIDGE_TOKEN", "")
	if _, _, err := runCmd(t, "fed", "status", "--admin", addr); exitCode(err) != 1 || !strings.Contains(err.Error(), "bearer token (HTTP 401)") {
		t.Errorf("without the token: %v", err)
	}
}

func TestFedOperation(t *testing.T) {
	clearFedEnv(t)
	f := &fakeFedSite{site: "cloud", known: map[string]bool{"onprem": true}}
	addr := f.serve(t)
	t.Setenv("SITEBRIDGE_ADMIN", addr)

	out, _, err := runCmd(t, "fed", "replicate-all", "onprem", "--token", "s3cret")
	if err != nil || out != "onprem: replicate-all done\n" {
		t.Errorf("replicate-all: %v %q", err, out)
	}
	if out, _, err := runCmd(t, "fed", "pause", "--token", "s3cret", "onprem"); err != nil || out != "onprem: pause done\n" {
		t.Errorf("pause: %v %q", err, out)
	}
	f.mu.Lock()
	if !slices.Equal(f.ops, []string{"onprem/replicate-all", "onprem/pause"}) {
		t.Errorf("operations posted: %q", f.ops)
	}
	f.mu.Unlock()

	out, _, err = runCmd(t, "fed", "stop", "nowhere", "--token", "s3cret")
	var ae *fedAPIError
	if exitCode(err) != 1 || !errors.As(err, &ae) || ae.Code != "unknown-participant" ||
		!strings.Contains(err.Error(), `fed stop: unknown federation participant: "nowhere" (HTTP 404)`) || out != "" {
		t.Errorf("unknown participant: %v %q", err, out)
	}

	f.mu.Lock()
	f.failCode, f.failMsg = 503, "instance is stopped"
	f.mu.Unlock()
	if _, _, err := runCmd(t, "fed", "resume", "onprem", "--token", "s3cret"); exitCode(err) != 1 || !strings.Contains(err.Error(), "instance is stopped (HTTP 503)") {
		t.Errorf("stopped instance: %v", err)
	}
}

func TestFedVerifyConverged(t *testing.T) {
	clearFedEnv(t)
	a := &fakeFedSite{site: "cloud", scheme: "default", digests: func(int) []store.Digest { return fedDigests(8) }}
	b := &fakeFedSite{site: "onprem", scheme: "default", digests: func(int) []store.Digest { return fedDigests(8) }}
	aAddr, bAddr := a.serve(t), b.serve(t)

	out, _, err := runCmd(t, "fed", "verify", "--admin", aAddr, "--other", bAddr, "--token", "s3cret")
	if err != nil || out != "converged: 8 partitions, 16 entries\n" {
		t.Errorf("verify: %v %q", err, out)
	}
	out, _, err = runCmd(t, "fed", "verify", "-o", "json", "--admin", aAddr, "--other", bAddr, "--token", "s3cret", "--scheme", "trades")
	var res verifyResult
	if err != nil || json.Unmarshal([]byte(out), &res) != nil || !res.Converged || res.Scheme != "trades" ||
		res.Sites != [2]string{"cloud", "onprem"} || res.Entries != [2]int{16, 16} {
		t.Errorf("verify -o json: %v\n%s", err, out)
	}
	// --other-token is the other site's; a wrong one fails there.
	if _, _, err := runCmd(t, "fed", "verify", "--admin", aAddr, "--other", bAddr, "--token", "s3cret", "--other-token", "nope"); exitCode(err) != 1 ||
		!strings.Contains(err.Error(), "digests from "+bAddr+": missing or wrong bearer token") {
		t.Errorf("wrong --other-token: %v", err)
	}
}

func TestFedVerifyDiffers(t *testing.T) {
	clearFedEnv(t)
	a := &fakeFedSite{site: "cloud", scheme: "default", digests: func(int) []store.Digest { return fedDigests(32, 17, 20, 25) },
		keys: map[int][]store.KeyVersion{
			17: {{Cache: "trades", Key: "t1", Version: "1.0@cloud", ValueHash: "aa"},
				{Cache: "trades", Key: "t42", Version: "1795.3@cloud", ValueHash: "bb"},
				{Cache: "trades", Key: "t7", Version: "5.0@cloud", ValueHash: "cc"}},
			20: {{Cache: "quotes", Key: "q", Version: "9.0@onprem", ValueHash: "11"}},
			25: {{Cache: "x", Key: "same", Version: "1.0@cloud", ValueHash: "00"}},
		}}
	b := &fakeFedSite{site: "onprem", scheme: "default", digests: func(int) []store.Digest { return fedDigests(32) },
		keys: map[int][]store.KeyVersion{
			17: {{Cache: "trades", Key: "t1", Version: "1.0@cloud", ValueHash: "aa"},
				{Cache: "trades", Key: "t7", Version: "6.0@onprem", ValueHash: "dd"},
				{Cache: "trades", Key: "t9", Version: "7.0@onprem", ValueHash: "ee"}},
			20: {{Cache: "quotes", Key: "q", Version: "9.0@onprem", ValueHash: "12"}},
			25: {{Cache: "x", Key: "same", Version: "1.0@cloud", ValueHash: "00"}},
		}}
	aAddr, bAddr := a.serve(t), b.serve(t)
	verify := func(extra ...string) (string, error) {
		out, _, err := runCmd(t, append([]string{"fed", "verify", "--admin", aAddr, "--other", bAddr, "--token", "s3cret"}, extra...)...)
		return out, err
	}

	out, err := verify()
	want := `partition 17: key trades/t42: cloud 1795.3@cloud, onprem missing
partition 17: key trades/t7: cloud 5.0@cloud, onprem 6.0@onprem
partition 17: key trades/t9: cloud missing, onprem 7.0@onprem
partition 20: key quotes/q: cloud 9.0@onprem (value 11), onprem 9.0@onprem (value 12)
partition 25: digests differ (cloud 2 entries, onprem 2) but the key listings agree: changes in flight
not converged: 3 of 32 partitions differ
`
	if exitCode(err) != 1 || errors.Is(err, errUsage) || out != want {
		t.Errorf("verify: %v\n%s\nwant\n%s", err, out, want)
	}

	out, err = verify("--max-keys", "2")
	if exitCode(err) != 1 || strings.Count(out, ": key ") != 2 || !strings.Contains(out, "(2 more differing keys not shown: raise --max-keys)\n") ||
		!strings.HasSuffix(out, "not converged: 3 of 32 partitions differ\n") {
		t.Errorf("verify --max-keys 2: %v\n%s", err, out)
	}

	out, err = verify("-o", "json")
	var res verifyResult
	if exitCode(err) != 1 || json.Unmarshal([]byte(out), &res) != nil || res.Converged || len(res.Differ) != 3 || len(res.Keys) != 4 ||
		res.Keys[0].Have[1] != nil || res.Keys[0].Have[0].Version != "1795.3@cloud" {
		t.Errorf("verify -o json: %v\n%s", err, out)
	}
}

func TestFedVerifyWait(t *testing.T) {
	clearFedEnv(t)
	a := &fakeFedSite{site: "cloud", scheme: "default", digests: func(int) []store.Digest { return fedDigests(4) }}
	b := &fakeFedSite{site: "onprem", scheme: "default", digests: func(poll int) []store.Digest {
		if poll == 1 {
			return fedDigests(4, 3) // still replicating
		}
		return fedDigests(4)
	}}
	aAddr, bAddr := a.serve(t), b.serve(t)
	out, _, err := runCmd(t, "fed", "verify", "--admin", aAddr, "--other", bAddr, "--token", "s3cret", "--wait", "10s")
	b.mu.Lock()
	polls := b.polls
	b.polls = 0
	b.mu.Unlock()
	if err != nil || out != "converged: 4 partitions, 8 entries\n" || polls != 2 {
		t.Errorf("verify --wait: %v %q after %d polls", err, out, polls)
	}

	// Without --wait the first look is the answer.
	if out, _, err := runCmd(t, "fed", "verify", "--admin", aAddr, "--other", bAddr, "--token", "s3cret"); exitCode(err) != 1 ||
		!strings.HasSuffix(out, "not converged: 1 of 4 partitions differ\n") {
		t.Errorf("verify without --wait: %v %q", err, out)
	}
}

func TestFedVerifyIncomparable(t *testing.T) {
	clearFedEnv(t)
	a := &fakeFedSite{site: "cloud", scheme: "default", digests: func(int) []store.Digest { return fedDigests(4) }}
	b := &fakeFedSite{site: "onprem", scheme: "default", digests: func(int) []store.Digest { return fedDigests(8) }}
	same := &fakeFedSite{site: "cloud", scheme: "default", digests: func(int) []store.Digest { return fedDigests(4) }}
	aAddr, bAddr, sameAddr := a.serve(t), b.serve(t), same.serve(t)
	start := time.Now()
	_, _, err := runCmd(t, "fed", "verify", "--admin", aAddr, "--other", bAddr, "--token", "s3cret", "--wait", "30s")
	if exitCode(err) != 1 || !errors.Is(err, errIncomparable) || !strings.Contains(err.Error(), "scheme default has 4 partitions at cloud, 8 at onprem") {
		t.Errorf("partition counts differ: %v", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Errorf("waited %v for sites that cannot converge", time.Since(start))
	}
	if _, _, err := runCmd(t, "fed", "verify", "--admin", aAddr, "--other", sameAddr, "--token", "s3cret"); !errors.Is(err, errIncomparable) {
		t.Errorf("same site twice: %v", err)
	}
}

func TestFedUsageErrors(t *testing.T) {
	clearFedEnv(t)
	for _, args := range [][]string{
		{"fed"},
		{"fed", "bogus"},
		{"fed", "stop"},
		{"fed", "stop", "a", "b"},
		{"fed", "stop", "--nope", "onprem"},
		{"fed", "status", "extra"},
		{"fed", "status", "-o", "yaml"},
		{"fed", "verify"},
		{"fed", "verify", "--other", "127.0.0.1:1", "--wait", "-1s"},
		{"fed", "verify", "--other", "127.0.0.1:1", "--max-keys", "-1"},
		{"fed", "verify", "--other", "127.0.0.1:1", "-o", "yaml"},
		{"fed", "verify", "--other", "ftp://x"},
		{"fed", "status", "--admin", "ftp://x"},
	} {
		_, _, err := runCmd(t, args...)
		if !errors.Is(err, errUsage) || exitCode(err) != 2 {
			t.Errorf("%q: err %v (exit %d), want a usage error (exit 2)", args, err, exitCode(err))
		}
	}
	if out, _, err := runCmd(t, "fed", "help"); err != nil || !strings.Contains(out, "sitebridge fed verify --other") {
		t.Errorf("fed help: %v\n%s", err, out)
	}
	if _, errOut, err := runCmd(t, "fed", "verify", "-h"); exitCode(err) != 2 || !strings.Contains(errOut, "-max-keys") {
		t.Errorf("fed verify -h: %v\n%s", err, errOut)
	}
}
