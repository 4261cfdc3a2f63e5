package tunnel

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/hashicorp/yamux"
)

// DefaultPath is the HTTP path tunnels are served on.
const DefaultPath = "/sitebridge"

// Server accepts tunnels on an HTTP(S) server the caller runs. Set
// OnSession before serving.
type Server struct {
	Config Config
	// Insecure allows plaintext (ws://) tunnels without client
	// certificates. Only for explicit insecure deployments.
	Insecure bool
	// OnSession receives each established session and owns it: it should
	// serve it and return when the session is done. The HTTP handler
	// returns when OnSession returns.
	OnSession func(*Session)
}

// ServeHTTP upgrades a request to a tunnel.
func (srv *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	cfg := srv.Config.withDefaults()
	log := cfg.Log.With("remote", r.RemoteAddr)
	var peerCerts []*x509.Certificate
	switch {
	case r.TLS != nil && len(r.TLS.PeerCertificates) > 0:
		peerCerts = r.TLS.PeerCertificates
	case !srv.Insecure:
		log.Warn("tunnel refused", "reason", "no client certificate")
		http.Error(w, "client certificate required", http.StatusUnauthorized)
		return
	}
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		log.Warn("tunnel refused", "reason", "websocket upgrade failed", "err", err)
		return
	}
	sess, err := newSession(ws, cfg, false, peerCerts, r.RemoteAddr)
	if err != nil {
		log.Warn("tunnel refused", "err", err)
		return
	}
	log.Debug("tunnel established", "peer", sess.remote.Instance, "site", sess.remote.Site)
	srv.OnSession(sess)
}

// Dial opens a tunnel to rawURL (wss://host:port/path) and runs the hello
// exchange. tlsConf must authenticate the server and present our client
// certificate; nil is allowed only for ws:// URLs (insecure mode).
func Dial(ctx context.Context, rawURL string, tlsConf *tls.Config, cfg Config) (*Session, error) {
	cfg = cfg.withDefaults()
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("tunnel url: %w", err)
	}
	switch {
	case u.Scheme == "wss" && tlsConf != nil:
	case u.Scheme == "ws" && tlsConf == nil:
	default:
		return nil, fmt.Errorf("tunnel url %q: scheme %q does not match the TLS setting", rawURL, u.Scheme)
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.HelloTimeout+cfg.HelloTimeout)
	defer cancel()
	transport := &http.Transport{
		TLSClientConfig:     tlsConf,
		DialContext:         (&net.Dialer{Timeout: cfg.HelloTimeout}).DialContext,
		TLSHandshakeTimeout: cfg.HelloTimeout,
		ForceAttemptHTTP2:   false,
	}
	defer transport.CloseIdleConnections()
	ws, resp, err := websocket.Dial(ctx, rawURL, &websocket.DialOptions{
		HTTPClient:      &http.Client{Transport: transport},
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("tunnel dial %s: %s: %w", rawURL, resp.Status, err)
		}
		return nil, fmt.Errorf("tunnel dial %s: %w", rawURL, err)
	}
	var peerCerts []*x509.Certificate
	if resp.TLS != nil {
		peerCerts = resp.TLS.PeerCertificates
	}
	if tlsConf != nil && len(peerCerts) == 0 {
		ws.CloseNow()
		return nil, errors.New("tunnel dial: server presented no certificate")
	}
	sess, err := newSession(ws, cfg, true, peerCerts, u.Host)
	if err != nil {
		return nil, fmt.Errorf("tunnel %s: %w", rawURL, err)
	}
	return sess, nil
}

// newSession wraps an upgraded WebSocket in yamux and runs the hello.
func newSession(ws *websocket.Conn, cfg Config, dialer bool, peerCerts []*x509.Certificate, addr string) (*Session, error) {
	ctx, cancel := context.WithCancel(context.Background())
	nc := websocket.NetConn(ctx, ws, websocket.MessageBinary)
	ws.SetReadLimit(cfg.MaxMessageSize)
	conn := &closeNowConn{msgConn: newMsgConn(nc), ws: ws, cancel: cancel}
	var mux *yamux.Session
	var err error
	if dialer {
		mux, err = yamux.Client(conn, cfg.muxConfig())
	} else {
		mux, err = yamux.Server(conn, cfg.muxConfig())
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("yamux: %w", err)
	}
	sess, err := handshake(mux, cfg, dialer, peerCerts, addr)
	if err != nil {
		// Give an error frame a moment to leave before the close.
		time.AfterFunc(100*time.Millisecond, func() { mux.Close() })
		return nil, err
	}
	sess.conn = conn
	return sess, nil
}

// closeNowConn closes the WebSocket at once, without waiting for the
// peer's close frame: a dead peer must not hold up failover.
type closeNowConn struct {
	*msgConn
	ws      *websocket.Conn
	cancel  context.CancelFunc
	readErr atomic.Pointer[error] // the first read error: why the session really ended
}

func (c *closeNowConn) Read(p []byte) (int, error) {
	n, err := c.msgConn.Read(p)
	if err != nil {
		c.readErr.CompareAndSwap(nil, &err)
	}
	return n, err
}

// cause adds the first read error to err when that error says more than
// the end of input (garbage from the peer shows there, while yamux reports
// whatever failed next, such as a keepalive write).
func (c *closeNowConn) cause(err error) error {
	if c == nil {
		return err
	}
	re := c.readErr.Load()
	if re == nil || errors.Is(*re, io.EOF) || errors.Is(*re, net.ErrClosed) || errors.Is(err, *re) {
		return err
	}
	return fmt.Errorf("%w (first read error: %w)", err, *re)
}

func (c *closeNowConn) Close() error {
	c.cancel()
	return c.ws.CloseNow()
}
