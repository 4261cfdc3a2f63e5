package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"text/template"
	"time"

	"github.com/sitebridge/sitebridge/cacheapi"
	"github.com/sitebridge/sitebridge/cacheapi/cachetest"
	"github.com/sitebridge/sitebridge/cacheclient"
	lb "github.com/sitebridge/sitebridge/internal/loopback"
	"github.com/sitebridge/sitebridge/tlsgen"
)

// storeInstances is the size of the measured site.
const storeInstances = 2

// StoreResults is the site-store group: puts and gets through the cache
// API of a site of storeInstances instances, against the same API over an
// in-memory map in this process (the baseline). Its figures keep the
// shape of the others, with Direct holding the baseline and Tunnel the
// site store, so Ratio is store / baseline.
type StoreResults struct {
	Status    string   `json:"status"` // "ok", or why it did not run
	Instances int      `json:"instances,omitempty"`
	Clients   int      `json:"clients,omitempty"`
	Keys      int      `json:"keys,omitempty"`
	Seconds   float64  `json:"run_seconds,omitempty"` // per run and path
	Baseline  string   `json:"baseline,omitempty"`
	Settled   float64  `json:"settled_seconds,omitempty"` // from start to settled tables
	Failed    int64    `json:"failed_ops,omitempty"`      // over all runs; in no figure
	Figures   []Figure `json:"figures,omitempty"`
}

// storeParams are the load sizes of the store group.
type storeParams struct {
	clients int           // concurrent workers, spread over the clients of a path
	keys    int           // keys per cache, all filled before the runs
	sizes   []int         // value sizes; one cache, and one set of figures, each
	dur     time.Duration // per run and path
	maxOps  int64         // per run and path, an upper bound
}

func storeParamsFor(short bool) storeParams {
	p := storeParams{clients: 16, keys: 10000, sizes: []int{100, 4 << 10}, dur: 2 * time.Second, maxOps: 2_000_000}
	if short {
		p.keys, p.dur, p.maxOps = 2000, 300*time.Millisecond, 200_000
	}
	return p
}

const baselineDesc = "the same cache API (package cacheapi) over an in-memory map (cachetest.Memory) in this process: no partitions, no forwarding, no backups"

// storeProfile starts a site of storeInstances instances and the baseline
// and measures both. It does not fail the run: a failure is in Status or
// in a figure's Status.
func storeProfile(ctx context.Context, o Options, p params, sp *spawner, prog io.Writer) *StoreResults {
	sparams := p.store
	res := &StoreResults{
		Instances: storeInstances, Clients: sparams.clients, Keys: sparams.keys,
		Seconds: sparams.dur.Seconds(), Baseline: baselineDesc,
	}
	fail := func(err error) *StoreResults {
		res.Status = "failed: " + err.Error()
		fmt.Fprintf(prog, "site store: %v\n", err)
		return res
	}
	ip, err := lb.Pick()
	if err != nil {
		return fail(err)
	}
	dir, err := os.MkdirTemp("", "sitebridge-bench-store-")
	if err != nil {
		return fail(err)
	}
	defer os.RemoveAll(dir)
	fmt.Fprintf(prog, "site store: %d instances on %s, files in %s\n", storeInstances, ip, dir)
	t0 := time.Now()
	site, err := startStoreSite(sp, o.Bin, dir, ip, storeInstances)
	if err != nil {
		return fail(err)
	}
	defer site.stop()
	if err := site.waitSettled(ctx, 60*time.Second); err != nil {
		return fail(err)
	}
	res.Settled = time.Since(t0).Seconds()
	fmt.Fprintf(prog, "store tables settled in %v\n", time.Since(t0).Round(time.Millisecond))

	base, err := startBaseline(ip)
	if err != nil {
		return fail(err)
	}
	defer base.close()

	// Both paths get one client per endpoint, with the workers spread over
	// them: for the site one per instance, for the baseline two of the
	// one server, so connection pooling is the same.
	storePath := kvPath{name: "store"}
	for _, a := range site.admin {
		storePath.clients = append(storePath.clients, cacheclient.New(a))
	}
	basePath := kvPath{name: "baseline"}
	for range site.admin {
		basePath.clients = append(basePath.clients, cacheclient.New(base.addr))
	}
	defer storePath.close()
	defer basePath.close()

	res.Figures, res.Failed = storeFigures(ctx, sparams, p.runs, basePath, storePath, prog)
	if err := site.exited(); err != nil {
		return fail(err)
	}
	res.Status = "ok"
	return res
}

