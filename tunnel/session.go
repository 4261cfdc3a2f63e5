package tunnel

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/sitebridge/sitebridge/tlsgen"
)

// Config is shared by both ends of a tunnel. The zero value of every
// duration and size picks the default named beside it.
type Config struct {
	// Local is what this instance says about itself in its hello. A zero
	// Version means this build's [Version].
	Local Hello
	// Keepalive is the interval between pings (default 1s).
	Keepalive time.Duration
	// DeadAfter is how long a tunnel may go without an answer to a ping, or
	// with a write blocked, before it is declared dead (default 3s). It
	// must exceed Keepalive.
	DeadAfter time.Duration
	// HelloTimeout bounds the hello exchange (default 5s).
	HelloTimeout time.Duration
	// HeaderTimeout bounds reading the header of an inbound stream
	// (default 5s).
	HeaderTimeout time.Duration
	// MaxMessageSize is the largest WebSocket message accepted from the
	// peer (default 1 MiB; never below 64 KiB).
	MaxMessageSize int64
	// MaxStreams bounds the concurrent inbound streams on one tunnel;
	// beyond it new streams are refused with CodeOverloaded (default 4096).
	MaxStreams int
	// WindowSize is the maximum yamux receive window per stream (default
	// [DefaultWindowSize], 8 MiB).
	WindowSize uint32
	// Log receives the package's log lines (default: discarded).
	Log *slog.Logger
	// Services, if set, is called at each hello to fill Local.Services with
	// the services this instance offers now to a peer of peerTenant: the
	// tenant of the peer's certificate, or of its hello when the peer is
	// unauthenticated and has spoken first, else "".
	Services func(peerTenant string) []string
	// Members, if set, is called at each hello to fill Local.Members with
	// the current member list of this instance's site.
	Members func() []string
	// OnMembers, if set, is called from the session's control reader with
	// each member list the peer announces after the hello. It must not
	// block for long.
	OnMembers func(s *Session, members []string)
	// Kinds lists the stream kinds handed to the handler besides
	// KindService; streams of any other kind are refused with
	// CodeUnsupportedKind.
	Kinds []Kind
}

func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.Keepalive, time.Second)
	def(&c.DeadAfter, 3*time.Second)
	if c.DeadAfter <= c.Keepalive {
		c.DeadAfter = c.Keepalive + time.Second
	}
	def(&c.HelloTimeout, 5*time.Second)
	def(&c.HeaderTimeout, 5*time.Second)
	if c.MaxMessageSize <= 0 {
		c.MaxMessageSize = 1 << 20
	}
	c.MaxMessageSize = max(c.MaxMessageSize, minReadLimit)
	if c.MaxStreams <= 0 {
		c.MaxStreams = 4096
	}
	if c.WindowSize == 0 {
		c.WindowSize = DefaultWindowSize
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Local.Version == 0 {
		c.Local.Version = Version
	}
	return c
}

func (c Config) muxConfig() *yamux.Config {
	mc := yamux.DefaultConfig()
	mc.EnableKeepAlive = true
	mc.KeepAliveInterval = c.Keepalive
	// A ping that is not answered within ConnectionWriteTimeout kills the
	// session, so a dead tunnel is noticed within Keepalive+that.
	mc.ConnectionWriteTimeout = c.DeadAfter - c.Keepalive
	mc.MaxStreamWindowSize = max(c.WindowSize, 256<<10)
	mc.AcceptBacklog = 1024
	mc.LogOutput = nil
	mc.Logger = slog.NewLogLogger(c.Log.Handler(), slog.LevelDebug)
	return mc
}

// HandshakeError is a hello exchange refused by either side.
type HandshakeError struct {
	Code    Code
	Message string
	Remote  bool // the peer refused us (rather than we the peer)
}

func (e *HandshakeError) Error() string {
	who := "refused peer"
	if e.Remote {
		who = "refused by peer"
	}
	return fmt.Sprintf("tunnel hello %s (%s): %s", who, e.Code, e.Message)
}

// RefusedError is a stream the receiving instance refused.
type RefusedError struct {
	Code    Code
	Message string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("stream refused (%s): %s", e.Code, e.Message)
}

// Session is an established tunnel: the hello is done and streams may be
// opened from either end. It is safe for concurrent use.
type Session struct {
	cfg    Config
	conn   *wsConn // nil in tests that build sessions over plain pipes
	mux    *yamux.Session
	ctrl   net.Conn
	remote Hello
	peer   tlsgen.Identity // zero when the tunnel is insecure
	addr   string

	inbound chan struct{} // semaphore bounding concurrent inbound streams

	ctrlMu   sync.Mutex // serialises writes on the control stream; guards the two lists below
	members  []string   // the peer's latest member list
	services []string   // the services the peer offers now
}

