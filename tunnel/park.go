package tunnel

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
)

// A forwarded connection held open but idle waits for input in both
// directions. Waiting for the TCP side costs a goroutine parked in the
// network poller; waiting for the stream side used to cost another one,
// blocked in a yamux Read. A goroutine's stack (4-8 KiB) is most of what a
// held connection costs, so the stream side of a splice does not keep a
// goroutine while it waits: it parks, and the session wakes it with a new
// goroutine when a frame for the stream has been read.
//
// yamux has no such hook, but the session reads its frames from wsConn, so
// frameWatch follows the yamux framing of the bytes wsConn hands to yamux
// (12-byte headers, data frame bodies) and, once yamux has processed a
// frame of a watched stream, counts it and wakes the stream's parked pipe.
// wsConn never hands yamux bytes past the end of the current frame, so
// when yamux asks for more, it has processed every frame before: its data
// is in the stream's buffer, or its FIN or RST has changed the stream's
// state.
//
// A pipe (streamPipe.run) reads the count, then reads the stream until a
// Read returns less than its buffer (the stream's buffer is then empty),
// and parks only if the count has not moved since and no FIN or RST has
// been counted: every frame counted before was in the buffer before that
// Read, and every frame processed later wakes it. Frames processed before
// the stream was watched are not counted, so a pipe parks on the count
// alone only after a poll (a zero-length Read with an expired deadline)
// has found the stream neither ended nor holding data. A frame whose data
// the pipe read just before it was counted wakes the pipe for nothing;
// the pipe then waits in a blocking Read for the next data, as a plain
// pipe would, and parks after it. Once the splice's other direction has
// ended, the splice's goroutine takes the stream direction over with
// blocking reads (takeOver).

// yamux frame types and flags (hashicorp/yamux spec.md).
const (
	yamuxTypeData   = 0
	yamuxTypeWindow = 1
	yamuxTypeGoAway = 3
	yamuxFlagFIN    = 0x4
	yamuxFlagRST    = 0x8
)

// frameWatch follows the frames a session reads and wakes parked pipes.
type frameWatch struct {
	// Parser state: only the session's receive loop (wsConn.Read) uses it.
	hdr  [yamuxHeaderLen]byte
	hdrN int    // header bytes read so far
	body int64  // body bytes left of the current data frame
	id   uint32 // the stream of the current data frame
	end  bool   // the current data frame has FIN or RST
	off  bool   // the bytes are not yamux framing: stop following
	done []frameDone
	// scratch is the receive loop's buffer for delivering data to parked
	// pipes itself (see streamPipe.deliver); wakes and delivers are flush's
	// lists, kept between calls.
	scratch  []byte
	wakes    []func()
	delivers []*streamPipe

	mu      sync.Mutex
	streams map[uint32]*streamWatch
	closed  bool // the session is ending: nothing parks any more
}

// frameDone is a frame handed to yamux whole: a data frame, or a window
// update with FIN or RST.
type frameDone struct {
	id  uint32
	end bool // FIN or RST: the stream's input has ended
}

// streamWatch is the state of one watched stream, under frameWatch.mu.
type streamWatch struct {
	seq    uint64 // frames of the stream processed so far
	ended  bool   // a FIN or RST has been processed: Read no longer waits
	noPark bool   // the pipe must block from now on (see takeOver)
	wake   func() // the parked pipe's resumption, or nil
	// pipe, if set, is the parked pipe, which the receive loop may
	// deliver a data frame to itself instead of waking it (see deliver).
	pipe *streamPipe
	// shrink, set while parked after a bulk run, drops the stream's
	// receive buffer once it has stayed parked through a whole sweep
	// (see sweep); swept says a sweep has seen it parked.
	shrink func()
	swept  bool
}

func newFrameWatch() *frameWatch {
	return &frameWatch{streams: map[uint32]*streamWatch{}}
}

// room is how many bytes may be handed to yamux at most now: the rest of
// the current header or body. Zero means no limit.
func (w *frameWatch) room() int64 {
	switch {
	case w.off:
		return 0
	case w.body > 0:
		return w.body
	default:
		return int64(yamuxHeaderLen - w.hdrN)
	}
}

