package gateway

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/sitebridge/sitebridge/ha"
	"github.com/sitebridge/sitebridge/store"
	"github.com/sitebridge/sitebridge/tunnel"
)

// The site store rides the intra-site relay sessions (mutual TLS, members
// of this site only) on streams of kind KindStore. Each stream carries one
// request at a time, framed as a 4-byte big-endian length and the bytes;
// the answer comes back the same way. Callers keep idle streams per member
// for reuse.

// storeJoinWait bounds how long a member waits to join its site before it
// makes a partition history of its own.
const storeJoinWait = 10 * time.Second

// serveFed answers federation batches on a stream an instance of another
// site opened over a tunnel. The sending site is the tunnel's
// authenticated peer site.
func (in *Instance) serveFed(ctx context.Context, s *tunnel.Session, st *tunnel.Inbound) {
	if in.store == nil || !in.store.Federated() {
		st.Refuse(tunnel.CodeUnsupportedKind, "this instance does not federate")
		return
	}
	if st.Header.Tenant != s.Remote().Tenant {
		st.Refuse(tunnel.CodeForbidden, fmt.Sprintf("tenant %q may not be used by this tunnel", st.Header.Tenant))
		return
	}
	site := s.Remote().Site
	in.serveFrames(ctx, s, st, "federation stream closed", func(req []byte) []byte { return in.store.ServeFed(ctx, site, req) })
}

// serveFrames accepts st and answers the requests on it, one at a time,
// until the peer closes it, it stays idle for storeStreamIdle, or ctx ends.
func (in *Instance) serveFrames(ctx context.Context, s *tunnel.Session, st *tunnel.Inbound, closed string, answer func([]byte) []byte) {
	if err := st.Accept(); err != nil {
		st.Close()
		return
	}
	defer st.Close()
	stop := context.AfterFunc(ctx, func() { st.Close() })
	defer stop()
	limit := in.storeFrameLimit()
	for {
		st.SetReadDeadline(time.Now().Add(storeStreamIdle))
		req, err := readStoreFrame(st, limit)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && ctx.Err() == nil {
				in.log.Warn(closed, "peer", s.Remote().Instance, "peer_site", s.Remote().Site, "reason", err.Error())
			}
			return
		}
		st.SetReadDeadline(time.Time{})
		if err := writeStoreFrame(st, answer(req)); err != nil {
			return
		}
	}
}

// storeStreamIdle closes a pooled or served store stream unused this long.
const storeStreamIdle = 2 * time.Minute

// newStore builds this instance's part of the site store.
func (in *Instance) newStore() (*store.Store, error) {
	sc := in.cfg.Store
	in.storeTr = &storeTransport{in: in}
	in.storeTr.pool = streamPool{in: in, kind: tunnel.KindStore, service: "store"}
	o := store.Options{
		Self: in.cfg.Instance, Site: in.cfg.Site, Partitions: sc.Partitions,
		MaxValueSize: int(sc.MaxValueSize), RequestTimeout: sc.RequestTimeout.D(), JournalRetain: sc.JournalRetain,
		Membership: &storeMembership{in: in, ready: make(chan struct{})},
		Transport:  in.storeTr,
		Log:        in.log.With("component", "store"),
	}
	if o.JournalRetain == 0 {
		o.JournalRetain = -1 // keep none beyond what the store needs
	}
	for _, s := range sc.Schemes {
		sch := store.Scheme{Name: s.Name, BackupCount: s.Backups(), Expiry: s.Expiry.D()}
		if s.Federation != "" {
			for _, e := range in.cfg.FedEdgesFrom(s.Federation) {
				sch.FedTo = append(sch.FedTo, store.FedLink{Site: e.To, Repeat: e.Repeat})
			}
			for _, e := range in.cfg.FedEdgesTo(s.Federation) {
				sch.FedFrom = append(sch.FedFrom, e.From)
			}
		}
		o.Schemes = append(o.Schemes, sch)
	}
	if f := in.cfg.Federation; f.Enabled() {
		in.fedTr = &streamPool{in: in, kind: tunnel.KindFederation, service: "federation"}
		o.Fed = store.FedOptions{
			Transport: &fedTransport{in: in}, Limit: int64(f.Journal.Limit), Policy: f.Journal.Policy,
			BlockWait: f.Journal.BlockWait.D(), AutoReplicate: f.Journal.AutoReplicate(),
			BatchSize: f.BatchSize, SendInterval: f.SendInterval.D(),
		}
		for _, p := range f.Participants {
			o.Fed.Participants = append(o.Fed.Participants, store.FedParticipant{Site: p.Site, Initial: p.InitialAction})
		}
	}
	for _, m := range sc.Caches {
		o.Mappings = append(o.Mappings, store.Mapping{Pattern: m.Pattern, Scheme: m.Scheme})
	}
	return store.New(o)
}

