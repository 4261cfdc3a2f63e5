package tunnel

import (
	"crypto/tls"
	"net"
	"sync"
)

// crypto/tls writes each record (at most 16 KiB of plaintext) with a
// write of its own, so a 256 KiB yamux frame (four WebSocket messages)
// would cost sixteen system calls. A corkConn sits under the TLS
// connection and, while wsConn writes one yamux frame, gathers the records
// so that the frame (up to corkMessages messages of it) leaves in one
// write.
// Outside a message (handshake, alerts, key updates) writes pass straight
// through.

// corkConn is a net.Conn whose writes can be held and sent together.
type corkConn struct {
	net.Conn
	mu     sync.Mutex
	corked bool
	buf    []byte
}

// Write sends p, or holds it while corked.
func (c *corkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.corked {
		c.buf = append(c.buf, p...)
		return len(p), nil
	}
	return c.Conn.Write(p)
}

// cork holds writes until uncork.
func (c *corkConn) cork() {
	c.mu.Lock()
	c.corked = true
	c.mu.Unlock()
}

// uncork sends what was held in one write.
func (c *corkConn) uncork() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = false
	if len(c.buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.buf)
	if cap(c.buf) > 512<<10 {
		c.buf = nil // a rare big message does not pin its buffer
	} else {
		c.buf = c.buf[:0]
	}
	return err
}

// corkOf is the corkConn under a TLS connection, if there is one.
func corkOf(conn net.Conn) *corkConn {
	if tc, ok := conn.(*tls.Conn); ok {
		if cc, ok := tc.NetConn().(*corkConn); ok {
			return cc
		}
	}
	return nil
}

// CorkListener wraps the listener a tunnel server serves TLS on, so that
// each yamux frame it sends leaves in one write (see corkConn).
// Connections it accepts work as before without it.
func CorkListener(ln net.Listener) net.Listener { return corkListener{ln} }

type corkListener struct{ net.Listener }

func (l corkListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &corkConn{Conn: c}, nil
}