// storeSite is a site of instances that share a cluster and so a store.
type storeSite struct {
	members []*child
	admin   []string // host:port of each member's admin endpoint
}

// storeMember is what the config template needs of one member.
type storeMember struct {
	Name                       string
	Tunnel, Admin, Bind, Relay string
}

var storeConfigTmpl = template.Must(template.New("store").Parse(`# sitebridge bench: {{.M.Name}}, site store
instance: {{.M.Name}}
site: cloud
mode: prod
tls:
  ca: ca.crt
  cert: {{.M.Name}}.crt
  key: {{.M.Name}}.key
tunnel:
  listen: {{.M.Tunnel}}
peers:
  - site: onprem
admin:
  listen: {{.M.Admin}}
cluster:
  name: sitebridge-bench
  bind: {{.M.Bind}}
  relay: {{.M.Relay}}
  join:
{{- range .All}}
    - {{.Bind}}
{{- end}}
  gossip-key: gossip.key
log:
  level: info
`))

// writeStoreConfigs generates certificates, a gossip key and one config
// per member in dir, with every address on ip, and returns the members
// and their config paths.
func writeStoreConfigs(dir, ip string, n int) ([]storeMember, []string, error) {
	var spec tlsgen.Spec
	members := make([]storeMember, n)
	hp := func() (string, error) {
		port, err := freePort(ip)
		return net.JoinHostPort(ip, fmt.Sprint(port)), err
	}
	for i := range members {
		m := &members[i]
		m.Name = fmt.Sprintf("store%d", i+1)
		spec.Instances = append(spec.Instances, tlsgen.InstanceSpec{Name: m.Name, Site: "cloud", IPs: []string{ip}})
		for _, a := range []*string{&m.Tunnel, &m.Admin, &m.Bind, &m.Relay} {
			var err error
			if *a, err = hp(); err != nil {
				return nil, nil, err
			}
		}
	}
	if _, err := tlsgen.Generate(spec, dir, false); err != nil {
		return nil, nil, fmt.Errorf("tlsgen: %w", err)
	}
	var paths []string
	for _, m := range members {
		var b bytes.Buffer
		if err := storeConfigTmpl.Execute(&b, map[string]any{"M": m, "All": members}); err != nil {
			return nil, nil, err
		}
		path := filepath.Join(dir, m.Name+".yaml")
		if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
			return nil, nil, err
		}
		paths = append(paths, path)
	}
	return members, paths, nil
}

// startStoreSite writes the configs of an n-instance site, checks them
// with the binary and starts every member. It does not wait for the
// cluster.
func startStoreSite(sp *spawner, bin, dir, ip string, n int) (*storeSite, error) {
	members, paths, err := writeStoreConfigs(dir, ip, n)
	if err != nil {
		return nil, err
	}
	s := &storeSite{}
	for i, m := range members {
		if out, err := exec.Command(bin, "run", "--config", paths[i], "--check").CombinedOutput(); err != nil {
			s.stop()
			return nil, fmt.Errorf("sitebridge run --config %s --check: %v\n%s", paths[i], err, out)
		}
		c, err := startChild(sp, m.Name, filepath.Join(dir, m.Name+".log"), []string{bin, "run", "--config", paths[i]})
		if err != nil {
			s.stop()
			return nil, err
		}
		s.members = append(s.members, c)
		s.admin = append(s.admin, m.Admin)
	}
	return s, nil
}

func (s *storeSite) stop() {
	for _, c := range s.members {
		c.stop()
	}
}

func (s *storeSite) exited() error {
	var errs []error
	for _, c := range s.members {
		errs = append(errs, c.exited())
	}
	return errors.Join(errs...)
}