// Store is this instance's site store.
func (in *Instance) Store() *store.Store { return in.store }

// storeMembership adapts the site cluster (or, without one, this instance
// alone) to the store.
type storeMembership struct {
	in    *Instance
	once  sync.Once
	ready chan struct{}
}

func (m *storeMembership) Self() string { return m.in.cfg.Instance }

func (m *storeMembership) Members() []string {
	if m.in.cluster == nil {
		return []string{m.in.cfg.Instance}
	}
	var out []string
	for _, mem := range m.in.cluster.Members() {
		out = append(out, mem.Name)
	}
	return out
}

func (m *storeMembership) Senior() string {
	if m.in.cluster == nil {
		return m.in.cfg.Instance
	}
	s, ok := m.in.cluster.Senior()
	if !ok {
		return ""
	}
	return s.Name
}

var never = make(chan struct{})

func (m *storeMembership) Changed() <-chan struct{} {
	if m.in.cluster == nil {
		return never
	}
	return m.in.cluster.Changed()
}

// Ready is closed once the cluster is joined, or after storeJoinWait.
func (m *storeMembership) Ready() <-chan struct{} {
	m.once.Do(func() {
		if m.in.cluster == nil {
			close(m.ready)
			return
		}
		go func() {
			t := time.NewTimer(storeJoinWait)
			defer t.Stop()
			select {
			case <-m.in.cluster.Joined():
			case <-t.C:
				m.in.log.Warn("store: no member of the site answered; starting a partition history alone", "waited", storeJoinWait)
			}
			close(m.ready)
		}()
	})
	return m.ready
}

// storeTransport carries store requests to site members, over their relay
// sessions.
type storeTransport struct {
	in   *Instance
	pool streamPool
}

var errNoMember = errors.New("not a live member of this site")

func (t *storeTransport) member(name string) (ha.Member, error) {
	if t.in.cluster != nil {
		if m, ok := t.in.cluster.Member(name); ok && m.Meta.Relay != "" {
			return m, nil
		}
	}
	return ha.Member{}, fmt.Errorf("store: %s: %w", name, errNoMember)
}

func (t *storeTransport) Call(ctx context.Context, name string, req []byte) ([]byte, error) {
	m, err := t.member(name)
	if err != nil {
		return nil, err
	}
	s, err := t.in.relaySession(ctx, m)
	if err != nil {
		return nil, err
	}
	out, err := t.pool.call(ctx, s, req)
	if err != nil && ctx.Err() == nil {
		return nil, fmt.Errorf("store request to %s: %w", name, err)
	}
	return out, err
}

func (t *storeTransport) closeAll() { t.pool.closeAll() }

// streamPool keeps idle request streams of one kind per session: one
// request at a time per stream, framed as a 4-byte length and the bytes.
type streamPool struct {
	in      *Instance
	kind    tunnel.Kind
	service string

	mu   sync.Mutex
	idle map[*tunnel.Session][]net.Conn
}

