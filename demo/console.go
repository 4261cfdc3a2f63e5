package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"github.com/sitebridge/sitebridge/dashboard"
	"github.com/sitebridge/sitebridge/gateway"
	"github.com/sitebridge/sitebridge/store"
)

// The demo's dashboard: the dashboard page (package dashboard) on its own
// port (PortDashboard), fed by the demo process itself, which runs every
// instance and so sees all four whether they run or not. Next to what an
// instance's own dashboard shows, it stops and starts any instance and has
// a load generator on the federated trades cache:
//
//	GET  /, /ui/...                                         the page
//	GET  /api/v1/topology                                   every instance, both sites' caches and federation, the load generator's jobs
//	POST /api/v1/demo/instances/{name}/stop|start           the failover drill, one click at a time
//	POST /api/v1/demo/sites/{site}/federation/{participant}/{operation}
//	POST /api/v1/demo/trades       {"site":"cloud","count":100}               add N trades
//	POST /api/v1/demo/prices       {"site":"onprem","rate":20,"seconds":30}   random price updates; they stop by themselves
//	POST /api/v1/demo/prices/stop
//
// Like the demo's admin endpoints it has no token (everything listens on
// the demo's host, loopback by default); it refuses cross-origin POSTs, so
// another web page cannot press its buttons.

// Bounds of the load generator.
const (
	MaxTradesPerRequest = 10000
	MaxPriceRate        = 200 // updates per second
	MaxPriceSeconds     = 120
	TradesCache         = "trades" // federated between the sites (the demo's "trades*" caches)
	loadWorkers         = 4        // concurrent puts of an "add trades" job
	loadPutTimeout      = 5 * time.Second
	consoleSiteTimeout  = 2 * time.Second // a site's caches and federation for one topology answer
	consoleFedOpTimeout = 15 * time.Second
)

var symbols = []struct {
	name  string
	price float64
}{{"ACME", 112.50}, {"GLOBEX", 48.20}, {"INITECH", 23.75}, {"UMBRELLA", 301.10}, {"HOOLI", 87.35}, {"STARK", 640.00}, {"WAYNE", 152.80}, {"TYRELL", 19.95}}

// Trade is the value the load generator writes: JSON under the key
// T000001, T000002, ...
type Trade struct {
	ID       string    `json:"id"`
	Symbol   string    `json:"symbol"`
	Side     string    `json:"side"`
	Quantity int       `json:"quantity"`
	Price    float64   `json:"price"`
	Site     string    `json:"site"` // where it was last written
	Updated  time.Time `json:"updated"`
}

func tradeKey(n int64) string { return fmt.Sprintf("T%06d", n) }

func newTrade(n int64, site string) Trade {
	s := symbols[n%int64(len(symbols))]
	side := "buy"
	if rand.IntN(2) == 0 {
		side = "sell"
	}
	return Trade{ID: tradeKey(n), Symbol: s.name, Side: side, Quantity: 10 * (1 + rand.IntN(100)),
		Price: roundCents(s.price * (0.95 + 0.1*rand.Float64())), Site: site, Updated: time.Now().UTC()}
}

func roundCents(p float64) float64 { return math.Round(p*100) / 100 }

// console serves the demo's dashboard.
type console struct {
	ctx   context.Context // the demo's: load jobs end with it
	insts []Instance
	sups  []*gateway.Supervisor
	log   *slog.Logger
	jobs  sync.WaitGroup

	mu         sync.Mutex
	trades     int64 // trades added so far (keys T000001 ...)
	add        dashboard.LoadJob
	prices     dashboard.LoadJob
	stopPrices context.CancelFunc
	next       int // rotates puts over a site's instances
}

func newConsole(ctx context.Context, insts []Instance, sups []*gateway.Supervisor, log *slog.Logger) *console {
	return &console{ctx: ctx, insts: insts, sups: sups, log: log.With("component", "demo-dashboard")}
}

func (c *console) handler() http.Handler {
	mux := http.NewServeMux()
	page := dashboard.Handler()
	mux.Handle("GET /{$}", page)
	mux.Handle("GET /ui/", page)
	mux.HandleFunc("GET /api/v1/topology", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, c.topology(r.Context()))
	})
	mux.HandleFunc("POST /api/v1/demo/instances/{name}/{op}", c.serveInstanceOp)
	mux.HandleFunc("POST /api/v1/demo/sites/{site}/federation/{participant}/{op}", c.serveFedOp)
	mux.HandleFunc("POST /api/v1/demo/trades", c.serveAddTrades)
	mux.HandleFunc("POST /api/v1/demo/prices", c.servePrices)
	mux.HandleFunc("POST /api/v1/demo/prices/stop", func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		stop := c.stopPrices
		c.mu.Unlock()
		if stop == nil {
			writeError(w, http.StatusConflict, "no price updates are running")
			return
		}
		stop()
		writeJSON(w, http.StatusOK, map[string]string{"result": "stopping"})
	})
	return http.NewCrossOriginProtection().Handler(mux)
}

// wait waits for the load jobs, which end with the demo's context.
func (c *console) wait() { c.jobs.Wait() }

