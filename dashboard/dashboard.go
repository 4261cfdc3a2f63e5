// Package dashboard is the web page an instance serves on its admin
// endpoint (GET /, assets under /ui/): a live topology of sites, instances
// and tunnels, the services with their open connections, the federation
// participants with their state, lag and replicate-all progress, and the
// cache sizes of each site, with buttons for the federation operations.
//
// The page is plain HTML, CSS and JavaScript embedded in the binary: no
// build step, no Node toolchain, nothing fetched from elsewhere (it works
// offline). It holds no data itself: it polls GET api/v1/topology, which
// answers a [Topology], relative to the page. Package gateway computes it
// for one instance (what that instance knows: itself, its site's members,
// the other sites' instances as seen through tunnels); package demo
// computes it for the whole demo and adds stop/start buttons and a load
// generator. Whatever an instance's admin API protects stays protected:
// the page asks for the bearer token when an answer is 401 and sends it
// with every request (kept in the tab's sessionStorage).
package dashboard

import (
	"embed"
	"io/fs"
	"net/http"
	"strings"
	"time"

	"github.com/sitebridge/sitebridge/store"
)

//go:embed static
var static embed.FS

// Topology is what the page draws: GET api/v1/topology.
type Topology struct {
	// Title names what the page shows, such as "cloud1 (site cloud)".
	Title string `json:"title"`
	// Observer is the instance that answered; empty for the demo, which
	// sees every instance itself.
	Observer string `json:"observer,omitempty"`
	// Sites are the sites, the observer's first (the demo: cloud, onprem).
	Sites []Site `json:"sites"`
	// Notes say what the observer cannot see.
	Notes []string `json:"notes,omitempty"`
	// Demo is set by `sitebridge demo`: its load generator's jobs.
	Demo *Demo     `json:"demo,omitempty"`
	Time time.Time `json:"time"`
}

// Site is one site: its instances, its caches and its federation.
type Site struct {
	Name      string     `json:"name"`
	Instances []Instance `json:"instances"`
	// Caches are the site's caches with their sizes; nil when not known
	// here (CachesNote says why).
	Caches     []store.CacheInfo `json:"caches"`
	CachesNote string            `json:"caches_note,omitempty"`
	// Federation is the site's federation figures, summed over its
	// members; nil when not known here (FederationNote says why).
	Federation     []store.FedStatus `json:"federation"`
	FederationNote string            `json:"federation_note,omitempty"`
	// FedOps is the URL prefix (relative to the page) of the site's
	// federation operations: POST FedOps/{participant}/{operation}. Empty
	// when this page cannot operate them.
	FedOps string `json:"fed_ops,omitempty"`
}

// Instance states.
const (
	StateRunning     = "running"     // running (for Seen "tunnel": its tunnel is up)
	StateStopped     = "stopped"     // stopped through the admin API; its admin endpoint answers
	StateUnreachable = "unreachable" // a live member whose admin endpoint did not answer
)

// How the observer knows an instance.
const (
	SeenSelf   = "self"   // it is the observer
	SeenMember = "member" // a member of the observer's site; its admin endpoint answered (or not: Error)
	SeenTunnel = "tunnel" // an instance of another site with a live tunnel to the observer's site
	SeenDemo   = "demo"   // the demo runs it
)

// Instance is one instance as the observer sees it.
type Instance struct {
	Name  string `json:"name"`
	Site  string `json:"site"`
	State string `json:"state"`
	Seen  string `json:"seen"`
	Epoch uint64 `json:"epoch,omitempty"`
	// Admin is its admin endpoint, host:port, when known.
	Admin string `json:"admin,omitempty"`
	// Tunnels are its live tunnels. For an instance seen through tunnels
	// they are the tunnels to the observer's site.
	Tunnels []Tunnel `json:"tunnels"`
	// Services are its configured services; empty when not known.
	Services []Service `json:"services"`
	// Error says why the rest is not known.
	Error string `json:"error,omitempty"`
	// Ops is the URL prefix (relative to the page) of POST Ops/stop and
	// POST Ops/start; empty when this page cannot stop or start it.
	Ops string `json:"ops,omitempty"`
}

// Tunnel is one live tunnel of an instance.
type Tunnel struct {
	Peer    string `json:"peer"`
	Site    string `json:"site"`
	Dialled bool   `json:"dialled"` // this instance dialled it (otherwise it accepted it)
	// Active counts the connections this instance opened over the tunnel
	// (its clients') that are open now; the far end counts its own. For
	// an instance seen through tunnels it is 0: not known.
	Active   int64    `json:"active_connections"`
	Services []string `json:"services"` // what the far end offers over it now
}

// Service roles.
const (
	RoleAccept  = "accept"  // listens for clients and forwards them over a tunnel
	RoleConnect = "connect" // dials the real server for streams from peers
)

// Service is one configured service of an instance.
type Service struct {
	Name string `json:"name"`
	Role string `json:"role"`
	Addr string `json:"addr"`
	// Up: for an accept service, it listens and a tunnel or a site member
	// reaches a far end that offers it; for a connect service, its target
	// passes its health check.
	Up bool `json:"up"`
	// Active is how many connections of the service are open now.
	Active int64 `json:"active_connections"`
}

// Demo is the demo's load generator: its two jobs.
type Demo struct {
	// Trades is the number of trades added so far (keys T000001 ...).
	Trades int64   `json:"trades"`
	Add    LoadJob `json:"add"`    // the last "add N trades" job
	Prices LoadJob `json:"prices"` // the last "random price updates" job
}

// LoadJob is one job of the demo's load generator.
type LoadJob struct {
	Running   bool      `json:"running"`
	Site      string    `json:"site,omitempty"`  // whose instances take the writes
	Total     int64     `json:"total,omitempty"` // writes planned (add), 0 when bounded by time (prices)
	Done      int64     `json:"done"`            // writes acknowledged
	Errors    int64     `json:"errors"`
	LastError string    `json:"last_error,omitempty"`
	Rate      int       `json:"rate,omitempty"` // writes per second (prices)
	Started   time.Time `json:"started,omitzero"`
	Ends      time.Time `json:"ends,omitzero"` // when it stops by itself (prices)
	Finished  time.Time `json:"finished,omitzero"`
}

// Handler serves the page: GET / (index.html) and GET /ui/NAME (its
// assets). Mount it on "GET /{$}" and "GET /ui/". Other paths are 404,
// other methods 405. The answers forbid framing and inline scripts.
func Handler() http.Handler {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.StripPrefix("/ui/", http.FileServerFS(sub))
	index, err := fs.ReadFile(sub, "index.html")
	if err != nil {
		panic(err)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache") // a new binary serves new assets at once
		switch {
		case r.URL.Path == "/":
			h.Set("Content-Type", "text/html; charset=utf-8")
			if r.Method == http.MethodGet {
				w.Write(index)
			}
		case strings.HasPrefix(r.URL.Path, "/ui/") && r.URL.Path != "/ui/" && r.URL.Path != "/ui/index.html":
			files.ServeHTTP(w, r)
		default:
			http.NotFound(w, r)
		}
	})
}
