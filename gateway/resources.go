package gateway

import (
	"net/http"
	"slices"
)

// ServiceStatus describes one configured service of an instance.
type ServiceStatus struct {
	ID     string `json:"id"` // "tenant/name", or the name without a tenant
	Name   string `json:"name"`
	Tenant string `json:"tenant,omitempty"`
	Role   string `json:"role"` // "accept" or "connect"
	Addr   string `json:"addr"` // the bound accept address, or the connect target
	Up     bool   `json:"up"`   // accept: listening; connect: target passes its health check
	Active int    `json:"active_connections"`
	Max    int    `json:"max_connections"`
}

// Services reports the configured services with their state.
func (in *Instance) Services() []ServiceStatus {
	healthy := in.healthy()
	lc := in.live()
	in.limits.mu.Lock()
	open := make(map[string]int, len(in.limits.svc))
	for id, n := range in.limits.svc {
		open[id] = n
	}
	in.limits.mu.Unlock()
	out := []ServiceStatus{}
	for _, s := range lc.cfg.Services {
		st := ServiceStatus{ID: s.ID(), Name: s.Name, Tenant: s.Tenant, Active: open[s.ID()], Max: s.MaxConnections}
		if s.IsAccept() {
			st.Role, st.Addr = "accept", in.AcceptAddr(s.ID())
			st.Up = st.Addr != ""
		} else {
			st.Role, st.Addr = "connect", s.Connect
			st.Up = slices.Contains(healthy, s.ID())
		}
		out = append(out, st)
	}
	return out
}

// resourceRoutes serves the parts of the status one by one:
// GET /api/v1/tunnels, /api/v1/members and /api/v1/services.
func (s *Supervisor) resourceRoutes(mux *http.ServeMux) {
	running := func(h func(w http.ResponseWriter, in *Instance)) http.Handler {
		return s.requireToken(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			in := s.Current()
			if in == nil {
				writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "instance is stopped"})
				return
			}
			h(w, in)
		}))
	}
	mux.Handle("GET /api/v1/tunnels", running(func(w http.ResponseWriter, in *Instance) {
		writeJSON(w, http.StatusOK, in.Status().Tunnels)
	}))
	mux.Handle("GET /api/v1/members", running(func(w http.ResponseWriter, in *Instance) {
		ms := in.Status().Members
		if ms == nil {
			ms = []MemberStatus{}
		}
		writeJSON(w, http.StatusOK, ms)
	}))
	mux.Handle("GET /api/v1/services", running(func(w http.ResponseWriter, in *Instance) {
		writeJSON(w, http.StatusOK, in.Services())
	}))
}
