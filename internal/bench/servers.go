package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/sitebridge/sitebridge/internal/echo"
)

// servers are the targets of the benchmark: a sink, an echo server and a
// source.
type servers struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// startServers serves a sink, an echo server and a source on the three
// listeners until close is called.
func startServers(sinkLn, echoLn, sourceLn net.Listener) *servers {
	ctx, cancel := context.WithCancel(context.Background())
	s := &servers{cancel: cancel}
	s.wg.Go(func() { serveConns(ctx, sinkLn, sink) })
	s.wg.Go(func() { echo.Serve(ctx, echoLn) })
	s.wg.Go(func() { serveConns(ctx, sourceLn, source) })
	return s
}

// Servers is the servers process of a bench run (Options.ServersArgv): a
// sink, an echo server and a source on the three addresses, until ctx is
// done.
func Servers(ctx context.Context, addrs []string) error {
	if len(addrs) != 3 {
		return fmt.Errorf("servers: want SINK ECHO SOURCE addresses, got %d", len(addrs))
	}
	var lns []net.Listener
	for _, a := range addrs {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return err
		}
		lns = append(lns, ln)
	}
	s := startServers(lns[0], lns[1], lns[2])
	<-ctx.Done()
	for _, l := range lns {
		l.Close()
	}
	s.close()
	return nil
}

func (s *servers) close() {
	s.cancel()
	s.wg.Wait()
}

// serveConns runs handle on every connection accepted from ln until ctx
// is done and every connection has ended.
var serveConns = echo.ServeConns

var sinkBufs = sync.Pool{New: func() any { b := make([]byte, chunkSize); return &b }}

// sink reads until EOF, then answers the number of bytes read (8 bytes,
// big endian).
func sink(c net.Conn) {
	bp := sinkBufs.Get().(*[]byte)
	defer sinkBufs.Put(bp)
	buf := *bp
	var n int64
	for {
		m, err := c.Read(buf)
		n += int64(m)
		if err == io.EOF {
			break
		}
		if err != nil {
			return
		}
	}
	var ans [8]byte
	binary.BigEndian.PutUint64(ans[:], uint64(n))
	c.Write(ans[:])
}

// source reads a request (8 bytes: microseconds, 8 bytes: byte limit),
// writes chunks until that time has passed or that many bytes are written,
// and half-closes.
func source(c net.Conn) {
	var req [16]byte
	if _, err := io.ReadFull(c, req[:]); err != nil {
		return
	}
	dur := time.Duration(binary.BigEndian.Uint64(req[:8])) * time.Microsecond
	limit := int64(binary.BigEndian.Uint64(req[8:]))
	start := time.Now()
	var n int64
	for n < limit && time.Since(start) < dur {
		m, err := c.Write(payload)
		n += int64(m)
		if err != nil {
			return
		}
	}
	c.(interface{ CloseWrite() error }).CloseWrite()
	io.Copy(io.Discard, c) // until the client closes
}
