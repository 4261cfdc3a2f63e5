package tunnel

import (
	"bufio"
	"bytes"
	crand "crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// maxWSWrite is the largest WebSocket message this end writes. It is below
// 64 KiB, the least every peer accepts (minReadLimit), and chosen so that a
// message with its frame header is at most 65536 bytes: exactly four TLS
// records of 16 KiB, each written with one system call by crypto/tls. A
// message of up to 65535 bytes has a 4-byte frame header, plus the 4-byte
// masking key when the dialler sends it.
const maxWSWrite = 64<<10 - wsMaxHeader

// wsMaxHeader is the frame header of a message of maxWSWrite bytes sent by
// the dialler: 2 bytes, a 16-bit length and the masking key.
const wsMaxHeader = 2 + 2 + 4

// minReadLimit is the smallest read limit (MaxMessageSize) an end may use.
const minReadLimit = 64 << 10

// yamuxHeaderLen is the size of a yamux frame header.
const yamuxHeaderLen = 12

// WebSocket opcodes (RFC 6455 §5.2).
const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xA
)

// WebSocket close status codes (RFC 6455 §7.4.1).
const (
	closeNormal         = 1000
	closeGoingAway      = 1001
	closeProtocolError  = 1002
	closeUnsupported    = 1003
	closeNoStatus       = 1005 // never sent: an empty close payload
	closeMessageTooBig  = 1009
	maxControlFrameData = 125
)

// closeWriteTimeout bounds writing a close frame when this end gives up on
// a connection: the close is a courtesy, the connection ends either way.
const closeWriteTimeout = time.Second

// errTextMessage is the read error for a text message: a tunnel carries
// binary messages only (PROTOCOL.md §3.2).
var errTextMessage = errors.New("websocket: the peer sent a text message; a tunnel carries binary messages only (closed with 1003, unsupported data)")

// errCloseSent is the write error once this end has sent a close frame.
var errCloseSent = errors.New("websocket: connection closing (close frame sent)")

// wsConn is the WebSocket layer of a tunnel after the upgrade (RFC 6455
// framing over the TLS connection), as the byte stream yamux reads and
// writes. It reads frames itself rather than through a WebSocket library's
// message API:
//
//   - Read returns payload bytes of binary messages, unmasked, straight
//     from the TLS connection into the caller's buffer, whatever the
//     message boundaries (PROTOCOL.md §3.2); it answers pings, ends the
//     stream on a close frame with status 1000 or 1001, and refuses text
//     messages (1003), messages over the read limit (1009, as soon as a
//     frame header announces too much) and protocol errors (1002) by
//     sending the close frame and failing at once;
//   - Read never returns bytes past the end of the current yamux frame, so
//     that frameWatch knows when yamux has processed a frame (park.go);
//   - Write sends each call as unfragmented binary messages of at most
//     maxWSWrite bytes, up to corkMessages of them in one write of the
//     socket under TLS (the cork). yamux writes a data frame as two calls (its 12-byte header,
//     then the body); a data frame header is held back and sent in the
//     same message as its body. The TLS layer sees whole 16 KiB records
//     (see writeMessage), and a full frame of spliceChunk bytes leaves as
//     four messages in one write of the socket; a bigger frame leaves four
//     messages at a time.
//
// Only yamux's receive loop reads. yamux writes one frame at a time (its
// writers take turns on the session's writeSem, see third_party/yamux),
// a data frame as its header and then its body; control frames (pong,
// close) written by the reader share the write lock.
type wsConn struct {
	conn   net.Conn  // the TLS connection (plain TCP when insecure)
	r      io.Reader // conn, or a buffered reader over it
	client bool      // the dialler: masks its frames, expects unmasked ones
	limit  int64     // the largest message accepted from the peer

	// Read state (the reader goroutine only).
	left    int64   // payload bytes left in the current frame
	rkey    maskKey // of the current frame (frames from the dialler)
	maskPos int     // payload position of the next byte, for rkey
	masked  bool
	inMsg   bool  // a data message has begun and its final frame is not read yet
	msgLen  int64 // payload bytes of the current message so far
	hdr     [14]byte
	ctl     [maxControlFrameData]byte

	readErr atomic.Pointer[error] // the first read error: why the session really ended
	fw      *frameWatch           // follows the yamux frames read (see park.go)
	cork    *corkConn             // under the TLS connection, if any: one write per Write (cork.go)

	// Write state, under wmu.
	wmu       sync.Mutex
	pending   []byte // a held-back yamux data frame header (in pendBuf), or nil
	pendBuf   [yamuxHeaderLen]byte
	wbuf      []byte // one message with its frame header, reused
	wkey      maskKey
	rng       *rand.ChaCha8
	closeSent bool
}

