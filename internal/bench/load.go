package bench

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// chunkSize is what a throughput client writes per call and the sink
	// reads per call: io.Copy's buffer size, what most programs use.
	chunkSize = 32 << 10
	// echoSize is the payload of one echo round trip.
	echoSize = 64
	// ioGrace is added to every load deadline: a connection that has not
	// finished by then counts as failed.
	ioGrace = 20 * time.Second
)

// dialFunc opens a connection to the target of a figure (the server, or a
// tunnel's accept port).
type dialFunc func(ctx context.Context) (net.Conn, error)

func tcpDialer(addr string, local net.Addr) dialFunc {
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: local}
	return func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
}

var payload = func() []byte {
	b := make([]byte, chunkSize)
	rand.Read(b)
	return b
}()

// throughput writes to the sink over streams connections at once, each for
// dur or until it has written maxBytes, and returns the aggregate rate in
// bytes per second: all bytes the sink confirmed, over the time from the
// first write to the last confirmation.
func throughput(ctx context.Context, dial dialFunc, streams int, dur time.Duration, maxBytes int64) (float64, error) {
	conns := make([]net.Conn, 0, streams)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range streams {
		c, err := dial(ctx)
		if err != nil {
			return 0, err
		}
		conns = append(conns, c)
	}
	var total atomic.Int64
	errs := make([]error, streams)
	start := time.Now()
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() {
			n, err := push(ctx, c, start, dur, maxBytes)
			total.Add(n)
			errs[i] = err
		})
	}
	wg.Wait()
	el := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return 0, err
	}
	return float64(total.Load()) / el.Seconds(), nil
}

// push writes to one sink connection until dur has passed or maxBytes are
// written, half-closes, and checks the sink's count.
func push(ctx context.Context, c net.Conn, start time.Time, dur time.Duration, maxBytes int64) (int64, error) {
	c.SetDeadline(start.Add(dur + ioGrace))
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	var n int64
	for n < maxBytes && time.Since(start) < dur {
		m, err := c.Write(payload)
		n += int64(m)
		if err != nil {
			return n, fmt.Errorf("write after %d bytes: %w", n, err)
		}
	}
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		return n, err
	}
	var ans [8]byte
	if _, err := io.ReadFull(c, ans[:]); err != nil {
		return n, fmt.Errorf("reading the sink's count after %d bytes: %w", n, err)
	}
	if got := int64(binary.BigEndian.Uint64(ans[:])); got != n {
		return n, fmt.Errorf("sink counted %d bytes, %d were written", got, n)
	}
	return n, nil
}

