package tests

import (
	"bufio"
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/hashicorp/yamux"

	"github.com/sitebridge/sitebridge/drill"
	"github.com/sitebridge/sitebridge/tunnel"
)

// The hostile-input suite runs one cloud instance (cloud1, accepting
// tunnels), one on-prem instance (onprem1, dialling it) and two echo
// servers as real processes, so that two legitimate paths cross the one
// tunnel: onprem1's accept port reaches server-b on the cloud side, and
// cloud1's accept port reaches server-a on the on-prem side. Every subtest
// attacks cloud1's tunnel port and checks that
//
//   - the attacker is refused or closed within a deadline,
//   - both legitimate paths echo while the attacker is connected and after,
//   - cloud1 logged the refusal, attributable to the attacker's address,
//   - cloud1 is still running, and its resident memory stays within
//     hostileRSSBound of what it used before the first attack, and its
//     open files and goroutines come back to their level before the attack.
const (
	// hostileRSSBound is the growth of cloud1's VmRSS over its baseline
	// (about 16 MiB) that fails the test. A held connection that has not
	// finished its TLS handshake costs the server a goroutine (8 KiB
	// stack), a tls.Conn and its read buffer; measured, 1,000 of them add
	// about 15 MiB, and the 10,000-connection burst (at most 200 at a time)
	// about 10 MiB. 100 MiB leaves room for the Go heap's slack (GOGC=100
	// lets the heap double between collections) and a slower host, while
	// catching 100 KiB or more kept per connection, or growth that scales
	// with the attack.
	hostileRSSBound = 100 << 20

	// Open files and goroutines of cloud1 count as back to normal when
	// they are within these of their baseline (health checks, the metrics
	// scrape itself and timers come and go).
	hostileFDSlack        = 10
	hostileGoroutineSlack = 25

	// handshakeTimeout is cloud1's limits.handshake-timeout (the default):
	// how long a connection may take to finish TLS and its upgrade request.
	handshakeTimeout = 10 * time.Second
	// helloTimeout is cloud1's limits.hello-timeout (the default): how long
	// an upgraded connection may take to open the control stream and say
	// hello.
	helloTimeout = 5 * time.Second

	slowlorisConns   = 1000
	slowlorisDialers = 32
	burstConns       = 10000
	burstConcurrency = 200

	probeTimeout = 5 * time.Second
	logTimeout   = 15 * time.Second
)

