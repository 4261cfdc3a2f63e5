package tunnel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// TestStreamDrain pins what streamPipe relies on besides TestStreamZeroRead:
// a yamux Read that returns less than its buffer's size has taken every
// byte buffered, however many frames brought them.
func TestStreamDrain(t *testing.T) {
	op, rc := streamPair(t)
	op.Write([]byte("abc"))
	op.Write([]byte("defg"))
	rc.SetReadDeadline(time.Now().Add(5 * time.Second))
	var got []byte
	buf := make([]byte, 64)
	for len(got) < 7 {
		n, err := rc.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
	}
	if string(got) != "abcdefg" {
		t.Fatalf("read %q", got)
	}
	rc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := rc.Read(nil); !errors.Is(err, yamux.ErrTimeout) {
		t.Fatalf("zero-length Read after draining = %v, want to wait (ErrTimeout)", err)
	}
}

// TestStreamPoll pins how parkedPipe looks at a stream without waiting: a
// zero-length yamux Read with a read deadline in the past returns
// ErrTimeout at once when nothing is buffered, nil when data is, and EOF
// after the peer's FIN.
func TestStreamPoll(t *testing.T) {
	op, rc := streamPair(t)
	poll := func() error {
		rc.SetReadDeadline(aLongTimeAgo)
		defer rc.SetReadDeadline(time.Time{})
		_, err := rc.Read(nil)
		return err
	}
	start := time.Now()
	if err := poll(); !errors.Is(err, yamux.ErrTimeout) {
		t.Fatalf("poll with nothing buffered = %v, want ErrTimeout", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("poll took %v", d)
	}
	op.Write([]byte("abc"))
	waitFor(t, func() bool { return poll() == nil })
	buf := make([]byte, 8)
	if n, err := rc.Read(buf); err != nil || string(buf[:n]) != "abc" {
		t.Fatalf("Read after the poll = %q, %v", buf[:n], err)
	}
	op.Close()
	waitFor(t, func() bool { return poll() == io.EOF })
}

func goroutineDump() string {
	var b strings.Builder
	pprof.Lookup("goroutine").WriteTo(&b, 1)
	return b.String()
}

// TestSpliceParks: an idle splice of a tunnel stream keeps no goroutine on
// the stream side, wakes up for data, and sees the stream end when the
// session ends under it.
func TestSpliceParks(t *testing.T) {
	client, tcpEnd := tcpPair(t)
	far, streamEnd := wsStreamPair(t)
	done := make(chan struct{})
	go func() {
		Splice(tcpEnd, streamEnd)
		close(done)
	}()
	client.SetDeadline(time.Now().Add(20 * time.Second))
	far.SetDeadline(time.Now().Add(20 * time.Second))
	buf := make([]byte, 64)
	for i := range 20 {
		// Idle: the stream side is parked.
		waitFor(t, func() bool { return !strings.Contains(goroutineDump(), "(*streamPipe).run") })
		msg := []byte(strings.Repeat("x", 1+i))
		if _, err := far.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(client, buf[:len(msg)]); err != nil || !bytes.Equal(buf[:len(msg)], msg) {
			t.Fatalf("round %d: %q, %v", i, buf[:len(msg)], err)
		}
		client.Write(msg)
		if _, err := io.ReadFull(far, buf[:len(msg)]); err != nil {
			t.Fatal(err)
		}
	}
	// The session ends while the stream side is parked: the stream ends
	// (the client sees EOF), and the splice ends with the client.
	waitFor(t, func() bool { return !strings.Contains(goroutineDump(), "(*streamPipe).run") })
	streamEnd.Session().Close()
	if n, err := client.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("client read %d, %v after the session ended, want EOF", n, err)
	}
	client.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Splice did not return after the session ended")
	}
}

// TestSpliceParkedFIN: the peer's FIN reaches a parked stream side, which
// half-closes the TCP connection, and the other direction goes on.
func TestSpliceParkedFIN(t *testing.T) {
	client, tcpEnd := tcpPair(t)
	far, streamEnd := wsStreamPair(t)
	done := make(chan struct{})
	go func() {
		Splice(streamEnd, tcpEnd)
		close(done)
	}()
	client.SetDeadline(time.Now().Add(20 * time.Second))
	far.SetDeadline(time.Now().Add(20 * time.Second))
	waitFor(t, func() bool { return !strings.Contains(goroutineDump(), "(*streamPipe).run") })
	far.Close()
	if n, err := client.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("client read %d, %v after the far end's FIN, want EOF", n, err)
	}
	client.Write([]byte("after"))
	got := make([]byte, 5)
	if _, err := io.ReadFull(far, got); err != nil || string(got) != "after" {
		t.Fatalf("far end read %q, %v", got, err)
	}
	client.CloseWrite()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Splice did not return after both directions ended")
	}
}

