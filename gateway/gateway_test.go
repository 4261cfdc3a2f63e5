package gateway

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sitebridge/sitebridge/config"
	"github.com/sitebridge/sitebridge/drill"
	"github.com/sitebridge/sitebridge/internal/backoff"
	"github.com/sitebridge/sitebridge/internal/echo"
	"github.com/sitebridge/sitebridge/tlsgen"
	"github.com/sitebridge/sitebridge/tunnel"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// env is a PKI plus echo servers for in-process deployments.
type env struct {
	t     *testing.T
	dir   string
	echoA string // server A, reached from the cloud side
	echoB string // server B, reached from the on-prem side
}

func newEnv(t *testing.T, names ...string) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir()}
	spec := tlsgen.Spec{}
	for _, n := range names {
		site, inst, _ := strings.Cut(n, "/")
		spec.Instances = append(spec.Instances, tlsgen.InstanceSpec{Name: inst, Site: site, DNS: []string{"localhost"}, IPs: []string{"127.0.0.1"}})
	}
	if _, err := tlsgen.Generate(spec, e.dir, false); err != nil {
		t.Fatal(err)
	}
	e.echoA = startEcho(t)
	e.echoB = startEcho(t)
	return e
}

func startEcho(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { echo.Serve(ctx, ln) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	return ln.Addr().String()
}

// syncBuffer collects log output from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// running is an instance running in this process.
type running struct {
	*Instance
	logs   *syncBuffer
	cancel context.CancelFunc
	done   chan struct{} // closed when Run has returned
	err    error         // what Run returned
}

func (r *running) stop() {
	r.cancel()
	<-r.done
}

// start parses yaml (with {{dir}} replaced by the PKI dir), applies fix to
// the parsed config, and runs the instance until the test ends or stop.
func (e *env) start(yaml string, fix func(*config.Config)) *running {
	t := e.t
	t.Helper()
	cfg, err := config.Parse(e.dir+"/instance.yaml", []byte(strings.ReplaceAll(yaml, "{{dir}}", e.dir)))
	if err != nil {
		t.Fatal(err)
	}
	if fix != nil {
		fix(cfg)
	}
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(io.MultiWriter(logs, t.Output()), &slog.HandlerOptions{Level: slog.LevelDebug}))
	in, err := New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Instance: in, logs: logs, cancel: cancel, done: make(chan struct{})}
	ready := make(chan struct{})
	go func() {
		defer close(r.done)
		r.err = in.Run(ctx, func() { close(ready) })
	}()
	select {
	case <-ready:
	case <-r.done:
		t.Fatalf("instance did not start: %v", r.err)
	}
	t.Cleanup(r.stop)
	return r
}

func cloudYAML(name, serverB string) string {
	return fmt.Sprintf(`
instance: %s
site: cloud
tls: {ca: ca.crt, cert: %s.crt, key: %s.key}
tunnel: {listen: "127.0.0.1:2"}
peers: [{site: onprem}]
services:
  - {name: server-a, accept: "127.0.0.1:3"}
  - {name: server-b, connect: "%s", dial-timeout: 1s}
admin: {listen: "127.0.0.1:0"}
`, name, name, name, serverB)
}

func onpremYAML(name, serverA string, cloudURLs ...string) string {
	urls := ""
	for _, u := range cloudURLs {
		urls += fmt.Sprintf("\n      - %s", u)
	}
	return fmt.Sprintf(`
instance: %s
site: onprem
tls: {ca: ca.crt, cert: %s.crt, key: %s.key}
peers:
  - site: cloud
    urls:%s
services:
  - {name: server-a, connect: "%s"}
  - {name: server-b, accept: "127.0.0.1:3"}
admin: {listen: "127.0.0.1:0"}
tunnel: {backoff-min: 50ms, backoff-max: 500ms}
`, name, name, name, urls, serverA)
}

// listenOn makes the placeholder listen addresses bind: ":0" for a fresh
// port, or the given fixed addresses (for restarts on the same port).
func listenOn(tunnelAddr, acceptAddr string) func(*config.Config) {
	return func(c *config.Config) {
		if c.Tunnel.Listen != "" {
			c.Tunnel.Listen = tunnelAddr
		}
		for i := range c.Services {
			if c.Services[i].Accept != "" {
				c.Services[i].Accept = acceptAddr
			}
		}
	}
}

func wssURL(addr string) string { return "wss://" + addr + tunnel.DefaultPath }

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}

func tunnels(r *running) int { return len(r.Status().Tunnels) }