// TestHostile attacks a running cloud instance's tunnel port with garbage
// at every layer of the tunnel protocol (tunnel/PROTOCOL.md §1): TCP, TLS,
// HTTP, WebSocket, yamux, the control stream and stream headers, then
// with 1,000 idle connections and a burst of 10,000 connections.
func TestHostile(t *testing.T) {
	skipUnlessLinux(t)
	h := startHostile(t)

	t.Run("1-garbage-bytes", func(t *testing.T) {
		rng := rand.New(rand.NewPCG(1, 1))
		for _, v := range []struct {
			name, reason string
			payload      []byte
		}{
			// A first byte that is neither a TLS handshake (0x16) nor an
			// alert (0x15) record: refused on the first 5 bytes.
			{"random", "first record does not look like a TLS handshake", append([]byte{0xde}, randBytes(rng, 4095)...)},
			// A TLS handshake record header announcing 65535 bytes, more
			// than a record may hold, then garbage.
			{"oversized-record", "oversized record", append([]byte{0x16, 0x03, 0x01, 0xff, 0xff}, randBytes(rng, 4091)...)},
		} {
			t.Run(v.name, func(t *testing.T) {
				mark := h.logMark(t)
				c := h.dialTunnelPort(t)
				if _, err := c.Write(v.payload); err != nil {
					t.Fatalf("write garbage: %v", err)
				}
				h.legit(t, "during garbage "+v.name)
				head, took := mustClose(t, c, handshakeTimeout+5*time.Second)
				t.Logf("garbage %s (%d bytes): closed after %v, %d bytes back", v.name, len(v.payload), took.Round(time.Millisecond), len(head))
				h.waitLog(t, mark, 1, "TLS handshake error from "+c.LocalAddr().String()+": ", v.reason)
			})
		}
		h.legit(t, "after garbage")
		h.settle(t, "after garbage")
	})

	t.Run("2-plain-http", func(t *testing.T) {
		mark := h.logMark(t)
		c := h.dialTunnelPort(t)
		if _, err := io.WriteString(c, upgradeRequest(h.tunnelAddr)); err != nil {
			t.Fatal(err)
		}
		h.legit(t, "during plain HTTP")
		head, took := mustClose(t, c, handshakeTimeout+5*time.Second)
		if !strings.HasPrefix(string(head), "HTTP/1.0 400 Bad Request") {
			t.Errorf("plain HTTP upgrade request got %q, want a 400 response", head)
		}
		if strings.Contains(string(head), "101") {
			t.Errorf("plain HTTP was upgraded: %q", head)
		}
		t.Logf("plain GET /sitebridge: %q, closed after %v", firstLine(head), took.Round(time.Millisecond))
		h.waitLog(t, mark, 1, "TLS handshake error from "+c.LocalAddr().String()+": client sent an HTTP request to an HTTPS server")
		h.legit(t, "after plain HTTP")
		h.settle(t, "after plain HTTP")
	})

	t.Run("3-tls-without-client-cert", func(t *testing.T) {
		mark := h.logMark(t)
		local, head, took := h.tlsAttack(t, nil)
		t.Logf("TLS without a client certificate: closed after %v, %d bytes of HTTP back", took.Round(time.Millisecond), len(head))
		h.waitLog(t, mark, 1, "TLS handshake error from "+local+": ", "client didn't provide a certificate")
		h.legit(t, "after TLS without a client certificate")
		h.settle(t, "after TLS without a client certificate")
	})

	t.Run("4-tls-self-signed-client-cert", func(t *testing.T) {
		// It claims to be onprem1, an identity cloud1 accepts, but is
		// signed by itself.
		cert := selfSignedClientCert(t, "spiffe://sitebridge.local/site/onprem/instance/onprem1")
		mark := h.logMark(t)
		local, head, took := h.tlsAttack(t, &cert)
		t.Logf("TLS with a self-signed certificate claiming onprem1: closed after %v, %d bytes of HTTP back", took.Round(time.Millisecond), len(head))
		h.waitLog(t, mark, 1, "TLS handshake error from "+local+": ", "peer certificate rejected (unknown-ca)")
		h.legit(t, "after a self-signed client certificate")
		h.settle(t, "after a self-signed client certificate")
	})

	t.Run("5-websocket-garbage-frames", func(t *testing.T) {
		rng := rand.New(rand.NewPCG(5, 5))
		mask := [4]byte{0x12, 0x34, 0x56, 0x78}
		// A binary frame that announces 2^62 bytes, then 1 MiB + 4 KiB
		// of it: a yamux data frame for a stream nobody opened, announcing
		// 4 GiB - 1, so yamux keeps reading it.
		over := append([]byte{0, 0, 0, 0, 0, 0, 0, 7, 0xff, 0xff, 0xff, 0xff}, randBytes(rng, 1<<20+4<<10)...)
		for i := range over {
			over[i] ^= mask[i%4]
		}
		over = append(append([]byte{0x82, 0xff, 0x40, 0, 0, 0, 0, 0, 0, 0}, mask[:]...), over...)
		variants := []struct {
			name      string
			frames    []byte
			reason    []string // the log line names one of these
			wantClose int      // the close status cloud1 must send (§3.2); 0: any or none
		}{
			// FIN, RSV1-3 and the reserved opcode 0xF, then random bytes.
			{"reserved-bits", append([]byte{0xff, 0xff}, randBytes(rng, 4094)...), []string{"unexpected rsv bits"}, 0},
			// A well-formed binary frame, but not masked as a client's must be.
			{"unmasked", wsFrame(0x2, randBytes(rng, 64), nil), []string{"unmasked frame"}, 0},
			// A well-formed masked text frame: only binary is allowed, and
			// cloud1 must close with 1003 (§3.2) and say why.
			{"text-message", wsFrame(0x1, []byte("hello?"), &mask), []string{"MessageText", "text message", "text frame", "unsupported data", "1003"}, 1003},
			// More than the 1 MiB read limit (limits.max-message-size) in
			// one message: cloud1 must stop at the limit (close 1009),
			// neither buffer the message nor wait for the rest.
			{"over-read-limit", over, []string{"read limited at"}, 1009},
		}
		for _, v := range variants {
			t.Run(v.name, func(t *testing.T) {
				t.Parallel()
				mark := h.logMark(t)
				c, br := h.upgradeRaw(t)
				local := c.LocalAddr().String()
				c.SetWriteDeadline(time.Now().Add(10 * time.Second))
				if _, err := c.Write(v.frames); err != nil {
					t.Logf("write %d bytes of frames: %v (cloud1 closed before the end)", len(v.frames), err)
				}
				h.legit(t, "during WebSocket garbage "+v.name)
				head, took := mustCloseReader(t, c, br, helloTimeout+5*time.Second)
				status := wsCloseStatus(head)
				t.Logf("WebSocket garbage %s (%d bytes): closed after %v, %d bytes back, close status %d", v.name, len(v.frames), took.Round(time.Millisecond), len(head), status)
				if v.wantClose != 0 && status != v.wantClose {
					t.Errorf("%s: cloud1 sent close status %d, want %d", v.name, status, v.wantClose)
				}
				if v.wantClose != 0 && took > 2*time.Second {
					// The close comes at once, without waiting for the
					// peer's close frame (which never comes here).
					t.Errorf("%s: cloud1 closed only after %v, want at once", v.name, took.Round(time.Millisecond))
				}
				lines := h.waitLog(t, mark, 1, `msg="tunnel refused"`, "remote="+local)
				if !containsAny(lines[0], v.reason) {
					t.Errorf("cloud1's log line for %s does not say why: want one of %q in\n%s", v.name, v.reason, lines[0])
				}
			})
		}
	})
	t.Run("5-after", func(t *testing.T) {
		h.legit(t, "after WebSocket garbage")
		h.settle(t, "after WebSocket garbage")
	})

	t.Run("6-yamux-garbage", func(t *testing.T) {
		variants := []struct {
			name   string
			reason string // in the log line
			msgs   func(rng *rand.Rand) [][]byte
		}{
			// Random bytes in random-sized binary messages; the first byte
			// (yamux version) is made non-zero so the first header is
			// refused at once rather than possibly waiting for a body.
			{"random", "invalid protocol version", func(rng *rand.Rand) [][]byte {
				var msgs [][]byte
				for range 8 {
					msgs = append(msgs, randBytes(rng, 1+rng.IntN(2048)))
				}
				msgs[0][0] |= 0x80
				return msgs
			}},
			// Version 0 and an unknown frame type.
			{"bad-type", "invalid msg type", func(rng *rand.Rand) [][]byte {
				return [][]byte{append([]byte{0, 0x7f}, randBytes(rng, 10)...)}
			}},
			// Data for a stream nobody opened, announcing 4 GiB - 1: the
			// server drains it and must give up after the hello timeout
			// (no control stream was opened).
			{"data-for-unknown-stream", "control stream: context deadline exceeded", func(rng *rand.Rand) [][]byte {
				return [][]byte{append([]byte{0, 0, 0, 0, 0, 0, 0, 7, 0xff, 0xff, 0xff, 0xff}, randBytes(rng, 4096)...)}
			}},
		}
		for i, v := range variants {
			t.Run(v.name, func(t *testing.T) {
				t.Parallel()
				rng := rand.New(rand.NewPCG(6, uint64(i)))
				mark := h.logMark(t)
				ws, local := h.dialWS(t)
				ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
				for _, m := range v.msgs(rng) {
					if err := ws.Write(ctx, websocket.MessageBinary, m); err != nil {
						break // the server may already have closed
					}
				}
				cancel()
				h.legit(t, "during yamux garbage "+v.name)
				took := mustCloseWS(t, ws, helloTimeout+5*time.Second)
				t.Logf("yamux garbage %s: closed after %v", v.name, took.Round(time.Millisecond))
				h.waitLog(t, mark, 1, `msg="tunnel refused"`, "remote="+local, v.reason)
			})
		}
	})
	t.Run("6-after", func(t *testing.T) {
		h.legit(t, "after yamux garbage")
		h.settle(t, "after yamux garbage")
	})

	t.Run("7-malformed-hello", func(t *testing.T) {
		good := func(instance string, version int) []byte {
			b, _ := json.Marshal(tunnel.Hello{Version: version, Instance: instance, Site: "onprem", Epoch: uint64(time.Now().UnixNano())})
			return b
		}
		variants := []struct {
			name     string
			frame    []byte
			wantCode tunnel.Code // 0: no error frame, the session is just closed
			reason   string      // in the log line
		}{
			{"truncated-json", ctrlFrame(0x01, []byte(`{"version":1,"instance":"mallory","site":`)), tunnel.CodeBadHello, "(bad-hello): decode hello"},
			{"not-a-hello", ctrlFrame(0x04, []byte(`{"services":["server-a"]}`)), tunnel.CodeBadHello, "expected hello, got frame type 4"},
			{"version-2", ctrlFrame(0x01, good("mallory", 2)), tunnel.CodeVersionMismatch, "(version-mismatch)"},
			{"bad-name", ctrlFrame(0x01, []byte(`{"version":1,"instance":"../../etc/passwd","site":"onprem","epoch":1}`)), tunnel.CodeBadHello, "(bad-hello): hello instance"},
			// mallory's certificate, onprem1's name: an impersonation.
			{"claims-onprem1", ctrlFrame(0x01, good("onprem1", tunnel.Version)), tunnel.CodeBadHello, "certificate is spiffe://sitebridge.local/site/onprem/instance/mallory"},
			{"length-4GiB", []byte{0x01, 0xff, 0xff, 0xff, 0xff, '{'}, 0, "frame too large"},
			{"silent", nil, 0, "read hello"},
		}
		for _, v := range variants {
			t.Run(v.name, func(t *testing.T) {
				t.Parallel()
				mark := h.logMark(t)
				mux, local := h.dialYamux(t)
				ctrl, err := mux.OpenStream()
				if err != nil {
					t.Fatal(err)
				}
				if _, err := ctrl.Write(v.frame); err != nil {
					t.Fatal(err)
				}
				h.legit(t, "during malformed hello "+v.name)
				start := time.Now()
				ctrl.SetDeadline(start.Add(helloTimeout + 5*time.Second))
				typ, payload, err := readCtrlFrame(ctrl)
				switch {
				case v.wantCode != 0 && err != nil:
					t.Errorf("want an error frame with code %v, got %v", v.wantCode, err)
				case v.wantCode != 0:
					var ce tunnel.ControlError
					if jerr := json.Unmarshal(payload, &ce); typ != 0x02 || jerr != nil || ce.Code != v.wantCode {
						t.Errorf("reply: frame type %d %s, want an error frame with code %v", typ, payload, v.wantCode)
					}
					t.Logf("%s: error frame %s", v.name, payload)
				case err == nil:
					t.Errorf("reply: frame type %d %s, want the session closed without a frame", typ, payload)
				case errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, yamux.ErrTimeout):
					t.Errorf("control stream still open after %v: %v", time.Since(start), err)
				}
				select {
				case <-mux.CloseChan():
					t.Logf("%s: session closed by cloud1 %v after the hello was sent", v.name, time.Since(start).Round(time.Millisecond))
				case <-time.After(helloTimeout + 5*time.Second):
					t.Errorf("%s: cloud1 kept the session open for %v", v.name, time.Since(start))
				}
				h.waitLog(t, mark, 1, `msg="tunnel refused"`, "remote="+local, v.reason)
			})
		}
	})

	t.Run("7-malformed-stream-header", func(t *testing.T) {
		mark := h.logMark(t)
		mux, local := h.dialYamux(t)
		ctrl, err := mux.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		hello, _ := json.Marshal(tunnel.Hello{Version: tunnel.Version, Instance: "mallory", Site: "onprem", Epoch: uint64(time.Now().UnixNano())})
		ctrl.SetDeadline(time.Now().Add(helloTimeout))
		if _, err := ctrl.Write(ctrlFrame(0x01, hello)); err != nil {
			t.Fatal(err)
		}
		typ, payload, err := readCtrlFrame(ctrl)
		if err != nil || typ != 0x01 {
			t.Fatalf("hello exchange: frame type %d %s, %v; want cloud1's hello", typ, payload, err)
		}
		if rh, err := tunnel.DecodeHello(payload); err != nil || rh.Instance != "cloud1" {
			t.Fatalf("cloud1's hello %s: %v", payload, err)
		}
		ctrl.SetDeadline(time.Time{})
		h.waitLog(t, mark, 1, `msg="tunnel up"`, "peer=mallory", "addr="+local)

		headers := []struct {
			name, header string
			halfClose    bool // send FIN after the bytes
			reason       string
		}{
			{"bad-magic", "GET / HTTP/1.1\r\n\r\n", false, "bad stream magic"},
			{"address-as-service", "\x53\x01\x01\x00\x0c127.0.0.1:22", false, "service: bad name in stream header"},
			{"header-version-2", "\x53\x02\x01\x00\x08server-b", false, "unsupported stream header version: 2"},
			{"tenant-length-255", "\x53\x01\x01\xff" + strings.Repeat("a", 255), false, "tenant: bad name in stream header"},
			{"truncated", "\x53\x01\x01\x00\x08serv", true, "unexpected EOF"},
		}
		for _, hd := range headers {
			st, err := mux.OpenStream()
			if err != nil {
				t.Fatalf("%s: open stream: %v", hd.name, err)
			}
			st.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.WriteString(st, hd.header); err != nil {
				t.Fatalf("%s: %v", hd.name, err)
			}
			if hd.halfClose {
				st.Close() // yamux FIN: cloud1 reads EOF inside the header
			}
			code, msg, err := tunnel.ReadReply(st)
			if err != nil || code != tunnel.CodeBadHeader {
				t.Errorf("%s: reply %v %q, %v; want bad-header", hd.name, code, msg, err)
			} else {
				t.Logf("%s: reply %v %q", hd.name, code, msg)
			}
			if _, err := io.Copy(io.Discard, st); err != nil { // cloud1 closes its side after a refusal
				t.Errorf("%s: after the reply: %v, want EOF", hd.name, err)
			}
			st.Close()
			h.waitLog(t, mark, 1, `msg="stream refused"`, "peer=mallory", "code=bad-header", hd.reason)
		}
		h.legit(t, "during a session sending malformed stream headers")

		// Only the streams were refused (§7): the session still carries a
		// well-formed one.
		st, err := mux.OpenStream()
		if err != nil {
			t.Fatalf("session closed after malformed headers: %v", err)
		}
		st.SetDeadline(time.Now().Add(10 * time.Second))
		hdr, _ := tunnel.AppendHeader(nil, tunnel.Header{Kind: tunnel.KindService, Service: "server-b"})
		st.Write(hdr)
		if code, msg, err := tunnel.ReadReply(st); err != nil || code != 0 {
			t.Fatalf("well-formed header after the malformed ones: reply %v %q, %v", code, msg, err)
		}
		if err := roundTripConn(st, "still a session\n", 5*time.Second); err != nil {
			t.Fatal(err)
		}
		st.Close()

		mux.Close()
		h.waitLog(t, mark, 1, `msg="tunnel down"`, "peer=mallory", "addr="+local)
		h.waitTunnels(t, "onprem1")
		h.legit(t, "after malformed stream headers")
		h.settle(t, "after malformed hellos and stream headers")
	})

	t.Run("8-slowloris", func(t *testing.T) {
		mark := h.logMark(t)
		opened := time.Now()
		conns := make([]net.Conn, 0, slowlorisConns)
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		addrs := make(map[string]bool, slowlorisConns)
		// An attacker opens them all at once, and so does this: dialled
		// one after another on a loaded machine, the first would reach
		// cloud1's handshake timeout before the last was open.
		var (
			mu      sync.Mutex
			dialErr error
			next    = make(chan struct{}, slowlorisConns)
			wg      sync.WaitGroup
		)
		for range slowlorisConns {
			next <- struct{}{}
		}
		close(next)
		d := net.Dialer{Timeout: 5 * time.Second}
		for range slowlorisDialers {
			wg.Go(func() {
				for range next {
					c, err := d.DialContext(t.Context(), "tcp", h.tunnelAddr)
					mu.Lock()
					if err != nil {
						dialErr = cmp.Or(dialErr, err)
					} else {
						conns = append(conns, c)
						addrs[c.LocalAddr().String()] = true
					}
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		lastDial := time.Now()
		dialTime := lastDial.Sub(opened)
		if dialErr != nil {
			t.Fatalf("%d of %d idle connections opened: %v", len(conns), slowlorisConns, dialErr)
		}
		t.Logf("%d idle connections open in %v", len(conns), dialTime.Round(time.Millisecond))
		if dialTime > handshakeTimeout/2 {
			t.Fatalf("opening %d connections took %v, too close to the handshake timeout (%v) for the check that cloud1 holds them all; listen queue overflows so far: %s",
				slowlorisConns, dialTime.Round(time.Millisecond), handshakeTimeout, listenOverflows())
		}
		// cloud1 accepts them all (none is refused at TCP level), so it
		// holds one descriptor for each while they wait for a ClientHello.
		// The first close at the handshake timeout, so the check must
		// finish before that; the slack allows for a short-lived admin or
		// health connection counted in the baseline.
		waitFor(t, "cloud1 to accept the idle connections", handshakeTimeout-dialTime-time.Second, 50*time.Millisecond, func() error {
			if u := h.usage(t); u.fds < h.base.fds+slowlorisConns-hostileFDSlack {
				return fmt.Errorf("cloud1 has %d open files, %d before; listen queue overflows so far: %s", u.fds, h.base.fds, listenOverflows())
			}
			return nil
		})
		h.legit(t, "while 1000 idle connections are held")
		h.newTunnel(t, "while 1000 idle connections are held")
		h.checkUsage(t, "while 1000 idle connections are held")
		if since := time.Since(opened); since > handshakeTimeout {
			t.Logf("note: the checks while held ended %v after the connections were opened, after the handshake timeout", since.Round(time.Millisecond))
		}

		// Each must be closed by cloud1 once the handshake timeout passes.
		deadline := lastDial.Add(handshakeTimeout + 10*time.Second)
		closed, stillOpen := 0, 0
		var last time.Time
		buf := make([]byte, 512)
		for _, c := range conns {
			c.SetReadDeadline(deadline)
			for {
				_, err := c.Read(buf)
				if err == nil {
					continue
				}
				if errors.Is(err, os.ErrDeadlineExceeded) {
					stillOpen++
				} else {
					closed++
					last = time.Now()
				}
				break
			}
		}
		t.Logf("cloud1 closed %d of %d idle connections, the last %v after they were opened (handshake timeout %v); %d still open at %v",
			closed, len(conns), last.Sub(opened).Round(time.Millisecond), handshakeTimeout, stillOpen, deadline.Sub(opened))
		if stillOpen > 0 {
			t.Errorf("%d idle connections still open %v after they were opened", stillOpen, deadline.Sub(opened))
		}
		lines := h.waitLogFunc(t, mark, slowlorisConns, "a handshake timeout logged for each idle connection", func(line string) bool {
			a, ok := handshakeErrorFrom(line)
			return ok && addrs[a] && strings.Contains(line, "i/o timeout")
		})
		t.Logf("cloud1 logged %d handshake timeouts, e.g. %s", len(lines), lines[0])
		for _, c := range conns {
			c.Close()
		}
		conns = nil
		h.legit(t, "after 1000 idle connections")
		h.settle(t, "after 1000 idle connections")
	})

	t.Run("9-connection-burst", func(t *testing.T) {
		mark := h.logMark(t)
		ctx, cancel := context.WithTimeout(t.Context(), 40*time.Second)
		defer cancel()

		// Legitimate traffic throughout the burst: one probe after the
		// other, alternating paths, at least one and at most 1,000.
		stop := make(chan struct{})
		var probeWG sync.WaitGroup
		var probesOK, probesFailed atomic.Int64
		var probeErr firstError
		probeWG.Go(func() {
			for i := 0; i < 1000; i++ {
				select {
				case <-stop:
					if i > 0 {
						return
					}
				default:
				}
				addr := h.legitAddrs[i%len(h.legitAddrs)]
				if err := drill.Probe(ctx, addr, fmt.Sprintf("during the burst, probe %d via %s\n", i, addr), probeTimeout); err != nil {
					probesFailed.Add(1)
					probeErr.set(fmt.Errorf("probe %d via %s: %w", i, addr, err))
				} else {
					probesOK.Add(1)
				}
			}
		})

		start := time.Now()
		var next, connected, failed atomic.Int64
		var firstErr firstError
		var wg sync.WaitGroup
		for range burstConcurrency {
			wg.Go(func() {
				d := net.Dialer{Timeout: 5 * time.Second}
				for next.Add(1) <= burstConns && ctx.Err() == nil {
					c, err := d.DialContext(ctx, "tcp", h.tunnelAddr)
					if err != nil {
						failed.Add(1)
						firstErr.set(err)
						continue
					}
					connected.Add(1)
					c.Close()
				}
			})
		}
		wg.Wait()
		took := time.Since(start)
		h.checkUsage(t, "right after the burst")
		close(stop)
		probeWG.Wait()

		n := connected.Load()
		t.Logf("burst: %d attempts in %v (%.0f/s) with %d at a time: %d connected and closed, %d failed (first error: %v)",
			n+failed.Load(), took.Round(time.Millisecond), float64(n+failed.Load())/took.Seconds(), burstConcurrency, n, failed.Load(), firstErr.get())
		t.Logf("legitimate probes during the burst: %d echoed, %d failed", probesOK.Load(), probesFailed.Load())
		if got := n + failed.Load(); got != burstConns {
			t.Errorf("burst made %d attempts, want %d (context: %v)", got, burstConns, ctx.Err())
		}
		if n < burstConns/2 {
			t.Errorf("only %d of %d connections reached cloud1", n, burstConns)
		}
		if probesOK.Load() == 0 {
			t.Errorf("no legitimate probe completed during the burst")
		}
		if probesFailed.Load() > 0 {
			t.Errorf("%d legitimate probes failed during the burst, last: %v", probesFailed.Load(), probeErr.get())
		}
		// Every connection that reached cloud1 ended its handshake with
		// EOF, and cloud1 said so.
		lines := h.waitLogFunc(t, mark, int(n), "a handshake error logged for each connection of the burst", func(line string) bool {
			_, ok := handshakeErrorFrom(line)
			return ok
		})
		eof := 0
		for _, l := range lines {
			if strings.HasSuffix(strings.SplitN(l, `" `, 2)[0], ": EOF") {
				eof++
			}
		}
		t.Logf("cloud1 logged %d handshake errors for the burst (%d of them EOF), e.g. %s", len(lines), eof, lines[0])
		h.legit(t, "after the burst")
		h.settle(t, "after the burst")
	})

	t.Run("survivors", func(t *testing.T) {
		// The one legitimate tunnel was never replaced: same onprem1 start,
		// same connection, and cloud1 never logged a panic.
		st := h.status(t)
		if len(st.Tunnels) != 1 || st.Tunnels[0].Peer != "onprem1" || st.Tunnels[0].Epoch != h.baseTunnel.Epoch || st.Tunnels[0].Addr != h.baseTunnel.Addr {
			t.Errorf("cloud1's tunnels after the attacks: %+v, want only onprem1's of epoch %d from %s", st.Tunnels, h.baseTunnel.Epoch, h.baseTunnel.Addr)
		}
		if st.Epoch != h.baseEpoch {
			t.Errorf("cloud1 restarted: epoch %d, was %d", st.Epoch, h.baseEpoch)
		}
		if lines := grepFile(h.cloud.log, "panic", "fatal error"); len(lines) > 0 {
			t.Errorf("cloud1 logged:\n%s", strings.Join(lines, "\n"))
		}
		h.checkUsage(t, "at the end")
	})
}

// hostileRig is one cloud instance under attack, with the legitimate
// on-prem instance, echo servers and a spare identity (mallory) of the
// on-prem site for the protocol-level attacks.
type hostileRig struct {
	ip, dir    string
	cloud      *proc
	procs      []*proc
	tunnelAddr string
	adminAddr  string
	legitAddrs []string // onprem1's accept port (to server-b), cloud1's (to server-a)
	roots      *x509.CertPool
	mallory    tls.Certificate
	http       *http.Client

	base       usage // cloud1 before the first attack
	baseEpoch  uint64
	baseTunnel tunnelStatus
	probes     atomic.Int64
}

type tunnelStatus struct {
	Peer  string `json:"peer"`
	Epoch uint64 `json:"epoch"`
	Addr  string `json:"addr"`
}

// startHostile generates certificates with `sitebridge tlsgen`, starts the
// echo servers, cloud1 and onprem1 on a random loopback address with the
// demo's ports, and waits until both legitimate paths echo.
func startHostile(t *testing.T) *hostileRig {
	t.Helper()
	bin := sitebridgeBinary(t)
	ip := pickLoopback(t)
	addr := func(port int) string { return net.JoinHostPort(ip, strconv.Itoa(port)) }
	h := &hostileRig{
		ip: ip, dir: t.TempDir(),
		tunnelAddr: addr(portCloud1Tunnel),
		adminAddr:  addr(portCloud1Admin),
		legitAddrs: []string{addr(portOnprem1Client), addr(portCloud1Client)},
		http:       &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}},
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range h.procs {
				p.dumpLog(t)
			}
		}
	})
	t.Cleanup(func() {
		for _, p := range h.procs {
			p.stop(t)
		}
	})

	runCLI(t, bin, "tlsgen", "--out", h.dir,
		"--instance", "cloud/cloud1=localhost,"+ip, "--instance", "onprem/onprem1=localhost,"+ip)
	// A third identity of the on-prem site, added to the same CA the way an
	// operator adds an instance (without --force the CA is kept): the
	// attacker of the protocol-level subtests holds a valid certificate.
	if out := runCLI(t, bin, "tlsgen", "--out", h.dir, "--instance", "onprem/mallory"); !strings.Contains(out, "kept") {
		t.Fatalf("tlsgen for mallory did not keep the CA:\n%s", out)
	}
	var err error
	if h.mallory, err = tls.LoadX509KeyPair(filepath.Join(h.dir, "mallory.crt"), filepath.Join(h.dir, "mallory.key")); err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(filepath.Join(h.dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	h.roots = x509.NewCertPool()
	if !h.roots.AppendCertsFromPEM(caPEM) {
		t.Fatal("ca.crt: no certificate")
	}

	// dead-after 10s rather than dev mode's 3s: the legitimate tunnel must
	// not be declared dead because a busy CI host starved a process for a
	// few seconds; this suite is about hostile input, not liveness (prod
	// mode uses 30s).
	configs := map[string]string{
		"cloud1": fmt.Sprintf(`instance: cloud1
site: cloud
tls: {ca: ca.crt, cert: cloud1.crt, key: cloud1.key}
tunnel: {listen: "%s", dead-after: 10s}
peers: [{site: onprem}]
services:
  - {name: server-a, accept: "%s"}
  - {name: server-b, connect: "%s"}
admin: {listen: "%s"}
limits: {handshake-timeout: %v, hello-timeout: %v}
`, h.tunnelAddr, addr(portCloud1Client), addr(portServerB), h.adminAddr, handshakeTimeout, helloTimeout),
		"onprem1": fmt.Sprintf(`instance: onprem1
site: onprem
tls: {ca: ca.crt, cert: onprem1.crt, key: onprem1.key}
tunnel: {dead-after: 10s}
peers: [{site: cloud, urls: ["wss://%s/sitebridge"]}]
services:
  - {name: server-a, connect: "%s"}
  - {name: server-b, accept: "%s"}
admin: {listen: "%s"}
`, h.tunnelAddr, addr(portServerA), addr(portOnprem1Client), addr(portOnprem1Admin)),
	}
	for _, e := range []struct {
		name string
		port int
	}{{"echo-server-a", portServerA}, {"echo-server-b", portServerB}} {
		p := &proc{name: e.name, bin: bin, args: []string{"echo", "--listen", addr(e.port)}, log: filepath.Join(h.dir, e.name+".log")}
		h.procs = append(h.procs, p)
		p.start(t)
	}
	for _, name := range []string{"cloud1", "onprem1"} {
		path := filepath.Join(h.dir, name+".yaml")
		if err := os.WriteFile(path, []byte(configs[name]), 0o600); err != nil {
			t.Fatal(err)
		}
		if out := runCLI(t, bin, "run", "--config", path, "--check"); !strings.Contains(out, "config is valid") {
			t.Fatalf("sitebridge run --config %s --check: %q", path, out)
		}
		p := &proc{name: name, bin: bin, args: []string{"run", "--config", path}, log: filepath.Join(h.dir, name+".log")}
		h.procs = append(h.procs, p)
		if name == "cloud1" {
			h.cloud = p
		}
		p.start(t)
	}
	took := waitFor(t, "both legitimate paths to echo", readyTimeout, readyInterval, func() error {
		for _, p := range h.procs {
			if err := p.exited(); err != nil {
				t.Fatal(err)
			}
		}
		for _, a := range h.legitAddrs {
			if err := drill.Probe(t.Context(), a, "ready?\n", time.Second); err != nil {
				return fmt.Errorf("%s: %w", a, err)
			}
		}
		return nil
	})
	st := h.status(t)
	if len(st.Tunnels) != 1 || st.Tunnels[0].Peer != "onprem1" {
		t.Fatalf("cloud1 holds tunnels %+v, want one to onprem1", st.Tunnels)
	}
	h.baseEpoch, h.baseTunnel = st.Epoch, st.Tunnels[0]
	h.base = h.usage(t)
	t.Logf("cloud1 (pid %d) and onprem1 on %s ready in %v; cloud1 before the attacks: %s",
		h.cloud.cmd.Process.Pid, ip, took.Round(time.Millisecond), h.base)
	return h
}

// legit checks both legitimate paths with one new connection each.
func (h *hostileRig) legit(t *testing.T, why string) {
	t.Helper()
	for _, a := range h.legitAddrs {
		n := h.probes.Add(1)
		if err := drill.Probe(t.Context(), a, fmt.Sprintf("legitimate probe %d %s\n", n, why), probeTimeout); err != nil {
			t.Errorf("%s: legitimate connection through %s: %v", why, a, err)
		}
	}
}

// newTunnel checks that a legitimate client can still set up a whole new
// tunnel (TLS, upgrade, hello) and closes it.
func (h *hostileRig) newTunnel(t *testing.T, why string) {
	t.Helper()
	start := time.Now()
	s, err := tunnel.Dial(t.Context(), "wss://"+h.tunnelAddr+tunnel.DefaultPath, h.malloryTLS(),
		tunnel.Config{Local: tunnel.Hello{Instance: "mallory", Site: "onprem", Epoch: uint64(time.Now().UnixNano())}})
	if err != nil {
		t.Errorf("%s: new tunnel: %v", why, err)
		return
	}
	t.Logf("%s: a new tunnel came up in %v", why, time.Since(start).Round(time.Millisecond))
	s.Close()
}

// usage is what cloud1 uses.
type usage struct {
	rss        int64 // VmRSS, bytes
	fds        int   // open file descriptors
	goroutines int   // go_goroutines from /metrics
}

func (u usage) String() string {
	return fmt.Sprintf("RSS %.1f MiB, %d open files, %d goroutines", float64(u.rss)/(1<<20), u.fds, u.goroutines)
}

// usage reads cloud1's usage from /proc and its /metrics; it fails the
// test at once if cloud1 has exited.
func (h *hostileRig) usage(t *testing.T) usage {
	t.Helper()
	if err := h.cloud.exited(); err != nil {
		t.Fatal(err)
	}
	pid := strconv.Itoa(h.cloud.cmd.Process.Pid)
	var u usage
	for _, l := range grepFile("/proc/"+pid+"/status", "VmRSS:") {
		f := strings.Fields(l) // VmRSS: 18388 kB
		if len(f) == 3 && f[2] == "kB" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatalf("%s: %v", l, err)
			}
			u.rss = kb << 10
		}
	}
	if u.rss == 0 {
		t.Fatalf("no VmRSS in /proc/%s/status", pid)
	}
	fds, err := os.ReadDir("/proc/" + pid + "/fd")
	if err != nil {
		t.Fatal(err)
	}
	u.fds = len(fds)
	resp, err := h.http.Get("http://" + h.adminAddr + "/metrics")
	if err != nil {
		t.Fatalf("cloud1 /metrics: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("go_goroutines %q: %v", v, err)
			}
			u.goroutines = int(f)
		}
	}
	if u.goroutines == 0 {
		t.Fatalf("cloud1 /metrics (%s): no go_goroutines (%v)", resp.Status, sc.Err())
	}
	return u
}

