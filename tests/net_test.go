package tests

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// runNC sends line through addr with OpenBSD netcat (-N: shut down the
// write side after stdin's EOF) and returns what came back. nc has to exit
// by itself, which it does only when the far side closes after the echo.
func runNC(t *testing.T, addr, line string) (string, error) {
	t.Helper()
	nc, err := exec.LookPath("nc")
	if err != nil {
		t.Fatal("nc not found: install netcat-openbsd (.ci/run does)")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, nc, "-N", host, port)
	cmd.Stdin = strings.NewReader(line)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.WaitDelay = time.Second
	start := time.Now()
	out, err := cmd.Output()
	if ctx.Err() != nil {
		return string(out), fmt.Errorf("nc did not exit within 10s (half-close lost?): got %q so far", out)
	}
	if err != nil {
		return string(out), fmt.Errorf("nc -N %s %s: %v (stderr %q)", host, port, err, stderr.String())
	}
	t.Logf("nc -N %s %s: %q back, exited after %v", host, port, out, time.Since(start).Round(time.Microsecond))
	return string(out), nil
}

// roundTrip opens a connection to addr, writes msg, reads len(msg) bytes
// back and checks they are msg, all within timeout.
func roundTrip(addr, msg string, timeout time.Duration) error {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return err
	}
	defer conn.Close()
	return roundTripConn(conn, msg, timeout)
}

// checkRoundTrips makes n new connections to addr, one round trip each,
// and fails the test for every one that does not echo.
func checkRoundTrips(t *testing.T, addr, why string, n int) {
	t.Helper()
	start := time.Now()
	failed := 0
	for i := range n {
		msg := fmt.Sprintf("%s: connection %d of %d to %s\n", why, i+1, n, addr)
		if err := roundTrip(addr, msg, 3*time.Second); err != nil {
			failed++
			t.Errorf("%s: connection %d of %d to %s: %v", why, i+1, n, addr, err)
		}
	}
	t.Logf("%s: %d of %d new connections to %s echoed (%v)", why, n-failed, n, addr, time.Since(start).Round(time.Millisecond))
}

// waitListening polls a TCP connect to addr every 5ms until one succeeds,
// within timeout, and returns the moment it did.
func waitListening(t *testing.T, addr string, timeout time.Duration) time.Time {
	t.Helper()
	var at time.Time
	waitFor(t, addr+" to accept TCP", timeout, 5*time.Millisecond, func() error {
		conn, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err != nil {
			return err
		}
		at = time.Now()
		conn.Close()
		return nil
	})
	return at
}

// pollResult is the outcome of pollRoundTrip.
type pollResult struct {
	firstConnect time.Time // the first attempt whose TCP connect succeeded
	ok           time.Time // the first attempt that echoed
	attempts     int
}

