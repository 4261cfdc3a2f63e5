package gateway

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/sitebridge/sitebridge/cacheapi"
	"github.com/sitebridge/sitebridge/config"
	"github.com/sitebridge/sitebridge/store"
)

// Status is what /api/v1/status reports.
type Status struct {
	Instance string         `json:"instance"`
	Site     string         `json:"site"`
	Tenant   string         `json:"tenant,omitempty"`
	State    string         `json:"state"` // "running" or "stopped" (by the admin API)
	Epoch    uint64         `json:"epoch,omitempty"`
	Tunnels  []TunnelStatus `json:"tunnels"`
	Members  []MemberStatus `json:"members,omitempty"`
	Services []string       `json:"services_offered"` // connect services whose target passes its health check
	// Store summarises each scheme's partition table; Federation is this
	// member's federation figures (the site's: GET /api/v1/federation).
	Store      []StoreSummary    `json:"store,omitempty"`
	Federation []store.FedStatus `json:"federation,omitempty"`
}

// StoreSummary is one scheme's table at a glance.
type StoreSummary struct {
	Scheme    string         `json:"scheme"`
	Backups   int            `json:"backup_count"`
	Settled   bool           `json:"settled"`
	Primaries map[string]int `json:"primaries"` // member -> partitions it is primary of
	Held      int            `json:"partitions_held"`
}

// TunnelStatus describes one live tunnel.
type TunnelStatus struct {
	Peer     string   `json:"peer"`
	Site     string   `json:"site"`
	Epoch    uint64   `json:"epoch"`
	URL      string   `json:"url,omitempty"` // set when this instance dialled it
	Addr     string   `json:"addr"`
	Services []string `json:"services"`
	Active   int64    `json:"active_connections"`
}

// MemberStatus describes one live member of this instance's cluster.
type MemberStatus struct {
	Name      string   `json:"name"`
	Addr      string   `json:"addr"`
	Epoch     uint64   `json:"epoch"`
	TunnelURL string   `json:"tunnel_url,omitempty"`
	Admin     string   `json:"admin,omitempty"`
	Reach     []string `json:"reach,omitempty"`
}

// Status reports the instance's live tunnels and cluster members.
func (in *Instance) Status() Status {
	st := Status{Instance: in.cfg.Instance, Site: in.cfg.Site, Tenant: in.cfg.Tenant, State: "running", Epoch: in.epoch,
		Tunnels: []TunnelStatus{}, Services: in.healthy()}
	for _, p := range in.peers.all() {
		st.Tunnels = append(st.Tunnels, TunnelStatus{
			Peer: p.hello.Instance, Site: p.hello.Site, Epoch: p.hello.Epoch, URL: p.url,
			Addr: p.sess.RemoteAddr(), Services: p.sess.Services(), Active: p.active.Load(),
		})
	}
	if in.cluster != nil {
		for _, m := range in.cluster.Members() {
			st.Members = append(st.Members, MemberStatus{Name: m.Name, Addr: m.Addr, Epoch: m.Meta.Epoch,
				TunnelURL: m.Meta.TunnelURL, Admin: m.Meta.Admin, Reach: m.Meta.Reach})
		}
	}
	for _, sc := range in.store.Status() {
		sum := StoreSummary{Scheme: sc.Scheme, Backups: sc.Backups, Settled: sc.Settled, Primaries: sc.Primaries}
		for _, p := range sc.Partitions {
			if p.Held {
				sum.Held++
			}
		}
		st.Store = append(st.Store, sum)
	}
	st.Federation = in.store.LocalFedStatus()
	return st
}