// checkUsage logs cloud1's usage and fails the test if its RSS grew more
// than hostileRSSBound over the baseline.
func (h *hostileRig) checkUsage(t *testing.T, when string) usage {
	t.Helper()
	u := h.usage(t)
	growth := u.rss - h.base.rss
	t.Logf("cloud1 %s: %s (RSS %+.1f MiB, files %+d, goroutines %+d)", when, u, float64(growth)/(1<<20), u.fds-h.base.fds, u.goroutines-h.base.goroutines)
	if growth > hostileRSSBound {
		t.Errorf("cloud1 %s: RSS grew by %.1f MiB, more than the %d MiB bound", when, float64(growth)/(1<<20), hostileRSSBound>>20)
	}
	return u
}

// settle waits until cloud1's open files and goroutines are back within
// the slack of their baseline, then checks its memory.
func (h *hostileRig) settle(t *testing.T, when string) {
	t.Helper()
	took := waitFor(t, "cloud1 to release what the attack held", 20*time.Second, 100*time.Millisecond, func() error {
		u := h.usage(t)
		if u.fds > h.base.fds+hostileFDSlack || u.goroutines > h.base.goroutines+hostileGoroutineSlack {
			return fmt.Errorf("%s, baseline %s", u, h.base)
		}
		return nil
	})
	t.Logf("cloud1 %s: files and goroutines back to baseline after %v", when, took.Round(time.Millisecond))
	h.checkUsage(t, when)
}

