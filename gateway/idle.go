package gateway

import (
	"sync"
	"time"
)

// idleGuard closes a forwarded connection pair when no bytes have moved in
// either direction for the idle timeout. The splice touches it after every
// read that brought bytes (tunnel.SpliceActivity).
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
