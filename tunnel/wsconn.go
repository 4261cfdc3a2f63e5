package tunnel

import (
	"encoding/binary"
	"net"
)

// maxWSWrite is the largest WebSocket message this end writes: 64 KiB,
// the least every peer accepts (minReadLimit). Bigger messages mean fewer
// frames, TLS records and system calls per byte; a yamux data frame of
// spliceChunk bytes plus its header fills one message exactly.
const maxWSWrite = 64 << 10

// minReadLimit is the smallest read limit (MaxMessageSize) an end may use.
const minReadLimit = 64 << 10

// yamuxHeaderLen is the size of a yamux frame header.
const yamuxHeaderLen = 12

// msgConn adapts the net.Conn made by websocket.NetConn for yamux:
//
//   - writes are split into messages of at most maxWSWrite bytes, so a peer
//     with a bounded read limit never sees an oversized message from us;
//   - yamux writes a data frame as two calls (12-byte header, then body);
//     the header is held back and sent in the same message as its body,
//     halving the number of messages (and TLS records) on the wire.
//
// Only yamux's send loop writes, so Write needs no lock of its own.
type msgConn struct {
	net.Conn
	pending []byte // a held-back data frame header, or nil
	buf     []byte // reused to join header and body
}

func newMsgConn(c net.Conn) *msgConn {
	return &msgConn{Conn: c, buf: make([]byte, 0, yamuxHeaderLen+maxWSWrite)}
}

func (c *msgConn) Write(p []byte) (int, error) {
	if c.pending == nil && isDataHeader(p) {
		c.pending = append(c.buf[:0], p...)
		return len(p), nil
	}
	n := len(p)
	if c.pending != nil {
		first := min(len(p), maxWSWrite-yamuxHeaderLen)
		msg := append(c.pending, p[:first]...)
		c.pending = nil
		if _, err := c.Conn.Write(msg); err != nil {
			return 0, err
		}
		p = p[first:]
	}
	for len(p) > 0 {
		chunk := p[:min(len(p), maxWSWrite)]
		if _, err := c.Conn.Write(chunk); err != nil {
			return n - len(p), err
		}
		p = p[len(chunk):]
	}
	return n, nil
}

// isDataHeader reports whether p is exactly a yamux data frame header
// announcing a non-empty body (version 0, type 0, length > 0).
func isDataHeader(p []byte) bool {
	return len(p) == yamuxHeaderLen && p[0] == 0 && p[1] == 0 &&
		binary.BigEndian.Uint32(p[8:12]) > 0
}