func (c *console) sites() []string {
	var out []string
	for _, in := range c.insts {
		if len(out) == 0 || out[len(out)-1] != in.Site {
			out = append(out, in.Site)
		}
	}
	return out
}

func (c *console) knownSite(site string) bool {
	for _, in := range c.insts {
		if in.Site == site {
			return true
		}
	}
	return false
}

// running returns the running instances of site, starting with a
// different one on each call so that writes spread over them.
func (c *console) running(site string) []*gateway.Instance {
	var out []*gateway.Instance
	for i, in := range c.insts {
		if in.Site != site {
			continue
		}
		if cur := c.sups[i].Current(); cur != nil {
			out = append(out, cur)
		}
	}
	if len(out) > 1 {
		c.mu.Lock()
		c.next++
		k := c.next % len(out)
		c.mu.Unlock()
		out = append(out[k:], out[:k]...)
	}
	return out
}

func (c *console) topology(ctx context.Context) dashboard.Topology {
	t := dashboard.Topology{Title: "sitebridge demo · 2 cloud + 2 on-prem instances", Time: time.Now().UTC()}
	var wg sync.WaitGroup
	for _, name := range c.sites() {
		site := dashboard.Site{Name: name, Instances: []dashboard.Instance{},
			FedOps: "api/v1/demo/sites/" + name + "/federation"}
		for i, in := range c.insts {
			if in.Site == name {
				v := c.sups[i].View()
				v.Seen, v.Ops = dashboard.SeenDemo, "api/v1/demo/instances/"+in.Name
				site.Instances = append(site.Instances, v)
			}
		}
		t.Sites = append(t.Sites, site)
	}
	sctx, cancel := context.WithTimeout(ctx, consoleSiteTimeout)
	defer cancel()
	for i := range t.Sites {
		s := &t.Sites[i]
		run := c.running(s.Name)
		if len(run) == 0 {
			s.CachesNote = "every instance of site " + s.Name + " is stopped"
			s.FederationNote = s.CachesNote
			s.FedOps = ""
			continue
		}
		st, via := run[0].Store(), run[0].Status().Instance
		wg.Go(func() {
			caches, err := st.Caches(sctx, "")
			if err != nil {
				s.CachesNote = fmt.Sprintf("through %s: %v", via, err)
				return
			}
			s.Caches = caches
			if s.Caches == nil {
				s.Caches = []store.CacheInfo{}
			}
		})
		wg.Go(func() {
			fed, err := st.FedStatus(sctx)
			if err != nil {
				s.FederationNote = fmt.Sprintf("through %s: %v", via, err)
				return
			}
			s.Federation = fed
			if s.Federation == nil {
				s.Federation = []store.FedStatus{}
			}
		})
	}
	wg.Wait()
	c.mu.Lock()
	t.Demo = &dashboard.Demo{Trades: c.trades, Add: c.add, Prices: c.prices}
	c.mu.Unlock()
	return t
}

func (c *console) serveInstanceOp(w http.ResponseWriter, r *http.Request) {
	name, op := r.PathValue("name"), r.PathValue("op")
	for i, in := range c.insts {
		if in.Name != name {
			continue
		}
		switch op {
		case "stop":
			if !c.sups[i].Stop() {
				writeError(w, http.StatusConflict, name+" is not running")
				return
			}
		case "start":
			if !c.sups[i].Start() {
				writeError(w, http.StatusConflict, name+" is running")
				return
			}
		default:
			writeError(w, http.StatusNotFound, "operation must be stop or start")
			return
		}
		c.log.Warn("instance "+op+" requested (demo dashboard)", "instance", name, "from", r.RemoteAddr)
		writeJSON(w, http.StatusAccepted, map[string]string{"instance": name, "operation": op, "result": "requested"})
		return
	}
	writeError(w, http.StatusNotFound, fmt.Sprintf("no demo instance %q", name))
}

func (c *console) serveFedOp(w http.ResponseWriter, r *http.Request) {
	site, p, op := r.PathValue("site"), r.PathValue("participant"), r.PathValue("op")
	if !c.knownSite(site) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no demo site %q", site))
		return
	}
	run := c.running(site)
	if len(run) == 0 {
		writeError(w, http.StatusServiceUnavailable, "every instance of site "+site+" is stopped")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), consoleFedOpTimeout)
	defer cancel()
	if err := run[0].Store().FedControl(ctx, p, op); err != nil {
		code := http.StatusServiceUnavailable
		switch {
		case errors.Is(err, store.ErrUnknownParticipant):
			code = http.StatusNotFound
		case errors.Is(err, store.ErrBadName):
			code = http.StatusBadRequest
		}
		writeError(w, code, err.Error())
		return
	}
	c.log.Info("federation operation (demo dashboard)", "site", site, "participant", p, "operation", op)
	writeJSON(w, http.StatusOK, map[string]string{"site": site, "participant": p, "operation": op, "result": "done"})
}

// readJSON decodes a small JSON body into v.
func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, "bad request body: "+err.Error())
		return false
	}
	return true
}

