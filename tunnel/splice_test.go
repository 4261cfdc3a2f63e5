package tunnel

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// streamPair returns the two ends of one yamux stream over an in-memory
// connection.
func streamPair(t *testing.T) (opener, receiver *yamux.Stream) {
	t.Helper()
	a, b := net.Pipe()
	cfg := Config{}.withDefaults()
	cli, err := yamux.Client(a, cfg.muxConfig())
	if err != nil {
		t.Fatal(err)
	}
	srv, err := yamux.Server(b, cfg.muxConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close(); srv.Close() })
	opener, err = cli.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	receiver, err = srv.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	return opener, receiver
}

// wsStreamPair returns the two ends of one yamux stream between two
// sessions over wsConn on loopback TCP, as in a tunnel (without TLS): a
// splice of the receiver parks while the stream is idle.
func wsStreamPair(t *testing.T) (opener, receiver *yamux.Stream) {
	t.Helper()
	cli, srv := wsMuxPair(t)
	opener, err := cli.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	opener.Write(nil) // the SYN
	receiver, err = srv.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	return opener, receiver
}

// wsMuxPair returns two yamux sessions over wsConn on loopback TCP, the
// dialling end first.
func wsMuxPair(t *testing.T, tweak ...func(*yamux.Config)) (cli, srv *yamux.Session) {
	t.Helper()
	a, b := tcpPair(t)
	ca, cb := newWSConn(a, nil, true, 0), newWSConn(b, nil, false, 0)
	mc := Config{}.withDefaults().muxConfig()
	for _, f := range tweak {
		f(mc)
	}
	cli, err := yamux.Client(ca, mc)
	if err != nil {
		t.Fatal(err)
	}
	watchFrames(cli, ca)
	srv, err = yamux.Server(cb, mc)
	if err != nil {
		t.Fatal(err)
	}
	watchFrames(srv, cb)
	t.Cleanup(func() { cli.Close(); srv.Close() })
	return cli, srv
}

// streamPairs are the kinds of stream the splice tests run with: over a
// plain in-memory connection (both directions of a splice keep a
// goroutine) and over wsConn (the stream side parks).
var streamPairs = []struct {
	name string
	pair func(*testing.T) (opener, receiver *yamux.Stream)
}{{"pipe", streamPair}, {"wsconn", wsStreamPair}}

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// TestStreamZeroRead pins what streamSource relies on: a zero-length Read
// of a yamux stream waits for data without consuming it, and reports the
// end of the stream.
func TestStreamZeroRead(t *testing.T) {
	op, rc := streamPair(t)
	got := make(chan error, 1)
	go func() {
		_, err := rc.Read(nil)
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("zero-length Read returned %v before any data", err)
	case <-time.After(50 * time.Millisecond):
	}
	op.Write([]byte("abc"))
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("zero-length Read = %v, want nil once data is there", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("zero-length Read still blocked after data arrived")
	}
	buf := make([]byte, 8)
	if n, err := rc.Read(buf); err != nil || string(buf[:n]) != "abc" {
		t.Fatalf("Read after the zero-length Read = %q, %v; want the data", buf[:n], err)
	}
	op.Close()
	rc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := rc.Read(nil); err != io.EOF {
		t.Fatalf("zero-length Read after FIN = %v, want EOF", err)
	}
}

// TestSpliceTCPAndStream forwards a few MiB both ways between a TCP
// connection and a yamux stream, with a pause (pipes idle without a
// buffer) and half-close in each direction.
func TestSpliceTCPAndStream(t *testing.T) {
	for _, k := range streamPairs {
		t.Run(k.name, func(t *testing.T) { testSpliceTCPAndStream(t, k.pair) })
	}
}

func testSpliceTCPAndStream(t *testing.T, pair func(*testing.T) (opener, receiver *yamux.Stream)) {
	client, tcpEnd := tcpPair(t)
	far, streamEnd := pair(t)
	type counts struct{ aToB, bToA int64 }
	done := make(chan counts, 1)
	go func() {
		a, b := Splice(tcpEnd, streamEnd)
		done <- counts{a, b}
	}()
	up := make([]byte, 3<<20+17)
	down := make([]byte, 2<<20+5)
	rand.Read(up)
	rand.Read(down)
	client.SetDeadline(time.Now().Add(20 * time.Second))
	far.SetDeadline(time.Now().Add(20 * time.Second))

	// A round trip, then silence, then bulk.
	client.Write([]byte("ping"))
	b := make([]byte, 4)
	if _, err := io.ReadFull(far, b); err != nil || string(b) != "ping" {
		t.Fatalf("first bytes: %q, %v", b, err)
	}
	time.Sleep(50 * time.Millisecond)

	var wg sync.WaitGroup
	var gotUp, gotDown []byte
	var errUp, errDown error
	wg.Go(func() { gotUp, errUp = io.ReadAll(far) })
	wg.Go(func() { gotDown, errDown = io.ReadAll(client) })
	wg.Go(func() {
		client.Write(up)
		client.CloseWrite()
	})
	wg.Go(func() {
		far.Write(down)
		far.Close() // FIN: a half-close for a yamux stream
	})
	wg.Wait()
	if errUp != nil || !bytes.Equal(gotUp, up) {
		t.Errorf("TCP to stream: %d bytes (want %d), %v", len(gotUp), len(up), errUp)
	}
	if errDown != nil || !bytes.Equal(gotDown, down) {
		t.Errorf("stream to TCP: %d bytes (want %d), %v", len(gotDown), len(down), errDown)
	}
	select {
	case c := <-done:
		if c.aToB != int64(len(up))+4 || c.bToA != int64(len(down)) {
			t.Errorf("Splice counted %d and %d bytes, want %d and %d", c.aToB, c.bToA, len(up)+4, len(down))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Splice did not return after both directions ended")
	}
}

// TestSpliceDeadline: a read deadline on the TCP side ends that direction
// with an error, which closes both connections, as with a plain Read.
func TestSpliceDeadline(t *testing.T) {
	for _, k := range streamPairs {
		t.Run(k.name, func(t *testing.T) { testSpliceDeadline(t, k.pair) })
	}
}

func testSpliceDeadline(t *testing.T, pair func(*testing.T) (opener, receiver *yamux.Stream)) {
	client, tcpEnd := tcpPair(t)
	far, streamEnd := pair(t)
	tcpEnd.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	done := make(chan struct{})
	go func() {
		Splice(tcpEnd, streamEnd)
		close(done)
	}()
	// Closing a yamux stream is a half-close: the far end sees EOF, and
	// the splice ends once the far end closes too.
	far.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := far.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("far end of the stream read %v after the deadline, want EOF", err)
	}
	far.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Splice did not return")
	}
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := client.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("client read after the splice ended = %v, want EOF or reset", err)
	}
}