// roundTrip connects to addr, sends a line, half-closes, and expects the
// same line back followed by EOF.
func roundTrip(addr, line string) error {
	return drill.Probe(context.Background(), addr, line, 5*time.Second)
}

// pair starts cloud1 and onprem1 and waits for their tunnel.
func pair(t *testing.T, e *env) (cloud, onprem *running) {
	cloud = e.start(cloudYAML("cloud1", e.echoB), listenOn("127.0.0.1:0", "127.0.0.1:0"))
	onprem = e.start(onpremYAML("onprem1", e.echoA, wssURL(cloud.TunnelAddr())), listenOn("", "127.0.0.1:0"))
	waitFor(t, "tunnel up", 5*time.Second, func() bool { return tunnels(cloud) == 1 && tunnels(onprem) == 1 })
	return cloud, onprem
}

func TestForwardBothWaysWithHalfClose(t *testing.T) {
	e := newEnv(t, "cloud/cloud1", "onprem/onprem1")
	cloud, onprem := pair(t, e)
	for _, addr := range []string{cloud.AcceptAddr("server-a"), onprem.AcceptAddr("server-b")} {
		if err := roundTrip(addr, "hello through the tunnel\n"); err != nil {
			t.Fatalf("via %s: %v", addr, err)
		}
	}
}

func TestLargeTransferIntact(t *testing.T) {
	e := newEnv(t, "cloud/cloud1", "onprem/onprem1")
	// 32 MiB each way saturates the tunnel; on a loaded 2-core machine
	// under -race a keepalive write can then wait longer than dev mode's
	// 2 s. This test is about the bytes, so it allows 10 s.
	tolerant := func(addrs func(*config.Config)) func(*config.Config) {
		return func(c *config.Config) {
			addrs(c)
			c.Tunnel.DeadAfter = config.Duration(10 * time.Second)
		}
	}
	cloud := e.start(cloudYAML("cloud1", e.echoB), tolerant(listenOn("127.0.0.1:0", "127.0.0.1:0")))
	onprem := e.start(onpremYAML("onprem1", e.echoA, wssURL(cloud.TunnelAddr())), tolerant(listenOn("", "127.0.0.1:0")))
	waitFor(t, "tunnel up", 5*time.Second, func() bool { return tunnels(cloud) == 1 && tunnels(onprem) == 1 })
	size := 32 << 20
	if testing.Short() {
		size = 4 << 20
	}
	for _, addr := range []string{cloud.AcceptAddr("server-a"), onprem.AcceptAddr("server-b")} {
		sent, got, n := transfer(t, addr, size)
		if n != int64(size) || sent != got {
			t.Fatalf("via %s: %d of %d bytes back, digest equal: %v", addr, n, size, sent == got)
		}
	}
}

// transfer pushes size random bytes through an echo path and returns the
// digests of what was sent and received, and the bytes received.
func transfer(t *testing.T, addr string, size int) (sent, got [32]byte, n int64) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	var wg sync.WaitGroup
	wg.Go(func() {
		h := sha256.New()
		src := rand.NewChaCha8([32]byte{1})
		buf := make([]byte, 64<<10)
		for left := size; left > 0; {
			b := buf[:min(left, len(buf))]
			src.Read(b)
			h.Write(b)
			if _, err := c.Write(b); err != nil {
				t.Error(err)
				return
			}
			left -= len(b)
		}
		c.(*net.TCPConn).CloseWrite()
		copy(sent[:], h.Sum(nil))
	})
	h := sha256.New()
	n, err = io.Copy(h, c)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	copy(got[:], h.Sum(nil))
	return sent, got, n
}

func TestRetriesNextTunnelWhenTargetUnreachable(t *testing.T) {
	e := newEnv(t, "cloud/cloud1", "cloud/cloud2", "onprem/onprem1")
	deadTarget := "127.0.0.1:1" // nothing listens on port 1
	c1 := e.start(cloudYAML("cloud1", deadTarget), listenOn("127.0.0.1:0", "127.0.0.1:0"))
	c2 := e.start(cloudYAML("cloud2", e.echoB), listenOn("127.0.0.1:0", "127.0.0.1:0"))
	op := e.start(onpremYAML("onprem1", e.echoA, wssURL(c1.TunnelAddr()), wssURL(c2.TunnelAddr())), listenOn("", "127.0.0.1:0"))
	waitFor(t, "both tunnels up", 5*time.Second, func() bool { return tunnels(op) == 2 })
	for i := range 20 {
		if err := roundTrip(op.AcceptAddr("server-b"), fmt.Sprintf("attempt %d\n", i)); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
	}
}