// TestSpliceManyParked forwards random bursts with pauses over many
// streams of one session at once, each spliced to a TCP connection, and
// checks every byte.
func TestSpliceManyParked(t *testing.T) {
	cli, srv := wsMuxPair(t)
	const streams = 40
	var wg sync.WaitGroup
	for i := range streams {
		op, err := cli.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		op.Write(nil)
		rc, err := srv.AcceptStream()
		if err != nil {
			t.Fatal(err)
		}
		client, tcpEnd := tcpPair(t)
		wg.Go(func() { Splice(rc, tcpEnd) })
		rng := rand.New(rand.NewPCG(uint64(i), 7))
		op.SetDeadline(time.Now().Add(30 * time.Second))
		client.SetDeadline(time.Now().Add(30 * time.Second))
		var sent, got bytes.Buffer
		var sender sync.WaitGroup
		sender.Go(func() {
			for range 1 + rng.IntN(8) {
				b := make([]byte, 1+rng.IntN(200<<10))
				for j := range b {
					b[j] = byte(rng.Uint32())
				}
				sent.Write(b)
				if _, err := op.Write(b); err != nil {
					t.Error(err)
					return
				}
				time.Sleep(time.Duration(rng.IntN(20)) * time.Millisecond)
			}
			op.Close()
		})
		wg.Go(func() {
			if _, err := io.Copy(&got, client); err != nil {
				t.Error(err)
			}
			sender.Wait()
			if !bytes.Equal(got.Bytes(), sent.Bytes()) {
				t.Errorf("stream %d: %d bytes arrived, %d were sent", i, got.Len(), sent.Len())
			}
			client.Close()
		})
	}
	wg.Wait()
}

// TestFrameWatchTrack feeds random yamux frames through frameWatch the
// way wsConn does (in pieces of random size, never past room()) and checks
// which frames it reports, in order.
func TestFrameWatchTrack(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var stream []byte
	var want []uint32
	for range 2000 {
		id := uint32(1 + rng.IntN(5))
		typ := byte(rng.IntN(4))
		var flags uint16
		if rng.IntN(4) == 0 {
			flags = []uint16{0, 1, 2, yamuxFlagFIN, yamuxFlagRST}[rng.IntN(5)]
		}
		var length uint32
		var body []byte
		switch typ {
		case yamuxTypeData:
			if rng.IntN(5) > 0 {
				length = uint32(rng.IntN(70000))
				body = make([]byte, length)
			}
			want = append(want, id)
		case yamuxTypeWindow:
			length = uint32(rng.IntN(1 << 20))
			if flags&(yamuxFlagFIN|yamuxFlagRST) != 0 {
				want = append(want, id)
			}
		default:
			id, length = 0, rng.Uint32()
		}
		h := []byte{0, typ, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
		binary.BigEndian.PutUint16(h[2:], flags)
		binary.BigEndian.PutUint32(h[4:], id)
		binary.BigEndian.PutUint32(h[8:], length)
		stream = append(append(stream, h...), body...)
	}
	w := newFrameWatch()
	var got []uint32
	for len(stream) > 0 {
		n := 1 + rng.IntN(5000)
		if r := w.room(); r > 0 && int64(n) > r {
			n = int(r)
		}
		n = min(n, len(stream))
		w.track(stream[:n])
		stream = stream[n:]
		for _, d := range w.done {
			got = append(got, d.id)
		}
		w.done = w.done[:0]
		if w.off {
			t.Fatal("frameWatch stopped following valid frames")
		}
	}
	if len(got) != len(want) {
		t.Fatalf("reported %d frames, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("frame %d: stream %d, want %d", i, got[i], want[i])
		}
	}
}

// TestFrameWatchGarbage: bytes that are not yamux framing stop the watch
// from limiting reads (yamux ends the session on them).
func TestFrameWatchGarbage(t *testing.T) {
	w := newFrameWatch()
	w.track([]byte{7, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 5})
	if !w.off || w.room() != 0 {
		t.Fatalf("after a bad version: off %v, room %d", w.off, w.room())
	}
}

// TestSpliceStreamToStream: Splice of two streams (a relay) parks one
// side and moves data both ways.
func TestSpliceStreamToStream(t *testing.T) {
	far1, end1 := wsStreamPair(t)
	far2, end2 := wsStreamPair(t)
	done := make(chan struct{})
	go func() {
		Splice(end1, end2)
		close(done)
	}()
	for _, c := range []net.Conn{far1, far2} {
		c.SetDeadline(time.Now().Add(10 * time.Second))
	}
	far1.Write([]byte("one"))
	far2.Write([]byte("two"))
	b := make([]byte, 3)
	if _, err := io.ReadFull(far2, b); err != nil || string(b) != "one" {
		t.Fatalf("far2 read %q, %v", b, err)
	}
	if _, err := io.ReadFull(far1, b); err != nil || string(b) != "two" {
		t.Fatalf("far1 read %q, %v", b, err)
	}
	far1.Close()
	far2.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Splice did not return")
	}
}