// TestFullMessagesAtMinimumReadLimit: bulk data goes in WebSocket messages
// of exactly maxWSWrite bytes, which a peer with the smallest allowed read
// limit (minReadLimit) must take, in both directions.
func TestFullMessagesAtMinimumReadLimit(t *testing.T) {
	p := newPKI(t)
	srv := startServer(t, p, Config{MaxMessageSize: minReadLimit})
	cfg := dialConfig()
	cfg.MaxMessageSize = minReadLimit
	cli := dial(t, p, srv, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { cli.Serve(ctx, echoHandler) })
	srvSess := <-srv.sessions

	for _, opener := range []*Session{cli, srvSess} {
		st, err := opener.OpenService(ctx, "", "bulk")
		if err != nil {
			t.Fatal(err)
		}
		st.SetDeadline(time.Now().Add(20 * time.Second))
		data := make([]byte, 2<<20)
		rand.Read(data)
		var got []byte
		var rerr error
		done := make(chan struct{})
		go func() {
			got, rerr = io.ReadAll(st)
			close(done)
		}()
		// Writes of spliceChunk bytes make frames that fill four messages.
		for off := 0; off < len(data); off += spliceChunk {
			if _, err := st.Write(data[off:min(off+spliceChunk, len(data))]); err != nil {
				t.Fatal(err)
			}
		}
		st.Close()
		<-done
		if rerr != nil || !bytes.Equal(got, data) {
			t.Fatalf("echo of %d bytes: got %d bytes, %v", len(data), len(got), rerr)
		}
	}
	select {
	case <-cli.Done():
		t.Fatal("session ended")
	default:
	}
}

// sizedReader is a connection whose reads return want(len(p)) bytes, left
// times, then EOF; it records the size of every read buffer.
type sizedReader struct {
	net.Conn
	want  func(room int) int
	left  int
	sizes []int
}

func (r *sizedReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	r.left--
	r.sizes = append(r.sizes, len(p))
	return r.want(len(p)), nil
}

// TestPipeBufferGrowsForBulk: a pipe reads into a small buffer, and moves
// to big ones only once a read fills the small one; an interactive
// connection never does.
func TestPipeBufferGrowsForBulk(t *testing.T) {
	for _, tc := range []struct {
		name      string
		want      func(room int) int
		wantSizes []int
	}{
		{"bulk", func(room int) int { return room }, []int{smallChunk, spliceChunk, spliceChunk, spliceChunk}},
		{"interactive", func(int) int { return 100 }, []int{smallChunk, smallChunk, smallChunk, smallChunk}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &sizedReader{want: tc.want, left: len(tc.wantSizes)}
			n, err := copyConn(io.Discard, r, func() {})
			if err != nil {
				t.Fatal(err)
			}
			var total int64
			for _, s := range r.sizes {
				total += int64(tc.want(s))
			}
			if n != total {
				t.Fatalf("copied %d bytes, want %d", n, total)
			}
			if !slices.Equal(r.sizes, tc.wantSizes) {
				t.Fatalf("read buffer sizes %v, want %v", r.sizes, tc.wantSizes)
			}
		})
	}
}

// TestReadNow: ReadNow never waits; it takes what has arrived, and reports
// 0 for nothing yet, for the end of the stream and for a non-TCP conn.
func TestReadNow(t *testing.T) {
	if !canReadNow {
		t.Skip("ReadNow reads ahead only on unix")
	}
	client, server := tcpPair(t)
	buf := make([]byte, 64)
	start := time.Now()
	if n := ReadNow(server, buf); n != 0 {
		t.Fatalf("ReadNow with nothing sent = %d", n)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("ReadNow waited %v", d)
	}
	client.Write([]byte("hello"))
	var got []byte
	deadline := time.Now().Add(5 * time.Second)
	for len(got) < 5 && time.Now().Before(deadline) {
		got = append(got, buf[:ReadNow(server, buf)]...)
	}
	if string(got) != "hello" {
		t.Fatalf("ReadNow got %q, want hello", got)
	}
	client.CloseWrite()
	// The end of the stream is left for Read to report.
	server.SetReadDeadline(time.Now().Add(5 * time.Second))
	for ReadNow(server, buf) != 0 {
		t.Fatal("ReadNow returned bytes after the sender's end")
	}
	if _, err := server.Read(buf); !errors.Is(err, io.EOF) {
		t.Fatalf("Read after ReadNow = %v, want EOF", err)
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if n := ReadNow(a, buf); n != 0 {
		t.Fatalf("ReadNow on a net.Pipe = %d", n)
	}
}
