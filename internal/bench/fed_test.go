package bench

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sitebridge/sitebridge/cacheapi"
	"github.com/sitebridge/sitebridge/cacheapi/cachetest"
	"github.com/sitebridge/sitebridge/config"
	"github.com/sitebridge/sitebridge/store"
)

// fakeFedSite serves the cache API over an in-memory map and a federation
// admin API that applies every operation at once: a "site" whose other
// site is itself, so every write is replicated the moment it is made.
type fakeFedSite struct {
	addr string

	mu     sync.Mutex
	state  string
	rounds uint64
	ops    []string
}

func startFakeFedSite(t *testing.T) *fakeFedSite {
	t.Helper()
	f := &fakeFedSite{state: store.FedStarted}
	h := cacheapi.Handler(cachetest.New(1<<20, nil), cacheapi.Options{})
	mux := http.NewServeMux()
	mux.Handle(cacheapi.Prefix, h)
	mux.Handle(cacheapi.Prefix+"/", h)
	mux.HandleFunc("POST /api/v1/federation/{participant}/{op}", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		op := r.PathValue("op")
		f.ops = append(f.ops, r.PathValue("participant")+"/"+op)
		switch op {
		case store.FedOpStop:
			f.state = store.FedStopped
		case store.FedOpPause:
			f.state = store.FedPaused
		case store.FedOpReplicateAll:
			f.rounds++
			f.state = store.FedStarted
		default:
			f.state = store.FedStarted
		}
	})
	mux.HandleFunc("GET /api/v1/federation", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		st := store.FedStatus{Scheme: fedScheme, Participant: "onprem", State: f.state}
		if f.rounds > 0 {
			st.ReplicateAll = &store.Progress{Gen: f.rounds, Done: 1, Total: 1, Percent: 100}
		}
		f.mu.Unlock()
		json.NewEncoder(w).Encode(map[string]any{"participants": []store.FedStatus{st}})
	})
	mux.HandleFunc("GET /api/v1/federation/digests", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]any{"partitions": []store.Digest{{Partition: 0, Count: 1, Hash: "x"}}})
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	f.addr = strings.TrimPrefix(srv.URL, "http://")
	return f
}

// TestFedFiguresFake runs the federation group's measurements against a
// fake site, without processes: every phase, the figures and the table.
func TestFedFiguresFake(t *testing.T) {
	site := startFakeFedSite(t)
	e := newFedEnds(site.addr, site.addr)
	defer e.close()
	fp := fedParams{clients: 4, entries: 200, rate: 200, rateDur: 250 * time.Millisecond, raEntries: 300,
		wait: 5 * time.Second, pollEvery: 2 * time.Millisecond}
	var prog strings.Builder
	figs, failed := fedFigures(t.Context(), fp, 2, e, &prog)
	if failed != 0 {
		t.Errorf("%d writes failed\n%s", failed, prog.String())
	}
	if len(figs) != 5 {
		t.Fatalf("%d figures, want 5\n%s", len(figs), prog.String())
	}
	seen := map[string]bool{}
	for _, f := range figs {
		if f.Status != "" || f.Ratio == nil || f.Baseline == "" || f.Target != "" {
			t.Errorf("%s: status %q, ratio %v, baseline %q, target %q\n%s", f.Key, f.Status, f.Ratio, f.Baseline, f.Target, prog.String())
		}
		if seen[f.Key] {
			t.Errorf("key %s twice", f.Key)
		}
		seen[f.Key] = true
	}
	for _, k := range []string{"fed_replicate_all_seconds", "fed_replicate_all_rate", "fed_entries_per_s", "fed_lag_p50", "fed_lag_p99"} {
		if !seen[k] {
			t.Errorf("no figure %s", k)
		}
	}
	site.mu.Lock()
	ops := strings.Join(site.ops, " ")
	site.mu.Unlock()
	want := "onprem/stop onprem/start onprem/replicate-all onprem/pause onprem/start-with-no-backlog onprem/pause onprem/start-with-no-backlog"
	if ops != want {
		t.Errorf("operations:\n%s\nwant\n%s", ops, want)
	}
	var out strings.Builder
	writeFed(&out, &FedResults{Status: "ok", Topology: "fake", Figures: figs})
	if !strings.Contains(out.String(), "entries/s replicated (200 entries, 4 clients, 100 B)") || !strings.Contains(out.String(), "×") ||
		!strings.Contains(out.String(), fedBaseRate) {
		t.Errorf("table:\n%s", out.String())
	}
}

// TestLagRunBounded checks that a lag run whose writes never arrive stops
// by itself and says so.
func TestLagRunBounded(t *testing.T) {
	cloud, onprem := startFakeFedSite(t), startFakeFedSite(t)
	e := newFedEnds(cloud.addr, onprem.addr)
	defer e.close()
	fp := fedParams{rate: 100, rateDur: 100 * time.Millisecond, wait: 300 * time.Millisecond, pollEvery: 5 * time.Millisecond}
	t0 := time.Now()
	_, err := lagRun(t.Context(), fp, e, "trades-lag")
	if el := time.Since(t0); err == nil || !strings.Contains(err.Error(), "10 acknowledged keys not seen") || el > 5*time.Second {
		t.Errorf("after %v: %v", el, err)
	}
}

// TestFedConfigs checks that both sites' configs are valid and federate
// the trades caches active-active.
func TestFedConfigs(t *testing.T) {
	members, paths, err := writeFedConfigs(t.TempDir(), "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	for i, path := range paths {
		c, err := config.Load(path)
		if err != nil {
			t.Fatal(err)
		}
		sc, ok := c.Store.SchemeFor("trades-tp-1")
		if c.Instance != members[i].Name || c.Site != members[i].Site || !c.Federation.Enabled() || !ok || sc.Name != fedScheme || sc.Federation != "sites" {
			t.Errorf("%s: instance %s, site %s, federation %+v, scheme of trades-tp-1 %+v", path, c.Instance, c.Site, c.Federation, sc)
		}
		if edges := c.FedEdgesFrom("sites"); len(edges) != 1 || edges[0].To != members[i].Other {
			t.Errorf("%s: edges %+v", path, edges)
		}
	}
}
