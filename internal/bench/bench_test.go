package bench

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sitebridge/sitebridge/internal/echo"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestPercentileAndMedian(t *testing.T) {
	s := []time.Duration{5, 1, 4, 2, 3, 10, 9, 8, 7, 6}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{50, 5}, {99, 10}, {10, 1}, {100, 10}, {0, 1}} {
		if got := percentile(s, c.p); got != c.want {
			t.Errorf("percentile(%v) = %v, want %v", c.p, got, c.want)
		}
	}
	if got := median([]float64{3, 1, 2}); got != 2 {
		t.Errorf("median odd = %v", got)
	}
	if got := median([]float64{4, 1, 2, 3}); got != 2.5 {
		t.Errorf("median even = %v", got)
	}
}

func TestCheck(t *testing.T) {
	for _, c := range []struct {
		target         string
		direct, tunnel float64
		pass           bool
	}{
		{"≥ 0.25", 100, 30, true},
		{"≥ 0.25", 100, 20, false},
		{"≤ 1.8×", 10, 17, true},
		{"≤ 1.8×", 10, 19, false},
	} {
		f := Figure{Target: c.target}
		f.set([]float64{c.direct}, []float64{c.tunnel})
		f.check()
		if f.Pass == nil || *f.Pass != c.pass {
			t.Errorf("%s with ratio %.2f: pass = %v, want %v", c.target, *f.Ratio, f.Pass, c.pass)
		}
	}
}

// TestLoadAgainstServers runs every load generator briefly against the
// servers, directly, through the reference relay and through the chain of
// two TLS relays, as the bench does.
func TestLoadAgainstServers(t *testing.T) {
	direct := startTestServers(t)
	ctx := context.Background()

	relay := freeAddrs(t, 3)
	startRelay(t, relayPairs(relay, direct, "", "")...)
	// The same through user-space buffers (-copy-buffer), a small one so
	// that every transfer takes many reads.
	copied := freeAddrs(t, 3)
	startRelay(t, append([]string{"-copy-buffer=4096"}, relayPairs(copied, direct, "", "")...)...)

	// client -> relay1 (hop1) -> mutual TLS -> relay2 (hop2) -> server
	files := relayCertFiles(t, t.TempDir())
	hop1, hop2 := freeAddrs(t, 3), freeAddrs(t, 3)
	startRelay(t, append(files[1], relayPairs(hop2, direct, tlsScheme, "")...)...)
	startRelay(t, append(files[0], relayPairs(hop1, hop2, "", tlsScheme)...)...)
	tlsRelay := hop1

	for _, tg := range []targets{relay, copied, tlsRelay} {
		waitEcho(t, tg.echo())
	}
	for name, tg := range map[string]targets{"direct": direct, "relay": relay, "copying relay": copied, "tls-relay": tlsRelay} {
		if r, err := throughput(ctx, tg.sink(), 2, 100*time.Millisecond, 1<<30); err != nil || r <= 0 {
			t.Errorf("%s throughput = %v, %v", name, r, err)
		}
		if r, err := throughput(ctx, tg.sink(), 1, time.Hour, 1<<20); err != nil || r <= 0 {
			t.Errorf("%s throughput bounded by bytes = %v, %v", name, r, err)
		}
		if r, err := pull(ctx, tg.source(), 100*time.Millisecond, 1<<30); err != nil || r <= 0 {
			t.Errorf("%s pull = %v, %v", name, r, err)
		}
		if s, err := echoRTT(ctx, tg.echo(), 10, 100, time.Second); err != nil || len(s) != 100 {
			t.Errorf("%s echo: %d samples, %v", name, len(s), err)
		}
		if r, failed, err := connRate(ctx, tg.echo(), 2, 100*time.Millisecond, 50); err != nil || r <= 0 || failed > 0 {
			t.Errorf("%s conn rate = %v (%d failed), %v", name, r, failed, err)
		}
		conns, err := hold(ctx, tg.echo(), 20, 5)
		if err != nil {
			t.Errorf("%s hold: %v", name, err)
		}
		closeAll(conns)
	}
	s, err := echoInterleaved(ctx, []dialFunc{direct.echo(), relay.echo(), tlsRelay.echo()}, 10, 100, 3*time.Second)
	if err != nil || len(s) != 3 || len(s[0]) != 100 || len(s[1]) != 100 || len(s[2]) != 100 {
		t.Errorf("interleaved echo: %d paths, %v", len(s), err)
	}

	// The leg between the relays is mutual TLS 1.3: a client with relay1's
	// certificate reaches the echo server through relay2 alone.
	c := dialTLS(t, hop2.echoAddr, files[0], files[0][5])
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := roundTrip(c); err != nil {
		t.Fatalf("echo through relay2 alone: %v", err)
	}
	if v := c.ConnectionState().Version; v != tls.VersionTLS13 {
		t.Errorf("TLS version %#x, want TLS 1.3", v)
	}
}

