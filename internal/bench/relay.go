package bench

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"
)

// tlsScheme marks the side of a relay pair that speaks mutual TLS.
const tlsScheme = "tls://"

// relayHandshakeTimeout bounds each TLS handshake of a relay.
const relayHandshakeTimeout = 10 * time.Second

// Relay is a reference the tunnel is compared with besides direct TCP: a
// relay as small as a user-space proxy gets (one connection dialled per
// client, two goroutines copying with io.Copy, half-close passed on). It
// serves until ctx is done, and writes a line to logw for each connection
// it could not relay. args are flags, then pairs:
//
//	[-tls-cert FILE -tls-key FILE -tls-ca FILE] [tls://]LISTEN=[tls://]TARGET...
//
// A plain pair (LISTEN=TARGET) relays TCP to TCP; between two TCP
// connections io.Copy splices, so the bytes never reach user space. Two
// such relays chained (client -> relay -> relay -> server) have the
// process and socket layout of a 1+1 tunnel, without TLS, WebSocket or
// yamux: the floor for any design with two forwarding processes on this
// machine.
//
// "tls://" before LISTEN makes that side a mutual TLS 1.3 server, before
// TARGET a mutual TLS 1.3 client (one TLS connection per client
// connection; its host is the name checked against the server's
// certificate). Both sides present the -tls-cert/-tls-key pair and accept
// only a peer whose certificate chains to -tls-ca, with the standard
// checks of crypto/tls (server: clientAuth; client: serverAuth and the
// host name). A TLS listener completes its handshake before it dials the
// target, a TLS dialler before it forwards a byte, and the half-close is
// passed on as a TLS close_notify (tls.Conn.CloseWrite). Two relays chained with
// "relay1: L1=tls://L2" and "relay2: tls://L2=SERVER" are the plainest
// design that encrypts between two forwarding processes in user space
// (see the package documentation, References, for what that bounds).
func Relay(ctx context.Context, args []string, logw io.Writer) error {
	routes, err := parseRelayArgs(args)
	if err != nil {
		return err
	}
	var lns []net.Listener
	for _, r := range routes {
		ln, err := net.Listen("tcp", r.listen)
		if err != nil {
			closeListeners(lns)
			return fmt.Errorf("relay: %w", err)
		}
		lns = append(lns, ln)
	}
	if logw == nil {
		logw = io.Discard
	}
	log := &lockedWriter{w: logw}
	var wg sync.WaitGroup
	for i, ln := range lns {
		wg.Go(func() { routes[i].serve(ctx, ln, log) })
	}
	<-ctx.Done()
	closeListeners(lns)
	wg.Wait()
	return nil
}

func closeListeners(lns []net.Listener) {
	for _, ln := range lns {
		ln.Close()
	}
}

// relayPair is one [tls://]LISTEN=[tls://]TARGET argument of a relay.
type relayPair struct {
	listen, target       string
	tlsListen, tlsTarget bool
}

// relayRoute is a pair ready to serve.
type relayRoute struct {
	listen, target string
	serverTLS      *tls.Config // accept mutual TLS on listen; nil: plain TCP
	clientTLS      *tls.Config // dial target with mutual TLS; nil: plain TCP
	copyBuf        int         // > 0: copy through user space with buffers this big (no splice)
}

// parseRelayArgs reads Relay's flags and pairs, and loads the TLS files
// if a pair needs them.
func parseRelayArgs(args []string) ([]relayRoute, error) {
	fs := flag.NewFlagSet("relay", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cert := fs.String("tls-cert", "", "certificate (PEM) a tls:// side presents")
	key := fs.String("tls-key", "", "its private key (PEM)")
	ca := fs.String("tls-ca", "", "CA certificate (PEM) the peer's certificate must chain to")
	copyBuf := fs.Int("copy-buffer", 0, "copy every byte through user space with buffers of this many bytes, never splicing (0: io.Copy, which splices between TCP connections)")
	if err := fs.Parse(args); err != nil {
		return nil, fmt.Errorf("relay: %w (usage: relay [-tls-cert FILE -tls-key FILE -tls-ca FILE] [tls://]LISTEN=[tls://]TARGET...)", err)
	}
	if fs.NArg() == 0 {
		return nil, errors.New("relay: no pair; want [tls://]LISTEN=[tls://]TARGET...")
	}
	var pairs []relayPair
	needTLS := false
	for _, a := range fs.Args() {
		p, err := parsePair(a)
		if err != nil {
			return nil, err
		}
		needTLS = needTLS || p.tlsListen || p.tlsTarget
		pairs = append(pairs, p)
	}
	var m *relayTLS
	switch files := *cert != "" || *key != "" || *ca != ""; {
	case !needTLS && files:
		return nil, errors.New("relay: -tls-cert, -tls-key and -tls-ca are given but no pair has tls://")
	case needTLS && (*cert == "" || *key == "" || *ca == ""):
		return nil, errors.New("relay: a tls:// pair needs all of -tls-cert, -tls-key and -tls-ca")
	case needTLS:
		var err error
		if m, err = loadRelayTLS(*cert, *key, *ca); err != nil {
			return nil, err
		}
	}
	if *copyBuf < 0 || *copyBuf > 64<<20 {
		return nil, fmt.Errorf("relay: -copy-buffer %d: want 0 to 64 MiB", *copyBuf)
	}
	routes := make([]relayRoute, len(pairs))
	for i, p := range pairs {
		routes[i] = m.route(p)
		routes[i].copyBuf = *copyBuf
	}
	return routes, nil
}

// parsePair parses "[tls://]LISTEN=[tls://]TARGET".
func parsePair(a string) (relayPair, error) {
	var p relayPair
	l, t, ok := strings.Cut(a, "=")
	if !ok {
		return p, fmt.Errorf("relay: want [tls://]LISTEN=[tls://]TARGET, got %q", a)
	}
	var err error
	if p.listen, p.tlsListen, err = parseRelayAddr(l); err != nil {
		return p, fmt.Errorf("relay: %q: LISTEN: %w", a, err)
	}
	if p.target, p.tlsTarget, err = parseRelayAddr(t); err != nil {
		return p, fmt.Errorf("relay: %q: TARGET: %w", a, err)
	}
	return p, nil
}

// parseRelayAddr parses "[tls://]HOST:PORT".
func parseRelayAddr(s string) (addr string, isTLS bool, err error) {
	addr, isTLS = strings.CutPrefix(s, tlsScheme)
	if scheme, _, ok := strings.Cut(addr, "://"); ok {
		return "", false, fmt.Errorf("unknown scheme %q in %q (only tls:// is known)", scheme, s)
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return "", false, fmt.Errorf("want HOST:PORT: %w", err)
	}
	return addr, isTLS, nil
}

// relayTLS is the key pair and CA pool of a TLS relay.
type relayTLS struct {
	cert tls.Certificate
	pool *x509.CertPool
}

func loadRelayTLS(certFile, keyFile, caFile string) (*relayTLS, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("relay: -tls-cert/-tls-key: %w", err)
	}
	b, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("relay: -tls-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("relay: -tls-ca: no PEM certificate in %s", caFile)
	}
	return &relayTLS{cert: cert, pool: pool}, nil
}