// Supervisor runs one instance together with its admin endpoint. Through
// the admin API the instance can be stopped and started again while the
// admin endpoint stays up: each start is a new epoch, exactly as a process
// restart would be, which is what failover drills need.
type Supervisor struct {
	cfg *config.Config
	log *slog.Logger

	first *Instance // made by NewSupervisor, run by the first start
	m     *metrics  // the instance's metrics, across its starts

	live    atomic.Pointer[config.Config] // the config in effect; reloads replace it
	reloads sync.Mutex                    // serializes reloads
	mu      sync.Mutex
	source  ReloadSource       // reads the config file again; nil: no reload
	level   *slog.LevelVar     // the logger's level, set by reloads; may be nil
	cur     *Instance          // the running instance, or nil when stopped
	stop    context.CancelFunc // stops cur
	// pending: a start was asked for while the instance was stopped or
	// stopping; the run loop takes it once the instance has stopped. A
	// stop clears it. startCh only wakes the loop.
	pending bool
	startCh chan struct{}
}

// NewSupervisor checks that an instance can be made from cfg (TLS material
// included) and returns a supervisor for it.
func NewSupervisor(cfg *config.Config, log *slog.Logger) (*Supervisor, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	in, err := New(cfg, log)
	if err != nil {
		return nil, err
	}
	s := &Supervisor{cfg: cfg, log: log, first: in, startCh: make(chan struct{}, 1)}
	s.live.Store(cfg)
	s.m = newMetrics(s)
	in.m = s.m
	return s, nil
}

// errStopped: the instance was stopped through the admin API.
var errStopped = errors.New("instance stopped through the admin API")

// Run serves the admin endpoint and runs the instance until ctx ends. The
// first start's errors (a port in use, say) are returned at once; ready is
// called once the first start has bound its listeners.
func (s *Supervisor) Run(ctx context.Context, ready func()) error {
	adminLn, err := net.Listen("tcp", s.cfg.Admin.Listen)
	if err != nil {
		return fmt.Errorf("admin.listen: %w", err)
	}
	srv := s.adminServer()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer srv.Close()
	wg.Go(func() {
		if err := srv.Serve(adminLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("admin server failed", "err", err)
		}
	})
	readyOnce := sync.OnceFunc(func() {
		if ready != nil {
			ready()
		}
	})
	for first := true; ; first = false {
		in, err := s.first, error(nil)
		if !first {
			// Each start is a new instance: a new epoch, the TLS files
			// read again.
			in, err = New(s.Config(), s.log)
			if in != nil {
				in.m = s.m
			}
		}
		if err != nil {
			if first {
				return err
			}
			s.log.Error("instance start failed; staying stopped", "err", err)
		} else {
			in.adminAddr = adminLn.Addr().String()
			ictx, cancel := context.WithCancelCause(ctx)
			s.mu.Lock()
			s.stop, s.pending = func() { cancel(errStopped) }, false
			s.mu.Unlock()
			err = in.Run(ictx, func() {
				// Published once bound: Status and the admin API read
				// what binding sets (the cluster, the listeners).
				s.mu.Lock()
				s.cur = in
				s.mu.Unlock()
				readyOnce()
			})
			cancel(nil)
			s.mu.Lock()
			s.cur, s.stop = nil, nil
			s.mu.Unlock()
			if err != nil {
				if first {
					return err
				}
				s.log.Error("instance start failed; staying stopped", "err", err)
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		s.log.Warn("instance stopped; POST /api/v1/start to start it again")
		if !s.waitStart(ctx) {
			return nil
		}
		s.log.Info("instance starting again (admin API)")
	}
}

// waitStart waits for a start request; false when ctx ends first.
func (s *Supervisor) waitStart(ctx context.Context) bool {
	for {
		s.mu.Lock()
		if s.pending {
			s.pending = false
			s.mu.Unlock()
			return true
		}
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return false
		case <-s.startCh:
		}
	}
}

// Current returns the running instance once it has bound its listeners,
// or nil while stopped or still starting.
func (s *Supervisor) Current() *Instance {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur
}

// Stop stops the running instance (its admin endpoint stays up), or
// cancels a start asked for while it was stopping. It reports whether
// there was either.
func (s *Supervisor) Stop() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pending {
		s.pending = false
		return true
	}
	if s.stop == nil {
		return false
	}
	s.stop()
	s.stop = nil
	return true
}

