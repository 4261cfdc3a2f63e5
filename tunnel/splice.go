package tunnel

import (
	"io"
	"net"
	"sync"

	"github.com/hashicorp/yamux"
)

// closeWriter is a connection that can shut down its write side alone.
// *net.TCPConn does; a yamux stream's Close is a half-close (it sends FIN
// and keeps reading), which [halfClose] relies on.
type closeWriter interface{ CloseWrite() error }

func halfClose(c net.Conn) {
	if cw, ok := c.(closeWriter); ok {
		cw.CloseWrite()
		return
	}
	c.Close()
}

// spliceChunk is the most a pipe reads at once: one yamux data frame of
// this size plus its header is exactly four WebSocket messages of
// maxWSWrite bytes (see wsConn), sixteen full TLS records, which leave in
// one write.
const spliceChunk = 4*maxWSWrite - yamuxHeaderLen

// smallChunk is what a pipe reads at once until a read fills it: one
// message. Interactive connections never need more, and a burst of new
// connections does not take spliceChunk each.
const smallChunk = maxWSWrite - yamuxHeaderLen

// smallBufs and bigBufs hold the copy buffers of every pipe. A pipe holds
// one only while bytes flow: an idle forwarded connection waits for input
// without a buffer (see pipe), and its stream side without a goroutine
// either (see streamPipe), which keeps a held connection cheap. A pipe
// starts with a small buffer and moves to a big one for good once a read
// fills the small one (bulk transfer).
var (
	smallBufs = sync.Pool{New: func() any { b := make([]byte, smallChunk); return &b }}
	bigBufs   = sync.Pool{New: func() any { b := make([]byte, spliceChunk); return &b }}
)

// getBuf takes a copy buffer: a big one for a pipe that has filled a small
// one.
func getBuf(big bool) *[]byte {
	if big {
		return bigBufs.Get().(*[]byte)
	}
	return smallBufs.Get().(*[]byte)
}

// putBuf gives a buffer from getBuf back.
func putBuf(b *[]byte) {
	if cap(*b) >= spliceChunk {
		bigBufs.Put(b)
	} else {
		smallBufs.Put(b)
	}
}

// grow reports whether a pipe reading into buf should move to big buffers
// after a read of n bytes: the read filled a small buffer.
func grow(buf []byte, n int) bool { return n == len(buf) && len(buf) < spliceChunk }

// Splice copies bytes both ways between a and b until both directions have
// ended, preserving half-close: when one side stops sending, the other
// side's write half is shut down and the opposite direction keeps flowing.
// It closes both connections before it returns, and reports the bytes
// copied from a to b and from b to a.
//
// The direction that reads a tunnel stream does not keep a goroutine while
// the stream is idle (see streamPipe); the other direction runs on the
// caller's goroutine.
func Splice(a, b net.Conn) (aToB, bToA int64) { return SpliceActivity(a, b, nil) }

// SpliceActivity is Splice that also calls activity (if not nil) after
// every read that brought bytes, in either direction: the clock of an idle
// timeout. Wrapping a or b in a connection type of one's own for that
// would hide the TCP connection and the yamux stream from the splice,
// which then could neither park an idle stream side nor release its
// buffers while waiting.
func SpliceActivity(a, b net.Conn, activity func()) (aToB, bToA int64) {
	if activity == nil {
		activity = func() {}
	}
	if p := parkedPipe(a, b, activity); p != nil {
		bToA = pipe(a, b, activity)
		p.takeOver()
		aToB = p.n
	} else if p := parkedPipe(b, a, activity); p != nil {
		aToB = pipe(b, a, activity)
		p.takeOver()
		bToA = p.n
	} else {
		done := make(chan int64, 1)
		go func() { done <- pipe(b, a, activity) }()
		bToA = pipe(a, b, activity)
		aToB = <-done
	}
	a.Close()
	b.Close()
	return aToB, bToA
}

// pipe copies src to dst, then half-closes dst. On a copy error (rather
// than a clean end of input) it closes both, so the other direction ends
// too instead of waiting forever.
func pipe(dst, src net.Conn, activity func()) int64 {
	n, err := copyConn(dst, src, activity)
	if err != nil {
		dst.Close()
		src.Close()
		return n
	}
	halfClose(dst)
	return n
}

// source reads from one side of a pipe into a pooled buffer. read returns
// the bytes in (*buf)[:n]; it takes a buffer (getBuf(big)) when *buf is nil
// and may return the buffer to the pool (leaving *buf nil) while it waits
// for input. release reports whether the caller should return the buffer
// after a read that did not fill it (the source was drained).
type source interface {
	read(buf **[]byte, big bool) (int, error)
	releaseWhenDrained() bool
}

// copyConn copies src to dst until src ends (nil error) or fails, calling
// activity after each read that brought bytes.
func copyConn(dst io.Writer, src net.Conn, activity func()) (written int64, err error) {
	s := sourceFor(src)
	var buf *[]byte
	big := false
	defer func() {
		if buf != nil {
			putBuf(buf)
		}
	}()
	for {
		n, rerr := s.read(&buf, big)
		if n > 0 {
			activity()
			nw, werr := dst.Write((*buf)[:n])
			written += int64(nw)
			if werr != nil {
				return written, werr
			}
			if nw != n {
				return written, io.ErrShortWrite
			}
			if grow(*buf, n) {
				big = true
				putBuf(buf)
				buf = nil
			} else if n < len(*buf) && s.releaseWhenDrained() {
				putBuf(buf)
				buf = nil
			}
		}
		if rerr == io.EOF {
			return written, nil
		}
		if rerr != nil {
			return written, rerr
		}
	}
}

func sourceFor(c net.Conn) source {
	if in, ok := c.(*Inbound); ok {
		c = in.Conn
	}
	switch c := c.(type) {
	case *yamux.Stream:
		return streamSource{c}
	case *net.TCPConn:
		if s := rawSource(c); s != nil {
			return s
		}
	}
	return plainSource{c}
}

// streamSource reads a yamux stream. A zero-length Read of a yamux stream
// blocks until data is buffered (or the stream ends) and consumes nothing,
// so the pipe waits without holding a buffer (TestStreamZeroRead pins this
// behaviour of the yamux in go.mod: our fork, third_party/yamux).
type streamSource struct{ st *yamux.Stream }

func (s streamSource) read(buf **[]byte, big bool) (int, error) {
	if *buf == nil {
		if _, err := s.st.Read(nil); err != nil {
			return 0, err
		}
		*buf = getBuf(big)
	}
	return s.st.Read(**buf)
}

func (streamSource) releaseWhenDrained() bool { return true }

// plainSource is any other connection: it holds its buffer while it waits.
type plainSource struct{ r io.Reader }

func (s plainSource) read(buf **[]byte, big bool) (int, error) {
	if *buf == nil {
		*buf = getBuf(big)
	}
	return s.r.Read(**buf)
}

func (plainSource) releaseWhenDrained() bool { return false }