// TestSpliceEndedBeforeStart: data and the FIN that reached the stream
// before the splice began (so before its frames were counted) still make
// it out: the data, then the half-close.
func TestSpliceEndedBeforeStart(t *testing.T) {
	for _, data := range []string{"", "early"} {
		client, tcpEnd := tcpPair(t)
		far, streamEnd := wsStreamPair(t)
		if data != "" {
			far.Write([]byte(data))
		}
		far.Close()
		time.Sleep(100 * time.Millisecond) // let the receiving session process both
		done := make(chan struct{})
		go func() {
			Splice(streamEnd, tcpEnd)
			close(done)
		}()
		client.SetDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(client)
		if err != nil || string(got) != data {
			t.Fatalf("client read %q, %v; want %q and EOF", got, err, data)
		}
		client.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("Splice did not return")
		}
	}
}

// TestSpliceHalfClosedTimesOut: after the client's side has ended, the
// splice waits for the far end's FIN; if that never comes, yamux closes
// the stream after its close timeout (sending no frame), and the splice
// ends then, as it did before stream sides parked.
func TestSpliceHalfClosedTimesOut(t *testing.T) {
	cli, srv := wsMuxPair(t, func(c *yamux.Config) { c.StreamCloseTimeout = 300 * time.Millisecond })
	far, err := cli.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	far.Write([]byte("x"))
	streamEnd, err := srv.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	client, tcpEnd := tcpPair(t)
	done := make(chan struct{})
	go func() {
		Splice(tcpEnd, streamEnd)
		close(done)
	}()
	client.SetDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, 1)
	if _, err := io.ReadFull(client, b); err != nil {
		t.Fatal(err)
	}
	client.CloseWrite() // the far end gets FIN, and never sends its own
	if _, err := io.ReadAll(client); err != nil {
		t.Fatalf("client: %v, want EOF after the close timeout", err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Splice did not return after the stream's close timeout")
	}
}

// TestSweepShrinksIdleBulkStreams: a stream parked after a bulk run gives
// its receive buffer back once it has stayed parked through a whole sweep,
// and not before; one that wakes in between, or parked after little,
// keeps nothing to shrink.
func TestSweepShrinksIdleBulkStreams(t *testing.T) {
	w := newFrameWatch()
	idle, busy, small := w.watch(1), w.watch(2), w.watch(3)
	shrunk := map[string]int{}
	shrinker := func(name string) func() { return func() { shrunk[name]++ } }
	nop := func() {}
	for _, tc := range []struct {
		s      *streamWatch
		shrink func()
	}{{idle, shrinker("idle")}, {busy, shrinker("busy")}, {small, nil}} {
		if parked, _ := w.park(tc.s, w.seq(tc.s), nop, tc.shrink); !parked {
			t.Fatal("did not park")
		}
	}
	w.sweep()
	if len(shrunk) != 0 {
		t.Fatalf("first sweep shrank %v; want nothing yet", shrunk)
	}
	// A frame of stream 2 wakes its pipe, which parks again after
	// another bulk run.
	w.done = append(w.done, frameDone{id: 2})
	w.flush()
	if parked, _ := w.park(busy, w.seq(busy), nop, shrinker("busy")); !parked {
		t.Fatal("did not park again")
	}
	w.sweep()
	if shrunk["idle"] != 1 || shrunk["busy"] != 0 || len(shrunk) != 1 {
		t.Fatalf("second sweep shrank %v; want idle once", shrunk)
	}
	w.sweep()
	if shrunk["idle"] != 1 || shrunk["busy"] != 1 {
		t.Fatalf("third sweep: shrunk %v; want idle once and busy once", shrunk)
	}
}

