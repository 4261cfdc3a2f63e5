package tunnel

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/goleak"

	"github.com/sitebridge/sitebridge/tlsgen"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// pki is a CA with certificates for cloud1 and onprem1, in a temp dir.
type pki struct{ dir string }

func newPKI(t testing.TB) pki {
	t.Helper()
	dir := t.TempDir()
	spec := tlsgen.Spec{Instances: []tlsgen.InstanceSpec{
		{Name: "cloud1", Site: "cloud", DNS: []string{"localhost"}, IPs: []string{"127.0.0.1"}},
		{Name: "onprem1", Site: "onprem", DNS: []string{"localhost"}},
	}}
	if _, err := tlsgen.Generate(spec, dir, false); err != nil {
		t.Fatal(err)
	}
	return pki{dir}
}

func (p pki) reloader(t testing.TB, name string) *tlsgen.Reloader {
	t.Helper()
	r, err := tlsgen.NewReloader(p.dir+"/ca.crt", p.dir+"/"+name+".crt", p.dir+"/"+name+".key", nil)
	if err != nil {
		t.Fatal(err)
	}
	return r
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

// echoHandler accepts every service stream and echoes it.
func echoHandler(ctx context.Context, s *Session, in *Inbound) {
	if in.Header.Service == "refuse-me" {
		in.Refuse(CodeUnknownService, "no such service")
		return
	}
	in.Accept()
	io.Copy(in, in)
	in.Close()
}

// server runs an accepting tunnel endpoint for cloud1 on loopback. Every
// session is served with echoHandler (startServer) or the given handler
// (startServerWith); sessions are sent on the channel.
type server struct {
	url      string
	sessions chan *Session
	log      *syncBuffer
}

func startServer(t testing.TB, p pki, cfg Config) *server {
	return startServerWith(t, p, cfg, echoHandler)
}

// startServerWith is startServer with another handler for the sessions.
func startServerWith(t testing.TB, p pki, cfg Config, h Handler) *server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	cfg.Local = Hello{Instance: "cloud1", Site: "cloud", Epoch: 1, Services: []string{"server-b"}}
	cfg.Log = slog.New(slog.NewTextHandler(logs, nil))
	s := &server{url: "wss://" + ln.Addr().String() + DefaultPath, sessions: make(chan *Session, 16), log: logs}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	ts := &Server{Config: cfg, OnSession: func(sess *Session) {
		s.sessions <- sess
		sess.Serve(ctx, h)
	}}
	tc := p.reloader(t, "cloud1").ServerConfig(func(tlsgen.Identity) error { return nil })
	tc.NextProtos = []string{"http/1.1"}
	hs := &http.Server{Handler: ts, TLSConfig: tc, ErrorLog: slog.NewLogLogger(cfg.Log.Handler(), slog.LevelWarn)}
	wg.Go(func() { hs.ServeTLS(CorkListener(ln), "", "") })
	t.Cleanup(func() {
		cancel()
		hs.Close()
		wg.Wait()
	})
	return s
}

func dialConfig() Config {
	return Config{Local: Hello{Instance: "onprem1", Site: "onprem", Epoch: 1, Services: []string{"server-a"}}}
}

func clientTLS(t testing.TB, p pki, name string) *tls.Config {
	tc := p.reloader(t, name).ClientConfig("localhost", func(tlsgen.Identity) error { return nil })
	tc.NextProtos = []string{"http/1.1"}
	return tc
}

func dial(t testing.TB, p pki, srv *server, cfg Config) *Session {
	t.Helper()
	sess, err := Dial(context.Background(), srv.url, clientTLS(t, p, "onprem1"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	return sess
}

func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
		t.Fatalf("echo = %q, %v; want %q", buf, err, msg)
	}
}

func TestSessionBothDirections(t *testing.T) {
	p := newPKI(t)
	srv := startServer(t, p, Config{})
	cli := dial(t, p, srv, dialConfig())
	if r := cli.Remote(); r.Instance != "cloud1" || r.Site != "cloud" || !r.Offers("server-b") {
		t.Fatalf("client sees remote hello %+v", r)
	}
	if id := cli.Peer(); id.Instance != "cloud1" || id.Site != "cloud" {
		t.Fatalf("client sees peer identity %v", id)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { cli.Serve(ctx, echoHandler) })
	srvSess := <-srv.sessions
	if r := srvSess.Remote(); r.Instance != "onprem1" || !r.Offers("server-a") {
		t.Fatalf("server sees remote hello %+v", r)
	}

	for _, opener := range []*Session{cli, srvSess} {
		st, err := opener.OpenService(ctx, "", "server-x")
		if err != nil {
			t.Fatal(err)
		}
		roundTrip(t, st, "hello over the tunnel\n")
		st.Close()
	}

	_, err := cli.OpenService(ctx, "", "refuse-me")
	var re *RefusedError
	if !errors.As(err, &re) || re.Code != CodeUnknownService {
		t.Fatalf("OpenService(refuse-me) = %v, want unknown-service refusal", err)
	}
}

