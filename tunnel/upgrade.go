package tunnel

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// The WebSocket opening handshake (RFC 6455 §4; PROTOCOL.md §3.1). The
// tunnel does it itself so that it owns the connection afterwards and
// reads and writes frames directly (wsConn).

// wsGUID is the fixed string of RFC 6455 §1.3.
const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// acceptKey is the Sec-WebSocket-Accept value for a Sec-WebSocket-Key.
func acceptKey(key string) string {
	h := sha1.Sum([]byte(key + wsGUID))
	return base64.StdEncoding.EncodeToString(h[:])
}

// upgradeError is a refused upgrade request: the HTTP status and why.
type upgradeError struct {
	status int
	msg    string
}

func (e *upgradeError) Error() string { return e.msg }

// checkUpgrade validates a WebSocket upgrade request. It sets the response
// headers a refusal should carry.
func checkUpgrade(w http.ResponseWriter, r *http.Request) (key string, err error) {
	refuse := func(status int, format string, args ...any) (string, error) {
		return "", &upgradeError{status, fmt.Sprintf(format, args...)}
	}
	if !r.ProtoAtLeast(1, 1) {
		return refuse(http.StatusUpgradeRequired, "WebSocket protocol violation: handshake request must be at least HTTP/1.1: %q", r.Proto)
	}
	if !headerHasToken(r.Header, "Connection", "upgrade") {
		w.Header().Set("Connection", "Upgrade")
		w.Header().Set("Upgrade", "websocket")
		return refuse(http.StatusUpgradeRequired, "WebSocket protocol violation: Connection header %q does not contain Upgrade", r.Header.Get("Connection"))
	}
	if !headerHasToken(r.Header, "Upgrade", "websocket") {
		w.Header().Set("Connection", "Upgrade")
		w.Header().Set("Upgrade", "websocket")
		return refuse(http.StatusUpgradeRequired, "WebSocket protocol violation: Upgrade header %q does not contain websocket", r.Header.Get("Upgrade"))
	}
	if r.Method != http.MethodGet {
		return refuse(http.StatusMethodNotAllowed, "WebSocket protocol violation: handshake request method is not GET but %q", r.Method)
	}
	if v := r.Header.Get("Sec-WebSocket-Version"); v != "13" {
		w.Header().Set("Sec-WebSocket-Version", "13")
		return refuse(http.StatusBadRequest, "unsupported WebSocket protocol version (only 13 is supported): %q", v)
	}
	keys := r.Header.Values("Sec-WebSocket-Key")
	if len(keys) != 1 {
		return refuse(http.StatusBadRequest, "WebSocket protocol violation: want one Sec-WebSocket-Key header, got %d", len(keys))
	}
	key = strings.TrimSpace(keys[0])
	if v, err := base64.StdEncoding.DecodeString(key); err != nil || len(v) != 16 {
		return refuse(http.StatusBadRequest, "WebSocket protocol violation: invalid Sec-WebSocket-Key %q, must be a 16 byte base64 encoded string", key)
	}
	// A browser page must not open a tunnel: an Origin, if any, must be
	// the host itself.
	if origin := r.Header.Get("Origin"); origin != "" {
		u, err := url.Parse(origin)
		if err != nil || !strings.EqualFold(u.Host, r.Host) {
			return refuse(http.StatusForbidden, "request Origin %q is not authorized for Host %q", origin, r.Host)
		}
	}
	return key, nil
}

// headerHasToken reports whether a comma-separated header of h contains
// token (case-insensitive).
func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// acceptUpgrade answers a WebSocket upgrade request with 101 and takes
// over the connection. It returns the connection and the bytes the HTTP
// server had already read past the request. A refused request gets its
// HTTP error here.
func acceptUpgrade(w http.ResponseWriter, r *http.Request, timeout time.Duration) (net.Conn, []byte, error) {
	key, err := checkUpgrade(w, r)
	if err != nil {
		var ue *upgradeError
		if errors.As(err, &ue) {
			http.Error(w, ue.msg, ue.status)
		}
		return nil, nil, err
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, http.StatusText(http.StatusNotImplemented), http.StatusNotImplemented)
		return nil, nil, errors.New("http.ResponseWriter does not implement http.Hijacker")
	}
	conn, brw, err := hj.Hijack()
	if err != nil {
		return nil, nil, fmt.Errorf("hijack: %w", err)
	}
	var buffered []byte
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		buffered = append([]byte(nil), b...)
	}
	conn.SetWriteDeadline(time.Now().Add(timeout))
	_, err = conn.Write([]byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " +
		acceptKey(key) + "\r\n\r\n"))
	conn.SetWriteDeadline(time.Time{})
	if err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("write 101 response: %w", err)
	}
	return conn, buffered, nil
}

