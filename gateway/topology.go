package gateway

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sitebridge/sitebridge/dashboard"
)

// The dashboard's part of the admin endpoint:
//
//	GET /, GET /ui/...            the dashboard page (package dashboard); no token: it holds no data
//	GET /api/v1/topology          what this instance knows of the deployment (a dashboard.Topology)
//	GET /api/v1/topology?self=1   this instance alone (a dashboard.Instance), what members ask each other
//
// The topology is this instance, the members of its site (each asked for
// its own view on its admin endpoint, with the caller's Authorization
// header: a site whose members share a token shows whole), the instances
// of other sites as seen through the tunnels of this site's instances, and
// this site's caches and federation. Other sites' caches and federation
// are not visible from here; their instances' dashboards show them.
func (s *Supervisor) dashboardRoutes(mux *http.ServeMux) {
	page := dashboard.Handler()
	mux.Handle("GET /{$}", page)
	mux.Handle("GET /ui/", page)
	mux.Handle("GET /api/v1/topology", s.requireToken(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("self") != "" {
			v := s.View()
			v.Seen = dashboard.SeenMember
			writeJSON(w, http.StatusOK, v)
			return
		}
		writeJSON(w, http.StatusOK, s.Topology(r.Context(), r.Header.Get("Authorization")))
	})))
}

// memberViewTimeout bounds asking one member for its view, and
// siteViewTimeout the site's caches and federation figures.
const (
	memberViewTimeout = 2 * time.Second
	siteViewTimeout   = 3 * time.Second
)

// memberClient asks members for their views. No keep-alive: a dashboard
// polls once a second, and idle connections to members that come and go
// would pile up.
var memberClient = &http.Client{
	Timeout:   memberViewTimeout,
	Transport: &http.Transport{DisableKeepAlives: true},
	CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	},
}

// View is this instance as the dashboard draws it: state, tunnels, and
// each configured service with its open connections (see Services). Seen
// is "self".
func (s *Supervisor) View() dashboard.Instance {
	return s.view(s.status())
}

func (s *Supervisor) view(st Status) dashboard.Instance {
	v := dashboard.Instance{Name: st.Instance, Site: st.Site, State: st.State, Seen: dashboard.SeenSelf,
		Epoch: st.Epoch, Admin: s.cfg.Admin.Listen, Tunnels: []dashboard.Tunnel{}, Services: []dashboard.Service{}}
	reach := map[string]bool{} // services some tunnel of this site reaches
	for _, t := range st.Tunnels {
		v.Tunnels = append(v.Tunnels, dashboard.Tunnel{Peer: t.Peer, Site: t.Site, Dialled: t.URL != "",
			Active: t.Active, Services: nonNil(t.Services)})
		for _, name := range t.Services {
			reach[name] = true
		}
	}
	for _, m := range st.Members {
		for _, name := range m.Reach {
			reach[name] = true
		}
	}
	if in := s.Current(); in != nil && st.State == dashboard.StateRunning {
		for _, svc := range in.Services() {
			sv := dashboard.Service{Name: svc.ID, Role: svc.Role, Addr: svc.Addr, Up: svc.Up, Active: int64(svc.Active)}
			if svc.Role == dashboard.RoleAccept {
				// Listening is not enough: a far end must offer it.
				sv.Up = svc.Up && anyNamed(reach, svc.Name)
			}
			v.Services = append(v.Services, sv)
		}
		return v
	}
	for _, svc := range s.Config().Services {
		sv := dashboard.Service{Name: svc.Name, Role: dashboard.RoleAccept, Addr: svc.Accept}
		if svc.Connect != "" {
			sv.Role, sv.Addr = dashboard.RoleConnect, svc.Connect
		}
		v.Services = append(v.Services, sv)
	}
	return v
}

// named reports whether id (a service name, or tenant/name) names the
// service called name.
func named(id, name string) bool { return id == name || strings.HasSuffix(id, "/"+name) }

func anyNamed(set map[string]bool, name string) bool {
	for id := range set {
		if named(id, name) {
			return true
		}
	}
	return false
}

func nonNil(ss []string) []string {
	if ss == nil {
		return []string{}
	}
	return ss
}