// statusAnswer is the part of cloud1's GET /api/v1/status read here.
type statusAnswer struct {
	Epoch   uint64         `json:"epoch"`
	Tunnels []tunnelStatus `json:"tunnels"`
}

func (h *hostileRig) status(t *testing.T) statusAnswer {
	t.Helper()
	resp, err := h.http.Get("http://" + h.adminAddr + "/api/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st statusAnswer
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatalf("cloud1 status (%s): %v", resp.Status, err)
	}
	return st
}

// waitTunnels waits until cloud1 holds tunnels to exactly peers.
func (h *hostileRig) waitTunnels(t *testing.T, peers ...string) {
	t.Helper()
	waitFor(t, fmt.Sprintf("cloud1 to hold tunnels to %v only", peers), 10*time.Second, 50*time.Millisecond, func() error {
		st := h.status(t)
		var got []string
		for _, tn := range st.Tunnels {
			got = append(got, tn.Peer)
		}
		if strings.Join(got, ",") != strings.Join(peers, ",") {
			return fmt.Errorf("tunnels to %v", got)
		}
		return nil
	})
}

// logMark is the current length of cloud1's log: what an attack makes it
// log comes after.
func (h *hostileRig) logMark(t *testing.T) int64 {
	t.Helper()
	fi, err := os.Stat(h.cloud.log)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// logLines returns the complete lines of cloud1's log after mark for which
// match is true.
func (h *hostileRig) logLines(mark int64, match func(string) bool) ([]string, error) {
	f, err := os.Open(h.cloud.log)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if _, err := f.Seek(mark, io.SeekStart); err != nil {
		return nil, err
	}
	var out []string
	br := bufio.NewReaderSize(f, 64<<10)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return out, nil // EOF: a partial last line is not complete yet
		}
		if line = strings.TrimSuffix(line, "\n"); match(line) {
			out = append(out, line)
		}
	}
}