// TestEarlyDataReplayedAfterRefusal: a client's first bytes leave with the
// stream header (early data). When that route refuses, they go again with
// the header on the next route, and the target gets them once, in order.
func TestEarlyDataReplayedAfterRefusal(t *testing.T) {
	e := newEnv(t, "cloud/cloud1", "cloud/cloud2", "onprem/onprem1")
	c1 := e.start(cloudYAML("cloud1", "127.0.0.1:1"), listenOn("127.0.0.1:0", "127.0.0.1:0")) // refuses: target-unreachable
	c2 := e.start(cloudYAML("cloud2", e.echoB), listenOn("127.0.0.1:0", "127.0.0.1:0"))
	op := e.start(onpremYAML("onprem1", e.echoA, wssURL(c1.TunnelAddr()), wssURL(c2.TunnelAddr())), listenOn("", "127.0.0.1:0"))
	waitFor(t, "both tunnels up", 5*time.Second, func() bool { return tunnels(op) == 2 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// One connection held through cloud2 makes cloud1 the least busy
	// tunnel, so every open below tries cloud1 first and is refused there.
	held, hp, _, err := op.open(ctx, "", "server-b", true, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer hp.active.Add(-1)
	defer held.Close()
	if hp.hello.Instance != "cloud2" {
		t.Fatalf("held connection went to %s", hp.hello.Instance)
	}
	for i := range 5 {
		early := []byte(strings.Repeat(fmt.Sprintf("early data %d ", i), 100) + "\n")
		st, p, failed, err := op.open(ctx, "", "server-b", true, early)
		if err != nil {
			t.Fatal(err)
		}
		if failed != 1 || p.hello.Instance != "cloud2" {
			t.Fatalf("open %d: %d refusals, ended on %s; want 1, cloud2", i, failed, p.hello.Instance)
		}
		st.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := st.Write([]byte("then more\n")); err != nil {
			t.Fatal(err)
		}
		want := string(early) + "then more\n"
		got := make([]byte, len(want)+1)
		n, err := io.ReadAtLeast(st, got, len(want))
		if err != nil || string(got[:n]) != want {
			t.Fatalf("open %d: echo %q, %v; want the early data once, then the rest", i, got[:n], err)
		}
		st.Close()
		p.active.Add(-1)
	}
}

// TestEarlyDataClientsAndServersFirst: with services[].early-data on,
// clients that speak first get through with their first bytes sent along
// with the stream header, and a server that speaks first (a banner) is
// not kept waiting for client bytes that never come.
func TestEarlyDataClientsAndServersFirst(t *testing.T) {
	e := newEnv(t, "cloud/cloud1", "onprem/onprem1")
	banner := startBanner(t, "220 ready\n")
	early := func(c *config.Config) {
		listenOn("127.0.0.1:0", "127.0.0.1:0")(c)
		for i := range c.Services {
			c.Services[i].EarlyData = c.Services[i].Accept != ""
		}
	}
	cloud := e.start(cloudYAML("cloud1", e.echoB), early)
	e.start(onpremYAML("onprem1", banner, wssURL(cloud.TunnelAddr())), listenOn("", "127.0.0.1:0"))
	waitFor(t, "tunnel up", 5*time.Second, func() bool { return tunnels(cloud) == 1 })

	for i := range 20 {
		c, err := net.Dial("tcp", cloud.AcceptAddr("server-a"))
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		r := bufio.NewReader(c)
		if i%2 == 1 {
			// The client speaks first: its line goes as early data (when
			// it is there by the time the stream opens).
			fmt.Fprintf(c, "line %d\n", i)
		}
		got, err := r.ReadString('\n')
		if err != nil || got != "220 ready\n" {
			t.Fatalf("connection %d: banner %q, %v", i, got, err)
		}
		if i%2 == 0 {
			fmt.Fprintf(c, "line %d\n", i)
		}
		if got, err := r.ReadString('\n'); err != nil || got != fmt.Sprintf("line %d\n", i) {
			t.Fatalf("connection %d: echo %q, %v", i, got, err)
		}
		c.Close()
	}
	if !strings.Contains(cloud.logs.String(), "early data") {
		t.Fatal("no connection sent early data")
	}
}

// TestEarlyDataFollowsReload: services[].early-data is read per
// connection, so a reload turns it on and off for the next clients.
func TestEarlyDataFollowsReload(t *testing.T) {
	e := newEnv(t, "cloud/cloud1", "onprem/onprem1")
	fix := listenOn("127.0.0.1:0", "127.0.0.1:0")
	cloud := e.start(cloudYAML("cloud1", e.echoB), fix)
	e.start(onpremYAML("onprem1", e.echoA, wssURL(cloud.TunnelAddr())), listenOn("", "127.0.0.1:0"))
	waitFor(t, "tunnel up", 5*time.Second, func() bool { return tunnels(cloud) == 1 })
	sent := func() int { return strings.Count(cloud.logs.String(), "(early data)") }
	clients := func() {
		t.Helper()
		for i := range 10 {
			if err := roundTrip(cloud.AcceptAddr("server-a"), fmt.Sprintf("line %d\n", i)); err != nil {
				t.Fatal(err)
			}
		}
	}
	reload := func(on bool) {
		t.Helper()
		next := e.parse(cloudYAML("cloud1", e.echoB), fix)
		for i := range next.Services {
			next.Services[i].EarlyData = on && next.Services[i].Accept != ""
		}
		if _, err := cloud.Reload(next); err != nil {
			t.Fatal(err)
		}
	}
	clients()
	if n := sent(); n != 0 {
		t.Fatalf("early data sent %d times while off", n)
	}
	reload(true)
	clients()
	on := sent()
	if on == 0 {
		t.Fatal("no early data after the reload turned it on")
	}
	reload(false)
	clients()
	if n := sent(); n != on {
		t.Fatalf("early data sent %d more times after the reload turned it off", n-on)
	}
}

// startBanner serves a line-echo server that first writes greeting.
func startBanner(t *testing.T, greeting string) string {
	return serveConns(t, func(c net.Conn) {
		io.WriteString(c, greeting)
		io.Copy(c, c)
	})
}

func TestTargetHealthAnnouncedToPeers(t *testing.T) {
	e := newEnv(t, "cloud/cloud1", "onprem/onprem1")
	target, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { echo.Serve(ctx, target) })
	defer wg.Wait()
	defer cancel()
	c1 := e.start(cloudYAML("cloud1", target.Addr().String()), listenOn("127.0.0.1:0", "127.0.0.1:0"))
	op := e.start(onpremYAML("onprem1", e.echoA, wssURL(c1.TunnelAddr())), listenOn("", "127.0.0.1:0"))
	offers := func() bool {
		st := op.Status()
		return len(st.Tunnels) == 1 && slices.Contains(st.Tunnels[0].Services, "server-b")
	}
	waitFor(t, "server-b offered", 5*time.Second, offers)
	cancel() // server B goes down
	wg.Wait()
	took := waitFor(t, "server-b withdrawn", 5*time.Second, func() bool { return !offers() })
	t.Logf("target down noticed by the peer after %v", took.Round(time.Millisecond))
	if !strings.Contains(c1.logs.String(), "service target down") {
		t.Fatal("cloud1 did not log the target going down")
	}
	// Back up on the same address: offered again.
	ln, err := net.Listen("tcp", target.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	ctx2, cancel2 := context.WithCancel(context.Background())
	var wg2 sync.WaitGroup
	wg2.Go(func() { echo.Serve(ctx2, ln) })
	defer wg2.Wait()
	defer cancel2()
	waitFor(t, "server-b offered again", 5*time.Second, offers)
	if err := roundTrip(op.AcceptAddr("server-b"), "healthy again\n"); err != nil {
		t.Fatal(err)
	}
}

func TestNoOpenProxy(t *testing.T) {
	e := newEnv(t, "cloud/cloud1", "onprem/onprem1")
	cloud, _ := pair(t, e)

	// A secret server that no config names.
	secret, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer secret.Close()
	reached := make(chan struct{}, 1)
	go func() {
		if c, err := secret.Accept(); err == nil {
			reached <- struct{}{}
			c.Close()
		}
	}()

	// A malicious peer with a perfectly valid onprem certificate.
	r, err := tlsgen.NewReloader(e.dir+"/ca.crt", e.dir+"/onprem1.crt", e.dir+"/onprem1.key", nil)
	if err != nil {
		t.Fatal(err)
	}
	tc := r.ClientConfig("localhost", nil)
	tc.NextProtos = []string{"http/1.1"}
	cfg := tunnel.Config{Local: tunnel.Hello{Instance: "onprem1", Site: "onprem", Epoch: uint64(time.Now().UnixNano())}}
	sess, err := tunnel.Dial(context.Background(), wssURL(cloud.TunnelAddr()), tc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()

	_, port, _ := net.SplitHostPort(secret.Addr().String())
	ctx := context.Background()
	for _, tt := range []struct {
		tenant, service string
		want            tunnel.Code
	}{
		{"", "server-a", tunnel.CodeUnknownService}, // cloud1 accepts server-a; it does not connect it
		{"", "secret", tunnel.CodeUnknownService},
		{"", "localhost", tunnel.CodeUnknownService},
		{"", "127.0.0.1", tunnel.CodeUnknownService},
		{"", port, tunnel.CodeUnknownService},
		{"other-tenant", "server-b", tunnel.CodeForbidden},
	} {
		_, err := sess.OpenService(ctx, tt.tenant, tt.service)
		var re *tunnel.RefusedError
		if !errors.As(err, &re) || re.Code != tt.want {
			t.Errorf("open %q/%q = %v, want refusal %s", tt.tenant, tt.service, err, tt.want)
		}
	}
	// Addresses cannot even be named: the header refuses them.
	if _, err := sess.OpenService(ctx, "", secret.Addr().String()); !errors.Is(err, tunnel.ErrBadName) {
		t.Errorf("open by address = %v, want ErrBadName", err)
	}
	// The configured service still works for this peer, and nothing else was reached.
	st, err := sess.OpenService(ctx, "", "server-b")
	if err != nil {
		t.Fatalf("configured service refused: %v", err)
	}
	st.Close()
	select {
	case <-reached:
		t.Fatal("the secret server was reached through the tunnel")
	default:
	}
	if !strings.Contains(cloud.logs.String(), `msg="stream refused" instance=cloud1 site=cloud peer=onprem1 peer_site=onprem peer_tenant="" service=secret code=unknown-service`) {
		t.Error("refusal of service \"secret\" not logged")
	}
}

func TestPeerOfUnconfiguredSiteRefused(t *testing.T) {
	e := newEnv(t, "cloud/cloud1", "onprem/onprem1", "elsewhere/intruder")
	cloud, _ := pair(t, e)
	intruder := e.start(strings.ReplaceAll(strings.ReplaceAll(onpremYAML("intruder", e.echoA, wssURL(cloud.TunnelAddr())), "site: onprem", "site: elsewhere"), "- site: cloud", "- site: cloud"), listenOn("", "127.0.0.1:0"))
	waitFor(t, "refusal logged", 5*time.Second, func() bool {
		return strings.Contains(cloud.logs.String(), `site \"elsewhere\", which is not a configured peer site`)
	})
	if n := tunnels(intruder); n != 0 {
		t.Fatalf("intruder holds %d tunnels", n)
	}
	if n := tunnels(cloud); n != 1 {
		t.Fatalf("cloud1 holds %d tunnels, want only onprem1's", n)
	}
}

func TestReconnectAfterAcceptingInstanceRestarts(t *testing.T) {
	e := newEnv(t, "cloud/cloud1", "onprem/onprem1")
	cloud, onprem := pair(t, e)
	tunnelAddr, acceptAddr := cloud.TunnelAddr(), cloud.AcceptAddr("server-a")
	for round := range 3 {
		cloud.stop()
		waitFor(t, "onprem notices the tunnel is gone", 5*time.Second, func() bool { return tunnels(onprem) == 0 })
		cloud = e.start(cloudYAML("cloud1", e.echoB), listenOn(tunnelAddr, acceptAddr))
		took := waitFor(t, "forwarding again", 2*time.Second, func() bool {
			return roundTrip(onprem.AcceptAddr("server-b"), "back\n") == nil
		})
		t.Logf("round %d: forwarding again %v after cloud1 listened", round, took.Round(time.Millisecond))
	}
}

func TestRestartedConnectingInstanceFencesOldSession(t *testing.T) {
	e := newEnv(t, "cloud/cloud1", "onprem/onprem1")
	cloud, onprem := pair(t, e)
	old := onprem.Epoch()
	acceptAddr := onprem.AcceptAddr("server-b")
	onprem.stop()
	onprem = e.start(onpremYAML("onprem1", e.echoA, wssURL(cloud.TunnelAddr())), listenOn("", acceptAddr))
	waitFor(t, "cloud1 holds only the new session", 5*time.Second, func() bool {
		st := cloud.Status()
		return len(st.Tunnels) == 1 && st.Tunnels[0].Epoch == onprem.Epoch() && onprem.Epoch() != old
	})
	if err := roundTrip(cloud.AcceptAddr("server-a"), "fenced\n"); err != nil {
		t.Fatal(err)
	}
}

func TestClientWaitsForTunnelWithinOpenTimeout(t *testing.T) {
	e := newEnv(t, "cloud/cloud1", "onprem/onprem1")
	cloud := e.start(cloudYAML("cloud1", e.echoB), listenOn("127.0.0.1:0", "127.0.0.1:0"))
	// No tunnel yet: a client arriving now is held until one comes up.
	errc := make(chan error, 1)
	go func() { errc <- roundTrip(cloud.AcceptAddr("server-a"), "early bird\n") }()
	time.Sleep(100 * time.Millisecond) // let the client arrive first; correctness does not depend on it
	e.start(onpremYAML("onprem1", e.echoA, wssURL(cloud.TunnelAddr())), listenOn("", "127.0.0.1:0"))
	if err := <-errc; err != nil {
		t.Fatalf("client that arrived before the tunnel: %v", err)
	}
}

func TestRedialDelay(t *testing.T) {
	b := backoff.Backoff{Min: 100 * time.Millisecond, Max: 5 * time.Second}
	var last time.Duration
	for range 20 {
		last = redialDelay(&b, errors.New("tls: handshake failure"))
		if last > b.Max {
			t.Fatalf("delay %v above the cap %v", last, b.Max)
		}
	}
	if last < b.Max/2 {
		t.Fatalf("after 20 failures the delay is %v, want near the cap %v", last, b.Max)
	}
	for _, err := range []error{
		fmt.Errorf("dial: %w", syscall.ECONNREFUSED),
		fmt.Errorf("dial: %w", &net.DNSError{Err: "no such host", Name: "cloud2.example.com", IsNotFound: true}),
	} {
		for range 20 {
			if d := redialDelay(&b, err); d > refusedRedialCap {
				t.Fatalf("%v: delay %v above %v", err, d, refusedRedialCap)
			}
		}
	}
	b.Reset()
	if d := b.Next(); d > b.Min {
		t.Fatalf("after reset the delay is %v, want at most %v", d, b.Min)
	}
}

func TestReconnectAfterLongOutageWithinTwoSeconds(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out a 4s outage; skipped under testing.Short (-short)")
	}
	e := newEnv(t, "cloud/cloud1", "onprem/onprem1")
	cloud := e.start(cloudYAML("cloud1", e.echoB), listenOn("127.0.0.1:0", "127.0.0.1:0"))
	// The default backoff (100ms doubling, capped at 5s): by the end of the
	// outage plain redials would be seconds apart.
	onprem := e.start(onpremYAML("onprem1", e.echoA, wssURL(cloud.TunnelAddr())), func(c *config.Config) {
		listenOn("", "127.0.0.1:0")(c)
		c.Tunnel.BackoffMin = config.Duration(config.DefaultBackoffMin)
		c.Tunnel.BackoffMax = config.Duration(config.DefaultBackoffMax)
	})
	waitFor(t, "tunnel up", 5*time.Second, func() bool { return tunnels(onprem) == 1 })
	tunnelAddr, acceptAddr := cloud.TunnelAddr(), cloud.AcceptAddr("server-a")
	cloud.stop()
	time.Sleep(4 * time.Second) // the outage itself, not a wait for a condition
	e.start(cloudYAML("cloud1", e.echoB), listenOn(tunnelAddr, acceptAddr))
	took := waitFor(t, "forwarding again", 2*time.Second, func() bool {
		return roundTrip(onprem.AcceptAddr("server-b"), "back after a long outage\n") == nil
	})
	t.Logf("forwarding again %v after cloud1 listened (outage 4s)", took.Round(time.Millisecond))
}

func TestIdleTimeoutClosesQuietConnections(t *testing.T) {
	e := newEnv(t, "cloud/cloud1", "onprem/onprem1")
	cloud := e.start(cloudYAML("cloud1", e.echoB), func(c *config.Config) {
		listenOn("127.0.0.1:0", "127.0.0.1:0")(c)
		c.Limits.IdleTimeout = config.Duration(300 * time.Millisecond)
	})
	onprem := e.start(onpremYAML("onprem1", e.echoA, wssURL(cloud.TunnelAddr())), listenOn("", "127.0.0.1:0"))
	waitFor(t, "tunnel up", 5*time.Second, func() bool { return tunnels(onprem) == 1 })

	c, err := net.Dial("tcp", cloud.AcceptAddr("server-a"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Busy for longer than the timeout: the connection must survive.
	buf := make([]byte, 5)
	for range 8 {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("ping\n")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatalf("busy connection closed: %v", err)
		}
		time.Sleep(100 * time.Millisecond) // traffic pattern under test, not a wait
	}
	// Then quiet: it must be closed by the gateway.
	c.SetDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	if _, err := c.Read(buf); err != io.EOF {
		t.Fatalf("quiet connection: read %v, want EOF from the idle timeout", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("idle close took %v", took)
	}
}

func TestHangingFarEndLeavesTimeForNextTunnel(t *testing.T) {
	e := newEnv(t, "cloud/cloud1", "cloud/cloud2", "onprem/onprem1")
	hanging := startHangingPeer(t, e, "cloud1")
	c2 := e.start(cloudYAML("cloud2", e.echoB), listenOn("127.0.0.1:0", "127.0.0.1:0"))
	op := e.start(onpremYAML("onprem1", e.echoA, wssURL(hanging), wssURL(c2.TunnelAddr())), func(c *config.Config) {
		listenOn("", "127.0.0.1:0")(c)
		c.Limits.OpenTimeout = config.Duration(2 * time.Second)
	})
	waitFor(t, "both tunnels up", 5*time.Second, func() bool { return tunnels(op) == 2 })
	for i := range 6 {
		if err := roundTrip(op.AcceptAddr("server-b"), fmt.Sprintf("attempt %d\n", i)); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
	}
}

// startHangingPeer runs a tunnel endpoint for name that offers server-b but
// never answers a stream: the far end of a black-holed target.
func startHangingPeer(t *testing.T, e *env, name string) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r, err := tlsgen.NewReloader(e.dir+"/ca.crt", e.dir+"/"+name+".crt", e.dir+"/"+name+".key", nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts := &tunnel.Server{Config: tunnel.Config{Local: tunnel.Hello{Instance: name, Site: "cloud", Epoch: 1, Services: []string{"server-b"}}}}
	ts.OnSession = func(s *tunnel.Session) {
		s.Serve(ctx, func(ctx context.Context, _ *tunnel.Session, in *tunnel.Inbound) {
			<-ctx.Done()
			in.Close()
		})
	}
	tc := r.ServerConfig(nil)
	tc.NextProtos = []string{"http/1.1"}
	hs := &http.Server{Handler: ts, TLSConfig: tc}
	var wg sync.WaitGroup
	wg.Go(func() { hs.ServeTLS(ln, "", "") })
	t.Cleanup(func() {
		cancel()
		hs.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

func TestPendingClientsPerPortBounded(t *testing.T) {
	e := newEnv(t, "cloud/cloud1")
	// No tunnel ever comes up: every client waits for a route.
	cloud := e.start(cloudYAML("cloud1", e.echoB), func(c *config.Config) {
		listenOn("127.0.0.1:0", "127.0.0.1:0")(c)
		c.Limits.MaxPendingPerPort = 2
		c.Limits.OpenTimeout = config.Duration(3 * time.Second)
	})
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", cloud.AcceptAddr("server-a"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		held = append(held, c)
	}
	// The listener hands connections over in order, so the third is the
	// one over the limit: it is closed at once rather than queued.
	c, err := net.Dial("tcp", cloud.AcceptAddr("server-a"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	start := time.Now()
	if _, err := c.Read(make([]byte, 1)); err == nil || time.Since(start) > time.Second {
		t.Fatalf("third client: read %v after %v, want closed at once", err, time.Since(start))
	}
	waitFor(t, "refusal logged", 5*time.Second, func() bool {
		return strings.Contains(cloud.logs.String(), "limits.max-pending-per-port")
	})
	// The held clients still wait (their open timeout has not passed).
	held[0].SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := held[0].Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("held client: %v, want still waiting", err)
	}
}

// TestParallelTunnelsSpreadConnections: with tunnel.connections set, the
// dialling instance keeps that many tunnels to the URL, new client
// connections go to the least busy one, even when they arrive together,
// and when one tunnel dies the others carry on while it is dialled again.
func TestParallelTunnelsSpreadConnections(t *testing.T) {
	const n = 3
	e := newEnv(t, "cloud/cloud1", "onprem/onprem1")
	cloud := e.start(cloudYAML("cloud1", e.echoB), listenOn("127.0.0.1:0", "127.0.0.1:0"))
	onprem := e.start(onpremYAML("onprem1", e.echoA, wssURL(cloud.TunnelAddr())), func(c *config.Config) {
		listenOn("", "127.0.0.1:0")(c)
		c.Tunnel.Connections = n
	})
	waitFor(t, "3 tunnels up", 5*time.Second, func() bool { return tunnels(cloud) == n && tunnels(onprem) == n })

	// Two held connections per tunnel, opened all at once: each open
	// counts itself on the least busy tunnel before it waits for the far
	// end, so they spread evenly.
	held := make([]net.Conn, 2*n)
	defer func() {
		for _, c := range held {
			if c != nil {
				c.Close()
			}
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, len(held))
	for i := range held {
		c, err := net.Dial("tcp", onprem.AcceptAddr("server-b"))
		if err != nil {
			t.Fatal(err)
		}
		held[i] = c
		wg.Go(func() {
			line := fmt.Sprintf("held %d\n", i)
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.WriteString(c, line); err != nil {
				errs <- err
				return
			}
			got := make([]byte, len(line))
			if _, err := io.ReadFull(c, got); err != nil || string(got) != line {
				errs <- fmt.Errorf("held connection %d: got %q, %v", i, got, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, ts := range onprem.Status().Tunnels {
		if ts.Active != 2 {
			t.Fatalf("active connections per tunnel: %+v; want 2 on each of %d", onprem.Status().Tunnels, n)
		}
	}

	// One tunnel dies: the others forward, and it comes back.
	onprem.peers.all()[0].sess.Close()
	if err := roundTrip(onprem.AcceptAddr("server-b"), "still here\n"); err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(cloud.AcceptAddr("server-a"), "and back\n"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "3 tunnels again", 5*time.Second, func() bool { return tunnels(cloud) == n && tunnels(onprem) == n })
}

// TestParallelTunnelsTwoURLsOneInstance: two URLs that reach the same
// instance (an address and a name, as a load balancer and a discovered
// address would) make up tunnel.connections between them, not twice that.
func TestParallelTunnelsTwoURLsOneInstance(t *testing.T) {
	const n = 2
	e := newEnv(t, "cloud/cloud1", "onprem/onprem1")
	cloud := e.start(cloudYAML("cloud1", e.echoB), listenOn("127.0.0.1:0", "127.0.0.1:0"))
	_, port, _ := net.SplitHostPort(cloud.TunnelAddr())
	onprem := e.start(onpremYAML("onprem1", e.echoA, wssURL(cloud.TunnelAddr()), wssURL("localhost:"+port)), func(c *config.Config) {
		listenOn("", "127.0.0.1:0")(c)
		c.Tunnel.Connections = n
	})
	waitFor(t, "the other URL's extra dials refused as duplicates", 5*time.Second, func() bool {
		return strings.Count(onprem.logs.String(), "already reached through") >= n
	})
	if got := tunnels(onprem); got != n {
		t.Fatalf("%d tunnels to cloud1 through two URLs; want %d", got, n)
	}
	if err := roundTrip(onprem.AcceptAddr("server-b"), "two urls\n"); err != nil {
		t.Fatal(err)
	}
}

// TestParallelTunnelsSkipAFailedInstance: when an instance does not answer
// a stream, a client goes on to another instance, not to that instance's
// other tunnels (tunnel.connections), which would each take half of the
// time left.
func TestParallelTunnelsSkipAFailedInstance(t *testing.T) {
	const n = 4
	e := newEnv(t, "cloud/cloud1", "cloud/cloud2", "onprem/onprem1")
	hanging := startHangingPeer(t, e, "cloud1")
	c2 := e.start(cloudYAML("cloud2", e.echoB), listenOn("127.0.0.1:0", "127.0.0.1:0"))
	op := e.start(onpremYAML("onprem1", e.echoA, wssURL(hanging), wssURL(c2.TunnelAddr())), func(c *config.Config) {
		listenOn("", "127.0.0.1:0")(c)
		c.Limits.OpenTimeout = config.Duration(time.Second)
		c.Tunnel.Connections = n
	})
	waitFor(t, "all tunnels up", 5*time.Second, func() bool { return tunnels(op) == 2*n })
	failures := func() int { return strings.Count(op.logs.String(), "stream open failed, trying next route") }
	for i := range 12 {
		before := failures()
		if err := roundTrip(op.AcceptAddr("server-b"), fmt.Sprintf("attempt %d\n", i)); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		if d := failures() - before; d > 1 {
			t.Fatalf("connection %d tried %d tunnels of the hanging instance; want at most 1", i, d)
		}
	}
}