// Topology is what this instance knows of the deployment, for the
// dashboard. auth, if not empty, is sent as the Authorization header when
// asking the site's members for their views.
func (s *Supervisor) Topology(ctx context.Context, auth string) dashboard.Topology {
	st := s.status()
	self := s.view(st)
	t := dashboard.Topology{Title: fmt.Sprintf("%s (site %s)", s.cfg.Instance, s.cfg.Site), Observer: s.cfg.Instance, Time: time.Now().UTC()}
	own := dashboard.Site{Name: s.cfg.Site, Instances: []dashboard.Instance{self}}
	in := s.Current()
	if in == nil {
		own.CachesNote = "this instance is stopped"
		own.FederationNote = "this instance is stopped"
		t.Notes = append(t.Notes, s.cfg.Instance+" is stopped: it sees neither its site's members nor any tunnel. POST /api/v1/start (or sitebridge demo start) brings it back.")
	} else {
		var wg sync.WaitGroup
		var members []dashboard.Instance
		for _, m := range st.Members {
			if m.Name != s.cfg.Instance {
				members = append(members, dashboard.Instance{Name: m.Name, Site: s.cfg.Site, State: dashboard.StateRunning,
					Seen: dashboard.SeenMember, Epoch: m.Epoch, Admin: memberAdmin(m), Tunnels: []dashboard.Tunnel{}, Services: []dashboard.Service{}})
			}
		}
		for i := range members {
			wg.Go(func() { askMember(ctx, &members[i], auth) })
		}
		sctx, cancel := context.WithTimeout(ctx, siteViewTimeout)
		wg.Go(func() {
			caches, err := in.Store().Caches(sctx, s.cfg.Store.Scope)
			if err != nil {
				own.CachesNote = err.Error()
				return
			}
			own.Caches = nonNilSlice(caches)
		})
		wg.Go(func() {
			if !in.Store().Federated() {
				own.FederationNote = "no federation configured"
				return
			}
			fed, err := in.Store().FedStatus(sctx)
			if err != nil {
				own.FederationNote = err.Error()
				return
			}
			own.Federation = nonNilSlice(fed)
			own.FedOps = "api/v1/federation"
		})
		wg.Wait()
		cancel()
		own.Instances = append(own.Instances, members...)
		if len(st.Members) == 0 && s.cfg.Cluster.Name != "" {
			t.Notes = append(t.Notes, "not joined to the site cluster yet")
		}
	}
	t.Sites = append(t.Sites, own)

	// Other sites: their instances as the tunnels of this site's
	// instances show them, each with its tunnels to this site.
	remote := map[string]*dashboard.Instance{}
	for _, local := range own.Instances {
		for _, tn := range local.Tunnels {
			if tn.Site == s.cfg.Site {
				continue
			}
			r := remote[tn.Peer]
			if r == nil {
				r = &dashboard.Instance{Name: tn.Peer, Site: tn.Site, State: dashboard.StateRunning, Seen: dashboard.SeenTunnel,
					Tunnels: []dashboard.Tunnel{}, Services: []dashboard.Service{}}
				remote[tn.Peer] = r
			}
			// What it opened over the tunnel is not known here.
			r.Tunnels = append(r.Tunnels, dashboard.Tunnel{Peer: local.Name, Site: local.Site, Dialled: !tn.Dialled,
				Services: []string{}})
		}
	}
	sites := map[string]bool{}
	for _, p := range s.Config().Peers {
		sites[p.Site] = true
	}
	for _, r := range remote {
		sites[r.Site] = true
	}
	for _, name := range slices.Sorted(maps.Keys(sites)) {
		if name == s.cfg.Site {
			continue
		}
		site := dashboard.Site{Name: name, Instances: []dashboard.Instance{},
			CachesNote:     "not visible from " + s.cfg.Instance + ": open the dashboard of an instance of site " + name,
			FederationNote: "not visible from " + s.cfg.Instance + ": open the dashboard of an instance of site " + name}
		for _, r := range remote {
			if r.Site == name {
				slices.SortFunc(r.Tunnels, func(a, b dashboard.Tunnel) int { return cmp.Compare(a.Peer, b.Peer) })
				site.Instances = append(site.Instances, *r)
			}
		}
		slices.SortFunc(site.Instances, func(a, b dashboard.Instance) int { return cmp.Compare(a.Name, b.Name) })
		t.Sites = append(t.Sites, site)
	}
	return t
}

func nonNilSlice[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// memberAdmin is where a member's admin endpoint is reached: the address
// it announces, with its gossip address's host when it listens on every
// address (0.0.0.0 or ::).
func memberAdmin(m MemberStatus) string {
	host, port, err := net.SplitHostPort(m.Admin)
	if err != nil {
		return m.Admin
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		if gh, _, err := net.SplitHostPort(m.Addr); err == nil {
			return net.JoinHostPort(gh, port)
		}
	}
	return m.Admin
}

// askMember fills v with the member's own view (GET /api/v1/topology?self=1
// on its admin endpoint), or sets v.Error.
func askMember(ctx context.Context, v *dashboard.Instance, auth string) {
	if v.Admin == "" {
		v.Error = "it announces no admin endpoint"
		return
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+v.Admin+"/api/v1/topology?self=1", nil)
	if err != nil {
		v.Error = err.Error()
		return
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := memberClient.Do(req)
	if err != nil {
		v.State, v.Error = dashboard.StateUnreachable, fmt.Sprintf("admin endpoint: %v", err)
		return
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		v.State, v.Error = dashboard.StateUnreachable, fmt.Sprintf("admin endpoint: %v", err)
		return
	}
	if resp.StatusCode != http.StatusOK {
		v.Error = fmt.Sprintf("admin endpoint %s answered %s", v.Admin, resp.Status)
		return
	}
	var got dashboard.Instance
	if err := json.Unmarshal(body, &got); err != nil {
		v.Error = fmt.Sprintf("admin endpoint %s: %v", v.Admin, err)
		return
	}
	if got.Name != v.Name {
		v.Error = fmt.Sprintf("admin endpoint %s is instance %q", v.Admin, got.Name)
		return
	}
	admin := v.Admin
	*v = got
	v.Seen, v.Admin = dashboard.SeenMember, admin
}
