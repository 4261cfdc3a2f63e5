package gateway

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"slices"
	"strings"

	"github.com/sitebridge/sitebridge/config"
)

// liveConfig is the part of an instance's config that a reload replaces
// as a whole: services, peers and the connection limits, with the lookups
// made from them.
type liveConfig struct {
	cfg     *config.Config
	connect map[string]config.Service // connect services by ID
	maxConn map[string]int            // services[].max-connections by ID
	early   map[string]bool           // accept services with early-data on, by ID
}

func newLiveConfig(cfg *config.Config) *liveConfig {
	lc := &liveConfig{cfg: cfg, connect: map[string]config.Service{}, maxConn: map[string]int{}, early: map[string]bool{}}
	for _, s := range cfg.Services {
		lc.maxConn[s.ID()] = s.MaxConnections
		if s.IsAccept() && s.EarlyData {
			lc.early[s.ID()] = true
		}
		if !s.IsAccept() {
			lc.connect[s.ID()] = s
		}
	}
	return lc
}

func (lc *liveConfig) maxConns(id string) int { return lc.maxConn[id] }

// live returns the current reloadable config.
func (in *Instance) live() *liveConfig { return in.cur.Load() }

// conf returns the current config: read services, peers and limits
// through it, since a reload replaces them.
func (in *Instance) conf() *config.Config { return in.live().cfg }

// ErrNeedsRestart: the new config changes something a reload cannot apply
// to a running instance.
var ErrNeedsRestart = errors.New("needs a restart")

// Reloadable lists what a reload applies: services (added, removed or
// changed), peers (sites, URLs, tenants), the connection limits below, and
// log.level (applied by the caller, which owns the logger).
var reloadableLimits = []string{"open-timeout", "max-pending-per-port", "idle-timeout", "max-streams-per-tenant"}

// ReloadResult says what a reload changed.
type ReloadResult struct {
	Changed []string `json:"changed"` // config paths whose values changed, e.g. "services", "limits.idle-timeout"
}

// restartOnly returns the top-level config keys (and limits.* and tunnel.*
// keys) that differ between old and next outside what a reload may change.
func restartOnly(old, next *config.Config) (changed, restart []string) {
	a, b := old.Clone(), next.Clone()
	if !reflect.DeepEqual(a.Services, b.Services) {
		changed = append(changed, "services")
	}
	if !reflect.DeepEqual(a.Peers, b.Peers) {
		changed = append(changed, "peers")
	}
	if a.Log.Level != b.Log.Level {
		changed = append(changed, "log.level")
	}
	a.Services, b.Services = nil, nil
	a.Peers, b.Peers = nil, nil
	a.Log.Level, b.Log.Level = "", ""
	la, lb := reflect.ValueOf(&a.Limits).Elem(), reflect.ValueOf(&b.Limits).Elem()
	for i := range la.NumField() {
		key := "limits." + strings.Split(la.Type().Field(i).Tag.Get("yaml"), ",")[0]
		if reflect.DeepEqual(la.Field(i).Interface(), lb.Field(i).Interface()) {
			continue
		}
		if slices.Contains(reloadableLimits, strings.TrimPrefix(key, "limits.")) {
			changed = append(changed, key)
			la.Field(i).Set(lb.Field(i))
		} else {
			restart = append(restart, key)
			la.Field(i).Set(lb.Field(i))
		}
	}
	// tunnel.* needs a restart as a whole, but is named key by key.
	ta, tb := reflect.ValueOf(&a.Tunnel).Elem(), reflect.ValueOf(&b.Tunnel).Elem()
	for i := range ta.NumField() {
		if !reflect.DeepEqual(ta.Field(i).Interface(), tb.Field(i).Interface()) {
			restart = append(restart, "tunnel."+strings.Split(ta.Type().Field(i).Tag.Get("yaml"), ",")[0])
			ta.Field(i).Set(tb.Field(i))
		}
	}
	va, vb := reflect.ValueOf(a).Elem(), reflect.ValueOf(b).Elem()
	for i := range va.NumField() {
		if !reflect.DeepEqual(va.Field(i).Interface(), vb.Field(i).Interface()) {
			restart = append(restart, strings.Split(va.Type().Field(i).Tag.Get("yaml"), ",")[0])
		}
	}
	return changed, restart
}