// call sends req on a stream of session s and returns the answer.
func (p *streamPool) call(ctx context.Context, s *tunnel.Session, req []byte) ([]byte, error) {
	st, err := p.stream(ctx, s)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { st.SetDeadline(time.Now()) })
	out, err := storeRoundTrip(st, req, p.in.storeFrameLimit())
	if !stop() || err != nil {
		st.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	p.put(s, st)
	return out, nil
}

func (p *streamPool) stream(ctx context.Context, s *tunnel.Session) (net.Conn, error) {
	p.mu.Lock()
	if l := p.idle[s]; len(l) > 0 {
		st := l[len(l)-1]
		p.idle[s] = l[:len(l)-1]
		p.mu.Unlock()
		return st, nil
	}
	// Forget streams of sessions that ended.
	for old := range p.idle {
		select {
		case <-old.Done():
			for _, c := range p.idle[old] {
				c.Close()
			}
			delete(p.idle, old)
		default:
		}
	}
	p.mu.Unlock()
	return s.OpenStream(ctx, tunnel.Header{Kind: p.kind, Tenant: p.in.cfg.Tenant, Service: p.service})
}

func (p *streamPool) put(s *tunnel.Session, st net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.idle == nil {
		p.idle = map[*tunnel.Session][]net.Conn{}
	}
	if len(p.idle[s]) >= 64 {
		st.Close()
		return
	}
	p.idle[s] = append(p.idle[s], st)
}

func (p *streamPool) closeAll() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range p.idle {
		for _, c := range l {
			c.Close()
		}
	}
	p.idle = nil
}

// fedTransport carries federation batches to a remote site over any live
// tunnel to one of its instances (the least busy first).
type fedTransport struct{ in *Instance }

var errNoTunnel = errors.New("no live tunnel to the site")

func (t *fedTransport) Ship(ctx context.Context, site string, req []byte) ([]byte, error) {
	var cands []*peer
	for _, p := range t.in.peers.all() {
		if p.hello.Site == site {
			cands = append(cands, p)
		}
	}
	if len(cands) == 0 {
		return nil, fmt.Errorf("federation to %s: %w", site, errNoTunnel)
	}
	slices.SortFunc(cands, func(a, b *peer) int { return a.sess.NumStreams() - b.sess.NumStreams() })
	var errs []error
	for _, p := range cands {
		out, err := t.in.fedTr.call(ctx, p.sess, req)
		if err == nil {
			return out, nil
		}
		errs = append(errs, fmt.Errorf("via %s: %w", p.hello.Instance, err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("federation to %s: %w", site, errors.Join(errs...))
}

// storeFrameLimit is the largest store message accepted: room for a value
// of the largest allowed size plus a snapshot chunk.
func (in *Instance) storeFrameLimit() int {
	return 2*int(in.cfg.Store.MaxValueSize) + 8<<20
}

func storeRoundTrip(st net.Conn, req []byte, limit int) ([]byte, error) {
	if err := writeStoreFrame(st, req); err != nil {
		return nil, err
	}
	return readStoreFrame(st, limit)
}

func writeStoreFrame(w io.Writer, b []byte) error {
	buf := make([]byte, 4, 4+len(b))
	binary.BigEndian.PutUint32(buf, uint32(len(b)))
	_, err := w.Write(append(buf, b...))
	return err
}

var errStoreFrameTooLarge = errors.New("store frame too large")

func readStoreFrame(r io.Reader, limit int) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if int64(n) > int64(limit) {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", errStoreFrameTooLarge, n, limit)
	}
	b := make([]byte, n)
	_, err := io.ReadFull(r, b)
	return b, err
}

// serveStore answers store requests on a stream a site member opened.
func (in *Instance) serveStore(ctx context.Context, s *tunnel.Session, st *tunnel.Inbound) {
	if in.store == nil {
		st.Refuse(tunnel.CodeUnsupportedKind, "this instance runs no store")
		return
	}
	in.serveFrames(ctx, s, st, "store stream closed", func(req []byte) []byte { return in.store.Serve(ctx, req) })
}