// track follows bytes handed to yamux (at most room() of them).
func (w *frameWatch) track(b []byte) {
	for len(b) > 0 && !w.off {
		if w.body > 0 {
			k := min(int64(len(b)), w.body)
			w.body -= k
			b = b[k:]
			if w.body == 0 {
				w.done = append(w.done, frameDone{w.id, w.end})
			}
			continue
		}
		k := copy(w.hdr[w.hdrN:], b)
		w.hdrN += k
		b = b[k:]
		if w.hdrN < yamuxHeaderLen {
			return
		}
		w.hdrN = 0
		h := w.hdr[:]
		if h[0] != 0 || h[1] > yamuxTypeGoAway {
			w.off = true // yamux ends the session on this frame
			return
		}
		flags := binary.BigEndian.Uint16(h[2:4])
		id := binary.BigEndian.Uint32(h[4:8])
		length := binary.BigEndian.Uint32(h[8:12])
		end := flags&(yamuxFlagFIN|yamuxFlagRST) != 0
		switch {
		case h[1] == yamuxTypeData && length > 0:
			w.id, w.body, w.end = id, int64(length), end
		case h[1] == yamuxTypeData, h[1] == yamuxTypeWindow && end:
			w.done = append(w.done, frameDone{id, end})
		}
	}
}

// flush counts the frames completed in the bytes handed to yamux before,
// which yamux has processed by the time it reads again, and wakes the
// pipes parked on their streams.
func (w *frameWatch) flush() {
	if len(w.done) == 0 {
		return
	}
	wakes, delivers := w.wakes[:0], w.delivers[:0]
	w.mu.Lock()
	if len(w.streams) > 0 {
		for _, d := range w.done {
			if s := w.streams[d.id]; s != nil {
				s.seq++
				s.ended = s.ended || d.end
				if s.wake == nil {
					continue
				}
				if p := s.pipe; p != nil && !d.end && !p.big {
					delivers = append(delivers, p)
				} else {
					wakes = append(wakes, s.wake)
				}
				s.wake, s.shrink = nil, nil
			}
		}
	}
	w.mu.Unlock()
	w.done = w.done[:0]
	for _, p := range delivers {
		if w.scratch == nil {
			w.scratch = make([]byte, smallChunk)
		}
		p.deliver(w.scratch)
	}
	for _, f := range wakes {
		f()
	}
	clear(wakes)
	clear(delivers)
	w.wakes, w.delivers = wakes, delivers
}

// closeAll wakes every parked pipe and stops parking: the session ends.
func (w *frameWatch) closeAll() {
	var wakes []func()
	w.mu.Lock()
	w.closed = true
	for _, s := range w.streams {
		if s.wake != nil {
			wakes = append(wakes, s.wake)
			s.wake = nil
		}
	}
	w.mu.Unlock()
	for _, f := range wakes {
		f()
	}
}

// watch starts counting the frames of stream id. It returns nil if the
// session is ending.
func (w *frameWatch) watch(id uint32) *streamWatch {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed || w.streams[id] != nil {
		return nil
	}
	s := &streamWatch{}
	w.streams[id] = s
	return s
}

func (w *frameWatch) unwatch(id uint32) {
	w.mu.Lock()
	delete(w.streams, id)
	w.mu.Unlock()
}

// seq is how many frames of s have been processed.
func (w *frameWatch) seq(s *streamWatch) uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return s.seq
}

// park arranges for wake to run when the next frame of s has been
// processed, unless one has been since seq was read or the stream's input
// has ended (then it returns false and the caller reads again), or the
// session is ending or the pipe was taken over (block: the caller must
// wait in Read from now on).
//
// shrink, if not nil, is called if the pipe stays parked through a whole
// sweep (see sweep): it lets yamux drop a receive buffer that a bulk run
// left big.
func (w *frameWatch) park(s *streamWatch, seq uint64, wake, shrink func()) (parked, block bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed || s.noPark {
		return false, true
	}
	if s.seq != seq || s.ended {
		// A frame processed since seq may have brought data the last
		// Read did not see; after a FIN or RST, the next Read reports
		// the end even if the one before returned data.
		return false, false
	}
	s.wake = wake
	s.shrink, s.swept = shrink, false
	return true, false
}

// shrinkEvery is the period of sweep: a stream parked after a bulk run
// keeps its receive buffer (yamux sizes it to a frame, up to about
// 512 KiB) for one to two periods of idleness, then gives it back.
const shrinkEvery = 2 * time.Second

// sweep lets yamux drop the receive buffers of streams that have stayed
// parked since the last sweep after a bulk run. A bulk stream that parks
// between frames keeps its buffer, so it is not allocated again for every
// frame; an idle one does not hold it for good.
func (w *frameWatch) sweep() {
	var shrinks []func()
	w.mu.Lock()
	for _, s := range w.streams {
		switch {
		case s.wake == nil || s.shrink == nil:
		case s.swept:
			shrinks = append(shrinks, s.shrink)
			s.shrink = nil
		default:
			s.swept = true
		}
	}
	w.mu.Unlock()
	for _, f := range shrinks {
		f()
	}
}