// pull asks the source for dur of data (at most maxBytes) on one
// connection and returns the rate at which it arrived: bytes over the time
// from the request to the end of the data.
func pull(ctx context.Context, dial dialFunc, dur time.Duration, maxBytes int64) (float64, error) {
	c, err := dial(ctx)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	start := time.Now()
	c.SetDeadline(start.Add(dur + ioGrace))
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	var req [16]byte
	binary.BigEndian.PutUint64(req[:8], uint64(dur/time.Microsecond))
	binary.BigEndian.PutUint64(req[8:], uint64(maxBytes))
	if _, err := c.Write(req[:]); err != nil {
		return 0, err
	}
	bp := sinkBufs.Get().(*[]byte)
	defer sinkBufs.Put(bp)
	var n int64
	for {
		m, err := c.Read(*bp)
		n += int64(m)
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, fmt.Errorf("read after %d bytes: %w", n, err)
		}
	}
	if n == 0 {
		return 0, errors.New("the source sent nothing")
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// echoRTT measures round trips of echoSize bytes on one connection: warm
// round trips first, then up to n measured ones within maxDur.
func echoRTT(ctx context.Context, dial dialFunc, warm, n int, maxDur time.Duration) ([]time.Duration, error) {
	c, err := dial(ctx)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	start := time.Now()
	c.SetDeadline(start.Add(maxDur + ioGrace))
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	out, in := payload[:echoSize], make([]byte, echoSize)
	samples := make([]time.Duration, 0, n)
	for i := 0; i < warm+n && time.Since(start) < maxDur; i++ {
		t0 := time.Now()
		if _, err := c.Write(out); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(c, in); err != nil {
			return nil, err
		}
		d := time.Since(t0)
		if i >= warm {
			samples = append(samples, d)
		}
	}
	if len(samples) == 0 {
		return nil, errors.New("no round trip measured within the time limit")
	}
	return samples, nil
}

// echoBlock is how many round trips in a row echoInterleaved makes on one
// connection before the next takes its turn: enough that each path runs
// warm, as on a busy connection, and few enough (a few milliseconds) that
// every path sees the same phases of the machine.
const echoBlock = 50

// echoInterleaved measures round trips like echoRTT on one connection per
// dial, taking turns in blocks of echoBlock round trips: warm round trips
// first, then up to n measured ones on each connection within maxDur in
// all. Every path is measured in the same stretches of time, so a shift of
// the machine's latency (these VMs jump between modes) moves all paths
// alike and their ratios stay meaningful. It returns the samples of each
// dial, in order.
func echoInterleaved(ctx context.Context, dials []dialFunc, warm, n int, maxDur time.Duration) ([][]time.Duration, error) {
	conns := make([]net.Conn, 0, len(dials))
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	start := time.Now()
	for _, dial := range dials {
		c, err := dial(ctx)
		if err != nil {
			return nil, err
		}
		c.SetDeadline(start.Add(maxDur + ioGrace))
		conns = append(conns, c)
	}
	stop := context.AfterFunc(ctx, func() {
		for _, c := range conns {
			c.SetDeadline(time.Now())
		}
	})
	defer stop()
	out, in := payload[:echoSize], make([]byte, echoSize)
	samples := make([][]time.Duration, len(conns))
	for i := range samples {
		samples[i] = make([]time.Duration, 0, n)
	}
	for done := 0; done < warm+n && time.Since(start) < maxDur; done += echoBlock {
		for j, c := range conns {
			for i := done; i < min(done+echoBlock, warm+n); i++ {
				t0 := time.Now()
				if _, err := c.Write(out); err != nil {
					return nil, err
				}
				if _, err := io.ReadFull(c, in); err != nil {
					return nil, err
				}
				if i >= warm {
					samples[j] = append(samples[j], time.Since(t0))
				}
			}
		}
	}
	if len(samples[0]) == 0 {
		return nil, errors.New("no round trip measured within the time limit")
	}
	return samples, nil
}

// roundTrip echoes echoSize bytes once on c.
func roundTrip(c net.Conn) error {
	if _, err := c.Write(payload[:echoSize]); err != nil {
		return err
	}
	var in [echoSize]byte
	_, err := io.ReadFull(c, in[:])
	return err
}

// connRate runs workers loops of connect, one echo round trip, close, for
// dur or until maxConns connections have been made, and returns completed
// connections per second and the number that failed.
func connRate(ctx context.Context, dial dialFunc, workers int, dur time.Duration, maxConns int64) (float64, int64, error) {
	var done, failed, started atomic.Int64
	var firstErr atomic.Value
	start := time.Now()
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for time.Since(start) < dur && ctx.Err() == nil && started.Add(1) <= maxConns {
				if err := oneConn(ctx, dial); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				done.Add(1)
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	if done.Load() == 0 {
		err, _ := firstErr.Load().(error)
		return 0, failed.Load(), fmt.Errorf("no connection completed: %v", err)
	}
	return float64(done.Load()) / el.Seconds(), failed.Load(), nil
}

func oneConn(ctx context.Context, dial dialFunc) error {
	c, err := dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	return roundTrip(c)
}

// hold opens n connections, each echoing once, with at most par dials in
// flight, and returns them open. On error it closes what it opened.
func hold(ctx context.Context, dial dialFunc, n, par int) ([]net.Conn, error) {
	conns := make([]net.Conn, n)
	errs := make([]error, n)
	sem := make(chan struct{}, par)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			c, err := dial(ctx)
			if err != nil {
				errs[i] = err
				return
			}
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if err := roundTrip(c); err != nil {
				c.Close()
				errs[i] = err
				return
			}
			c.SetDeadline(time.Time{})
			conns[i] = c
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		closeAll(conns)
		return nil, err
	}
	return conns, nil
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}

// percentile returns the p-th percentile (0..100) of samples by the
// nearest-rank method.
func percentile(samples []time.Duration, p float64) time.Duration {
	if len(samples) == 0 {
		return 0
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	rank := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(0, min(rank, len(s)-1))]
}

// median of float values.
func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