// TestTLSRelayRefusesForeignCA checks both sides of a TLS relay refuse a
// peer whose certificate another CA signed, forwarding nothing.
func TestTLSRelayRefusesForeignCA(t *testing.T) {
	good := relayCertFiles(t, filepath.Join(t.TempDir(), "good"))
	foreign := relayCertFiles(t, filepath.Join(t.TempDir(), "foreign"))
	goodCA := good[0][5]

	t.Run("server side", func(t *testing.T) {
		// relay2 -> witness, an echo server that counts what reaches it.
		wit := startWitness(t)
		listen := freeAddrs(t, 1).sinkAddr
		log := startRelay(t, append(good[1], tlsScheme+listen+"="+wit.Addr().String())...)
		waitListening(t, listen)

		// A client with the foreign CA's certificate (trusting the right
		// CA, so that only its own certificate is wrong).
		bad := dialTLSNoHandshake(t, listen, foreign[0], goodCA)
		defer bad.Close()
		bad.SetDeadline(time.Now().Add(10 * time.Second))
		var buf [1]byte
		n, err := 0, bad.Handshake() // TLS 1.3: the client's handshake ends before the server checks its certificate
		if err == nil {
			n, err = bad.Read(buf[:])
		}
		if err == nil || n > 0 || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("client with a foreign certificate: read %d bytes, err %v; want a certificate alert", n, err)
		}
		waitLog(t, log, "certificate signed by unknown authority")

		// A good client goes through; the witness accepted it first, so
		// the refused connection never reached it.
		c := dialTLS(t, listen, good[0], goodCA)
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if err := roundTrip(c); err != nil {
			t.Fatalf("good client: %v", err)
		}
		if n := wit.accepted.Load(); n != 1 {
			t.Errorf("the witness accepted %d connections, want 1 (the good client's)", n)
		}
	})

	t.Run("client side", func(t *testing.T) {
		// relay1 -> a TLS server with the foreign CA's certificate.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		cert, err := tls.LoadX509KeyPair(foreign[1][1], foreign[1][3])
		if err != nil {
			t.Fatal(err)
		}
		fake := tls.NewListener(ln, &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAnyClientCert})
		served := make(chan error, 1)
		go func() {
			c, err := fake.Accept()
			if err != nil {
				served <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if err := c.(*tls.Conn).Handshake(); err != nil {
				served <- err
				return
			}
			_, err = c.Read(make([]byte, 1))
			served <- fmt.Errorf("handshake accepted; then read: %v", err)
		}()
		listen := freeAddrs(t, 1).sinkAddr
		log := startRelay(t, append(good[0], listen+"="+tlsScheme+ln.Addr().String())...)

		// The first connection that gets through is the one the fake
		// server sees (it accepts one).
		c := dialWhenListening(t, listen)
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if n, err := c.Read(make([]byte, 1)); n > 0 || err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("client of the refusing relay: read %d bytes, err %v; want the connection closed", n, err)
		}
		select {
		case err := <-served:
			if err == nil || !strings.Contains(err.Error(), "bad certificate") {
				t.Errorf("the foreign server: %v; want the relay's bad certificate alert", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the foreign server saw no handshake")
		}
		waitLog(t, log, "certificate signed by unknown authority")
	})
}

func TestRelayArgs(t *testing.T) {
	files := relayCertFiles(t, t.TempDir())
	for _, c := range []struct {
		args []string
		want string // in the error; "" means no error
	}{
		{[]string{"127.0.0.1:1=127.0.0.1:2"}, ""},
		{append(slices.Clone(files[0]), "127.0.0.1:1=tls://127.0.0.1:2"), ""},
		{append(slices.Clone(files[1]), "tls://127.0.0.1:1=127.0.0.1:2"), ""},
		{nil, "no pair"},
		{[]string{"127.0.0.1:1"}, "want [tls://]LISTEN=[tls://]TARGET"},
		{[]string{"tcp://127.0.0.1:1=127.0.0.1:2"}, `unknown scheme "tcp"`},
		{[]string{"127.0.0.1:1=localhost"}, "TARGET: want HOST:PORT"},
		{[]string{"tls://127.0.0.1:1=127.0.0.1:2"}, "needs all of -tls-cert, -tls-key and -tls-ca"},
		{append(slices.Clone(files[0][:4]), "tls://127.0.0.1:1=127.0.0.1:2"), "needs all of"},
		{append(slices.Clone(files[0]), "127.0.0.1:1=127.0.0.1:2"), "no pair has tls://"},
		{[]string{"-tls-cert", "/nonexistent", "-tls-key", "/nonexistent", "-tls-ca", files[0][5], "tls://127.0.0.1:1=127.0.0.1:2"}, "-tls-cert/-tls-key"},
		{[]string{"-tls-cert", files[0][1], "-tls-key", files[0][3], "-tls-ca", files[0][1] + ".missing", "tls://127.0.0.1:1=127.0.0.1:2"}, "-tls-ca"},
		{[]string{"-bogus", "127.0.0.1:1=127.0.0.1:2"}, "flag provided but not defined"},
		{[]string{"-copy-buffer=262144", "127.0.0.1:1=127.0.0.1:2"}, ""},
		{[]string{"-copy-buffer=-1", "127.0.0.1:1=127.0.0.1:2"}, "want 0 to 64 MiB"},
	} {
		_, err := parseRelayArgs(c.args)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%q: %v", c.args, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%q: error %v, want one with %q", c.args, err, c.want)
		}
	}
}

