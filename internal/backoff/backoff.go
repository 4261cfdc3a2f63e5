// Package backoff yields the delays between retries: capped exponential
// with equal jitter.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Backoff yields capped exponential delays with equal jitter: each delay
// is uniformly random in [d/2, d], where d doubles from Min up to Max.
// The zero value of its state starts at Min.
type Backoff struct {
	Min, Max time.Duration
	cur      time.Duration
}

// Next is the delay before the next retry.
func (b *Backoff) Next() time.Duration {
	if b.cur == 0 {
		b.cur = b.Min
	} else {
		b.cur = min(2*b.cur, b.Max)
	}
	half := b.cur / 2
	return half + rand.N(half+1)
}

// Reset starts again from Min (after a success).
func (b *Backoff) Reset() { b.cur = 0 }