// waitLog waits until cloud1 has logged, after mark, at least n lines that
// each contain every one of subs, and returns them.
func (h *hostileRig) waitLog(t *testing.T, mark int64, n int, subs ...string) []string {
	t.Helper()
	return h.waitLogFunc(t, mark, n, fmt.Sprintf("cloud1 to log %q", subs), func(line string) bool {
		for _, s := range subs {
			if !strings.Contains(line, s) {
				return false
			}
		}
		return true
	})
}

func (h *hostileRig) waitLogFunc(t *testing.T, mark int64, n int, what string, match func(string) bool) []string {
	t.Helper()
	var lines []string
	waitFor(t, what, logTimeout, 50*time.Millisecond, func() error {
		var err error
		if lines, err = h.logLines(mark, match); err != nil {
			return err
		}
		if len(lines) < n {
			return fmt.Errorf("%d of %d lines so far", len(lines), n)
		}
		return nil
	})
	if n == 1 {
		t.Logf("cloud1 logged: %s", lines[0])
	}
	return lines
}

// handshakeErrorFrom returns the client address of an http.Server TLS
// handshake error line.
func handshakeErrorFrom(line string) (string, bool) {
	_, rest, ok := strings.Cut(line, "TLS handshake error from ")
	if !ok {
		return "", false
	}
	// host:port: reason
	host, rest, ok := strings.Cut(rest, ":")
	if !ok {
		return "", false
	}
	port, _, ok := strings.Cut(rest, ":")
	return host + ":" + port, ok
}