// storeStatus is the part of GET /api/v1/store that waitSettled reads.
type storeStatus struct {
	Schemes []struct {
		Settled   bool           `json:"settled"`
		Primaries map[string]int `json:"primaries"`
		Lineage   string         `json:"lineage"`
	} `json:"schemes"`
}

// waitSettled polls every member's store status until all report the same
// settled table with every member a primary.
func (s *storeSite) waitSettled(ctx context.Context, timeout time.Duration) error {
	hc := &http.Client{Timeout: 2 * time.Second}
	defer hc.CloseIdleConnections()
	check := func() error {
		lineage := ""
		for i, a := range s.admin {
			resp, err := hc.Get("http://" + a + "/api/v1/store")
			if err != nil {
				return err
			}
			var st storeStatus
			err = json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
			if err != nil {
				return fmt.Errorf("%s: store status: %w", s.members[i].name, err)
			}
			if len(st.Schemes) == 0 {
				return fmt.Errorf("%s: no scheme", s.members[i].name)
			}
			sc := st.Schemes[0]
			if !sc.Settled || len(sc.Primaries) != len(s.members) {
				return fmt.Errorf("%s: settled %v, primaries %v", s.members[i].name, sc.Settled, sc.Primaries)
			}
			if lineage != "" && sc.Lineage != lineage {
				return fmt.Errorf("%s: lineage %s, the others %s", s.members[i].name, sc.Lineage, lineage)
			}
			lineage = sc.Lineage
		}
		return nil
	}
	deadline := time.Now().Add(timeout)
	for {
		if err := s.exited(); err != nil {
			return err
		}
		err := check()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			var tails []string
			for _, c := range s.members {
				tails = append(tails, c.logTail(15))
			}
			return fmt.Errorf("store not settled within %v: %v\n%s", timeout, err, strings.Join(tails, "\n"))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// baselineKV serves the cache API over an in-memory map in this process.
type baselineKV struct {
	addr string
	srv  *http.Server
	done chan struct{}
}

// startBaseline serves the baseline on a free port of ip until close.
func startBaseline(ip string) (*baselineKV, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return nil, err
	}
	h := cacheapi.Handler(cachetest.New(1<<20, nil), cacheapi.Options{})
	mux := http.NewServeMux()
	mux.Handle(cacheapi.Prefix, h)
	mux.Handle(cacheapi.Prefix+"/", h)
	b := &baselineKV{
		addr: ln.Addr().String(),
		// The admin endpoint's settings.
		srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 60 * time.Second,
			WriteTimeout: 45 * time.Second, MaxHeaderBytes: 16 << 10},
		done: make(chan struct{}),
	}
	go func() {
		defer close(b.done)
		b.srv.Serve(ln)
	}()
	return b, nil
}

// close stops the server, closing its connections, and waits for it.
func (b *baselineKV) close() {
	b.srv.Close()
	<-b.done
}

// kvPath is one side of a store figure: clients of the site's instances,
// or of the baseline.
type kvPath struct {
	name    string
	clients []*cacheclient.Client // worker w uses clients[w%len]
}

func (p kvPath) close() {
	for _, c := range p.clients {
		c.CloseIdleConnections()
	}
}

// kvOp is one request of a load run.
type kvOp func(ctx context.Context, c *cacheclient.Client, key string) error

// kvRun is the outcome of one load run.
type kvRun struct {
	rate     float64 // completed operations per second
	p50, p99 time.Duration
	done     int64
	failed   int64
}

