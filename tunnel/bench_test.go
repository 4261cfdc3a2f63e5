package tunnel

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The benchmarks below run the data path of a 1+1 deployment in one
// process, the way internal/bench runs it with real processes: a client
// connects to an accept port of cloud1 (the accepting end, which opens a
// stream per connection and splices it), onprem1 (the dialling end)
// accepts the stream, connects a target on loopback and splices. Both
// tunnel ends use TLS 1.3 with client certificates over loopback TCP.
//
//	go test -run '^$' -bench Tunnel -benchtime 2s ./tunnel
//
// Upload is client to server (cloud1 writes the tunnel), Download server
// to client (onprem1 writes it, masking its frames).

const benchChunk = 32 << 10 // what the client writes per call, like io.Copy

// cpuTime is the CPU time (user and system) this process has used. The
// benchmarks report it per operation (cpu-ns/op): on a shared machine it
// is a steadier measure of the cost of the data path than elapsed time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// measure resets the benchmark timer and reports CPU time per operation
// when the returned function is called.
func measure(b *testing.B) func() {
	b.ResetTimer()
	start := cpuTime()
	return func() {
		b.StopTimer()
		b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
	}
}

// rig is a running 1+1 deployment with a sink, a source and an echo server
// behind onprem1, and an accept port for each on cloud1.
type rig struct {
	accept map[string]string // service -> cloud1's accept address
}

func newRig(tb testing.TB) *rig {
	tb.Helper()
	targets := map[string]string{}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var lns []net.Listener
	listen := func() net.Listener {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		lns = append(lns, ln)
		return ln
	}
	serve := func(ln net.Listener, handle func(net.Conn)) {
		wg.Go(func() {
			var conns sync.WaitGroup
			defer conns.Wait()
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				conns.Go(func() {
					defer c.Close()
					stop := context.AfterFunc(ctx, func() { c.Close() })
					defer stop()
					handle(c)
				})
			}
		})
	}
	for name, h := range map[string]func(net.Conn){"sink": benchSink, "source": benchSource, "echo": benchEcho} {
		ln := listen()
		targets[name] = ln.Addr().String()
		serve(ln, h)
	}

	p := newPKI(tb)
	srv := startServer(tb, p, Config{})
	onprem := dial(tb, p, srv, dialConfig())
	cloud := <-srv.sessions
	wg.Go(func() {
		onprem.Serve(ctx, func(ctx context.Context, s *Session, in *Inbound) {
			t, err := net.Dial("tcp", targets[in.Header.Service])
			if err != nil {
				in.Refuse(CodeTargetUnreachable, err.Error())
				return
			}
			if err := in.Accept(); err != nil {
				t.Close()
				in.Close()
				return
			}
			Splice(in, t)
		})
	})
	r := &rig{accept: map[string]string{}}
	for name := range targets {
		ln := listen()
		r.accept[name] = ln.Addr().String()
		serve(ln, func(c net.Conn) {
			st, err := cloud.OpenService(ctx, "", name)
			if err != nil {
				return
			}
			Splice(c, st)
		})
	}
	tb.Cleanup(func() {
		cancel()
		for _, ln := range lns {
			ln.Close()
		}
		onprem.Close()
		wg.Wait()
	})
	return r
}

func (r *rig) dial(tb testing.TB, service string) *net.TCPConn {
	c, err := net.Dial("tcp", r.accept[service])
	if err != nil {
		tb.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(time.Minute))
	return c.(*net.TCPConn)
}

// benchSink reads until EOF, then answers the byte count (8 bytes).
func benchSink(c net.Conn) {
	buf := make([]byte, benchChunk)
	var n uint64
	for {
		m, err := c.Read(buf)
		n += uint64(m)
		if err != nil {
			break
		}
	}
	c.Write(binary.BigEndian.AppendUint64(nil, n))
}

// benchSource reads a byte count (8 bytes), writes that many and closes.
func benchSource(c net.Conn) {
	var req [8]byte
	if _, err := io.ReadFull(c, req[:]); err != nil {
		return
	}
	buf := make([]byte, benchChunk)
	for left := int64(binary.BigEndian.Uint64(req[:])); left > 0; {
		m, err := c.Write(buf[:min(left, int64(len(buf)))])
		left -= int64(m)
		if err != nil {
			return
		}
	}
}

func benchEcho(c net.Conn) { io.Copy(c, c) }

func upload(tb testing.TB, r *rig, chunks int) {
	c := r.dial(tb, "sink")
	defer c.Close()
	buf := make([]byte, benchChunk)
	for range chunks {
		if _, err := c.Write(buf); err != nil {
			tb.Error(err)
			return
		}
	}
	c.CloseWrite()
	var ans [8]byte
	if _, err := io.ReadFull(c, ans[:]); err != nil {
		tb.Error(err)
		return
	}
	if got := binary.BigEndian.Uint64(ans[:]); got != uint64(chunks*benchChunk) {
		tb.Errorf("sink counted %d bytes, want %d", got, chunks*benchChunk)
	}
}

func BenchmarkTunnelUpload(b *testing.B) {
	r := newRig(b)
	upload(b, r, 64) // warm up
	b.SetBytes(benchChunk)
	defer measure(b)()
	upload(b, r, b.N)
}

func BenchmarkTunnelUpload8(b *testing.B) {
	r := newRig(b)
	upload(b, r, 64)
	b.SetBytes(benchChunk)
	defer measure(b)()
	var wg sync.WaitGroup
	for i := range 8 {
		n := b.N / 8
		if i < b.N%8 {
			n++
		}
		wg.Go(func() { upload(b, r, n) })
	}
	wg.Wait()
}

func BenchmarkTunnelDownload(b *testing.B) {
	r := newRig(b)
	download := func(n int64) {
		c := r.dial(b, "source")
		defer c.Close()
		c.Write(binary.BigEndian.AppendUint64(nil, uint64(n)))
		got, err := io.Copy(io.Discard, c)
		if err != nil || got != n {
			b.Fatalf("read %d bytes, %v; want %d", got, err, n)
		}
	}
	download(64 * benchChunk)
	b.SetBytes(benchChunk)
	defer measure(b)()
	download(int64(b.N) * benchChunk)
}

func BenchmarkTunnelEcho(b *testing.B) {
	r := newRig(b)
	c := r.dial(b, "echo")
	defer c.Close()
	out, in := make([]byte, 64), make([]byte, 64)
	for range 100 {
		c.Write(out)
		io.ReadFull(c, in)
	}
	defer measure(b)()
	for range b.N {
		if _, err := c.Write(out); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, in); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkTunnelConnect: connect, one 64-byte round trip, close.
func BenchmarkTunnelConnect(b *testing.B) {
	r := newRig(b)
	defer measure(b)()
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, 64)
		for pb.Next() {
			c := r.dial(b, "echo")
			_, err := c.Write(buf)
			if err == nil {
				_, err = io.ReadFull(c, buf)
			}
			c.Close()
			if err != nil && !errors.Is(err, io.EOF) {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkDirectUpload is the reference for BenchmarkTunnelUpload: the
// same client and sink, connected directly.
func BenchmarkDirectUpload(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer ln.Close()
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			benchSink(c)
			c.Close()
		}
	})
	r := &rig{accept: map[string]string{"sink": ln.Addr().String()}}
	upload(b, r, 64)
	b.SetBytes(benchChunk)
	defer measure(b)()
	upload(b, r, b.N)
}