// Reload applies next, a validated config of this same instance, without
// dropping what the change does not touch: tunnels and connections stay
// up; new accept ports are bound, removed ones closed (their open
// connections carry on); new and removed peer URLs start and stop their
// dialers, and tunnels of a site that is no longer configured (or whose
// tenant changed) are closed; new connect services are offered to peers
// once their targets answer; the connection limits apply to new
// connections. When next changes anything else, or a new port cannot be
// bound, nothing is applied and the error says why.
func (in *Instance) Reload(next *config.Config) (ReloadResult, error) {
	in.reloads.Lock()
	defer in.reloads.Unlock()
	old := in.live()
	changed, restart := restartOnly(old.cfg, next)
	if len(restart) > 0 {
		return ReloadResult{}, fmt.Errorf("%s changed: %w (a reload applies services, peers, log.level and limits.%s)",
			strings.Join(restart, ", "), ErrNeedsRestart, strings.Join(reloadableLimits, ", limits."))
	}
	if in.run == nil || in.run.Err() != nil {
		return ReloadResult{}, errors.New("the instance is not running")
	}
	res := ReloadResult{Changed: changed}
	if len(changed) == 0 {
		return res, nil
	}

	// Bind new accept ports first: if one fails, nothing changes.
	in.acceptMu.Lock()
	want := map[string]config.Service{}
	for _, s := range next.Services {
		if s.IsAccept() {
			want[s.ID()] = s
		}
	}
	oldAccept := map[string]string{}
	for _, s := range old.cfg.Services {
		if s.IsAccept() {
			oldAccept[s.ID()] = s.Accept
		}
	}
	bound := map[string]net.Listener{}
	var errs []error
	for id, s := range want {
		if addr, ok := oldAccept[id]; ok && addr == s.Accept && in.acceptLn[id] != nil {
			continue
		}
		ln, err := net.Listen("tcp", s.Accept)
		if err != nil {
			errs = append(errs, fmt.Errorf("service %s accept: %w", id, err))
			continue
		}
		bound[id] = ln
	}
	if in.acceptEnd {
		errs = append(errs, errors.New("the instance is stopping"))
	}
	if err := errors.Join(errs...); err != nil {
		for _, ln := range bound {
			ln.Close()
		}
		in.acceptMu.Unlock()
		return ReloadResult{}, err
	}

	// From here on the reload cannot fail.
	lc := newLiveConfig(next)
	in.health.mu.Lock()
	healthy := slices.DeleteFunc(slices.Clone(in.health.healthy), func(id string) bool {
		s, ok := lc.connect[id]
		return !ok || s.Connect != old.connect[id].Connect
	})
	for id := range lc.connect {
		if _, ok := old.connect[id]; !ok {
			healthy = append(healthy, id) // optimistic, as at start; checked at once
		}
	}
	slices.Sort(healthy)
	in.health.healthy = healthy
	in.cur.Store(lc)
	in.health.mu.Unlock()
	in.limits.setTenantMax(next.Limits.MaxStreamsPerTenant)

	for id, ln := range in.acceptLn {
		if s, ok := want[id]; !ok || bound[id] != nil {
			ln.Close()
			delete(in.acceptLn, id)
			if !ok {
				in.log.Info("service removed; its accept port is closed, open connections carry on", "service", id, "addr", addrOf(ln))
			} else {
				in.log.Info("service accept address changed", "service", id, "old", addrOf(ln), "new", s.Accept)
			}
		}
	}
	for id, ln := range bound {
		in.acceptLn[id] = ln
		svc := want[id]
		in.log.Info("service accepting", "service", id, "addr", addrOf(ln))
		in.loops.Go(func() { in.acceptLoop(in.run, svc, ln) })
	}
	in.acceptMu.Unlock()

	// Peers: close tunnels that the new config no longer admits, then
	// adjust the dialers.
	for _, p := range in.peers.all() {
		h := p.hello
		pe, ok := in.peerSite(h.Site)
		switch {
		case !ok:
			in.log.Info("tunnel closed", "peer", h.Instance, "peer_site", h.Site, "reason", "peer site removed from the config")
			p.sess.Close()
		case in.tls != nil && h.Tenant != pe.Tenant && (h.Tenant != "" || in.cfg.Tenant == ""):
			in.log.Info("tunnel closed", "peer", h.Instance, "peer_site", h.Site, "reason", fmt.Sprintf("peer site is now of tenant %q", pe.Tenant))
			p.sess.Close()
		}
	}
	in.dials.configure(next.Peers)
	in.announceServices(healthy)
	select {
	case in.check <- struct{}{}:
	default:
	}
	in.log.Info("config reloaded", "changed", changed)
	return res, nil
}