func TestVersionMismatchIsClear(t *testing.T) {
	p := newPKI(t)
	srv := startServer(t, p, Config{})
	cfg := dialConfig()
	cfg.Local.Version = Version + 1
	_, err := Dial(context.Background(), srv.url, clientTLS(t, p, "onprem1"), cfg)
	var he *HandshakeError
	if !errors.As(err, &he) || he.Code != CodeVersionMismatch || !he.Remote {
		t.Fatalf("Dial with version %d = %v, want version-mismatch from the peer", Version+1, err)
	}
	if !strings.Contains(err.Error(), "version 2") || !strings.Contains(err.Error(), "version 1") {
		t.Fatalf("error does not name both versions: %v", err)
	}
}

func TestHelloMustMatchCertificate(t *testing.T) {
	p := newPKI(t)
	srv := startServer(t, p, Config{})
	cfg := dialConfig()
	cfg.Local.Instance = "onprem2" // the certificate says onprem1
	_, err := Dial(context.Background(), srv.url, clientTLS(t, p, "onprem1"), cfg)
	var he *HandshakeError
	if !errors.As(err, &he) || he.Code != CodeBadHello {
		t.Fatalf("Dial with a hello for another instance = %v, want bad-hello", err)
	}
	waitFor(t, func() bool {
		return strings.Contains(srv.log.String(), "certificate is spiffe://sitebridge.local/site/onprem/instance/onprem1")
	})
}

func TestGarbageStreamIsRefusedAndSessionLives(t *testing.T) {
	p := newPKI(t)
	srv := startServer(t, p, Config{HeaderTimeout: time.Second})
	cli := dial(t, p, srv, dialConfig())
	for _, garbage := range []string{"GET / HTTP/1.1\r\n\r\n", "\x53\x01\x01\x00\x0c127.0.0.1:22"} {
		st, err := cli.mux.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		st.Write([]byte(garbage))
		st.SetDeadline(time.Now().Add(5 * time.Second))
		code, msg, err := ReadReply(st)
		if err != nil || code != CodeBadHeader {
			t.Fatalf("garbage %q: reply %v %q %v, want bad-header", garbage, code, msg, err)
		}
		st.Close()
	}
	// A stream that sends nothing is refused after the header timeout.
	st, _ := cli.mux.OpenStream()
	st.Write(nil)
	st.SetDeadline(time.Now().Add(5 * time.Second))
	if code, _, err := ReadReply(st); err != nil || code != CodeBadHeader {
		t.Fatalf("silent stream: reply %v %v, want bad-header", code, err)
	}
	st.Close()

	c, err := cli.OpenService(context.Background(), "", "server-b")
	if err != nil {
		t.Fatalf("session unusable after garbage: %v", err)
	}
	roundTrip(t, c, "still here")
	c.Close()
}

