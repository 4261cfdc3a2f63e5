package tunnel

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/hashicorp/yamux"
)

// rawFrame builds one WebSocket frame; a non-nil key masks it.
func rawFrame(fin bool, op byte, payload []byte, key []byte) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	var maskBit byte
	if key != nil {
		maskBit = 0x80
	}
	b := []byte{b0}
	switch n := len(payload); {
	case n <= 125:
		b = append(b, maskBit|byte(n))
	case n <= 0xffff:
		b = binary.BigEndian.AppendUint16(append(b, maskBit|126), uint16(n))
	default:
		b = binary.BigEndian.AppendUint64(append(b, maskBit|127), uint64(n))
	}
	if key == nil {
		return append(b, payload...)
	}
	b = append(b, key...)
	for i, c := range payload {
		b = append(b, c^key[i%4])
	}
	return b
}

// parseFrames decodes the frames a wsConn wrote: opcode, payload
// (unmasked) and whether each was masked.
type parsedFrame struct {
	fin     bool
	op      byte
	masked  bool
	payload []byte
}

func readRawFrame(r io.Reader) (parsedFrame, error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return parsedFrame{}, err
	}
	f := parsedFrame{fin: h[0]&0x80 != 0, op: h[0] & 0xf, masked: h[1]&0x80 != 0}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var e [2]byte
		io.ReadFull(r, e[:])
		n = uint64(binary.BigEndian.Uint16(e[:]))
	case 127:
		var e [8]byte
		io.ReadFull(r, e[:])
		n = binary.BigEndian.Uint64(e[:])
	}
	var key [4]byte
	if f.masked {
		io.ReadFull(r, key[:])
	}
	f.payload = make([]byte, n)
	if _, err := io.ReadFull(r, f.payload); err != nil {
		return parsedFrame{}, err
	}
	if f.masked {
		for i := range f.payload {
			f.payload[i] ^= key[i%4]
		}
	}
	return f, nil
}

// rawPeer is a wsConn (as acceptor, or as dialler) over loopback TCP with
// the raw other end, for writing and reading frames by hand.
func rawPeer(t *testing.T, client bool, limit int64) (*wsConn, net.Conn) {
	t.Helper()
	a, b := tcpPair(t)
	a.SetDeadline(time.Now().Add(10 * time.Second))
	b.SetDeadline(time.Now().Add(10 * time.Second))
	return newWSConn(a, nil, client, limit), b
}

var testKey = []byte{0xa1, 0xb2, 0xc3, 0xd4}

func TestWSReadMessages(t *testing.T) {
	c, raw := rawPeer(t, false, 0)
	// A fragmented binary message, a ping between its fragments, an empty
	// message, and a whole one: the byte stream is the payloads joined.
	var in []byte
	in = append(in, rawFrame(false, opBinary, []byte("hel"), testKey)...)
	in = append(in, rawFrame(true, opPing, []byte("are you there"), testKey)...)
	in = append(in, rawFrame(false, opContinuation, []byte("lo "), testKey)...)
	in = append(in, rawFrame(true, opContinuation, []byte("world"), testKey)...)
	in = append(in, rawFrame(true, opBinary, nil, testKey)...)
	in = append(in, rawFrame(true, opBinary, []byte("!"), testKey)...)
	in = append(in, rawFrame(true, opClose, binary.BigEndian.AppendUint16(nil, closeNormal), testKey)...)
	go raw.Write(in)
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "hello world!" {
		t.Fatalf("read %q, %v; want the joined payloads and EOF", got, err)
	}
	// The ping was answered, and the close echoed.
	for _, want := range []struct {
		op      byte
		payload string
	}{{opPong, "are you there"}, {opClose, "\x03\xe8"}} {
		f, err := readRawFrame(raw)
		if err != nil || f.op != want.op || string(f.payload) != want.payload || f.masked {
			t.Fatalf("frame from the acceptor: %+v, %v; want op %x %q unmasked", f, err, want.op, want.payload)
		}
	}
}

