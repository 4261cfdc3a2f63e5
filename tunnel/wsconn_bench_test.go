package tunnel

import (
	"net"
	"testing"
)

// discardConn is a net.Conn that throws away what is written.
type discardConn struct{ net.Conn }

func (discardConn) Write(p []byte) (int, error) { return len(p), nil }

// BenchmarkWSConnWrite is the framing cost of one yamux data frame of
// spliceChunk bytes (header, then body, as yamux writes it), without the
// TLS and system call costs underneath.
func BenchmarkWSConnWrite(b *testing.B) {
	for _, side := range []struct {
		name   string
		client bool
	}{{"acceptor", false}, {"dialler", true}} {
		b.Run(side.name, func(b *testing.B) {
			c := newWSConn(discardConn{}, nil, side.client, minReadLimit)
			hdr := []byte{0, 0, 0, 0, 0, 0, 0, 1, 0, 0x03, 0xff, 0xd4} // length spliceChunk
			body := make([]byte, spliceChunk)
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				c.Write(hdr)
				c.Write(body)
			}
		})
	}
}
