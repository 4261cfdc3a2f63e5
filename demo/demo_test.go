package demo

import (
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sitebridge/sitebridge/cacheclient"
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
	if !strings.Contains(out.String(), "nc "+host+" 5551") {
		t.Fatalf("instructions do not say what to type:\n%s", out.String())
	}
	forwardsAll(t, host, insts)
	storesPerSite(t, host, insts)
	metricsAndReadiness(t, host, insts)

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
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
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
		deadline := time.Now().Add(20 * time.Second)
		for {
			v, ok, err := client(other).Get(ctx, "trades", key)
			if err == nil && ok && string(v) == key {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("trades/%s did not reach the other site (%s): %q %v %v", key, insts[other].Name, v, ok, err)
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
	for _, in := range insts {
		resp, err := http.Get("http://" + net.JoinHostPort(host, strconv.Itoa(in.AdminPort)) + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s /readyz: %s", in.Name, resp.Status)
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