func TestWSReadRefusals(t *testing.T) {
	big := make([]byte, minReadLimit+1)
	for _, c := range []struct {
		name   string
		client bool // the wsConn is the dialler
		frames []byte
		status int    // close status the wsConn sends
		reason string // in the read error
	}{
		{"text", false, rawFrame(true, opText, []byte("hi"), testKey), closeUnsupported, "text message"},
		{"unmasked-from-client", false, rawFrame(true, opBinary, []byte("x"), nil), closeProtocolError, "unmasked frame"},
		{"masked-from-server", true, rawFrame(true, opBinary, []byte("x"), testKey), closeProtocolError, "masked frame"},
		{"rsv-bits", false, append([]byte{0xc2, 0x80}, testKey...), closeProtocolError, "unexpected rsv bits"},
		{"reserved-opcode", false, rawFrame(true, 0x3, nil, testKey), closeProtocolError, "unknown opcode"},
		{"reserved-control-opcode", false, rawFrame(true, 0xb, nil, testKey), closeProtocolError, "unknown opcode"},
		{"continuation-first", false, rawFrame(true, opContinuation, []byte("x"), testKey), closeProtocolError, "continuation frame outside a message"},
		{"interleaved-message", false, append(rawFrame(false, opBinary, []byte("x"), testKey), rawFrame(true, opBinary, []byte("y"), testKey)...), closeProtocolError, "before the previous one ended"},
		{"long-control", false, rawFrame(true, opPing, make([]byte, 126), testKey), closeProtocolError, "oversized control frame"},
		{"fragmented-control", false, rawFrame(false, opPing, nil, testKey), closeProtocolError, "fragmented"},
		{"too-big-frame", false, rawFrame(true, opBinary, big, testKey), closeMessageTooBig, "read limited at 65536 bytes"},
		{"too-big-message", false, append(rawFrame(false, opBinary, big[:minReadLimit], testKey), rawFrame(true, opContinuation, []byte("x"), testKey)...), closeMessageTooBig, "read limited at"},
		{"bad-close-status", false, rawFrame(true, opClose, []byte{0x03, 0xed}, testKey), closeProtocolError, "invalid close status 1005"},
		{"close-4000", false, rawFrame(true, opClose, []byte{0x0f, 0xa0, 'b', 'y', 'e'}, testKey), 4000, `status 4000 "bye"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			w, raw := rawPeer(t, c.client, minReadLimit)
			go raw.Write(c.frames)
			start := time.Now()
			_, err := io.ReadAll(w)
			if err == nil || !strings.Contains(err.Error(), c.reason) {
				t.Fatalf("read error %v, want one naming %q", err, c.reason)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("refused after %v, want at once", d)
			}
			// The data of a refused message is not returned: the close
			// frame is the first thing back.
			f, ferr := readRawFrame(raw)
			if ferr != nil || f.op != opClose || len(f.payload) < 2 || int(binary.BigEndian.Uint16(f.payload)) != c.status {
				t.Fatalf("frame back: %+v, %v; want close %d", f, ferr, c.status)
			}
			if f.masked != c.client {
				t.Errorf("close frame masked %v, want %v", f.masked, c.client)
			}
			if w.readErr.Load() == nil {
				t.Error("the read error was not kept for the session's end")
			}
			if _, err := w.Write([]byte("late")); !errors.Is(err, errCloseSent) {
				t.Errorf("write after the close frame = %v, want errCloseSent", err)
			}
		})
	}
}

// TestWSWriteMessages: writes become binary messages of at most
// maxWSWrite bytes, masked by the dialler only, and a yamux data frame
// header travels in the same message as its body.
func TestWSWriteMessages(t *testing.T) {
	for _, client := range []bool{false, true} {
		t.Run(map[bool]string{false: "acceptor", true: "dialler"}[client], func(t *testing.T) {
			w, raw := rawPeer(t, client, 0)
			body := make([]byte, 3*maxWSWrite+100)
			rand.Read(body)
			hdr := []byte{0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0}
			binary.BigEndian.PutUint32(hdr[8:], uint32(len(body)))
			ping := []byte{0, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7}
			go func() {
				w.Write(hdr)
				w.Write(body)
				w.Write(ping)
			}()
			want := append(append(append([]byte(nil), hdr...), body...), ping...)
			var got []byte
			var sizes []int
			for len(got) < len(want) {
				f, err := readRawFrame(raw)
				if err != nil {
					t.Fatal(err)
				}
				if f.op != opBinary || !f.fin || f.masked != client || len(f.payload) > maxWSWrite {
					t.Fatalf("frame: op %x fin %v masked %v, %d bytes", f.op, f.fin, f.masked, len(f.payload))
				}
				sizes = append(sizes, len(f.payload))
				got = append(got, f.payload...)
			}
			if !bytes.Equal(got, want) {
				t.Fatal("the messages do not carry what was written")
			}
			if sizes[0] != maxWSWrite || sizes[len(sizes)-1] != len(ping) {
				t.Errorf("message sizes %v: want the header with the first %d bytes of body, and the ping alone", sizes, maxWSWrite-yamuxHeaderLen)
			}
		})
	}
}

func TestMaskKeyXOR(t *testing.T) {
	src := make([]byte, 3*maskSpan+11)
	rand.Read(src)
	key := [4]byte{0x12, 0x34, 0x56, 0x78}
	var k maskKey
	k.set(key)
	for pos := range 4 {
		for _, n := range []int{0, 1, 3, 7, 8, 9, 31, 33, maskSpan - 1, maskSpan, maskSpan + 1, len(src)} {
			dst := make([]byte, n)
			end := k.xor(dst, src[:n], pos)
			for i := range n {
				if dst[i] != src[i]^key[(pos+i)%4] {
					t.Fatalf("pos %d, %d bytes: byte %d wrong", pos, n, i)
				}
			}
			if end != (pos+n)%4 {
				t.Fatalf("pos %d, %d bytes: end %d", pos, n, end)
			}
			k.xor(dst, dst, pos) // in place, back
			if !bytes.Equal(dst, src[:n]) {
				t.Fatalf("pos %d, %d bytes: masking twice does not unmask", pos, n)
			}
		}
	}
}

// FuzzWSRead: whatever a peer sends, reading ends (with data or an error)
// and never panics, and the data returned is what binary frames carried.
func FuzzWSRead(f *testing.F) {
	f.Add(rawFrame(true, opBinary, []byte("abc"), testKey), false)
	f.Add(append(rawFrame(false, opBinary, []byte("a"), testKey), rawFrame(true, opContinuation, []byte("b"), testKey)...), false)
	f.Add(rawFrame(true, opPing, []byte("p"), nil), true)
	f.Add(rawFrame(true, opClose, []byte{3, 0xe8}, nil), true)
	f.Add([]byte{0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, true)
	f.Fuzz(func(t *testing.T, in []byte, client bool) {
		c := newWSConn(&fuzzConn{r: bytes.NewReader(in)}, nil, client, minReadLimit)
		buf := make([]byte, 100)
		total := 0
		for range len(in) + 2 {
			n, err := c.Read(buf)
			total += n
			if total > len(in) {
				t.Fatalf("read %d bytes out of %d", total, len(in))
			}
			if err != nil {
				return
			}
		}
		t.Fatal("reading did not end")
	})
}

// fuzzConn reads from r and discards writes.
type fuzzConn struct {
	net.Conn
	r io.Reader
}

func (c *fuzzConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *fuzzConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *fuzzConn) Close() error                     { return nil }
func (c *fuzzConn) SetWriteDeadline(time.Time) error { return nil }

func TestUpgradeRefusals(t *testing.T) {
	srv := &Server{Config: Config{Local: Hello{Instance: "cloud1", Site: "cloud", Epoch: 1}}, Insecure: true,
		OnSession: func(s *Session) { s.Close() }}
	ts := httptest.NewServer(srv)
	defer ts.Close()
	good := func() *http.Request {
		r, _ := http.NewRequest(http.MethodGet, ts.URL+DefaultPath, nil)
		r.Header.Set("Connection", "Upgrade")
		r.Header.Set("Upgrade", "websocket")
		r.Header.Set("Sec-WebSocket-Version", "13")
		r.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
		return r
	}
	for _, c := range []struct {
		name   string
		edit   func(*http.Request)
		status int
	}{
		{"post", func(r *http.Request) { r.Method = http.MethodPost }, http.StatusMethodNotAllowed},
		{"no-connection-upgrade", func(r *http.Request) { r.Header.Set("Connection", "keep-alive") }, http.StatusUpgradeRequired},
		{"no-upgrade-websocket", func(r *http.Request) { r.Header.Set("Upgrade", "h2c") }, http.StatusUpgradeRequired},
		{"version-8", func(r *http.Request) { r.Header.Set("Sec-WebSocket-Version", "8") }, http.StatusBadRequest},
		{"short-key", func(r *http.Request) { r.Header.Set("Sec-WebSocket-Key", "c2hvcnQ=") }, http.StatusBadRequest},
		{"two-keys", func(r *http.Request) { r.Header.Add("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==") }, http.StatusBadRequest},
		{"foreign-origin", func(r *http.Request) { r.Header.Set("Origin", "https://evil.example") }, http.StatusForbidden},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := good()
			c.edit(r)
			resp, err := http.DefaultClient.Do(r)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != c.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, c.status)
			}
		})
	}
	// The accepted key gets the RFC 6455 §1.3 example answer; an Origin
	// equal to the host is fine.
	r := good()
	r.Header.Set("Origin", ts.URL)
	c, err := net.Dial("tcp", strings.TrimPrefix(ts.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	r.Write(c)
	resp, err := http.ReadResponse(bufio.NewReader(c), r)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Sec-WebSocket-Accept") != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Fatalf("upgrade answered %s with accept %q", resp.Status, resp.Header.Get("Sec-WebSocket-Accept"))
	}
}

// TestDialChecksTheAnswer: the dialler refuses an upgrade answer that is
// not a valid 101 for its key, or that negotiates what it did not offer.
func TestDialChecksTheAnswer(t *testing.T) {
	for _, c := range []struct {
		name   string
		answer func(key string) string
		want   string
	}{
		{"not-101", func(string) string { return "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n" }, "403 Forbidden"},
		{"wrong-accept", func(string) string {
			return "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAA\r\n\r\n"
		}, "invalid Sec-WebSocket-Accept"},
		{"extension", func(key string) string {
			return "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + acceptKey(key) +
				"\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
		}, "extensions"},
		{"no-upgrade", func(key string) string {
			return "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + acceptKey(key) + "\r\n\r\n"
		}, "Upgrade header"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			var wg sync.WaitGroup
			defer wg.Wait()
			wg.Go(func() {
				conn, err := ln.Accept()
				if err != nil {
					return
				}
				defer conn.Close()
				req, err := http.ReadRequest(bufio.NewReader(conn))
				if err != nil {
					return
				}
				io.WriteString(conn, c.answer(req.Header.Get("Sec-WebSocket-Key")))
				io.Copy(io.Discard, conn)
			})
			_, err = Dial(context.Background(), "ws://"+ln.Addr().String()+DefaultPath, nil, dialConfig())
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Dial = %v, want an error naming %q", err, c.want)
			}
		})
	}
}

// The tests below check wire compatibility with the previous
// implementation of this package, whose WebSocket layer was
// github.com/coder/websocket (Accept or Dial, then NetConn carrying yamux,
// with messages of up to 65536 bytes): a tunnel between the two must work
// both ways.

// legacySession runs yamux and the hello over a coder/websocket
// connection, as the previous implementation did.
func legacySession(t *testing.T, ws *websocket.Conn, cfg Config, dialer bool, peer *tls.ConnectionState) *Session {
	t.Helper()
	cfg = cfg.withDefaults()
	nc := websocket.NetConn(context.Background(), ws, websocket.MessageBinary)
	ws.SetReadLimit(cfg.MaxMessageSize)
	conn := &legacyMsgConn{Conn: nc}
	var mux *yamux.Session
	var err error
	if dialer {
		mux, err = yamux.Client(conn, cfg.muxConfig())
	} else {
		mux, err = yamux.Server(conn, cfg.muxConfig())
	}
	if err != nil {
		t.Fatal(err)
	}
	sess, err := handshake(mux, cfg, dialer, peer.PeerCertificates, "legacy")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	return sess
}

// legacyMsgConn splits writes into messages of at most 65536 bytes, the
// previous maxWSWrite (without holding back yamux headers).
type legacyMsgConn struct{ net.Conn }

func (c *legacyMsgConn) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		k := min(len(p), 64<<10)
		if _, err := c.Conn.Write(p[:k]); err != nil {
			return n - len(p), err
		}
		p = p[k:]
	}
	return n, nil
}

func echoBulk(t *testing.T, opener *Session) {
	t.Helper()
	st, err := opener.OpenService(context.Background(), "", "bulk")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(20 * time.Second))
	data := make([]byte, 1<<20+123)
	rand.Read(data)
	done := make(chan []byte, 1)
	go func() {
		got, _ := io.ReadAll(st)
		done <- got
	}()
	if _, err := st.Write(data); err != nil {
		t.Fatal(err)
	}
	st.Close()
	if got := <-done; !bytes.Equal(got, data) {
		t.Fatalf("echo of %d bytes: got %d bytes back", len(data), len(got))
	}
}

func TestInteropLegacyDialler(t *testing.T) {
	p := newPKI(t)
	srv := startServer(t, p, Config{})
	tr := &http.Transport{TLSClientConfig: clientTLS(t, p, "onprem1")}
	defer tr.CloseIdleConnections()
	ws, resp, err := websocket.Dial(context.Background(), srv.url, &websocket.DialOptions{
		HTTPClient: &http.Client{Transport: tr}, CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		t.Fatal(err)
	}
	cli := legacySession(t, ws, dialConfig(), true, resp.TLS)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { cli.Serve(ctx, echoHandler) })
	echoBulk(t, cli)
	echoBulk(t, <-srv.sessions)
}

func TestInteropLegacyAcceptor(t *testing.T) {
	p := newPKI(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	sessions := make(chan *Session, 1)
	cfg := Config{Local: Hello{Instance: "cloud1", Site: "cloud", Epoch: 1}}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
		if err != nil {
			return
		}
		s := legacySession(t, ws, cfg, false, r.TLS)
		sessions <- s
		s.Serve(ctx, echoHandler)
	})}
	tc := p.reloader(t, "cloud1").ServerConfig(nil)
	tc.NextProtos = []string{"http/1.1"}
	hs.TLSConfig = tc
	wg.Go(func() { hs.ServeTLS(ln, "", "") })
	defer func() {
		cancel()
		hs.Close()
		wg.Wait()
	}()
	u := url.URL{Scheme: "wss", Host: ln.Addr().String(), Path: DefaultPath}
	cli := dial(t, p, &server{url: u.String()}, dialConfig())
	wg.Go(func() { cli.Serve(ctx, echoHandler) })
	echoBulk(t, cli)
	echoBulk(t, <-sessions)
	cli.Close()
}

// countingConn records the size of every write.
type countingConn struct {
	net.Conn
	writes []int
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes = append(c.writes, len(p))
	return len(p), nil
}

// TestCorkWritesFrames: under a cork, a pipe's full yamux frame leaves in
// one write, and a bigger frame (a store message) four messages at a time,
// so the cork never holds more than that.
func TestCorkWritesFrames(t *testing.T) {
	for _, tc := range []struct {
		name   string
		body   int
		writes int
	}{
		{"small", 100, 1},
		{"one message", smallChunk, 1},
		{"pipe frame", spliceChunk, 1},
		{"ten messages", 10*maxWSWrite - yamuxHeaderLen, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			under := &countingConn{}
			cc := &corkConn{Conn: under}
			c := newWSConn(cc, nil, true, minReadLimit)
			c.cork = cc
			hdr := make([]byte, yamuxHeaderLen)
			binary.BigEndian.PutUint32(hdr[8:], uint32(tc.body))
			if _, err := c.Write(hdr); err != nil {
				t.Fatal(err)
			}
			if n, err := c.Write(make([]byte, tc.body)); err != nil || n != tc.body {
				t.Fatalf("Write = %d, %v", n, err)
			}
			if len(under.writes) != tc.writes {
				t.Fatalf("%d writes %v, want %d", len(under.writes), under.writes, tc.writes)
			}
			total := 0
			for _, w := range under.writes {
				total += w
				if w > corkMessages*(maxWSWrite+wsMaxHeader) {
					t.Fatalf("a write of %d bytes: more than %d messages", w, corkMessages)
				}
			}
			msgs := (tc.body + yamuxHeaderLen + maxWSWrite - 1) / maxWSWrite
			if want := tc.body + yamuxHeaderLen + msgs*wsMaxHeader; total < want-msgs*4 || total > want {
				t.Fatalf("wrote %d bytes in all, want about %d", total, want)
			}
		})
	}
}
