package bench

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/sitebridge/sitebridge/cacheclient"
	"github.com/sitebridge/sitebridge/config"
)

// baselinePath serves a baseline on loopback and returns a path of two
// clients of it, closed when the test ends.
func baselinePath(t *testing.T, name string) kvPath {
	t.Helper()
	b, err := startBaseline("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.close)
	pa := kvPath{name: name, clients: []*cacheclient.Client{cacheclient.New(b.addr), cacheclient.New(b.addr)}}
	t.Cleanup(pa.close)
	return pa
}

// TestStoreFiguresBaseline runs the store group's fill, load runs and
// figures with a baseline on both sides, without processes.
func TestStoreFiguresBaseline(t *testing.T) {
	base, other := baselinePath(t, "baseline"), baselinePath(t, "store")
	p := storeParams{clients: 4, keys: 50, sizes: []int{100, 4 << 10}, dur: 50 * time.Millisecond, maxOps: 500}
	var prog strings.Builder
	figs, failed := storeFigures(t.Context(), p, 2, base, other, &prog)
	if failed != 0 {
		t.Errorf("%d operations failed\n%s", failed, prog.String())
	}
	if len(figs) != 12 {
		t.Fatalf("%d figures, want 12", len(figs))
	}
	seen := map[string]bool{}
	for _, f := range figs {
		if f.Status != "" || f.Ratio == nil || len(f.DirectRuns) != 2 || len(f.TunnelRuns) != 2 {
			t.Errorf("%s: status %q, ratio %v, runs %v / %v", f.Key, f.Status, f.Ratio, f.DirectRuns, f.TunnelRuns)
		}
		if f.Target != "" || f.Pass != nil {
			t.Errorf("%s: target %q: store figures have none", f.Key, f.Target)
		}
		if seen[f.Key] {
			t.Errorf("key %s twice", f.Key)
		}
		seen[f.Key] = true
	}
	for _, k := range []string{"store_puts", "store_put_p99", "store_gets", "store_get_p50", "store_gets_4kib"} {
		if !seen[k] {
			t.Errorf("no figure %s", k)
		}
	}
	var out strings.Builder
	writeStore(&out, &StoreResults{Status: "ok", Instances: 2, Clients: p.clients, Keys: p.keys, Baseline: baselineDesc, Figures: figs})
	if !strings.Contains(out.String(), "site-store puts/s (4 clients, 100 B)") || !strings.Contains(out.String(), "×") {
		t.Errorf("table:\n%s", out.String())
	}
}

// TestKVLoadBounds checks that a load run stops at its operation count
// and at its time, and that a failing run is reported.
func TestKVLoadBounds(t *testing.T) {
	pa := baselinePath(t, "baseline")
	keys := []string{"a", "b", "c"}
	if err := fill(t.Context(), pa, 2, "c", keys, payload[:10], 5*time.Second); err != nil {
		t.Fatal(err)
	}
	get := func(ctx context.Context, c *cacheclient.Client, key string) error {
		_, _, err := c.Get(ctx, "c", key)
		return err
	}
	r, err := kvLoad(t.Context(), pa, 3, keys, time.Hour, 100, get)
	if err != nil || r.done != 100 || r.rate <= 0 || r.p99 < r.p50 {
		t.Errorf("count-bounded run: %+v, %v", r, err)
	}
	t0 := time.Now()
	r, err = kvLoad(t.Context(), pa, 3, keys, 50*time.Millisecond, 1<<40, get)
	if el := time.Since(t0); err != nil || el > 5*time.Second || r.done == 0 {
		t.Errorf("time-bounded run: %+v after %v, %v", r, el, err)
	}
	_, err = kvLoad(t.Context(), pa, 2, []string{"bad\x00key"}, time.Hour, 20, get)
	if err == nil || !strings.Contains(err.Error(), "20 of 20 operations failed") {
		t.Errorf("failing run: %v", err)
	}
}

// TestStoreConfigs checks that the site's configs are valid.
func TestStoreConfigs(t *testing.T) {
	members, paths, err := writeStoreConfigs(t.TempDir(), "127.0.0.1", storeInstances)
	if err != nil {
		t.Fatal(err)
	}
	for i, path := range paths {
		c, err := config.Load(path)
		if err != nil {
			t.Fatal(err)
		}
		if c.Instance != members[i].Name || c.Admin.Listen != members[i].Admin || !c.Cluster.Enabled() || len(c.Cluster.Join) != storeInstances {
			t.Errorf("%s: instance %s, admin %s, cluster %+v", path, c.Instance, c.Admin.Listen, c.Cluster)
		}
	}
}
