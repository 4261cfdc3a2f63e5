package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sitebridge/sitebridge/cacheclient"
	"github.com/sitebridge/sitebridge/dashboard"
	"github.com/sitebridge/sitebridge/drill"
	"github.com/sitebridge/sitebridge/internal/loopback"
)

// TestDemoForwardsAllFourPorts runs the embedded default on a random
// loopback address and sends a line through each client port.
func TestDemoForwardsAllFourPorts(t *testing.T) {
	host, err := loopback.Pick()
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	o := Options{Host: host, Out: &out}
	ctx, cancel := context.WithCancel(context.Background())
	readyc := make(chan []Instance, 1)
	var wg sync.WaitGroup
	var runErr error
	wg.Go(func() { runErr = Run(ctx, o, func(in []Instance) { readyc <- in }) })
	defer func() {
		cancel()
		wg.Wait()
		if runErr != nil {
			t.Errorf("demo.Run: %v", runErr)
		}
	}()
	var insts []Instance
	select {
	case insts = <-readyc:
	case <-time.After(20 * time.Second):
		t.Fatal("demo not ready within 20s")
	}
	if !strings.Contains(out.String(), "nc "+host+" 5551") || !strings.Contains(out.String(), "http://"+host+":9000/") {
		t.Fatalf("instructions do not say what to type and where the dashboard is:\n%s", out.String())
	}
	forwardsAll(t, host, insts)
	storesPerSite(t, host, insts)
	metricsAndReadiness(t, host, insts)
	dashboardWorks(t, o, insts)

	// The failover drill through the admin API: stop each instance in turn,
	// every other port keeps echoing, the stopped one comes back.
	var targets []drill.Target
	for _, in := range insts {
		targets = append(targets, drill.Target{Name: in.Name, Path: in.Service,
			Admin:  net.JoinHostPort(host, strconv.Itoa(in.AdminPort)),
			Client: net.JoinHostPort(host, strconv.Itoa(in.ClientPort))})
	}
	rows, err := drill.Run(ctx, drill.Options{Targets: targets, Probes: 3})
	var table strings.Builder
	drill.Print(&table, rows)
	t.Logf("drill:\n%s", table.String())
	if err != nil {
		t.Fatalf("drill: %v", err)
	}
	if len(rows) != 4*4 {
		t.Fatalf("drill made %d rows, want 16", len(rows))
	}
	forwardsAll(t, host, insts)
	storesPerSite(t, host, insts)
}