// Services is the list of services the peer offers now (from its hello or
// a later services frame).
func (s *Session) Services() []string {
	s.ctrlMu.Lock()
	defer s.ctrlMu.Unlock()
	return slices.Clone(s.services)
}

// Offers reports whether the peer offers service now.
func (s *Session) Offers(service string) bool {
	s.ctrlMu.Lock()
	defer s.ctrlMu.Unlock()
	return slices.Contains(s.services, service)
}

// SendServices tells the peer which services this instance offers now.
func (s *Session) SendServices(services []string) error {
	s.ctrlMu.Lock()
	defer s.ctrlMu.Unlock()
	s.ctrl.SetWriteDeadline(time.Now().Add(s.cfg.HelloTimeout))
	defer s.ctrl.SetWriteDeadline(time.Time{})
	return writeFrame(s.ctrl, frameServices, ServicesUpdate{Services: services})
}

// Members is the peer's latest announced member list (from its hello or a
// later members frame).
func (s *Session) Members() []string {
	s.ctrlMu.Lock()
	defer s.ctrlMu.Unlock()
	return slices.Clone(s.members)
}

// SendMembers announces this instance's site member list to the peer.
func (s *Session) SendMembers(members []string) error {
	s.ctrlMu.Lock()
	defer s.ctrlMu.Unlock()
	s.ctrl.SetWriteDeadline(time.Now().Add(s.cfg.HelloTimeout))
	defer s.ctrl.SetWriteDeadline(time.Time{})
	return writeFrame(s.ctrl, frameMembers, MembersUpdate{Members: members})
}

// Remote is the hello the peer sent.
func (s *Session) Remote() Hello { return s.remote }

// Peer is the peer's certificate identity (zero for insecure tunnels).
func (s *Session) Peer() tlsgen.Identity { return s.peer }

// RemoteAddr is the network address of the peer, as far as it is known.
func (s *Session) RemoteAddr() string { return s.addr }

// Done is closed when the session has ended.
func (s *Session) Done() <-chan struct{} { return s.mux.CloseChan() }

// NumStreams is the number of streams currently open on the session.
func (s *Session) NumStreams() int { return s.mux.NumStreams() }

// Close ends the session and every stream on it. It may be called more
// than once.
func (s *Session) Close() error { return s.mux.Close() }

// Ping measures a round trip over the tunnel.
func (s *Session) Ping() (time.Duration, error) { return s.mux.Ping() }

// OpenService opens a service stream naming tenant and service, and waits
// for the peer's answer. On refusal it returns a *RefusedError. The context
// bounds only the opening, not the life of the stream.
func (s *Session) OpenService(ctx context.Context, tenant, service string) (net.Conn, error) {
	return s.openStream(ctx, Header{Kind: KindService, Tenant: tenant, Service: service}, nil)
}

// OpenServiceEarly is OpenService with early data: the client's first
// bytes leave with the header, in the same frame, instead of one tunnel
// round trip later, after the answer (PROTOCOL.md §5, early data). The far
// end passes them to the target once it accepts, and drops them if it
// refuses; the caller keeps early until this returns, to send it again on
// the next route after a refusal.
func (s *Session) OpenServiceEarly(ctx context.Context, tenant, service string, early []byte) (net.Conn, error) {
	return s.openStream(ctx, Header{Kind: KindService, Tenant: tenant, Service: service}, early)
}

// OpenStream opens a stream with the given header and waits for the peer's
// answer, like OpenService, for any stream kind.
func (s *Session) OpenStream(ctx context.Context, h Header) (net.Conn, error) {
	return s.openStream(ctx, h, nil)
}