func TestTooManyStreamsRefused(t *testing.T) {
	p := newPKI(t)
	srv := startServer(t, p, Config{MaxStreams: 2})
	cli := dial(t, p, srv, dialConfig())
	var held []net.Conn
	for range 2 {
		c, err := cli.OpenService(context.Background(), "", "server-b")
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	_, err := cli.OpenService(context.Background(), "", "server-b")
	var re *RefusedError
	if !errors.As(err, &re) || re.Code != CodeOverloaded {
		t.Fatalf("third stream = %v, want overloaded", err)
	}
	held[0].Close()
	waitFor(t, func() bool {
		c, err := cli.OpenService(context.Background(), "", "server-b")
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
	held[1].Close()
}

func TestOversizedMessageKillsOnlyThatTunnel(t *testing.T) {
	p := newPKI(t)
	srv := startServer(t, p, Config{MaxMessageSize: 128 << 10})
	good := dial(t, p, srv, dialConfig())

	tr := &http.Transport{TLSClientConfig: clientTLS(t, p, "onprem1")}
	defer tr.CloseIdleConnections()
	ws, _, err := websocket.Dial(context.Background(), srv.url, &websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ws.Write(ctx, websocket.MessageBinary, make([]byte, 1<<20))
	// The server may send a message or two (a yamux ping) before it reads
	// ours; the tunnel must end, not time out.
	for {
		_, _, err := ws.Read(ctx)
		if err == nil {
			continue
		}
		if errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("server kept a tunnel that sent a 1 MiB message: %v", err)
		}
		break
	}
	c, err := good.OpenService(context.Background(), "", "server-b")
	if err != nil {
		t.Fatalf("other tunnel hurt: %v", err)
	}
	roundTrip(t, c, "unaffected")
	c.Close()
}

func TestWrongCARefused(t *testing.T) {
	p := newPKI(t)
	other := newPKI(t) // a second, unrelated CA with the same names
	srv := startServer(t, p, Config{})

	// The server's certificate does not chain to the client's CA.
	_, err := Dial(context.Background(), srv.url, clientTLS(t, other, "onprem1"), dialConfig())
	var ve *tlsgen.VerifyError
	if !errors.As(err, &ve) || ve.Reason != tlsgen.ReasonUnknownCA {
		t.Fatalf("dial to a server of another CA = %v, want unknown-ca", err)
	}

	// The client trusts the server, but its own certificate is of another CA.
	pair, err := tls.LoadX509KeyPair(other.dir+"/onprem1.crt", other.dir+"/onprem1.key")
	if err != nil {
		t.Fatal(err)
	}
	tc := clientTLS(t, p, "onprem1")
	tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }
	if _, err := Dial(context.Background(), srv.url, tc, dialConfig()); err == nil {
		t.Fatal("dial with a client certificate from another CA succeeded")
	}
	waitFor(t, func() bool { return strings.Contains(srv.log.String(), "unknown-ca") })
}

func TestDeadTunnelNoticed(t *testing.T) {
	p := newPKI(t)
	srv := startServer(t, p, Config{})
	fp := startFreezeProxy(t, strings.TrimSuffix(strings.TrimPrefix(srv.url, "wss://"), DefaultPath))
	cfg := dialConfig()
	cfg.Keepalive, cfg.DeadAfter = 200*time.Millisecond, 600*time.Millisecond
	sess, err := Dial(context.Background(), "wss://"+fp.addr+DefaultPath, clientTLS(t, p, "onprem1"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { sess.Serve(ctx, echoHandler) })

	fp.freeze() // the path goes silent: no FIN, no RST, nothing
	start := time.Now()
	select {
	case <-sess.Done():
		t.Logf("dead tunnel noticed after %v", time.Since(start).Round(time.Millisecond))
	case <-time.After(5 * time.Second):
		t.Fatal("silent tunnel still considered alive after 5s (keepalive 200ms, dead-after 600ms)")
	}
}

// freezeProxy forwards one TCP connection until frozen; then it stops
// moving bytes in both directions without closing anything.
type freezeProxy struct {
	addr   string
	frozen chan struct{}
}

func startFreezeProxy(t *testing.T, target string) *freezeProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fp := &freezeProxy{addr: ln.Addr().String(), frozen: make(chan struct{})}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		u, err := net.Dial("tcp", target)
		if err != nil {
			return
		}
		defer u.Close()
		var inner sync.WaitGroup
		inner.Go(func() { fp.copy(u, c, done) })
		inner.Go(func() { fp.copy(c, u, done) })
		<-done
		c.Close()
		u.Close()
		inner.Wait()
	})
	t.Cleanup(func() {
		close(done)
		ln.Close()
		wg.Wait()
	})
	return fp
}

func (fp *freezeProxy) freeze() { close(fp.frozen) }

func (fp *freezeProxy) copy(dst, src net.Conn, done <-chan struct{}) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		select {
		case <-fp.frozen:
			<-done
			return
		default:
		}
		if err != nil {
			return
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			return
		}
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestOpenServiceEarly: early data reaches the handler after the header,
// before anything the opener writes later, and does not break a refusal:
// the refused stream's early bytes are dropped and the session carries on.
func TestOpenServiceEarly(t *testing.T) {
	p := newPKI(t)
	srv := startServer(t, p, Config{})
	cli := dial(t, p, srv, dialConfig())
	<-srv.sessions
	ctx := context.Background()

	big := bytes.Repeat([]byte("0123456789abcdef"), 1024) // 16 KiB, the gateway's bound
	for _, early := range [][]byte{nil, []byte("first line\n"), big} {
		if _, err := cli.OpenServiceEarly(ctx, "", "refuse-me", early); !errors.As(err, new(*RefusedError)) {
			t.Fatalf("refuse-me with %d early bytes: %v, want a refusal", len(early), err)
		}
		st, err := cli.OpenServiceEarly(ctx, "", "server-b", early)
		if err != nil {
			t.Fatal(err)
		}
		st.SetDeadline(time.Now().Add(5 * time.Second))
		got := make([]byte, len(early))
		if _, err := io.ReadFull(st, got); err != nil || !bytes.Equal(got, early) {
			t.Fatalf("echo of %d early bytes: %d differ, %v", len(early), len(got), err)
		}
		roundTrip(t, st, "after the early data\n")
		st.Close()
	}
}
