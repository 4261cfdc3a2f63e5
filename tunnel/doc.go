// Package tunnel carries sitebridge traffic between sites: a TLS 1.3
// connection with mutual authentication, upgraded to a WebSocket that
// carries binary messages, multiplexed with hashicorp/yamux.
//
// # Overview
//
// A connecting instance calls [Dial]; an accepting instance serves
// [Server.ServeHTTP] behind an HTTPS listener. Both end with a [Session]:
// the hello exchange on the control stream is done, and the remote
// instance's [Hello] is known. After that either end opens service streams
// with [Session.OpenService] and receives the other end's streams through
// [Session.Serve]. A stream header names a service, never an address; the
// receiving side decides where (and whether) to connect.
//
// The wire format is documented in PROTOCOL.md beside this file.
package tunnel