// dialTunnelPort opens a TCP connection to cloud1's tunnel port, closed
// when the test ends.
func (h *hostileRig) dialTunnelPort(t *testing.T) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	c, err := d.DialContext(t.Context(), "tcp", h.tunnelAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// malloryTLS is a correct client TLS config with mallory's certificate.
func (h *hostileRig) malloryTLS() *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{h.mallory},
		RootCAs:      h.roots,
		ServerName:   h.ip,
		MinVersion:   tls.VersionTLS13,
		NextProtos:   []string{"http/1.1"},
	}
}

// tlsAttack connects with TLS 1.3 trusting cloud1's CA and presenting cert
// (none if nil), sends a WebSocket upgrade request and reads until cloud1
// closes. It fails the test unless cloud1 closes without answering with
// HTTP. It returns the client address, what came back and how long it took.
func (h *hostileRig) tlsAttack(t *testing.T, cert *tls.Certificate) (string, []byte, time.Duration) {
	t.Helper()
	raw := h.dialTunnelPort(t)
	cfg := &tls.Config{RootCAs: h.roots, ServerName: h.ip, MinVersion: tls.VersionTLS13, NextProtos: []string{"http/1.1"}}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	c := tls.Client(raw, cfg)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	// In TLS 1.3 the client finishes its side of the handshake before the
	// server has checked the client's certificate: the refusal arrives as
	// an alert on the first read.
	herr := c.HandshakeContext(ctx)
	if herr == nil {
		io.WriteString(c, upgradeRequest(h.tunnelAddr))
	}
	h.legit(t, "during TLS attack")
	var head []byte
	var took time.Duration
	if herr == nil {
		head, took = mustClose(t, c, 5*time.Second)
	}
	if len(head) > 0 {
		t.Errorf("cloud1 answered over TLS: %q", head)
	}
	return raw.LocalAddr().String(), head, took
}