// Start starts a stopped instance again. It reports false if it is
// running. An instance still stopping starts again once it has stopped.
func (s *Supervisor) Start() bool {
	s.mu.Lock()
	if s.stop != nil {
		s.mu.Unlock()
		return false
	}
	s.pending = true
	s.mu.Unlock()
	select {
	case s.startCh <- struct{}{}:
	default:
	}
	return true
}

func (s *Supervisor) status() Status {
	if in := s.Current(); in != nil {
		return in.Status()
	}
	return Status{Instance: s.cfg.Instance, Site: s.cfg.Site, Tenant: s.cfg.Tenant, State: "stopped", Tunnels: []TunnelStatus{}, Services: []string{}}
}

func (s *Supervisor) adminServer() *http.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		st := s.status()
		writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "instance": st.Instance, "site": st.Site, "state": st.State})
	})
	mux.Handle("GET /readyz", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ready, why := s.ready()
		code := http.StatusOK
		if !ready {
			code = http.StatusServiceUnavailable
		}
		writeJSON(w, code, map[string]any{"ready": ready, "instance": s.cfg.Instance, "site": s.cfg.Site, "waiting_for": why})
	}))
	mux.Handle("GET /metrics", s.requireToken(promhttp.HandlerFor(s.m.reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)})))
	mux.Handle("GET /api/v1/status", s.requireToken(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.status())
	})))
	mux.Handle("POST /api/v1/stop", s.requireToken(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.Stop() {
			writeJSON(w, http.StatusConflict, map[string]string{"error": "instance is not running"})
			return
		}
		s.log.Warn("instance stop requested (admin API)", "from", r.RemoteAddr)
		writeJSON(w, http.StatusAccepted, map[string]string{"state": "stopping"})
	})))
	mux.Handle("POST /api/v1/reload", s.requireToken(http.HandlerFunc(s.serveReload)))
	mux.Handle("POST /api/v1/start", s.requireToken(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.Start() {
			writeJSON(w, http.StatusConflict, map[string]string{"error": "instance is running"})
			return
		}
		writeJSON(w, http.StatusAccepted, map[string]string{"state": "starting"})
	})))
	caches := s.requireToken(cacheapi.Handler(supervisedCache{s}, cacheapi.Options{
		DefaultScope: s.cfg.Store.Scope, Log: s.log.With("component", "cache-api"), Timeout: s.cfg.Store.RequestTimeout.D(),
	}))
	mux.Handle(cacheapi.Prefix, caches)
	mux.Handle(cacheapi.Prefix+"/", caches)
	mux.Handle("GET /api/v1/store", s.requireToken(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		in := s.Current()
		if in == nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "instance is stopped"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"instance": s.cfg.Instance, "schemes": in.store.Status()})
	})))
	mux.Handle("GET /api/v1/store/{scheme}/partitions/{part}/journal", s.requireToken(http.HandlerFunc(s.serveJournal)))
	s.federationRoutes(mux)
	s.resourceRoutes(mux)  // tunnels, members, services (resources.go)
	s.dashboardRoutes(mux) // the dashboard page and GET /api/v1/topology (topology.go)
	// Browsers may not make the admin endpoint act for another web page
	// (a loopback endpoint without a token is otherwise reachable from any
	// page open in a local browser): cross-origin unsafe requests are
	// refused. Clients that are not browsers send no Origin and pass.
	return &http.Server{
		Handler:           http.NewCrossOriginProtection().Handler(mux),
		ReadHeaderTimeout: 5 * time.Second,
		// Cache requests may carry values of up to store.max-value-size and
		// wait up to store.request-timeout for a failover inside the site.
		ReadTimeout:    60 * time.Second,
		WriteTimeout:   s.cfg.Store.RequestTimeout.D() + 30*time.Second,
		MaxHeaderBytes: 16 << 10,
	}
}