// route makes p ready to serve; m may be nil when p has no TLS side.
func (m *relayTLS) route(p relayPair) relayRoute {
	r := relayRoute{listen: p.listen, target: p.target}
	if p.tlsListen {
		r.serverTLS = m.server()
	}
	if p.tlsTarget {
		host, _, _ := net.SplitHostPort(p.target)
		r.clientTLS = m.client(host)
	}
	return r
}

// server requires a client certificate that chains to the CA.
func (m *relayTLS) server() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{m.cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    m.pool,
	}
}

// client checks that the server's certificate chains to the CA and names
// host.
func (m *relayTLS) client(host string) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{m.cert},
		RootCAs:      m.pool,
		ServerName:   host,
	}
}

// serve accepts on ln and relays each connection until ln is closed; it
// returns once every connection has ended.
func (r relayRoute) serve(ctx context.Context, ln net.Listener, log io.Writer) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		wg.Go(func() {
			defer c.Close()
			if err := r.relay(ctx, c); err != nil {
				fmt.Fprintf(log, "relay %s -> %s: %v\n", r.listen, r.target, err)
			}
		})
	}
}

// relay completes the TLS handshake of c if its side is TLS, dials the
// target (with its handshake) and copies both ways until both directions
// have ended.
func (r relayRoute) relay(ctx context.Context, c net.Conn) error {
	if r.serverTLS != nil {
		tc := tls.Server(c, r.serverTLS)
		if err := handshake(ctx, tc); err != nil {
			return fmt.Errorf("refused %s: %w", c.RemoteAddr(), err)
		}
		c = tc
	}
	t, err := r.dial(ctx)
	if err != nil {
		return err
	}
	defer t.Close()
	pipe(ctx, c, t, r.copyBuf)
	return nil
}

func (r relayRoute) dial(ctx context.Context) (net.Conn, error) {
	t, err := (&net.Dialer{}).DialContext(ctx, "tcp", r.target)
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	if r.clientTLS == nil {
		return t, nil
	}
	tc := tls.Client(t, r.clientTLS)
	if err := handshake(ctx, tc); err != nil {
		t.Close()
		return nil, fmt.Errorf("refused %s: %w", r.target, err)
	}
	return tc, nil
}

func handshake(ctx context.Context, c *tls.Conn) error {
	ctx, cancel := context.WithTimeout(ctx, relayHandshakeTimeout)
	defer cancel()
	if err := c.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	return nil
}

// pipe copies a to b and b to a, each direction half-closing its
// destination (TCP FIN, or TLS close_notify) when its source ends, and
// returns when both have ended or ctx is done. With copyBuf > 0 every
// byte goes through a user-space buffer of that size.
func pipe(ctx context.Context, a, b net.Conn, copyBuf int) {
	stop := context.AfterFunc(ctx, func() { a.Close(); b.Close() })
	defer stop()
	cp := func(dst, src net.Conn) {
		if copyBuf > 0 {
			// Hide ReadFrom and WriteTo, which would splice.
			io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, make([]byte, copyBuf))
		} else {
			io.Copy(dst, src)
		}
		closeWrite(dst)
	}
	var wg sync.WaitGroup
	wg.Go(func() { cp(b, a) })
	cp(a, b)
	wg.Wait()
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

// lockedWriter serializes the lines of a relay's connections.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
