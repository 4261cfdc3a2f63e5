//go:build !unix

package tunnel

import "net"

func rawSource(c *net.TCPConn) source { return nil }

// tryWriter is only built on unix; elsewhere parked pipes are always woken.
type tryWriter struct{}

func tryWriterFor(c net.Conn) *tryWriter { return nil }

func (w *tryWriter) tryWrite(b []byte) int { return 0 }

// ReadNow is only built on unix; elsewhere it never reads ahead.
func ReadNow(c net.Conn, b []byte) int { return 0 }

// canReadNow: ReadNow never reads ahead here.
const canReadNow = false