// watches maps each session whose frames are followed to its watch.
var watches sync.Map // *yamux.Session -> *frameWatch

// watchFrames lets splices park on the streams of mux, whose frames conn
// follows, until the session ends.
func watchFrames(mux *yamux.Session, conn *wsConn) {
	watches.Store(mux, conn.fw)
	go func() {
		t := time.NewTicker(shrinkEvery)
		defer t.Stop()
		for {
			select {
			case <-mux.CloseChan():
				watches.Delete(mux)
				return
			case <-t.C:
				conn.fw.sweep()
			}
		}
	}()
}

// watchOf returns the frame watch of the stream's session, if any.
func watchOf(st *yamux.Stream) *frameWatch {
	v, ok := watches.Load(st.Session())
	if !ok {
		return nil
	}
	return v.(*frameWatch)
}

// streamPipe copies a yamux stream to a connection (a TCP connection,
// normally) without a goroutine while the stream has nothing to read: it
// runs on a new goroutine each time a frame of the stream has been
// processed, copies what is buffered, and parks again.
type streamPipe struct {
	st   *yamux.Stream
	dst  net.Conn
	src  net.Conn // the stream as the splice was given it (closed on error)
	fw   *frameWatch
	sw   *streamWatch
	n    int64         // bytes copied, valid once done is closed
	done chan struct{} // closed when the direction has ended
	// checked: a poll since the stream was watched found it neither
	// ended nor holding data, so its end will be counted (sw.ended).
	checked bool
	big     bool // copies with big buffers (see getBuf); only the current run uses it, and runs never overlap
	// tw writes to dst without waiting, for deliver; nil if dst is not a
	// TCP connection.
	tw *tryWriter
	// pending is data deliver read from the stream but could not write;
	// run writes it first.
	pending []byte
	// activity is called after each read that brought bytes.
	activity func()
}

// parkedPipe starts copying src to dst with a streamPipe, if src is a
// yamux stream whose session's frames are followed; else it returns nil.
func parkedPipe(src, dst net.Conn, activity func()) *streamPipe {
	c := src
	if in, ok := c.(*Inbound); ok {
		c = in.Conn
	}
	st, ok := c.(*yamux.Stream)
	if !ok {
		return nil
	}
	fw := watchOf(st)
	if fw == nil {
		return nil
	}
	sw := fw.watch(st.StreamID())
	if sw == nil {
		return nil
	}
	p := &streamPipe{st: st, dst: dst, src: src, fw: fw, sw: sw, done: make(chan struct{}), tw: tryWriterFor(dst), activity: activity}
	if p.tw != nil {
		fw.mu.Lock()
		sw.pipe = p
		fw.mu.Unlock()
	}
	// Park at once if nothing is buffered yet: a zero-length Read with a
	// deadline in the past returns ErrTimeout then, and nil for data or
	// an error for the stream's end.
	seq := fw.seq(sw)
	if p.poll() == errNothingYet {
		if parked, _ := fw.park(sw, seq, p.start, nil); parked {
			return p
		}
	}
	p.start()
	return p
}

var errNothingYet = errors.New("nothing buffered")

// poll reports without waiting whether the stream has data buffered (nil),
// has ended (io.EOF or the error), or neither (errNothingYet). Frames of
// the stream processed before it was watched are not counted, and one of
// them may have been its FIN: until a poll has said neither, the pipe may
// not park on the count alone.
func (p *streamPipe) poll() error {
	p.st.SetReadDeadline(aLongTimeAgo)
	_, err := p.st.Read(nil)
	p.st.SetReadDeadline(time.Time{})
	if errors.Is(err, yamux.ErrTimeout) {
		p.checked = true
		return errNothingYet
	}
	return err
}

// takeOver is called by the splice's goroutine once its own direction has
// ended: it has nothing else to do, so the stream direction blocks in Read
// from now on, as a plain pipe does, and it waits for that direction to
// end. A blocked Read also ends when yamux gives up on a half-closed
// stream (StreamCloseTimeout), which sends no frame that would wake a
// parked pipe.
func (p *streamPipe) takeOver() {
	p.fw.mu.Lock()
	p.sw.noPark = true
	wake := p.sw.wake
	p.sw.wake = nil
	p.fw.mu.Unlock()
	if wake != nil {
		p.run() // it was parked: run it here, blocking
	}
	<-p.done
}

// aLongTimeAgo is a read deadline that makes a yamux Read return at once.
var aLongTimeAgo = time.Unix(1, 0)

// pipeStarts counts the goroutines started for parked pipes, and
// deliverPartial the deliveries that left bytes for the pipe's goroutine
// (tests read them to see deliver at work).
var pipeStarts, deliverPartial atomic.Int64