// parkedSplice splices one end of a loopback TCP connection with a stream
// over wsConn (whose side of the splice parks while idle), calling
// activity. It returns the other end of the TCP connection and the far
// end of the stream, each with a deadline 30 s away, the spliced TCP end,
// and a wait for the splice to return.
func parkedSplice(t *testing.T, activity func()) (client *net.TCPConn, far *yamux.Stream, tcpEnd *net.TCPConn, wait func()) {
	t.Helper()
	client, tcpEnd = tcpPair(t)
	far, streamEnd := wsStreamPair(t)
	done := make(chan struct{})
	go func() {
		SpliceActivity(tcpEnd, streamEnd, activity)
		close(done)
	}()
	client.SetDeadline(time.Now().Add(30 * time.Second))
	far.SetDeadline(time.Now().Add(30 * time.Second))
	wait = func() {
		t.Helper()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("the splice did not return")
		}
	}
	return client, far, tcpEnd, wait
}

// TestSpliceDeliversOnReceiveLoop: small messages to a parked, idle
// stream side reach the TCP connection from the session's receive loop
// (deliver), without a goroutine started for each.
func TestSpliceDeliversOnReceiveLoop(t *testing.T) {
	client, far, _, wait := parkedSplice(t, nil)
	waitFor(t, func() bool { return !strings.Contains(goroutineDump(), "(*streamPipe).run") })
	const rounds = 200
	before := pipeStarts.Load()
	buf := make([]byte, 64)
	for i := range rounds {
		msg := []byte(strings.Repeat(string(rune('a'+i%26)), 1+i%64))
		if _, err := far.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(client, buf[:len(msg)]); err != nil || !bytes.Equal(buf[:len(msg)], msg) {
			t.Fatalf("round %d: %q, %v", i, buf[:len(msg)], err)
		}
	}
	if starts := pipeStarts.Load() - before; starts > rounds/10 {
		t.Fatalf("%d goroutines started for %d small messages to an idle stream side, want them delivered by the receive loop", starts, rounds)
	}
	far.Close()
	if n, err := client.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("client read %d, %v after the far end's FIN, want EOF", n, err)
	}
	client.Close()
	wait()
}

// TestSpliceDeliverBackpressure: when the TCP connection does not take a
// delivered message at once (its reader has stopped), the pipe's goroutine
// writes the rest, and every byte arrives once, in order.
func TestSpliceDeliverBackpressure(t *testing.T) {
	client, far, tcpEnd, wait := parkedSplice(t, nil)
	client.SetReadBuffer(4 << 10)
	tcpEnd.SetWriteBuffer(4 << 10)
	waitFor(t, func() bool { return !strings.Contains(goroutineDump(), "(*streamPipe).run") })

	// Far writes while the client does not read, so the TCP buffers fill
	// up while messages keep arriving one frame at a time.
	partial := deliverPartial.Load()
	var sent bytes.Buffer
	rng := rand.New(rand.NewPCG(3, 9))
	for i := range 150 {
		msg := make([]byte, 1+rng.IntN(3000))
		for j := range msg {
			msg[j] = byte(i + j)
		}
		sent.Write(msg)
		if _, err := far.Write(msg); err != nil {
			t.Fatal(err)
		}
	}
	far.Close()
	got, err := io.ReadAll(client)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, sent.Bytes()) {
		t.Fatalf("%d bytes arrived, %d were sent, or in another order", len(got), sent.Len())
	}
	if deliverPartial.Load() == partial {
		t.Error("no delivery was cut short by the full TCP connection: the test did not test it")
	}
	client.Close()
	wait()
}

// TestSpliceActivityParks: a splice with an activity callback (an idle
// timeout's clock) still parks its idle stream side and waits on the TCP
// side without a buffer, and the callback sees every read in both
// directions, delivered ones included.
func TestSpliceActivityParks(t *testing.T) {
	var reads atomic.Int64
	client, far, _, wait := parkedSplice(t, func() { reads.Add(1) })
	buf := make([]byte, 64)
	for i := range 10 {
		waitFor(t, func() bool {
			d := goroutineDump()
			return !strings.Contains(d, "(*streamPipe).run") && strings.Contains(d, "fdSource.read")
		})
		if strings.Contains(goroutineDump(), "plainSource") {
			t.Fatal("the TCP side waits holding a buffer (plainSource)")
		}
		before := reads.Load()
		msg := []byte(strings.Repeat("y", 1+i))
		if _, err := far.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(client, buf[:len(msg)]); err != nil || !bytes.Equal(buf[:len(msg)], msg) {
			t.Fatalf("round %d: %q, %v", i, buf[:len(msg)], err)
		}
		client.Write(msg)
		if _, err := io.ReadFull(far, buf[:len(msg)]); err != nil {
			t.Fatal(err)
		}
		if got := reads.Load() - before; got < 2 {
			t.Fatalf("round %d: activity called %d times for a message each way, want 2", i, got)
		}
	}
	client.Close()
	far.Close()
	wait()
}
