//go:build unix

package tunnel

import (
	"io"
	"net"
	"os"
	"syscall"
)

// fdSource reads a TCP connection through its raw descriptor: each read
// takes a pooled buffer, and a read that finds no data (EAGAIN) gives the
// buffer back before the goroutine parks in the poller. Net effect: the
// same read system calls as net.Conn.Read, without holding a buffer while
// the connection is idle. Deadlines and Close work as with Read.
type fdSource struct{ rc syscall.RawConn }

func rawSource(c *net.TCPConn) source {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	return fdSource{rc}
}

func (s fdSource) read(buf **[]byte, big bool) (int, error) {
	var n int
	var rerr error
	err := s.rc.Read(func(fd uintptr) bool {
		if *buf == nil {
			*buf = getBuf(big)
		}
		for {
			n, rerr = syscall.Read(int(fd), **buf)
			if rerr != syscall.EINTR {
				break
			}
		}
		if rerr == syscall.EAGAIN {
			putBuf(*buf)
			*buf = nil
			return false // wait until readable, then call again
		}
		return true
	})
	switch {
	case err != nil:
		return 0, err
	case rerr != nil:
		return 0, os.NewSyscallError("read", rerr)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// releaseWhenDrained is false: read itself gives the buffer back when it
// has to wait, at no extra system call.
func (fdSource) releaseWhenDrained() bool { return false }

// tryWriter writes to a TCP connection without waiting: as much as its
// send buffer takes at once.
type tryWriter struct{ rc syscall.RawConn }

// tryWriterFor returns a tryWriter for c, or nil if c is not a TCP
// connection.
func tryWriterFor(c net.Conn) *tryWriter {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	return &tryWriter{rc}
}

// tryWrite writes what the connection takes of b now and reports how much
// that was. It reports 0 on any error: the caller leaves the rest to a
// blocking Write, which reports the error.
func (w *tryWriter) tryWrite(b []byte) int {
	var n int
	var werr error
	err := w.rc.Write(func(fd uintptr) bool {
		for {
			n, werr = syscall.Write(int(fd), b)
			if werr != syscall.EINTR {
				return true // written or not, never wait
			}
		}
	})
	if err != nil || werr != nil || n < 0 {
		return 0
	}
	return n
}

// ReadNow reads into b what c has already received, without waiting. It
// returns 0 when nothing has arrived yet, and also at the end of the
// stream or on an error, which the next Read reports again. Only TCP
// connections are read; for any other it returns 0.
func ReadNow(c net.Conn, b []byte) int {
	tc, ok := c.(*net.TCPConn)
	if !ok || len(b) == 0 {
		return 0
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return 0
	}
	var n int
	var rerr error
	err = rc.Read(func(fd uintptr) bool {
		for {
			n, rerr = syscall.Read(int(fd), b)
			if rerr != syscall.EINTR {
				return true // read or not, never wait
			}
		}
	})
	if err != nil || rerr != nil || n < 0 {
		return 0
	}
	return n
}

// canReadNow: ReadNow reads ahead here.
const canReadNow = true