// start begins copying on a new goroutine.
func (p *streamPipe) start() {
	pipeStarts.Add(1)
	go p.run()
}

// deliver runs on the session's receive loop, in place of waking the
// parked pipe, once a data frame of its stream has been processed. Waking
// costs a new goroutine, and on a machine with an idle CPU, a thread
// woken there: a good part of the round trip of a small message. So
// deliver copies what the stream has buffered to dst itself, if dst takes
// it all without waiting, and parks the pipe again. The receive loop must
// never block (every stream of the session would wait), so it reads with
// ReadNoWait and writes with tryWrite, and wakes the pipe for anything
// else: bytes dst did not take (pending, which the pipe writes first), a
// full scratch buffer (a bulk run), an error, or a stream that is not
// established yet. Like run, it owns the pipe: the wake was taken.
func (p *streamPipe) deliver(scratch []byte) {
	seq := p.fw.seq(p.sw)
	n, err := p.st.ReadNoWait(scratch)
	if n == 0 {
		p.start()
		return
	}
	p.activity()
	w := p.tw.tryWrite(scratch[:n])
	p.n += int64(w)
	if w < n {
		deliverPartial.Add(1)
		p.pending = append([]byte(nil), scratch[w:n]...)
		p.start()
		return
	}
	if err != nil || n == len(scratch) {
		p.start()
		return
	}
	p.st.Shrink()
	if parked, _ := p.fw.park(p.sw, seq, p.start, nil); !parked {
		p.start()
	}
}

func (p *streamPipe) run() {
	var buf *[]byte
	defer func() {
		if buf != nil {
			putBuf(buf)
		}
	}()
	var copied int64 // in this run
	if len(p.pending) > 0 {
		nw, werr := p.dst.Write(p.pending)
		p.n += int64(nw)
		p.pending = nil
		if werr != nil {
			p.finish(werr)
			return
		}
	}
	for {
		seq := p.fw.seq(p.sw)
		if buf == nil {
			// Wait without a buffer: a zero-length Read returns once
			// data is buffered (at once, normally: the pipe runs when a
			// frame of the stream has been processed) or the stream ends.
			if _, err := p.st.Read(nil); err != nil {
				p.finish(endErr(err))
				return
			}
			buf = getBuf(p.big)
		}
		n, err := p.st.Read(*buf)
		if n > 0 {
			p.activity()
			nw, werr := p.dst.Write((*buf)[:n])
			p.n += int64(nw)
			copied += int64(nw)
			if werr == nil && nw != n {
				werr = io.ErrShortWrite
			}
			if werr != nil {
				p.finish(werr)
				return
			}
		}
		if err != nil {
			p.finish(endErr(err))
			return
		}
		if n == len(*buf) {
			if grow(*buf, n) {
				p.big = true // a bulk transfer: read more at once
				putBuf(buf)
				buf = nil
			}
			continue // there may be more
		}
		// The stream's buffer is drained. Park without a buffer or a
		// goroutine, unless a frame of the stream was processed since
		// seq was read: then it may have brought data this Read did not
		// see, and the loop reads again.
		putBuf(buf)
		buf = nil
		if !p.checked {
			if err := p.poll(); err != errNothingYet {
				if err != nil {
					p.finish(endErr(err))
					return
				}
				continue // more data came meanwhile
			}
		}
		var shrink func()
		if copied < shrinkBelow {
			// Little came: the stream is interactive or idle. Let yamux
			// drop its receive buffer (it allocates one for the next
			// frame, of that frame's size). A bulk stream keeps its
			// buffer, so as not to reallocate it for every frame, until
			// it has stayed parked for a while (see sweep).
			p.st.Shrink()
		} else {
			shrink = p.st.Shrink
		}
		if parked, block := p.fw.park(p.sw, seq, p.start, shrink); parked {
			return
		} else if block {
			// Block until the stream ends.
			n, err := copyConn(p.dst, p.st, p.activity)
			p.n += n
			p.finish(err)
			return
		}
	}
}

// shrinkBelow is how little a run of a streamPipe copies for the stream to
// count as idle or interactive when it parks.
const shrinkBelow = 4 << 10

// endErr maps the end of a stream to nil, like copyConn.
func endErr(err error) error {
	if err == io.EOF {
		return nil
	}
	return err
}

// finish ends the direction like pipe: a clean end half-closes dst, an
// error closes both.
func (p *streamPipe) finish(err error) {
	p.fw.unwatch(p.st.StreamID())
	if err != nil {
		p.dst.Close()
		p.src.Close()
	} else {
		halfClose(p.dst)
	}
	close(p.done)
}