// newWSConn wraps an upgraded connection. buffered holds bytes the
// handshake read past the HTTP exchange; they are the start of the frame
// stream.
func newWSConn(conn net.Conn, buffered []byte, client bool, limit int64) *wsConn {
	c := &wsConn{conn: conn, client: client, limit: max(limit, minReadLimit), fw: newFrameWatch(), cork: corkOf(conn)}
	var r io.Reader = conn
	if len(buffered) > 0 {
		r = io.MultiReader(bytes.NewReader(buffered), conn)
	}
	if _, ok := conn.(*tls.Conn); !ok {
		// A TLS connection reads a whole record at a time and serves
		// small reads (frame headers) from it; a plain one needs a buffer
		// so that a frame header is not a system call.
		r = bufio.NewReaderSize(r, 16<<10)
	}
	c.r = r
	if client {
		var seed [32]byte
		crand.Read(seed[:])
		c.rng = rand.NewChaCha8(seed)
	}
	return c
}

// Read reads payload bytes of binary messages: the yamux byte stream. It
// never returns bytes past the end of the current yamux frame (see
// frameWatch).
func (c *wsConn) Read(p []byte) (int, error) {
	// yamux reads again: the frames handed to it before are processed.
	c.fw.flush()
	if len(p) == 0 {
		return 0, nil
	}
	for c.left == 0 {
		if err := c.nextFrame(); err != nil {
			return 0, c.failRead(err)
		}
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	if room := c.fw.room(); room > 0 && int64(len(p)) > room {
		p = p[:room]
	}
	n, err := c.r.Read(p)
	if n > 0 {
		if c.masked {
			c.maskPos = c.rkey.xor(p[:n], p[:n], c.maskPos)
		}
		c.left -= int64(n)
		c.fw.track(p[:n])
	}
	if err != nil {
		if err == io.EOF {
			err = fmt.Errorf("websocket: connection ended inside a frame: %w", io.ErrUnexpectedEOF)
		}
		return n, c.failRead(err)
	}
	return n, nil
}

func (c *wsConn) failRead(err error) error {
	c.readErr.CompareAndSwap(nil, &err)
	c.fw.closeAll()
	return err
}

// nextFrame reads frame headers until one starts data of a binary message,
// handling control frames on the way. It returns io.EOF at the end of the
// stream (a connection that ends between frames, or a close frame with
// status 1000 or 1001).
func (c *wsConn) nextFrame() error {
	h := c.hdr[:2]
	if _, err := io.ReadFull(c.r, h); err != nil {
		if err == io.ErrUnexpectedEOF {
			err = fmt.Errorf("websocket: connection ended inside a frame header: %w", err)
		}
		return err
	}
	fin, rsv, op := h[0]&0x80 != 0, h[0]&0x70, h[0]&0x0f
	masked, length := h[1]&0x80 != 0, int64(h[1]&0x7f)
	if rsv != 0 {
		return c.protocolError(closeProtocolError, fmt.Sprintf("frame with unexpected rsv bits set (0x%02x): no extension was negotiated", rsv))
	}
	if masked == c.client {
		if c.client {
			return c.protocolError(closeProtocolError, "masked frame from the server")
		}
		return c.protocolError(closeProtocolError, "unmasked frame from the client")
	}
	ext := 0
	switch length {
	case 126:
		ext = 2
	case 127:
		ext = 8
	}
	rest := c.hdr[2 : 2+ext]
	if masked {
		rest = c.hdr[2 : 2+ext+4]
	}
	if _, err := io.ReadFull(c.r, rest); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			err = fmt.Errorf("websocket: connection ended inside a frame header: %w", io.ErrUnexpectedEOF)
		}
		return err
	}
	switch ext {
	case 2:
		length = int64(binary.BigEndian.Uint16(rest))
	case 8:
		u := binary.BigEndian.Uint64(rest)
		if u > 1<<63-1 {
			return c.protocolError(closeProtocolError, "frame length with the most significant bit set")
		}
		length = int64(u)
	}
	if masked {
		c.rkey.set([4]byte(rest[ext:]))
	}
	c.masked, c.maskPos = masked, 0

	if op >= opClose {
		return c.controlFrame(op, fin, length)
	}
	switch op {
	case opText:
		if !c.inMsg {
			c.sendClose(closeUnsupported, "sitebridge tunnels carry binary messages only")
			return errTextMessage
		}
		return c.protocolError(closeProtocolError, "new message before the previous one ended")
	case opBinary:
		if c.inMsg {
			return c.protocolError(closeProtocolError, "new message before the previous one ended")
		}
		c.msgLen = 0
	case opContinuation:
		if !c.inMsg {
			return c.protocolError(closeProtocolError, "continuation frame outside a message")
		}
	default:
		return c.protocolError(closeProtocolError, fmt.Sprintf("unknown opcode 0x%x", op))
	}
	c.inMsg = !fin
	if length > c.limit-c.msgLen {
		reason := fmt.Sprintf("read limited at %d bytes", c.limit)
		c.sendClose(closeMessageTooBig, reason)
		return fmt.Errorf("websocket: message too big (closed with 1009): %s", reason)
	}
	c.msgLen += length
	c.left = length
	return nil
}

