package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
)

// Relay is the reference the tunnel is compared with besides direct TCP: a
// plain TCP relay, as small as a user-space proxy gets (one connection
// dialled per client, two goroutines copying with io.Copy, half-close
// passed on). Each pair is "LISTEN=TARGET". It serves until ctx is done.
// Two relays chained (client -> relay -> relay -> server) have the process
// and socket layout of a 1+1 tunnel, without TLS, WebSocket or yamux: the
// floor for any design with two forwarding processes on this machine.
func Relay(ctx context.Context, pairs []string) error {
	var lns []net.Listener
	var targets []string
	for _, p := range pairs {
		l, t, ok := strings.Cut(p, "=")
		if !ok {
			return fmt.Errorf("relay: want LISTEN=TARGET, got %q", p)
		}
		ln, err := net.Listen("tcp", l)
		if err != nil {
			for _, ln := range lns {
				ln.Close()
			}
			return err
		}
		lns = append(lns, ln)
		targets = append(targets, t)
	}
	var wg sync.WaitGroup
	for i, ln := range lns {
		wg.Go(func() { relayLoop(ctx, ln, targets[i]) })
	}
	<-ctx.Done()
	for _, ln := range lns {
		ln.Close()
	}
	wg.Wait()
	return nil
}

func relayLoop(ctx context.Context, ln net.Listener, target string) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		wg.Go(func() {
			defer c.Close()
			t, err := (&net.Dialer{}).DialContext(ctx, "tcp", target)
			if err != nil {
				return
			}
			defer t.Close()
			stop := context.AfterFunc(ctx, func() { c.Close(); t.Close() })
			defer stop()
			done := make(chan struct{})
			go func() {
				io.Copy(t, c)
				t.(*net.TCPConn).CloseWrite()
				close(done)
			}()
			io.Copy(c, t)
			c.(*net.TCPConn).CloseWrite()
			<-done
		})
	}
}