// kvLoad runs workers loops of op on random keys for dur or until maxOps
// operations have started, and returns the rate of completed operations
// and their latency. Operations that fail count in failed only; the run
// fails when more than 1% of them did.
func kvLoad(ctx context.Context, path kvPath, workers int, keys []string, dur time.Duration, maxOps int64, op kvOp) (kvRun, error) {
	ctx, cancel := context.WithTimeout(ctx, dur+ioGrace)
	defer cancel()
	var started, failed atomic.Int64
	var firstErr atomic.Value
	lat := make([][]time.Duration, workers)
	start := time.Now()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			c := path.clients[w%len(path.clients)]
			rng := rand.New(rand.NewPCG(uint64(start.UnixNano()), uint64(w)))
			for time.Since(start) < dur && ctx.Err() == nil && started.Add(1) <= maxOps {
				key := keys[rng.IntN(len(keys))]
				t0 := time.Now()
				if err := op(ctx, c, key); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Errorf("%s: %w", key, err))
					continue
				}
				lat[w] = append(lat[w], time.Since(t0))
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	r := kvRun{done: int64(len(all)), failed: failed.Load()}
	if r.done == 0 || r.failed*100 > r.done+r.failed {
		err, _ := firstErr.Load().(error)
		return r, fmt.Errorf("%d of %d operations failed, the first: %v", r.failed, r.done+r.failed, err)
	}
	r.rate = float64(r.done) / el.Seconds()
	r.p50, r.p99 = percentile(all, 50), percentile(all, 99)
	return r, nil
}