// controlFrame reads and acts on a ping, pong or close frame.
func (c *wsConn) controlFrame(op byte, fin bool, length int64) error {
	if !fin || length > maxControlFrameData {
		return c.protocolError(closeProtocolError, "fragmented or oversized control frame")
	}
	b := c.ctl[:length]
	if _, err := io.ReadFull(c.r, b); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			err = fmt.Errorf("websocket: connection ended inside a control frame: %w", io.ErrUnexpectedEOF)
		}
		return err
	}
	if c.masked {
		c.rkey.xor(b, b, 0)
	}
	switch op {
	case opPing:
		c.wmu.Lock()
		defer c.wmu.Unlock()
		if c.closeSent {
			return nil
		}
		if _, err := c.conn.Write(c.appendFrame(nil, opPong, b)); err != nil {
			return err
		}
		return nil
	case opPong:
		return nil
	case opClose:
	default:
		return c.protocolError(closeProtocolError, fmt.Sprintf("unknown opcode 0x%x", op))
	}
	if len(b) == 1 {
		return c.protocolError(closeProtocolError, "close frame of 1 byte")
	}
	code := closeNoStatus
	var reason []byte
	if len(b) >= 2 {
		code, reason = int(binary.BigEndian.Uint16(b)), b[2:]
		if !validCloseCode(code) {
			return c.protocolError(closeProtocolError, fmt.Sprintf("invalid close status %d", code))
		}
		c.sendClose(code, "")
	} else {
		c.sendClose(0, "")
	}
	if code == closeNormal || code == closeGoingAway {
		return io.EOF
	}
	return fmt.Errorf("websocket: the peer closed the connection with status %d %q", code, reason)
}

// validCloseCode reports whether a close status may appear on the wire
// (RFC 6455 §7.4).
func validCloseCode(code int) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014, code >= 3000 && code <= 4999:
		return true
	}
	return false
}

// protocolError closes the connection with code and reason and returns the
// read error.
func (c *wsConn) protocolError(code int, reason string) error {
	c.sendClose(code, reason)
	return fmt.Errorf("websocket: %s (closed with %d)", reason, code)
}

// sendClose writes a close frame with code (none if 0) and reason, unless
// one was sent already. It waits at most closeWriteTimeout: a write stuck
// on a peer that does not read fails then, and the connection ends anyway.
func (c *wsConn) sendClose(code int, reason string) {
	c.conn.SetWriteDeadline(time.Now().Add(closeWriteTimeout))
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closeSent {
		return
	}
	c.closeSent = true
	var payload []byte
	if code != 0 {
		if len(reason) > maxControlFrameData-2 {
			reason = reason[:maxControlFrameData-2]
		}
		payload = binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(reason)), uint16(code))
		payload = append(payload, reason...)
	}
	c.conn.Write(c.appendFrame(nil, opClose, payload))
}

// appendFrame appends one unfragmented frame carrying payload.
func (c *wsConn) appendFrame(b []byte, op byte, payload []byte) []byte {
	b = c.appendHeader(b, op, len(payload))
	start := len(b)
	b = append(b, payload...)
	if c.client {
		c.wkey.set([4]byte(b[start-4 : start]))
		c.wkey.xor(b[start:], b[start:], 0)
	}
	return b
}