// upgradeRequest is a valid WebSocket upgrade request for /sitebridge.
func upgradeRequest(host string) string {
	key := make([]byte, 16)
	crand.Read(key)
	return "GET " + tunnel.DefaultPath + " HTTP/1.1\r\nHost: " + host +
		"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " +
		base64.StdEncoding.EncodeToString(key) + "\r\n\r\n"
}

// upgradeRaw connects with mallory's valid certificate and upgrades to a
// WebSocket by hand, so the test can write raw bytes after the 101. The
// reader holds whatever cloud1 sent after the response.
func (h *hostileRig) upgradeRaw(t *testing.T) (*tls.Conn, *bufio.Reader) {
	t.Helper()
	c := tls.Client(h.dialTunnelPort(t), h.malloryTLS())
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, upgradeRequest(h.tunnelAddr)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("upgrade: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade with a valid certificate: %s, want 101", resp.Status)
	}
	c.SetDeadline(time.Time{})
	return c, br
}

// dialWS opens a real WebSocket to cloud1 with mallory's certificate. It
// returns the connection, closed when the test ends, and its client
// address.
func (h *hostileRig) dialWS(t *testing.T) (*websocket.Conn, string) {
	t.Helper()
	local := make(chan string, 1)
	d := net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		TLSClientConfig: h.malloryTLS(),
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := d.DialContext(ctx, network, addr)
			if err == nil {
				select {
				case local <- c.LocalAddr().String():
				default:
				}
			}
			return c, err
		},
	}
	t.Cleanup(tr.CloseIdleConnections)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	u := url.URL{Scheme: "wss", Host: h.tunnelAddr, Path: tunnel.DefaultPath}
	ws, _, err := websocket.Dial(ctx, u.String(), &websocket.DialOptions{
		HTTPClient:      &http.Client{Transport: tr},
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		t.Fatalf("WebSocket with a valid certificate: %v", err)
	}
	t.Cleanup(func() { ws.CloseNow() })
	ws.SetReadLimit(1 << 20)
	return ws, <-local
}

