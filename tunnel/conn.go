package tunnel

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

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
	conn, buffered, err := acceptUpgrade(w, r, cfg.HelloTimeout)
	if err != nil {
		log.Warn("tunnel refused", "reason", "websocket upgrade failed", "err", err)
		return
	}
	sess, err := newSession(newWSConn(conn, buffered, false, cfg.MaxMessageSize), cfg, false, peerCerts, r.RemoteAddr)
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
	conn, buffered, peerCerts, err := dialUpgrade(ctx, u, tlsConf, cfg.HelloTimeout)
	if err != nil {
		return nil, fmt.Errorf("tunnel dial %s: %w", rawURL, err)
	}
	if tlsConf != nil && len(peerCerts) == 0 {
		conn.Close()
		return nil, errors.New("tunnel dial: server presented no certificate")
	}
	sess, err := newSession(newWSConn(conn, buffered, true, cfg.MaxMessageSize), cfg, true, peerCerts, u.Host)
	if err != nil {
		return nil, fmt.Errorf("tunnel %s: %w", rawURL, err)
	}
	return sess, nil
}

// newSession runs yamux over an upgraded WebSocket and runs the hello.
func newSession(conn *wsConn, cfg Config, dialer bool, peerCerts []*x509.Certificate, addr string) (*Session, error) {
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
	watchFrames(mux, conn)
	sess, err := handshake(mux, cfg, dialer, peerCerts, addr)
	if err != nil {
		// Give an error frame a moment to leave before the close.
		time.AfterFunc(100*time.Millisecond, func() { mux.Close() })
		return nil, conn.cause(err)
	}
	sess.conn = conn
	return sess, nil
}