func (s *Session) openStream(ctx context.Context, h Header, early []byte) (net.Conn, error) {
	hdr, err := AppendHeader(nil, h)
	if err != nil {
		return nil, err
	}
	hdr = append(hdr, early...)
	st, err := s.mux.OpenStream()
	if err != nil {
		return nil, fmt.Errorf("open stream: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { st.SetDeadline(time.Now()) })
	defer stop()
	if d, ok := ctx.Deadline(); ok {
		st.SetDeadline(d)
	}
	code, msg, err := writeAndReadReply(st, hdr)
	if err != nil {
		st.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("open stream: %w", ctx.Err())
		}
		return nil, fmt.Errorf("open stream: %w", err)
	}
	if !stop() {
		st.Close()
		return nil, fmt.Errorf("open stream: %w", ctx.Err())
	}
	st.SetDeadline(time.Time{})
	if code != CodeOK {
		st.Close()
		return nil, &RefusedError{Code: code, Message: msg}
	}
	return st, nil
}

func writeAndReadReply(st net.Conn, hdr []byte) (Code, string, error) {
	if _, err := st.Write(hdr); err != nil {
		return 0, "", err
	}
	return ReadReply(st)
}

// Inbound is a stream the peer opened, with its decoded header. The handler
// must answer it with exactly one of Accept or Refuse.
type Inbound struct {
	net.Conn
	Header Header
}

// Accept tells the opener the stream is accepted; bytes may flow after it.
func (in *Inbound) Accept() error {
	_, err := in.Write(AppendReply(nil, CodeOK, ""))
	return err
}

// Refuse tells the opener why the stream is refused, and closes it.
func (in *Inbound) Refuse(code Code, msg string) error {
	_, err := in.Write(AppendReply(nil, code, msg))
	in.Close()
	return err
}

// Handler serves one inbound stream. It runs on its own goroutine, owned
// by [Session.Serve], and should return when the stream is done.
type Handler func(ctx context.Context, s *Session, in *Inbound)

// Serve accepts the peer's streams and hands each to h until the session
// ends or ctx is cancelled; then it closes the session, waits for every
// handler to return and returns the reason the session ended.
func (s *Session) Serve(ctx context.Context, h Handler) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	defer s.Close()

	ctrlErr := make(chan error, 1)
	wg.Go(func() { ctrlErr <- s.readControl() })
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()

	for {
		st, err := s.mux.AcceptStreamWithContext(ctx)
		if err != nil {
			select {
			case cerr := <-ctrlErr:
				if cerr != nil {
					return s.conn.cause(cerr)
				}
			default:
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return s.conn.cause(fmt.Errorf("tunnel session ended: %w", err))
		}
		select {
		case s.inbound <- struct{}{}:
		default:
			wg.Go(func() { s.refuse(st, CodeOverloaded, "too many concurrent streams on this tunnel") })
			continue
		}
		wg.Go(func() {
			defer func() { <-s.inbound }()
			s.serveStream(ctx, st, h)
		})
	}
}

func (s *Session) refuse(st net.Conn, code Code, msg string) {
	st.SetDeadline(time.Now().Add(s.cfg.HeaderTimeout))
	(&Inbound{Conn: st}).Refuse(code, msg)
	s.cfg.Log.Warn("stream refused", "peer", s.remote.Instance, "code", code.String(), "reason", msg)
}

func (s *Session) serveStream(ctx context.Context, st net.Conn, h Handler) {
	st.SetReadDeadline(time.Now().Add(s.cfg.HeaderTimeout))
	hdr, err := ReadHeader(st)
	if err != nil {
		s.refuse(st, CodeBadHeader, err.Error())
		return
	}
	st.SetReadDeadline(time.Time{})
	if hdr.Kind != KindService && !slices.Contains(s.cfg.Kinds, hdr.Kind) {
		s.refuse(st, CodeUnsupportedKind, fmt.Sprintf("stream kind %d is not served", hdr.Kind))
		return
	}
	h(ctx, s, &Inbound{Conn: st, Header: hdr})
}

// readControl reads the control stream after the hello. An error frame from
// the peer, garbage, or the stream's end ends the session.
func (s *Session) readControl() error {
	defer s.Close()
	for {
		typ, payload, err := readFrame(s.ctrl)
		if err != nil {
			if errors.Is(err, io.EOF) || s.mux.IsClosed() {
				return nil
			}
			return fmt.Errorf("control stream: %w", err)
		}
		switch typ {
		case frameError:
			ce, err := decodeControlError(payload)
			if err != nil {
				return err
			}
			return &HandshakeError{Code: ce.Code, Message: ce.Message, Remote: true}
		case frameMembers:
			var mu MembersUpdate
			if err := json.Unmarshal(payload, &mu); err != nil {
				return fmt.Errorf("control stream: members frame: %w", err)
			}
			if err := checkMembers(mu.Members); err != nil {
				return fmt.Errorf("control stream: members frame: %w", err)
			}
			s.ctrlMu.Lock()
			s.members = mu.Members
			s.ctrlMu.Unlock()
			if s.cfg.OnMembers != nil {
				s.cfg.OnMembers(s, mu.Members)
			}
		case frameServices:
			var su ServicesUpdate
			if err := json.Unmarshal(payload, &su); err != nil {
				return fmt.Errorf("control stream: services frame: %w", err)
			}
			if err := checkServices(su.Services); err != nil {
				return fmt.Errorf("control stream: services frame: %w", err)
			}
			s.ctrlMu.Lock()
			s.services = su.Services
			s.ctrlMu.Unlock()
			s.cfg.Log.Info("peer services changed", "peer", s.remote.Instance, "services", su.Services)
		default:
			// Unknown control frames are skipped so newer peers may add
			// frame types without breaking this version.
			s.cfg.Log.Debug("skipping unknown control frame", "type", typ, "bytes", len(payload))
		}
	}
}

// handshake runs the hello exchange on an established yamux session. The
// dialer opens the control stream and speaks first.
func handshake(mux *yamux.Session, cfg Config, dialer bool, peerCerts []*x509.Certificate, addr string) (*Session, error) {
	s := &Session{cfg: cfg, mux: mux, addr: addr, inbound: make(chan struct{}, cfg.MaxStreams)}
	if len(peerCerts) > 0 {
		id, err := tlsgen.IdentityFromCert(peerCerts[0])
		if err != nil {
			return nil, &HandshakeError{Code: CodeBadHello, Message: err.Error()}
		}
		s.peer = id
	}
	var err error
	deadline := time.Now().Add(cfg.HelloTimeout)
	if dialer {
		s.ctrl, err = mux.OpenStream()
	} else {
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		s.ctrl, err = mux.AcceptStreamWithContext(ctx)
		cancel()
	}
	if err != nil {
		return nil, fmt.Errorf("control stream: %w", err)
	}
	s.ctrl.SetDeadline(deadline)
	if dialer {
		err = s.helloDialer()
	} else {
		err = s.helloAcceptor()
	}
	if err != nil {
		return nil, err
	}
	s.ctrl.SetDeadline(time.Time{})
	return s, nil
}

// localHello is the hello this end sends, with the current member list.
func (s *Session) localHello() Hello {
	h := s.cfg.Local
	if s.cfg.Services != nil {
		tenant := s.peer.Tenant
		if s.peer == (tlsgen.Identity{}) {
			tenant = s.remote.Tenant
		}
		h.Services = s.cfg.Services(tenant)
	}
	if s.cfg.Members != nil {
		h.Members = s.cfg.Members()
	}
	return h
}

func (s *Session) helloDialer() error {
	if err := writeFrame(s.ctrl, frameHello, s.localHello()); err != nil {
		return fmt.Errorf("send hello: %w", err)
	}
	remote, err := s.readHello()
	if err != nil {
		return err
	}
	s.remote = remote
	s.members, s.services = remote.Members, remote.Services
	return nil
}

func (s *Session) helloAcceptor() error {
	remote, err := s.readHello()
	if err != nil {
		var he *HandshakeError
		if errors.As(err, &he) && !he.Remote {
			writeFrame(s.ctrl, frameError, ControlError{Code: he.Code, Message: he.Message})
		}
		return err
	}
	s.remote = remote
	s.members, s.services = remote.Members, remote.Services
	if err := writeFrame(s.ctrl, frameHello, s.localHello()); err != nil {
		return fmt.Errorf("send hello: %w", err)
	}
	return nil
}

// readHello reads the peer's hello (or its error frame) and checks the
// version and that the hello matches the peer's certificate identity.
func (s *Session) readHello() (Hello, error) {
	typ, payload, err := readFrame(s.ctrl)
	if err != nil {
		return Hello{}, fmt.Errorf("read hello: %w", err)
	}
	switch typ {
	case frameHello:
	case frameError:
		ce, err := decodeControlError(payload)
		if err != nil {
			return Hello{}, err
		}
		return Hello{}, &HandshakeError{Code: ce.Code, Message: ce.Message, Remote: true}
	default:
		return Hello{}, &HandshakeError{Code: CodeBadHello, Message: fmt.Sprintf("expected hello, got frame type %d", typ)}
	}
	h, err := DecodeHello(payload)
	if err != nil {
		var ve *VersionError
		if errors.As(err, &ve) {
			return Hello{}, &HandshakeError{Code: CodeVersionMismatch, Message: ve.Error()}
		}
		return Hello{}, &HandshakeError{Code: CodeBadHello, Message: err.Error()}
	}
	if err := s.matchIdentity(h); err != nil {
		return Hello{}, &HandshakeError{Code: CodeBadHello, Message: err.Error()}
	}
	return h, nil
}

// matchIdentity checks that a hello speaks for the instance whose
// certificate authenticated the connection.
func (s *Session) matchIdentity(h Hello) error {
	if s.peer == (tlsgen.Identity{}) {
		return nil
	}
	if h.Instance != s.peer.Instance || h.Site != s.peer.Site || h.Tenant != s.peer.Tenant {
		return fmt.Errorf("hello claims instance %q site %q tenant %q but the certificate is %s",
			h.Instance, h.Site, h.Tenant, s.peer)
	}
	return nil
}