// pollRoundTrip tries roundTrip on new connections to addr (each attempt
// bounded by attemptTimeout, 5ms apart) until one echoes, for at most
// timeout, and fails the test if none does.
func pollRoundTrip(t *testing.T, addr string, timeout, attemptTimeout time.Duration) pollResult {
	t.Helper()
	res, err := pollEcho(t.Context(), addr, timeout, attemptTimeout)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// pollEcho is pollRoundTrip for any goroutine: it reports the failure
// instead of failing the test.
func pollEcho(ctx context.Context, addr string, timeout, attemptTimeout time.Duration) (pollResult, error) {
	var res pollResult
	start := time.Now()
	var lastErr error
	for time.Since(start) < timeout {
		res.attempts++
		msg := fmt.Sprintf("reconnect probe %d to %s\n", res.attempts, addr)
		conn, err := net.DialTimeout("tcp", addr, attemptTimeout)
		if err == nil {
			if res.firstConnect.IsZero() {
				res.firstConnect = time.Now()
			}
			err = roundTripConn(conn, msg, attemptTimeout)
			conn.Close()
			if err == nil {
				res.ok = time.Now()
				return res, nil
			}
		}
		lastErr = err
		select {
		case <-time.After(5 * time.Millisecond):
		case <-ctx.Done():
			return res, fmt.Errorf("polling %s: %w (last: %v)", addr, ctx.Err(), lastErr)
		}
	}
	return res, fmt.Errorf("no echo through %s within %v (%d attempts, last: %v)", addr, timeout, res.attempts, lastErr)
}

// roundTripConn writes msg on conn and checks that it comes back, within
// timeout.
func roundTripConn(conn net.Conn, msg string, timeout time.Duration) error {
	conn.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(conn, msg); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	got := make([]byte, len(msg))
	if n, err := io.ReadFull(conn, got); err != nil {
		return fmt.Errorf("read after %d of %d bytes: %w", n, len(msg), err)
	}
	if string(got) != msg {
		return fmt.Errorf("echo mismatch: sent %q, got %q", msg, got)
	}
	return nil
}

// Large transfers send blocks of blockSize bytes: one random block, with
// the number of each chunkSize-byte chunk stamped into the chunk's first 8
// bytes, so the stream never repeats and a reordered, lost or duplicated
// chunk changes the digest.
const (
	blockSize = 1 << 20
	chunkSize = 4 << 10
)

// transferResult describes one large transfer through an echo path.
type transferResult struct {
	sent, received         int64
	sentSum, receivedSum   [sha256.Size]byte
	elapsed                time.Duration
	writeErr, readErr, err error
}

// transfer connects to addr, writes n bytes while reading the echo
// concurrently, half-closes after the last byte and reads to EOF. The
// whole exchange must end within timeout.
func transfer(addr string, n int64, timeout time.Duration) transferResult {
	var res transferResult
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		res.err = err
		return res
	}
	defer conn.Close()
	tc := conn.(*net.TCPConn)
	tc.SetDeadline(time.Now().Add(timeout))

	type readResult struct {
		n   int64
		sum [sha256.Size]byte
		err error
	}
	readDone := make(chan readResult, 1)
	start := time.Now()
	go func() {
		h := sha256.New()
		n, err := io.CopyBuffer(h, struct{ io.Reader }{tc}, make([]byte, 256<<10))
		var r readResult
		r.n, r.err = n, err
		h.Sum(r.sum[:0])
		readDone <- r
	}()

	block := make([]byte, blockSize)
	rand.Read(block)
	h := sha256.New()
	var chunk uint64
	for res.sent < n {
		b := block[:min(int64(len(block)), n-res.sent)]
		for off := 0; off+8 <= len(b); off += chunkSize {
			binary.BigEndian.PutUint64(b[off:], chunk)
			chunk++
		}
		h.Write(b)
		w, err := tc.Write(b)
		res.sent += int64(w)
		if err != nil {
			res.writeErr = err
			tc.Close() // unblock the reader
			break
		}
	}
	h.Sum(res.sentSum[:0])
	if res.writeErr == nil {
		if err := tc.CloseWrite(); err != nil {
			res.writeErr = fmt.Errorf("close write: %w", err)
		}
	}
	r := <-readDone // bounded by the connection deadline
	res.elapsed = time.Since(start)
	res.received, res.receivedSum, res.readErr = r.n, r.sum, r.err
	return res
}

// checkTransfer runs transfer and fails the test unless every byte came
// back in order.
func checkTransfer(t *testing.T, what, addr string, n int64, timeout time.Duration) {
	t.Helper()
	res := transfer(addr, n, timeout)
	if res.err != nil {
		t.Fatalf("%s: %v", what, res.err)
	}
	mb := float64(n) / 1e6
	t.Logf("%s via %s: sent %d bytes, received %d bytes in %v: %.0f MB/s each way",
		what, addr, res.sent, res.received, res.elapsed.Round(time.Millisecond), mb/res.elapsed.Seconds())
	if err := errors.Join(res.writeErr, res.readErr); err != nil {
		t.Errorf("%s: %v", what, err)
	}
	if res.sent != n || res.received != n {
		t.Errorf("%s: sent %d and received %d bytes, want %d both ways", what, res.sent, res.received, n)
	}
	if res.sentSum != res.receivedSum {
		t.Errorf("%s: sha256 of the echo %x differs from sha256 of what was sent %x", what, res.receivedSum, res.sentSum)
	} else {
		t.Logf("%s: sha256 %x both ways", what, res.sentSum)
	}
}