// ReloadSource reads the config file again (set by the caller that loaded
// it, so a reload reads it the same way).
type ReloadSource func() (*config.Config, error)

// SetReloadSource lets POST /api/v1/reload (and [Supervisor.ReloadFromSource])
// read the config file again; without it the endpoint answers 501.
// level, if not nil, is the logger's level, which a reload sets from
// log.level.
func (s *Supervisor) SetReloadSource(src ReloadSource, level *slog.LevelVar) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.source, s.level = src, level
}

// Config returns the config in effect (the last one loaded or reloaded).
func (s *Supervisor) Config() *config.Config { return s.live.Load() }

// ErrNoSource: the supervisor has no config file to read again.
var ErrNoSource = errors.New("this instance was not started from a config file that can be read again")

// ReloadFromSource reads the config file again and applies it as
// [Supervisor.Reload] does. A config that does not load (syntax, unknown
// keys, invalid values) is refused with its errors, and the running one
// stays in effect.
func (s *Supervisor) ReloadFromSource() (ReloadResult, error) {
	s.mu.Lock()
	src := s.source
	s.mu.Unlock()
	if src == nil {
		return ReloadResult{}, ErrNoSource
	}
	next, err := src()
	if err != nil {
		s.log.Error("config reload refused; the running config stays in effect", "err", err)
		return ReloadResult{}, err
	}
	return s.Reload(next)
}

// Reload applies next to the running instance (see [Instance.Reload]);
// while it is stopped, next is checked the same way and used at the next
// start.
func (s *Supervisor) Reload(next *config.Config) (ReloadResult, error) {
	s.reloads.Lock()
	defer s.reloads.Unlock()
	var (
		res ReloadResult
		err error
	)
	if in := s.Current(); in != nil {
		res, err = in.Reload(next)
	} else {
		var restart []string
		res.Changed, restart = restartOnly(s.Config(), next)
		if len(restart) > 0 {
			err = fmt.Errorf("%s changed: %w", strings.Join(restart, ", "), ErrNeedsRestart)
		}
	}
	if err != nil {
		s.log.Error("config reload refused; the running config stays in effect", "err", err)
		return ReloadResult{}, err
	}
	s.mu.Lock()
	level := s.level
	s.mu.Unlock()
	if level != nil && slices.Contains(res.Changed, "log.level") {
		var l slog.Level
		if err := l.UnmarshalText([]byte(next.Log.Level)); err == nil {
			level.Set(l)
		}
	}
	s.live.Store(next)
	switch {
	case len(res.Changed) == 0:
		s.log.Info("config reloaded: nothing changed")
	case s.Current() == nil:
		s.log.Info("config reloaded; it applies when the instance starts", "changed", res.Changed)
	}
	return res, nil
}

// serveReload is POST /api/v1/reload.
func (s *Supervisor) serveReload(w http.ResponseWriter, r *http.Request) {
	s.log.Info("config reload requested (admin API)", "from", r.RemoteAddr)
	res, err := s.ReloadFromSource()
	var cerrs config.Errors
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, res)
	case errors.Is(err, ErrNoSource):
		writeJSON(w, http.StatusNotImplemented, map[string]string{"error": err.Error()})
	case errors.As(err, &cerrs):
		lines := make([]string, len(cerrs))
		for i, e := range cerrs {
			lines[i] = e.Error()
		}
		writeJSON(w, http.StatusUnprocessableEntity, map[string]any{"error": "the new config is invalid; the running config stays in effect", "errors": lines})
	default:
		writeJSON(w, http.StatusConflict, map[string]any{"error": err.Error()})
	}
}