// appendHeader appends the header of an unfragmented frame of n payload
// bytes, with a fresh masking key if this end is the client.
func (c *wsConn) appendHeader(b []byte, op byte, n int) []byte {
	var maskBit byte
	if c.client {
		maskBit = 0x80
	}
	switch {
	case n <= 125:
		b = append(b, 0x80|op, maskBit|byte(n))
	case n <= 0xffff:
		b = append(b, 0x80|op, maskBit|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, 0x80|op, maskBit|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	if c.client {
		b = binary.LittleEndian.AppendUint32(b, uint32(c.rng.Uint64()))
	}
	return b
}

// Write sends p as binary messages (see wsConn).
func (c *wsConn) Write(p []byte) (n int, err error) {
	if c.pending == nil && isDataHeader(p) {
		// yamux writes one frame at a time, so pending needs no lock:
		// the body follows in the next call, from the same writer.
		c.pending = c.pendBuf[:copy(c.pendBuf[:], p)]
		return len(p), nil
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closeSent {
		c.pending = nil
		return 0, errCloseSent
	}
	if c.wbuf == nil {
		c.wbuf = make([]byte, 0, wsMaxHeader+maxWSWrite)
	}
	if c.cork != nil {
		c.cork.cork()
		defer func() {
			if uerr := c.cork.uncork(); err == nil {
				err = uerr
			}
		}()
	}
	n = len(p)
	for msgs := 1; ; msgs++ {
		take := min(len(p), maxWSWrite-len(c.pending))
		if err := c.writeMessage(c.pending, p[:take]); err != nil {
			c.pending = nil
			return n - len(p), err
		}
		c.pending = nil
		p = p[take:]
		if len(p) == 0 {
			return n, nil
		}
		if c.cork != nil && msgs%corkMessages == 0 {
			// A frame bigger than a pipe's (a store message) leaves in
			// pieces, so that the cork never holds more than this.
			if err := c.cork.uncork(); err != nil {
				return n - len(p), err
			}
			c.cork.cork()
		}
	}
}

// writeMessage writes one binary message made of head and body.
//
// The dialler masks its frames, so it builds the whole frame in wbuf
// (copying and masking in one pass) and writes it at once. The acceptor
// copies only the frame header, head and the start of body, up to one
// full TLS record, and writes the rest of body directly: crypto/tls cuts
// each write into records of 16 KiB, so the two writes make the same
// records as one, without copying the whole message.
func (c *wsConn) writeMessage(head, body []byte) (err error) {
	b := c.appendHeader(c.wbuf[:0], opBinary, len(head)+len(body))
	if c.client {
		c.wkey.set([4]byte(b[len(b)-4:]))
		start := len(b)
		b = b[:start+len(head)+len(body)]
		pos := c.wkey.xor(b[start:], head, 0)
		c.wkey.xor(b[start+len(head):], body, pos)
		_, err := c.conn.Write(b)
		return err
	}
	b = append(b, head...)
	first := min(len(body), max(tlsRecord-len(b), 0))
	b = append(b, body[:first]...)
	if _, err := c.conn.Write(b); err != nil {
		return err
	}
	if first < len(body) {
		if _, err := c.conn.Write(body[first:]); err != nil {
			return err
		}
	}
	return nil
}

// corkMessages is how many messages of one Write at most leave in one
// write of the socket: a full frame of a pipe (spliceChunk).
const corkMessages = 4

// tlsRecord is the most plaintext crypto/tls puts in one record.
const tlsRecord = 16 << 10

// Close closes the connection at once, without a close handshake: a dead
// peer must not hold up failover.
func (c *wsConn) Close() error {
	c.fw.closeAll()
	if c.cork != nil {
		// First the socket: a message stuck in the cork's write (a dead
		// peer with a full window) must not hold the TLS close up.
		c.cork.Conn.Close()
	}
	return c.conn.Close()
}

// cause adds the first read error to err when that error says more than
// the end of input (garbage from the peer shows there, while yamux reports
// whatever failed next, such as a keepalive write).
func (c *wsConn) cause(err error) error {
	if c == nil {
		return err
	}
	re := c.readErr.Load()
	if re == nil || errors.Is(*re, io.EOF) || errors.Is(*re, net.ErrClosed) || errors.Is(err, *re) {
		return err
	}
	return fmt.Errorf("%w (first read error: %w)", err, *re)
}

// isDataHeader reports whether p is exactly a yamux data frame header
// announcing a non-empty body (version 0, type 0, length > 0).
func isDataHeader(p []byte) bool {
	return len(p) == yamuxHeaderLen && p[0] == 0 && p[1] == 0 &&
		binary.BigEndian.Uint32(p[8:12]) > 0
}

// maskKey is a masking key repeated, so that masking is a few XORBytes
// calls (RFC 6455 §5.3): for a payload position pos, the key lines up with
// k[pos%4:].
type maskKey [maskSpan + 4]byte

const maskSpan = 1024

func (k *maskKey) set(key [4]byte) {
	copy(k[:4], key[:])
	for n := 4; n < len(k); n *= 2 {
		copy(k[n:], k[:n])
	}
}

// xor writes src masked to dst (dst may be src), starting at payload
// position pos, and returns the position after it. Masking twice unmasks.
func (k *maskKey) xor(dst, src []byte, pos int) int {
	pos &= 3
	kb := k[pos : pos+maskSpan]
	n := len(src)
	for len(src) > maskSpan {
		subtle.XORBytes(dst, src[:maskSpan], kb)
		dst, src = dst[maskSpan:], src[maskSpan:]
	}
	subtle.XORBytes(dst, src, kb)
	return (pos + n) & 3
}