// ready reports whether the instance runs, has joined its cluster, and
// holds a tunnel to at least one instance of each peer site; otherwise it
// says what it waits for.
func (s *Supervisor) ready() (bool, []string) {
	in := s.Current()
	if in == nil {
		return false, []string{"the instance is stopped"}
	}
	why := []string{}
	if in.cluster != nil {
		select {
		case <-in.cluster.Joined():
		default:
			why = append(why, "joining the cluster")
		}
	}
	if ok, wait := in.store.Joined(); !ok {
		why = append(why, "the site store: "+wait)
	}
	up := map[string]bool{}
	for _, p := range in.peers.all() {
		up[p.hello.Site] = true
	}
	for _, p := range s.Config().Peers {
		if !up[p.Site] {
			why = append(why, "a tunnel to site "+p.Site)
		}
	}
	return len(why) == 0, why
}

// supervisedCache is the cache API of whichever instance runs now; while
// the instance is stopped, requests fail with store.ErrStopped (503).
type supervisedCache struct{ s *Supervisor }

func (c supervisedCache) cache() (store.Cache, error) {
	if in := c.s.Current(); in != nil {
		return in.store, nil
	}
	return nil, store.ErrStopped
}

func (c supervisedCache) Put(ctx context.Context, scope, cache, key string, value []byte, ttl time.Duration) error {
	st, err := c.cache()
	if err != nil {
		return err
	}
	return st.Put(ctx, scope, cache, key, value, ttl)
}

func (c supervisedCache) Get(ctx context.Context, scope, cache, key string) (store.Entry, bool, error) {
	st, err := c.cache()
	if err != nil {
		return store.Entry{}, false, err
	}
	return st.Get(ctx, scope, cache, key)
}

func (c supervisedCache) Delete(ctx context.Context, scope, cache, key string) (bool, error) {
	st, err := c.cache()
	if err != nil {
		return false, err
	}
	return st.Delete(ctx, scope, cache, key)
}

func (c supervisedCache) Clear(ctx context.Context, scope, cache string) error {
	st, err := c.cache()
	if err != nil {
		return err
	}
	return st.Clear(ctx, scope, cache)
}

func (c supervisedCache) Caches(ctx context.Context, scope string) ([]store.CacheInfo, error) {
	st, err := c.cache()
	if err != nil {
		return nil, err
	}
	return st.Caches(ctx, scope)
}

func (c supervisedCache) Keys(ctx context.Context, scope, cache, prefix, cursor string, limit int) (store.Page, error) {
	st, err := c.cache()
	if err != nil {
		return store.Page{}, err
	}
	return st.Keys(ctx, scope, cache, prefix, cursor, limit)
}

func (c supervisedCache) MaxValueSize() int { return int(c.s.cfg.Store.MaxValueSize) }

// serveJournal lists this member's journal of one partition:
// ?from=SEQ&limit=N (default 1, 100; limit at most 10000).
func (s *Supervisor) serveJournal(w http.ResponseWriter, r *http.Request) {
	in := s.Current()
	if in == nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "instance is stopped"})
		return
	}
	part, err := strconv.Atoi(r.PathValue("part"))
	from, limit := uint64(1), 100
	if v := r.URL.Query().Get("from"); v != "" && err == nil {
		from, err = strconv.ParseUint(v, 10, 64)
	}
	if v := r.URL.Query().Get("limit"); v != "" && err == nil {
		limit, err = strconv.Atoi(v)
		if err == nil && (limit < 1 || limit > 10000) {
			err = errors.New("limit must be 1-10000")
		}
	}
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		return
	}
	entries, last, err := in.store.Journal(r.PathValue("scheme"), part, from, limit)
	switch {
	case errors.Is(err, store.ErrNotHeld):
		writeJSON(w, http.StatusNotFound, map[string]string{"error": err.Error()})
	case err != nil:
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
	default:
		writeJSON(w, http.StatusOK, map[string]any{"instance": s.cfg.Instance, "last_seq": last, "entries": entries})
	}
}

// requireToken guards h with the configured bearer token, if any. Without
// a token the admin endpoint is on loopback (config validation insists).
func (s *Supervisor) requireToken(h http.Handler) http.Handler {
	token := s.cfg.Admin.Token
	if token == "" {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(token)) != 1 {
			w.Header().Set("WWW-Authenticate", "Bearer")
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "missing or wrong bearer token"})
			return
		}
		h.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