// startTestServers starts the sink, echo and source servers on 127.0.0.1
// until the test ends.
func startTestServers(t *testing.T) targets {
	var lns []net.Listener
	for range 3 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
	}
	srv := startServers(lns[0], lns[1], lns[2])
	t.Cleanup(srv.close)
	return targets{sinkAddr: lns[0].Addr().String(), echoAddr: lns[1].Addr().String(), sourceAddr: lns[2].Addr().String()}
}

// freeAddrs returns a path of n (1 to 3) free addresses on 127.0.0.1.
func freeAddrs(t *testing.T, n int) targets {
	addrs := make([]string, 3)
	for i := range n {
		port, err := freePort("127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		addrs[i] = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	}
	return targets{sinkAddr: addrs[0], echoAddr: addrs[1], sourceAddr: addrs[2]}
}

// startRelay runs Relay in this process with args until the test ends and
// returns its log. Cleanups run last first, so it stops before the
// servers the test started earlier.
func startRelay(t *testing.T, args ...string) *syncBuffer {
	ctx, cancel := context.WithCancel(context.Background())
	log := &syncBuffer{}
	done := make(chan error, 1)
	go func() { done <- Relay(ctx, args, log) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Relay(%q): %v", args, err)
		}
	})
	return log
}

// relayCertFiles issues two relay certificates with tlsgen in dir (the
// second, the TLS server's, for 127.0.0.1) and returns each relay's -tls-*
// flags: -tls-cert CERT -tls-key KEY -tls-ca CA.
func relayCertFiles(t *testing.T, dir string) [2][]string {
	flags, err := tlsRelayFlags(dir, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	return flags
}

// dialTLSNoHandshake dials addr with mutual TLS 1.3, presenting the
// certificate of flags (-tls-* as from relayCertFiles) and trusting caFile.
func dialTLSNoHandshake(t *testing.T, addr string, flags []string, caFile string) *tls.Conn {
	m, err := loadRelayTLS(flags[1], flags[3], caFile)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	host, _, _ := net.SplitHostPort(addr)
	return tls.Client(c, m.client(host))
}

// dialTLS is dialTLSNoHandshake with the handshake done.
func dialTLS(t *testing.T, addr string, flags []string, caFile string) *tls.Conn {
	c := dialTLSNoHandshake(t, addr, flags, caFile)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := c.Handshake(); err != nil {
		c.Close()
		t.Fatal(err)
	}
	c.SetDeadline(time.Time{})
	return c
}

// waitEcho polls until an echo round trip through dial works.
func waitEcho(t *testing.T, dial dialFunc) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := dial(context.Background())
		if err == nil {
			c.SetDeadline(time.Now().Add(2 * time.Second))
			err = roundTrip(c)
			c.Close()
			if err == nil {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitListening polls until addr accepts a TCP connection (which it closes
// at once).
func waitListening(t *testing.T, addr string) {
	t.Helper()
	dialWhenListening(t, addr).Close()
}

// dialWhenListening polls until addr accepts a TCP connection and returns
// it.
func dialWhenListening(t *testing.T, addr string) net.Conn {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitLog polls until the log holds want.
func waitLog(t *testing.T, log *syncBuffer, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(log.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("relay log has no %q:\n%s", want, log.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// witness is an echo server that counts the connections it accepts.
type witness struct {
	net.Listener
	accepted atomic.Int64
}

func (w *witness) Accept() (net.Conn, error) {
	c, err := w.Listener.Accept()
	if err == nil {
		w.accepted.Add(1)
	}
	return c, err
}

func startWitness(t *testing.T) *witness {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w := &witness{Listener: ln}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		echo.Serve(ctx, w)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return w
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
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

func TestWriteFiguresReferences(t *testing.T) {
	v := func(x float64) *float64 { return &x }
	figs := []Figure{
		{Key: "throughput_8", Name: "8-stream throughput", Unit: "MB/s", Direct: v(1000), Tunnel: v(300), Ratio: v(0.3),
			Relay: v(800), TLSRelay: v(400)},
		{Key: "conns_per_s", Name: "new conns/s", Unit: "/s", Direct: v(100), Tunnel: v(50), Ratio: v(0.5),
			Relay: v(90), TLSRelayStatus: "not measured: a full TLS handshake per connection"},
	}
	var b bytes.Buffer
	writeFigures(&b, figs)
	out := strings.Join(strings.Fields(b.String()), " ") // the columns' padding aside
	for _, want := range []string{"2 TCP relays (ref.) ratio 2 TLS relays (ref.) ratio", "800 MB/s 0.80 400 MB/s 0.40", "90.0 /s 0.90 —",
		"— 2 TLS relays, new conns/s: not measured: a full TLS handshake per connection"} {
		if !strings.Contains(out, want) {
			t.Errorf("table has no %q:\n%s", want, b.String())
		}
	}
}