// fill puts value under every key of cache, with workers at once, within
// timeout.
func fill(ctx context.Context, path kvPath, workers int, cache string, keys []string, value []byte, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var next atomic.Int64
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			c := path.clients[w%len(path.clients)]
			for i := next.Add(1) - 1; i < int64(len(keys)) && ctx.Err() == nil; i = next.Add(1) - 1 {
				if err := c.Put(ctx, cache, keys[i], value, 0); err != nil {
					errs[w] = fmt.Errorf("put %s: %w", keys[i], err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if next.Load() < int64(len(keys)) {
		return fmt.Errorf("filling %d keys: %w", len(keys), ctx.Err())
	}
	return nil
}

// storeFigures fills one cache per value size on both paths, then
// measures puts and gets on them, alternating the paths run by run. It
// returns the figures (Direct: base; Tunnel: site) and the number of
// operations that failed.
func storeFigures(ctx context.Context, p storeParams, runs int, base, site kvPath, prog io.Writer) ([]Figure, int64) {
	keys := make([]string, p.keys)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%05d", i)
	}
	var figs []Figure
	var failedOps int64
	for _, size := range p.sizes {
		cache := fmt.Sprintf("bench-%d", size)
		value := payload[:size]
		label := fmt.Sprintf("%d clients, %s", p.clients, fmtSize(size))
		suffix := ""
		if size != 100 {
			suffix = fmt.Sprintf("_%s", strings.ToLower(strings.ReplaceAll(fmtSize(size), " ", "")))
		}
		failAll := func(err error) {
			for _, op := range []string{"put", "get"} {
				keys, names := storeFigureIDs(op, label, suffix)
				for i := range keys {
					figs = append(figs, Figure{Key: keys[i], Name: names[i], Status: "failed: " + err.Error()})
				}
			}
		}
		// Filling is also the warm-up: connections, buffers, the caches.
		var fillErr error
		for _, pa := range []kvPath{base, site} {
			t0 := time.Now()
			if err := fill(ctx, pa, p.clients, cache, keys, value, 60*time.Second); err != nil {
				fillErr = fmt.Errorf("filling %s on %s: %w", cache, pa.name, err)
				break
			}
			fmt.Fprintf(prog, "  filled %d keys of %s on %s in %v\n", len(keys), fmtSize(size), pa.name, time.Since(t0).Round(time.Millisecond))
		}
		if fillErr != nil {
			fmt.Fprintf(prog, "  %v\n", fillErr)
			failAll(fillErr)
			continue
		}
		for _, m := range []struct {
			op  string
			run kvOp
		}{
			{op: "put", run: func(ctx context.Context, c *cacheclient.Client, key string) error {
				return c.Put(ctx, cache, key, value, 0)
			}},
			{op: "get", run: func(ctx context.Context, c *cacheclient.Client, key string) error {
				v, ok, err := c.Get(ctx, cache, key)
				switch {
				case err != nil:
					return err
				case !ok:
					return errors.New("missing")
				case len(v) != size:
					return fmt.Errorf("%d bytes, want %d", len(v), size)
				}
				return nil
			}},
		} {
			keysOf, names := storeFigureIDs(m.op, label, suffix)
			units := []string{"/s", "µs", "µs"}
			out := map[string][][]float64{base.name: make([][]float64, 3), site.name: make([][]float64, 3)}
			var failure error
			for r := range runs {
				for _, pa := range []kvPath{base, site} {
					if ctx.Err() != nil {
						failure = ctx.Err()
						break
					}
					kr, err := kvLoad(ctx, pa, p.clients, keys, p.dur, p.maxOps, m.run)
					failedOps += kr.failed
					if err != nil {
						failure = fmt.Errorf("%s run %d: %w", pa.name, r+1, err)
						fmt.Fprintf(prog, "  %s %s run %d: %v\n", names[0], pa.name, r+1, err)
						continue
					}
					v := []float64{kr.rate, micros(kr.p50), micros(kr.p99)}
					for i := range v {
						out[pa.name][i] = append(out[pa.name][i], v[i])
					}
					note := ""
					if kr.failed > 0 {
						note = fmt.Sprintf(" (%d failed)", kr.failed)
					}
					fmt.Fprintf(prog, "  %-42s %-8s run %d/%d: %s/s, p50 %s µs, p99 %s µs%s\n",
						names[0], pa.name, r+1, runs, fmtNum(kr.rate), fmtNum(v[1]), fmtNum(v[2]), note)
				}
			}
			for i := range keysOf {
				f := Figure{Key: keysOf[i], Name: names[i], Unit: units[i]}
				if b, s := out[base.name][i], out[site.name][i]; len(b) == 0 || len(s) == 0 {
					f.Status = fmt.Sprintf("failed: %v", failure)
				} else {
					f.set(b, s)
				}
				figs = append(figs, f)
			}
		}
	}
	return figs, failedOps
}

// writeStore prints the site-store group: its setting and a table of
// figure, baseline, store and ratio (× for latencies: store / baseline).
func writeStore(w io.Writer, s *StoreResults) {
	if s.Status != "ok" {
		fmt.Fprintf(w, "site store: %s\n", s.Status)
	} else {
		fmt.Fprintf(w, "site store: %d instances (one backup per partition), %d clients over their admin endpoints, %d keys, %.1f s per run; settled %.1f s after start\n",
			s.Instances, s.Clients, s.Keys, s.Seconds, s.Settled)
		fmt.Fprintf(w, "baseline: %s\n", s.Baseline)
		if s.Failed > 0 {
			fmt.Fprintf(w, "%d operations failed (in no figure)\n", s.Failed)
		}
	}
	if len(s.Figures) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "figure\tbaseline\tstore\tratio\t")
	for _, f := range s.Figures {
		if f.Status != "" {
			fmt.Fprintf(tw, "%s\t%s\t\t\t\n", f.Name, f.Status)
			continue
		}
		ratio := "—"
		if f.Ratio != nil {
			ratio = fmt.Sprintf("%.2f", *f.Ratio)
			if f.Unit == "µs" {
				ratio += "×"
			}
		}
		fmt.Fprintf(tw, "%s\t%s %s\t%s %s\t%s\t\n", f.Name, fmtNum(*f.Direct), f.Unit, fmtNum(*f.Tunnel), f.Unit, ratio)
	}
	tw.Flush()
}

// storeFigureIDs returns the keys and names of the three figures of op
// ("put" or "get"): its rate, p50 and p99.
func storeFigureIDs(op, label, suffix string) (keys, names []string) {
	keys = []string{"store_" + op + "s" + suffix, "store_" + op + "_p50" + suffix, "store_" + op + "_p99" + suffix}
	names = []string{
		fmt.Sprintf("site-store %ss/s (%s)", op, label),
		fmt.Sprintf("site-store %s p50 (%s)", op, label),
		fmt.Sprintf("site-store %s p99 (%s)", op, label),
	}
	return keys, names
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// fmtSize names a value size: "100 B", "4 KiB".
func fmtSize(n int) string {
	if n >= 1<<10 && n%(1<<10) == 0 {
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}
