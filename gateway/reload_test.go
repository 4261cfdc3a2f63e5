package gateway

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/sitebridge/sitebridge/config"
)

// parse reads yaml as e.start does, for a reload.
func (e *env) parse(yaml string, fix func(*config.Config)) *config.Config {
	e.t.Helper()
	cfg, err := config.Parse(e.dir+"/instance.yaml", []byte(strings.ReplaceAll(yaml, "{{dir}}", e.dir)))
	if err != nil {
		e.t.Fatal(err)
	}
	if fix != nil {
		fix(cfg)
	}
	return cfg
}

// held is a forwarded connection kept open across reloads.
type held struct {
	c net.Conn
	r *bufio.Reader
}

func hold(t *testing.T, addr string) *held {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	h := &held{c: c, r: bufio.NewReader(c)}
	h.check(t, "first")
	return h
}

// check sends a line and expects it back.
func (h *held) check(t *testing.T, line string) {
	t.Helper()
	h.c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(h.c, "%s\n", line); err != nil {
		t.Fatalf("held connection: write: %v", err)
	}
	got, err := h.r.ReadString('\n')
	if err != nil || got != line+"\n" {
		t.Fatalf("held connection: got %q, %v; want %q", got, err, line)
	}
}

func sessions(r *running) map[string]any {
	out := map[string]any{}
	for _, p := range r.peers.all() {
		out[p.key()] = p.sess
	}
	return out
}

func sameSessions(t *testing.T, what string, before, after map[string]any) {
	t.Helper()
	if len(before) != len(after) {
		t.Fatalf("%s: %d tunnels before, %d after", what, len(before), len(after))
	}
	for k, s := range before {
		if after[k] != s {
			t.Fatalf("%s: the tunnel to %s was replaced", what, k)
		}
	}
}

func TestReloadKeepsTunnelsAndConnections(t *testing.T) {
	e := newEnv(t, "cloud/cloud1", "onprem/onprem1")
	cloudFix, onpremFix := listenOn("127.0.0.1:0", "127.0.0.1:0"), listenOn("", "127.0.0.1:0")
	cloud := e.start(cloudYAML("cloud1", e.echoB), cloudFix)
	onpremCfg := onpremYAML("onprem1", e.echoA, wssURL(cloud.TunnelAddr()))
	onprem := e.start(onpremCfg, onpremFix)
	waitFor(t, "tunnel up", 5*time.Second, func() bool { return tunnels(cloud) == 1 && tunnels(onprem) == 1 })

	// Connections held open in both directions across every reload below.
	toB := hold(t, onprem.AcceptAddr("server-b"))
	toA := hold(t, cloud.AcceptAddr("server-a"))
	cloudTunnels, onpremTunnels := sessions(cloud), sessions(onprem)

	// 1. A new service on both sides, a changed limit.
	echoC := startEcho(t)
	cloudNext := e.parse(cloudYAML("cloud1", e.echoB)+`
limits: {idle-timeout: 1h}
`, cloudFix)
	cloudNext.Services = append(cloudNext.Services, config.Service{Name: "server-c", Connect: echoC, DialTimeout: config.Duration(time.Second), MaxConnections: 10})
	res, err := cloud.Reload(cloudNext)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(res.Changed, ","); got != "services,limits.idle-timeout" {
		t.Errorf("cloud reload changed %q", got)
	}
	onpremNext := e.parse(onpremCfg, onpremFix)
	onpremNext.Services = append(onpremNext.Services, config.Service{Name: "server-c", Accept: "127.0.0.1:0", DialTimeout: config.Duration(time.Second), MaxConnections: 10})
	if _, err := onprem.Reload(onpremNext); err != nil {
		t.Fatal(err)
	}
	addrC := onprem.AcceptAddr("server-c")
	if addrC == "" {
		t.Fatal("server-c has no accept port after the reload")
	}
	waitFor(t, "server-c offered and forwarded", 5*time.Second, func() bool { return roundTrip(addrC, "c") == nil })
	toB.check(t, "after adding a service")
	toA.check(t, "after adding a service")
	sameSessions(t, "cloud after adding a service", cloudTunnels, sessions(cloud))
	sameSessions(t, "onprem after adding a service", onpremTunnels, sessions(onprem))
	if got := cloud.conf().Limits.IdleTimeout.D(); got != time.Hour {
		t.Errorf("idle-timeout after reload = %v", got)
	}

	// 2. Removing a service closes its port; its open connection carries on.
	onpremLess := e.parse(onpremCfg, onpremFix)
	onpremLess.Services = onpremLess.Services[:1] // server-a only: server-b's accept is gone
	oldB := onprem.AcceptAddr("server-b")
	if _, err := onprem.Reload(onpremLess); err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp", oldB, time.Second); err == nil {
		c.Close()
		t.Error("server-b's port still accepts after its removal")
	}
	toB.check(t, "after removing its service")
	toA.check(t, "after removing a service")
	sameSessions(t, "onprem after removing a service", onpremTunnels, sessions(onprem))

	// 3. Refused reloads change nothing.
	bad := e.parse(onpremCfg, onpremFix)
	bad.Cluster.Name = "other" // not reloadable
	bad.Tunnel.Keepalive = config.Duration(time.Minute)
	bad.Tunnel.Connections = 2
	if _, err := onprem.Reload(bad); !errors.Is(err, ErrNeedsRestart) || !strings.Contains(err.Error(), "tunnel.keepalive, tunnel.connections, cluster changed") {
		t.Errorf("reload of cluster and tunnel = %v, want ErrNeedsRestart naming each key", err)
	}
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	busy := e.parse(onpremCfg, onpremFix)
	busy.Services = append(busy.Services, config.Service{Name: "server-d", Accept: taken.Addr().String(), DialTimeout: config.Duration(time.Second), MaxConnections: 10})
	if _, err := onprem.Reload(busy); err == nil || !strings.Contains(err.Error(), "service server-d accept") {
		t.Errorf("reload with a taken port = %v", err)
	}
	if onprem.AcceptAddr("server-b") != "" || onprem.AcceptAddr("server-c") != "" {
		t.Error("a refused reload changed the accept ports")
	}
	toB.check(t, "after refused reloads")

	// 4. A peer site removed: its tunnels close and it is refused; added
	// back: the tunnel returns.
	noPeer := e.parse(cloudYAML("cloud1", e.echoB), cloudFix)
	noPeer.Peers[0].Site = "elsewhere"
	if _, err := cloud.Reload(noPeer); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "onprem's tunnel closed", 5*time.Second, func() bool { return tunnels(cloud) == 0 })
	if _, err := cloud.Reload(e.parse(cloudYAML("cloud1", e.echoB), cloudFix)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "onprem's tunnel back", 10*time.Second, func() bool { return tunnels(cloud) == 1 && tunnels(onprem) == 1 })
	if !strings.Contains(cloud.logs.String(), `reason="peer site removed from the config"`) {
		t.Error("closing the removed site's tunnel was not logged")
	}
}