func (c *console) serveAddTrades(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Site  string `json:"site"`
		Count int64  `json:"count"`
	}
	if !readJSON(w, r, &req) {
		return
	}
	if !c.knownSite(req.Site) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("no demo site %q", req.Site))
		return
	}
	if req.Count < 1 || req.Count > MaxTradesPerRequest {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("count must be 1-%d", MaxTradesPerRequest))
		return
	}
	c.mu.Lock()
	if c.add.Running {
		c.mu.Unlock()
		writeError(w, http.StatusConflict, "trades are being added already")
		return
	}
	first := c.trades + 1
	c.trades += req.Count
	c.add = dashboard.LoadJob{Running: true, Site: req.Site, Total: req.Count, Started: time.Now().UTC()}
	c.mu.Unlock()
	c.log.Info("adding trades (demo dashboard)", "site", req.Site, "count", req.Count, "first", tradeKey(first))
	c.jobs.Go(func() { c.addTrades(req.Site, first, req.Count) })
	writeJSON(w, http.StatusAccepted, map[string]any{"site": req.Site, "count": req.Count, "first": tradeKey(first)})
}

// addTrades puts trades first..first+count-1 on site with a few workers.
func (c *console) addTrades(site string, first, count int64) {
	ids := make(chan int64)
	var wg sync.WaitGroup
	for range loadWorkers {
		wg.Go(func() {
			for n := range ids {
				c.record(&c.add, c.put(site, newTrade(n, site)))
			}
		})
	}
feed:
	for n := first; n < first+count; n++ {
		select {
		case ids <- n:
		case <-c.ctx.Done():
			break feed
		}
	}
	close(ids)
	wg.Wait()
	c.mu.Lock()
	c.add.Running, c.add.Finished = false, time.Now().UTC()
	job := c.add
	c.mu.Unlock()
	c.log.Info("trades added (demo dashboard)", "site", site, "written", job.Done, "failed", job.Errors)
}

func (c *console) servePrices(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Site    string `json:"site"`
		Rate    int    `json:"rate"`
		Seconds int    `json:"seconds"`
	}
	if !readJSON(w, r, &req) {
		return
	}
	if !c.knownSite(req.Site) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("no demo site %q", req.Site))
		return
	}
	if req.Rate < 1 || req.Rate > MaxPriceRate {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("rate must be 1-%d updates per second", MaxPriceRate))
		return
	}
	if req.Seconds < 1 || req.Seconds > MaxPriceSeconds {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("seconds must be 1-%d", MaxPriceSeconds))
		return
	}
	c.mu.Lock()
	if c.trades == 0 {
		c.mu.Unlock()
		writeError(w, http.StatusConflict, "add trades first: price updates change existing trades")
		return
	}
	if c.prices.Running {
		c.mu.Unlock()
		writeError(w, http.StatusConflict, "price updates are running already")
		return
	}
	d := time.Duration(req.Seconds) * time.Second
	ctx, cancel := context.WithTimeout(c.ctx, d)
	now := time.Now().UTC()
	c.prices = dashboard.LoadJob{Running: true, Site: req.Site, Rate: req.Rate, Started: now, Ends: now.Add(d)}
	c.stopPrices = cancel
	c.mu.Unlock()
	c.log.Info("price updates (demo dashboard)", "site", req.Site, "rate", req.Rate, "for", d.String())
	c.jobs.Go(func() {
		defer cancel()
		c.updatePrices(ctx, req.Site, req.Rate)
	})
	writeJSON(w, http.StatusAccepted, map[string]any{"site": req.Site, "rate": req.Rate, "seconds": req.Seconds})
}

// updatePrices writes a new price into a random existing trade rate times
// a second until ctx ends. A slow write (a failover) delays the next ones;
// missed ticks are dropped, so the rate is never exceeded.
func (c *console) updatePrices(ctx context.Context, site string, rate int) {
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			c.mu.Lock()
			c.prices.Running, c.prices.Finished, c.stopPrices = false, time.Now().UTC(), nil
			job := c.prices
			c.mu.Unlock()
			c.log.Info("price updates done (demo dashboard)", "site", site, "written", job.Done, "failed", job.Errors)
			return
		case <-tick.C:
		}
		c.mu.Lock()
		n := 1 + rand.Int64N(c.trades)
		c.mu.Unlock()
		tr := newTrade(n, site)
		c.record(&c.prices, c.put(site, tr))
	}
}

// put writes a trade through a running instance of site, trying the next
// one if it fails.
func (c *console) put(site string, tr Trade) error {
	b, err := json.Marshal(tr)
	if err != nil {
		return err
	}
	err = fmt.Errorf("every instance of site %s is stopped", site)
	for _, in := range c.running(site) {
		ctx, cancel := context.WithTimeout(c.ctx, loadPutTimeout)
		err = in.Store().Put(ctx, "", TradesCache, tr.ID, b, 0)
		cancel()
		if err == nil || c.ctx.Err() != nil {
			return err
		}
	}
	return err
}

func (c *console) record(job *dashboard.LoadJob, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		job.Errors++
		job.LastError = err.Error()
		return
	}
	job.Done++
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}
