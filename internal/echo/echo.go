// Package echo is a TCP echo server for demos and tests: every byte a
// client sends comes back, and when the client half-closes, the server
// half-closes after echoing everything.
package echo

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// Serve echoes on every connection accepted from ln until ctx is done or
// ln fails; it closes ln and waits for every connection before returning.
func Serve(ctx context.Context, ln net.Listener) error {
	ServeConns(ctx, ln, echo)
	return nil
}

// ServeConns runs handle on its own goroutine for every connection accepted
// from ln, and closes the connection when handle returns. When ctx is done
// it closes ln and every open connection; it returns once every handler
// has returned. Transient accept errors (out of file descriptors) are
// retried after a short pause.
func ServeConns(ctx context.Context, ln net.Listener, handle func(net.Conn)) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]struct{}{}
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for c := range conns {
			c.Close()
		}
	})
	defer stop()
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off, keep serving.
			select {
			case <-ctx.Done():
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		mu.Lock()
		conns[c] = struct{}{}
		mu.Unlock()
		wg.Go(func() {
			defer func() {
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
				c.Close()
			}()
			handle(c)
		})
	}
}

func echo(c net.Conn) {
	defer c.Close()
	// Hide ReadFrom/WriteTo so the copy is a plain read/write loop.
	buf := make([]byte, 32<<10)
	if _, err := io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, buf); err != nil {
		return
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
}