// dialYamux opens a yamux client session over a WebSocket to cloud1 (with
// mallory's certificate), as a dialler does before its hello. The session
// is closed when the test ends.
func (h *hostileRig) dialYamux(t *testing.T) (*yamux.Session, string) {
	t.Helper()
	ws, local := h.dialWS(t)
	ctx, cancel := context.WithCancel(context.Background())
	nc := websocket.NetConn(ctx, ws, websocket.MessageBinary)
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	mux, err := yamux.Client(nc, cfg)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		mux.Close()
		cancel()
	})
	return mux, local
}

// wsCloseStatus returns the status of the first close frame among the
// server's (unmasked) WebSocket frames in b, or 0.
func wsCloseStatus(b []byte) int {
	for len(b) >= 2 {
		op, n, hdr := b[0]&0x0f, int(b[1]&0x7f), 2
		switch n {
		case 126:
			if len(b) < 4 {
				return 0
			}
			n, hdr = int(binary.BigEndian.Uint16(b[2:])), 4
		case 127:
			return 0 // no server frame here is that large
		}
		if len(b) < hdr+n {
			return 0
		}
		if op == 0x8 && n >= 2 {
			return int(binary.BigEndian.Uint16(b[hdr:]))
		}
		b = b[hdr+n:]
	}
	return 0
}

// ctrlFrame is a control frame: type(1) length(4, big endian) payload.
func ctrlFrame(typ byte, payload []byte) []byte {
	b := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(len(payload)))
	return append(b, payload...)
}

// readCtrlFrame reads one control frame of at most 64 KiB.
func readCtrlFrame(r io.Reader) (byte, []byte, error) {
	var fixed [5]byte
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(fixed[1:])
	if n > 64<<10 {
		return fixed[0], nil, fmt.Errorf("control frame of %d bytes", n)
	}
	p := make([]byte, n)
	_, err := io.ReadFull(r, p)
	return fixed[0], p, err
}

// wsFrame is one unfragmented WebSocket frame (payload < 126 bytes),
// masked with mask if not nil.
func wsFrame(opcode byte, payload []byte, mask *[4]byte) []byte {
	b := []byte{0x80 | opcode, byte(len(payload))}
	if mask == nil {
		return append(b, payload...)
	}
	b[1] |= 0x80
	b = append(b, mask[:]...)
	for i, c := range payload {
		b = append(b, c^mask[i%4])
	}
	return b
}

func randBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// mustClose reads c until the far end closes it and fails the test if
// that takes longer than within. It returns the first 4 KiB that came back
// and how long the close took.
func mustClose(t *testing.T, c net.Conn, within time.Duration) ([]byte, time.Duration) {
	t.Helper()
	return mustCloseReader(t, c, c, within)
}

func mustCloseReader(t *testing.T, c net.Conn, r io.Reader, within time.Duration) ([]byte, time.Duration) {
	t.Helper()
	start := time.Now()
	c.SetReadDeadline(start.Add(within))
	var head []byte
	buf := make([]byte, 4096)
	for {
		n, err := r.Read(buf)
		head = append(head, buf[:min(n, 4096-len(head))]...)
		if err == nil {
			continue
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("cloud1 kept the connection open for %v (%d bytes back: %q)", within, len(head), head)
		}
		return head, time.Since(start)
	}
}

// mustCloseWS reads ws until cloud1 closes it and fails the test if that
// takes longer than within.
func mustCloseWS(t *testing.T, ws *websocket.Conn, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(t.Context(), within)
	defer cancel()
	for {
		_, _, err := ws.Read(ctx)
		if err == nil {
			continue // yamux pings from the server
		}
		if ctx.Err() != nil {
			t.Fatalf("cloud1 kept the WebSocket open for %v: %v", within, err)
		}
		return time.Since(start)
	}
}

// selfSignedClientCert makes a certificate for client authentication that
// carries the identity uri and is signed by its own key.
func selfSignedClientCert(t *testing.T, uri string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(uri)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "onprem1"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{u},
	}
	der, err := x509.CreateCertificate(crand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// firstError keeps the first error set, for several goroutines.
type firstError struct {
	mu  sync.Mutex
	err error
}

func (f *firstError) set(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err == nil {
		f.err = err
	}
}

func (f *firstError) get() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\r\n")
	return s
}

// listenOverflows reports the kernel's count of connections dropped
// because a listen queue was full (TcpExt ListenOverflows), to explain a
// slow burst of dials.
func listenOverflows() string {
	b, err := os.ReadFile("/proc/net/netstat")
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	lines := strings.Split(string(b), "\n")
	for i := 0; i+1 < len(lines); i += 2 {
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(names) == 0 || names[0] != "TcpExt:" || len(names) != len(values) {
			continue
		}
		for j, n := range names {
			if n == "ListenOverflows" {
				return values[j]
			}
		}
	}
	return "unknown"
}