// dialUpgrade connects to u (TCP, then TLS when tlsConf is set, each
// within timeout), sends the WebSocket upgrade request and checks the
// answer, all within ctx. It returns the connection, the bytes read past
// the response, and the server's certificates.
func dialUpgrade(ctx context.Context, u *url.URL, tlsConf *tls.Config, timeout time.Duration) (_ net.Conn, _ []byte, _ []*x509.Certificate, err error) {
	host := u.Host
	if u.Port() == "" {
		port := "80"
		if tlsConf != nil {
			port = "443"
		}
		host = net.JoinHostPort(u.Hostname(), port)
	}
	raw, err := (&net.Dialer{Timeout: timeout}).DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, nil, nil, err
	}
	conn := raw
	defer func() {
		if err != nil {
			conn.Close()
		}
	}()
	// Cancelling ctx aborts whatever is in progress.
	stop := context.AfterFunc(ctx, func() { raw.SetDeadline(time.Now()) })
	defer stop()
	if d, ok := ctx.Deadline(); ok {
		raw.SetDeadline(d)
	}

	var peerCerts []*x509.Certificate
	if tlsConf != nil {
		tc := tlsConf.Clone()
		if tc.ServerName == "" {
			tc.ServerName = u.Hostname()
		}
		if len(tc.NextProtos) == 0 {
			tc.NextProtos = []string{"http/1.1"}
		}
		tlsConn := tls.Client(&corkConn{Conn: raw}, tc)
		conn = tlsConn
		hctx, cancel := context.WithTimeout(ctx, timeout)
		err = tlsConn.HandshakeContext(hctx)
		cancel()
		if err != nil {
			return nil, nil, nil, err
		}
		peerCerts = tlsConn.ConnectionState().PeerCertificates
	}

	var nonce [16]byte
	rand.Read(nonce[:])
	key := base64.StdEncoding.EncodeToString(nonce[:])
	path := u.EscapedPath()
	if path == "" {
		path = "/"
	}
	if u.RawQuery != "" {
		path += "?" + u.RawQuery
	}
	req := "GET " + path + " HTTP/1.1\r\nHost: " + u.Host +
		"\r\nUser-Agent: sitebridge\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " +
		key + "\r\n\r\n"
	if _, err = conn.Write([]byte(req)); err != nil {
		return nil, nil, nil, fmt.Errorf("send upgrade request: %w", err)
	}
	br := bufio.NewReaderSize(conn, 4096)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodGet})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("read upgrade response: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		return nil, nil, nil, fmt.Errorf("%s: expected 101 Switching Protocols", resp.Status)
	}
	switch {
	case !headerHasToken(resp.Header, "Connection", "upgrade"):
		err = fmt.Errorf("WebSocket protocol violation: Connection header %q does not contain Upgrade", resp.Header.Get("Connection"))
	case !headerHasToken(resp.Header, "Upgrade", "websocket"):
		err = fmt.Errorf("WebSocket protocol violation: Upgrade header %q does not contain websocket", resp.Header.Get("Upgrade"))
	case resp.Header.Get("Sec-WebSocket-Accept") != acceptKey(key):
		err = fmt.Errorf("WebSocket protocol violation: invalid Sec-WebSocket-Accept %q", resp.Header.Get("Sec-WebSocket-Accept"))
	case resp.Header.Get("Sec-WebSocket-Extensions") != "":
		err = fmt.Errorf("WebSocket protocol violation: extensions %q that were not offered", resp.Header.Get("Sec-WebSocket-Extensions"))
	case resp.Header.Get("Sec-WebSocket-Protocol") != "":
		err = fmt.Errorf("WebSocket protocol violation: subprotocol %q that was not offered", resp.Header.Get("Sec-WebSocket-Protocol"))
	}
	if err != nil {
		return nil, nil, nil, err
	}
	var buffered []byte
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		buffered = append([]byte(nil), b...)
	}
	if !stop() {
		err = ctx.Err()
		return nil, nil, nil, err
	}
	raw.SetDeadline(time.Time{})
	return conn, buffered, peerCerts, nil
}
