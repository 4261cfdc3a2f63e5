package gateway

import (
	"net"
	"sync"
	"time"
)

// idleGuard closes a forwarded connection pair when no bytes have moved in
// either direction for the idle timeout. Reads on either side touch it.
type idleGuard struct {
	timeout time.Duration
	timer   *time.Timer
	mu      sync.Mutex
	last    time.Time
}

// newIdleGuard arms a guard that calls onIdle after timeout of silence.
func newIdleGuard(timeout time.Duration, onIdle func()) *idleGuard {
	g := &idleGuard{timeout: timeout, last: time.Now()}
	g.timer = time.AfterFunc(timeout, func() { g.check(onIdle) })
	return g
}

// check fires onIdle if the pair has been quiet long enough, or re-arms
// the timer for the rest of the interval. Resetting a timer on every read
// would cost more than this lazy re-check.
func (g *idleGuard) check(onIdle func()) {
	g.mu.Lock()
	quiet := time.Since(g.last)
	g.mu.Unlock()
	if quiet >= g.timeout {
		onIdle()
		return
	}
	g.timer.Reset(g.timeout - quiet)
}

func (g *idleGuard) touch() {
	g.mu.Lock()
	g.last = time.Now()
	g.mu.Unlock()
}

func (g *idleGuard) stop() { g.timer.Stop() }

// idleConn reports every successful read to its guard. It keeps CloseWrite
// so half-close still works through it.
type idleConn struct {
	net.Conn
	g *idleGuard
}

func (c idleConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.g.touch()
	}
	return n, err
}

func (c idleConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}