// storesPerSite: a put through one instance of a site is read through the
// other; a site-local cache stays on its site; the trades cache is
// federated to the other site.
func storesPerSite(t *testing.T, host string, insts []Instance) {
	t.Helper()
	client := func(i int) *cacheclient.Client {
		return cacheclient.New(net.JoinHostPort(host, strconv.Itoa(insts[i].AdminPort)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	for _, pair := range [][2]int{{0, 1}, {3, 2}} {
		key := "k-" + insts[pair[0]].Name + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
		for _, cache := range []string{"local", "trades"} {
			if err := client(pair[0]).Put(ctx, cache, key, []byte(key), 0); err != nil {
				t.Fatalf("put via %s: %v", insts[pair[0]].Name, err)
			}
			v, ok, err := client(pair[1]).Get(ctx, cache, key)
			if err != nil || !ok || string(v) != key {
				t.Fatalf("get via %s: %q %v %v", insts[pair[1]].Name, v, ok, err)
			}
		}
		other := 2
		if pair[0] >= 2 {
			other = 0
		}
		if _, ok, err := client(other).Get(ctx, "local", key); err != nil || ok {
			t.Fatalf("the other site's store (%s) answered %v %v for a site-local key %s", insts[other].Name, ok, err, key)
		}
		// Right after the drill restarted every instance, partitions may
		// still be moving back; federation catches up once they settle.
		deadline := time.Now().Add(60 * time.Second)
		for {
			v, ok, err := client(other).Get(ctx, "trades", key)
			if err == nil && ok && string(v) == key {
				break
			}
			if time.Now().After(deadline) {
				fed := "?"
				if resp, err := http.Get("http://" + net.JoinHostPort(host, strconv.Itoa(insts[pair[0]].AdminPort)) + "/api/v1/federation"); err == nil {
					b, _ := io.ReadAll(io.LimitReader(resp.Body, 8<<10))
					resp.Body.Close()
					fed = string(b)
				}
				t.Fatalf("trades/%s did not reach the other site (%s): %q %v %v; federation at %s: %s", key, insts[other].Name, v, ok, err, insts[pair[0]].Name, fed)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func forwardsAll(t *testing.T, host string, insts []Instance) {
	t.Helper()
	for _, in := range insts {
		addr := net.JoinHostPort(host, strconv.Itoa(in.ClientPort))
		line := "hello via " + in.Name + "\n"
		deadline := time.Now().Add(10 * time.Second)
		for {
			err := roundTrip(addr, line)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s (%s): %v", in.Name, addr, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func roundTrip(addr, line string) error {
	return drill.Probe(context.Background(), addr, line, 5*time.Second)
}

// metricsAndReadiness: every instance is ready, and cloud1's /metrics
// shows its tunnels, the streams the test opened and the federation.
func metricsAndReadiness(t *testing.T, host string, insts []Instance) {
	t.Helper()
	// Readiness is a state, not an event: under load (the race detector,
	// other test packages on the same two CPUs) a tunnel may be redialled
	// for a moment, so poll as a readiness probe would, and say what the
	// instance waited for if it never got there.
	for _, in := range insts {
		url := "http://" + net.JoinHostPort(host, strconv.Itoa(in.AdminPort)) + "/readyz"
		start := time.Now()
		var first []byte // what it first waited for
		for {
			resp, err := http.Get(url)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				if first != nil {
					t.Logf("%s ready after %v; it first answered %s", in.Name, time.Since(start).Round(time.Millisecond), strings.Join(strings.Fields(string(first)), " "))
				}
				break
			}
			if first == nil {
				first = body
			}
			if time.Since(start) > 20*time.Second {
				t.Fatalf("%s /readyz: %s %s", in.Name, resp.Status, strings.Join(strings.Fields(string(body)), " "))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	resp, err := http.Get("http://" + net.JoinHostPort(host, strconv.Itoa(insts[0].AdminPort)) + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	text := string(b)
	for _, want := range []string{
		`sitebridge_tunnels_up{peer="onprem1",peer_site="onprem"} 1`,
		`sitebridge_tunnels_up{peer="onprem2",peer_site="onprem"} 1`,
		`sitebridge_streams_opened_total{role="accept",service="server-a"}`,
		`sitebridge_forwarded_bytes_total{direction="to_peer",role="accept",service="server-a"}`,
		`sitebridge_stream_open_seconds_bucket{service="server-a",le="0.1"}`,
		`sitebridge_federation_participant_state{participant="onprem",scheme="trades",state="started"} 1`,
		`sitebridge_federation_pending_entries{participant="onprem",scheme="trades"}`,
		`sitebridge_instance_running 1`,
		`sitebridge_tunnel_connects_total{peer_site="onprem"}`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// dashboardWorks drives the demo's dashboard API as the page does: the
// topology of all four instances, an instance's own view, adding trades
// (they reach the other site), price updates that stop by themselves, and
// stop/start of an instance; and the requests it must refuse.
func dashboardWorks(t *testing.T, o Options, insts []Instance) {
	t.Helper()
	base := o.DashboardURL()
	topo := func() dashboard.Topology {
		t.Helper()
		var top dashboard.Topology
		if code := call(t, http.MethodGet, base+"api/v1/topology", nil, &top); code != http.StatusOK {
			t.Fatalf("GET topology: %d", code)
		}
		return top
	}
	find := func(top dashboard.Topology, name string) (dashboard.Instance, dashboard.Site) {
		for _, s := range top.Sites {
			for _, in := range s.Instances {
				if in.Name == name {
					return in, s
				}
			}
		}
		t.Fatalf("topology lacks %s: %+v", name, top)
		return dashboard.Instance{}, dashboard.Site{}
	}
	meshUp := func(top dashboard.Topology) error {
		for _, in := range insts {
			v, _ := find(top, in.Name)
			if v.State != dashboard.StateRunning || len(v.Tunnels) != 2 || v.Ops == "" {
				return fmt.Errorf("%s: %s with %d tunnels", v.Name, v.State, len(v.Tunnels))
			}
		}
		return nil
	}
	poll(t, "all four instances running with two tunnels each", func() error { return meshUp(topo()) })
	top := topo()
	if len(top.Sites) != 2 || top.Sites[0].Name != "cloud" || top.Sites[1].Name != "onprem" || top.Demo == nil {
		t.Fatalf("topology: %+v", top)
	}
	for _, s := range top.Sites {
		if s.Caches == nil || s.Federation == nil || s.FedOps == "" {
			t.Errorf("site %s: caches %v (%s), federation %v (%s), ops %q", s.Name, s.Caches, s.CachesNote, s.Federation, s.FederationNote, s.FedOps)
		}
	}

	// The page itself, and an instance's own view with its member.
	resp, err := http.Get(base)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET %s: %s", base, resp.Status)
	}
	admin := "http://" + net.JoinHostPort(o.Host, strconv.Itoa(insts[2].AdminPort))
	poll(t, "onprem1's own topology", func() error {
		var own dashboard.Topology
		if code := call(t, http.MethodGet, admin+"/api/v1/topology", nil, &own); code != http.StatusOK {
			return fmt.Errorf("GET %s/api/v1/topology: %d", admin, code)
		}
		if own.Observer != "onprem1" || len(own.Sites) != 2 || own.Sites[0].Name != "onprem" {
			return fmt.Errorf("%+v", own)
		}
		var names []string
		for _, s := range own.Sites {
			for _, in := range s.Instances {
				names = append(names, in.Name+"/"+in.Seen+"/"+in.State+"/"+strconv.Itoa(len(in.Tunnels))+"/"+in.Error)
			}
		}
		want := "onprem1/self/running/2/ onprem2/member/running/2/ cloud1/tunnel/running/2/ cloud2/tunnel/running/2/"
		if strings.Join(names, " ") != want {
			return fmt.Errorf("instances %v, want %s", names, want)
		}
		if own.Sites[0].Caches == nil || own.Sites[1].Caches != nil || own.Sites[1].CachesNote == "" {
			return fmt.Errorf("caches: own %v, other %v %q", own.Sites[0].Caches, own.Sites[1].Caches, own.Sites[1].CachesNote)
		}
		return nil
	})

	// Add trades on the cloud site: the on-prem site's trades cache grows.
	size := func(top dashboard.Topology, site string) int64 {
		for _, s := range top.Sites {
			for _, c := range s.Caches {
				if s.Name == site && c.Name == TradesCache {
					return c.Size
				}
			}
		}
		return 0
	}
	before := size(topo(), "onprem")
	if code := call(t, http.MethodPost, base+"api/v1/demo/trades", map[string]any{"site": "cloud", "count": 40}, nil); code != http.StatusAccepted {
		t.Fatalf("add trades: %d", code)
	}
	poll(t, "40 trades added on cloud, seen on onprem", func() error {
		top := topo()
		if top.Demo.Add.Running || top.Demo.Add.Done != 40 || top.Demo.Add.Errors != 0 {
			return fmt.Errorf("job %+v", top.Demo.Add)
		}
		if got := size(top, "onprem"); got < before+40 {
			return fmt.Errorf("onprem trades size %d, want at least %d", got, before+40)
		}
		return nil
	})
	if code := call(t, http.MethodPost, base+"api/v1/demo/prices", map[string]any{"site": "onprem", "rate": 50, "seconds": 1}, nil); code != http.StatusAccepted {
		t.Fatalf("price updates: %d", code)
	}
	poll(t, "price updates stopping by themselves", func() error {
		if p := topo().Demo.Prices; p.Running || p.Done == 0 || p.Done > 60 || p.Errors != 0 {
			return fmt.Errorf("job %+v", p)
		}
		return nil
	})

	// Refusals.
	for _, c := range []struct {
		path string
		body any
		want int
	}{
		{"api/v1/demo/trades", map[string]any{"site": "cloud", "count": 0}, http.StatusBadRequest},
		{"api/v1/demo/trades", map[string]any{"site": "mars", "count": 1}, http.StatusBadRequest},
		{"api/v1/demo/trades", map[string]any{"site": "cloud", "count": 1, "x": 1}, http.StatusBadRequest},
		{"api/v1/demo/prices", map[string]any{"site": "cloud", "rate": 1000, "seconds": 1}, http.StatusBadRequest},
		{"api/v1/demo/prices", map[string]any{"site": "cloud", "rate": 1, "seconds": 1000}, http.StatusBadRequest},
		{"api/v1/demo/prices/stop", nil, http.StatusConflict},
		{"api/v1/demo/instances/nobody/stop", nil, http.StatusNotFound},
		{"api/v1/demo/instances/cloud1/start", nil, http.StatusConflict},
		{"api/v1/demo/sites/cloud/federation/nowhere/pause", nil, http.StatusNotFound},
	} {
		if code := call(t, http.MethodPost, base+c.path, c.body, nil); code != c.want {
			t.Errorf("POST %s %v: %d, want %d", c.path, c.body, code, c.want)
		}
	}
	req, _ := http.NewRequest(http.MethodPost, base+"api/v1/demo/instances/cloud1/stop", nil)
	req.Header.Set("Sec-Fetch-Site", "cross-site")
	req.Header.Set("Origin", "http://elsewhere.example")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("a cross-origin stop was not refused: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}

	// Federation operations, site-wide, through the dashboard.
	for _, op := range []string{"pause", "resume"} {
		if code := call(t, http.MethodPost, base+"api/v1/demo/sites/cloud/federation/onprem/"+op, nil, nil); code != http.StatusOK {
			t.Fatalf("federation %s: %d", op, code)
		}
	}

	// Stop and start an instance.
	if code := call(t, http.MethodPost, base+"api/v1/demo/instances/onprem2/stop", nil, nil); code != http.StatusAccepted {
		t.Fatalf("stop onprem2: %d", code)
	}
	poll(t, "onprem2 stopped and its tunnels gone", func() error {
		top := topo()
		if v, _ := find(top, "onprem2"); v.State != "stopped" || len(v.Tunnels) != 0 {
			return fmt.Errorf("onprem2 %s with %d tunnels", v.State, len(v.Tunnels))
		}
		if v, _ := find(top, "cloud1"); len(v.Tunnels) != 1 {
			return fmt.Errorf("cloud1 has %d tunnels", len(v.Tunnels))
		}
		return nil
	})
	if code := call(t, http.MethodPost, base+"api/v1/demo/instances/onprem2/start", nil, nil); code != http.StatusAccepted {
		t.Fatalf("start onprem2: %d", code)
	}
	poll(t, "onprem2 back with the whole mesh", func() error { return meshUp(topo()) })
}

// call sends a JSON request; out, if not nil, receives a 200 answer.
func call(t *testing.T, method, url string, body, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	if out != nil && resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatalf("%s %s: %v", method, url, err)
		}
	}
	return resp.StatusCode
}

// poll calls check until it returns nil, failing the test after 20 s.
func poll(t *testing.T, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited 20s for %s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
