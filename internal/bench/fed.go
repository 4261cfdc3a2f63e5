package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"text/template"
	"time"

	"github.com/sitebridge/sitebridge/cacheclient"
	lb "github.com/sitebridge/sitebridge/internal/loopback"
	"github.com/sitebridge/sitebridge/store"
	"github.com/sitebridge/sitebridge/tlsgen"
)

// fedScheme is the federated scheme of the sites; every cache the group
// writes matches its pattern "trades*".
const fedScheme = "trades"

// FedResults is the federation group: replication between two sites of
// one instance each, against what the same writes cost at the sending
// site alone, measured in the same run. Direct holds the baseline and
// Tunnel the federation figure (as in [StoreResults]); each figure's
// Baseline names what its baseline is.
type FedResults struct {
	Status       string   `json:"status"` // "ok", or why it did not run
	Topology     string   `json:"topology,omitempty"`
	Clients      int      `json:"clients,omitempty"`
	Entries      int      `json:"entries,omitempty"`          // per throughput run
	ValueBytes   int      `json:"value_bytes,omitempty"`      // of every write
	LagRate      int      `json:"lag_writes_per_s,omitempty"` // of the lag runs
	LagSeconds   float64  `json:"lag_run_seconds,omitempty"`
	ReplicateAll int      `json:"replicate_all_entries,omitempty"`
	Ready        float64  `json:"ready_seconds,omitempty"` // from start to the first entry federated
	Failed       int64    `json:"failed_ops,omitempty"`    // over all runs; in no figure
	Figures      []Figure `json:"figures,omitempty"`
}

// fedParams are the load sizes of the federation group.
type fedParams struct {
	clients   int           // concurrent writers of the throughput and replicate-all phases
	entries   int           // per throughput run
	rate      int           // writes/s of a lag run
	rateDur   time.Duration // per lag run
	raEntries int           // written before the replicate-all
	wait      time.Duration // the longest wait for the far site, per phase
	pollEvery time.Duration // how often the lag poller lists the keys not yet seen
}

func fedParamsFor(short bool) fedParams {
	p := fedParams{clients: 16, entries: 50_000, rate: 500, rateDur: 10 * time.Second, raEntries: 100_000,
		wait: 60 * time.Second, pollEvery: 2 * time.Millisecond}
	if short {
		p.entries, p.rate, p.rateDur, p.raEntries, p.wait = 5000, 200, 3*time.Second, 10_000, 30*time.Second
	}
	return p
}

// lagWriters write at once in a lag run.
const lagWriters = 8

// fedValueSize is the size of every value written.
const fedValueSize = 100

// fedProfile starts the two sites, waits until an entry written at the
// cloud site reaches the on-prem site, and measures. It does not fail the
// run: a failure is in Status or in a figure's Status.
func fedProfile(ctx context.Context, o Options, p params, sp *spawner, prog io.Writer) *FedResults {
	fp := p.fed
	res := &FedResults{
		Topology: "cloud1 (site cloud) + onprem1 (site onprem): one instance per site, no cluster, so no backups; onprem1 dials cloud1 (mutual TLS); scheme trades federated active-active",
		Clients:  fp.clients, Entries: fp.entries, ValueBytes: fedValueSize,
		LagRate: fp.rate, LagSeconds: fp.rateDur.Seconds(), ReplicateAll: fp.raEntries,
	}
	fail := func(err error) *FedResults {
		res.Status = "failed: " + err.Error()
		fmt.Fprintf(prog, "federation: %v\n", err)
		return res
	}
	ip, err := lb.Pick()
	if err != nil {
		return fail(err)
	}
	dir, err := os.MkdirTemp("", "sitebridge-bench-fed-")
	if err != nil {
		return fail(err)
	}
	defer os.RemoveAll(dir)
	fmt.Fprintf(prog, "federation: cloud1 and onprem1 on %s, files in %s\n", ip, dir)
	t0 := time.Now()
	d, admin, err := startFedSites(sp, o.Bin, dir, ip)
	if err != nil {
		return fail(err)
	}
	defer d.stop()
	e := newFedEnds(admin[0], admin[1])
	defer e.close()
	if err := e.waitFederated(ctx, d, 60*time.Second); err != nil {
		return fail(err)
	}
	res.Ready = time.Since(t0).Seconds()
	fmt.Fprintf(prog, "federation: first entry across %v after start\n", time.Since(t0).Round(time.Millisecond))

	res.Figures, res.Failed = fedFigures(ctx, fp, p.runs, e, prog)
	if err := d.exited(); err != nil {
		return fail(err)
	}
	res.Status = "ok"
	return res
}

// fedMember is what the config template needs of one instance.
type fedMember struct {
	Name, Site, Other string
	Cloud             bool   // accepts the tunnel
	Tunnel            string // cloud1's tunnel listener (onprem1 dials it)
	Admin             string
}

var fedConfigTmpl = template.Must(template.New("fed").Parse(`# sitebridge bench: {{.Name}}, federation
instance: {{.Name}}
site: {{.Site}}
mode: prod
tls:
  ca: ca.crt
  cert: {{.Name}}.crt
  key: {{.Name}}.key
{{- if .Cloud}}
tunnel:
  listen: {{.Tunnel}}
peers:
  - site: onprem
{{- else}}
peers:
  - site: cloud
    urls:
      - wss://{{.Tunnel}}/sitebridge
{{- end}}
admin:
  listen: {{.Admin}}
store:
  schemes:
    - name: default
    - name: trades
      federation: sites
  caches:
    - pattern: "trades*"
      scheme: trades
    - pattern: "*"
      scheme: default
federation:
  participants:
    - site: {{.Other}}
  topologies:
    - name: sites
      type: active-active
      sites: [cloud, onprem]
log:
  level: info
`))

// writeFedConfigs generates certificates and the configs of cloud1 and
// onprem1 in dir, with every address on ip, and returns the members and
// their config paths.
func writeFedConfigs(dir, ip string) ([]fedMember, []string, error) {
	hp := func() (string, error) {
		port, err := freePort(ip)
		return net.JoinHostPort(ip, fmt.Sprint(port)), err
	}
	members := []fedMember{
		{Name: "cloud1", Site: "cloud", Other: "onprem", Cloud: true},
		{Name: "onprem1", Site: "onprem", Other: "cloud"},
	}
	tunnel, err := hp()
	if err != nil {
		return nil, nil, err
	}
	var spec tlsgen.Spec
	for i := range members {
		m := &members[i]
		m.Tunnel = tunnel
		if m.Admin, err = hp(); err != nil {
			return nil, nil, err
		}
		is := tlsgen.InstanceSpec{Name: m.Name, Site: m.Site}
		if m.Cloud {
			is.IPs = []string{ip}
		}
		spec.Instances = append(spec.Instances, is)
	}
	if _, err := tlsgen.Generate(spec, dir, false); err != nil {
		return nil, nil, fmt.Errorf("tlsgen: %w", err)
	}
	var paths []string
	for _, m := range members {
		var b bytes.Buffer
		if err := fedConfigTmpl.Execute(&b, m); err != nil {
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

// startFedSites writes the configs, checks them with the binary and starts
// cloud1 and onprem1. It returns them and their admin addresses (cloud
// first); it does not wait for the tunnel.
func startFedSites(sp *spawner, bin, dir, ip string) (*deployment, []string, error) {
	members, paths, err := writeFedConfigs(dir, ip)
	if err != nil {
		return nil, nil, err
	}
	d := &deployment{dir: dir}
	var admin []string
	for i, m := range members {
		if out, err := exec.Command(bin, "run", "--config", paths[i], "--check").CombinedOutput(); err != nil {
			d.stop()
			return nil, nil, fmt.Errorf("sitebridge run --config %s --check: %v\n%s", paths[i], err, out)
		}
		c, err := startChild(sp, m.Name, filepath.Join(dir, m.Name+".log"), []string{bin, "run", "--config", paths[i]})
		if err != nil {
			d.stop()
			return nil, nil, err
		}
		if m.Cloud {
			d.cloud = c
		} else {
			d.onprem = c
		}
		admin = append(admin, m.Admin)
	}
	return d, admin, nil
}

// fedAdmin is one site's federation admin API.
type fedAdmin struct {
	hc   *http.Client
	addr string // host:port
}

func (a fedAdmin) do(ctx context.Context, method, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://"+a.addr+path, nil)
	if err != nil {
		return err
	}
	resp, err := a.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
		return fmt.Errorf("%s %s: %s %s", method, path, resp.Status, bytes.TrimSpace(b))
	}
	if v == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		return err
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// op applies a federation operation (start, stop, pause, ...) to
// participant.
func (a fedAdmin) op(ctx context.Context, participant, op string) error {
	return a.do(ctx, http.MethodPost, "/api/v1/federation/"+participant+"/"+op, nil)
}

// status is the site's federation status of the trades scheme towards
// participant.
func (a fedAdmin) status(ctx context.Context, participant string) (store.FedStatus, error) {
	var ans struct {
		Participants []store.FedStatus `json:"participants"`
	}
	if err := a.do(ctx, http.MethodGet, "/api/v1/federation", &ans); err != nil {
		return store.FedStatus{}, err
	}
	for _, st := range ans.Participants {
		if st.Scheme == fedScheme && st.Participant == participant {
			return st, nil
		}
	}
	return store.FedStatus{}, fmt.Errorf("%s: no status of scheme %s towards %s", a.addr, fedScheme, participant)
}

// digests are the site's partition digests of the trades scheme.
func (a fedAdmin) digests(ctx context.Context) ([]store.Digest, error) {
	var ans struct {
		Partitions []store.Digest `json:"partitions"`
	}
	err := a.do(ctx, http.MethodGet, "/api/v1/federation/digests?scheme="+fedScheme, &ans)
	return ans.Partitions, err
}

// fedEnds are the two sites as the measurements use them: a cache client
// and the admin API of each.
type fedEnds struct {
	cloud, onprem           *cacheclient.Client
	cloudAdmin, onpremAdmin fedAdmin
}

func newFedEnds(cloud, onprem string) fedEnds {
	hc := &http.Client{Timeout: 30 * time.Second}
	return fedEnds{
		cloud: cacheclient.New(cloud), onprem: cacheclient.New(onprem),
		cloudAdmin: fedAdmin{hc: hc, addr: cloud}, onpremAdmin: fedAdmin{hc: hc, addr: onprem},
	}
}

func (e fedEnds) close() {
	e.cloud.CloseIdleConnections()
	e.onprem.CloseIdleConnections()
	e.cloudAdmin.hc.CloseIdleConnections()
}

// cloudPath is the cloud site as a load path (one client).
func (e fedEnds) cloudPath() kvPath {
	return kvPath{name: "cloud", clients: []*cacheclient.Client{e.cloud}}
}

// waitFederated puts a probe entry at the cloud site until the on-prem
// site has it: both instances up, the tunnel up, federation shipping.
func (e fedEnds) waitFederated(ctx context.Context, d *deployment, timeout time.Duration) error {
	value := payload[:fedValueSize]
	err := pollUntil(ctx, timeout, 100*time.Millisecond, func(ctx context.Context) error {
		if err := d.exited(); err != nil {
			return err
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := e.cloud.Put(cctx, "trades-probe", "probe", value, 0); err != nil {
			return fmt.Errorf("put at cloud1: %w", err)
		}
		_, ok, err := e.onprem.Get(cctx, "trades-probe", "probe")
		switch {
		case err != nil:
			return fmt.Errorf("get at onprem1: %w", err)
		case !ok:
			return errors.New("not at onprem1 yet")
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("federation not working within %v: %w\n%s\n%s", timeout, err, d.cloud.logTail(15), d.onprem.logTail(15))
	}
	return nil
}

// pollUntil calls check every interval until it returns nil, for at most
// timeout; it returns the last error if that never happens.
func pollUntil(ctx context.Context, timeout, every time.Duration, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var err error
	for range int(timeout/every) + 2 {
		if err = check(ctx); err == nil {
			return nil
		}
		t := time.NewTimer(every)
		select {
		case <-ctx.Done():
			t.Stop()
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("not within %v: %w", timeout, err)
			}
			return ctx.Err()
		case <-t.C:
		}
	}
	return fmt.Errorf("not within %v: %w", timeout, err)
}

// waitDrained waits until the cloud site has nothing pending for onprem
// and ships to it.
func (e fedEnds) waitDrained(ctx context.Context, timeout time.Duration) error {
	return pollUntil(ctx, timeout, 50*time.Millisecond, func(ctx context.Context) error {
		st, err := e.cloudAdmin.status(ctx, "onprem")
		if err != nil {
			return err
		}
		if st.State != store.FedStarted || st.Pending != 0 {
			return fmt.Errorf("onprem participant %s, %d entries pending", st.State, st.Pending)
		}
		return nil
	})
}

// cacheSize is the number of entries of cache at the site c serves.
func cacheSize(ctx context.Context, c *cacheclient.Client, cache string) (int64, error) {
	infos, err := c.Caches(ctx)
	if err != nil {
		return 0, err
	}
	for _, in := range infos {
		if in.Name == cache {
			return in.Size, nil
		}
	}
	return 0, nil
}

// fedKeys returns n keys.
func fedKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%06d", i)
	}
	return keys
}

// The figures' keys, names and baselines.
const (
	fedBaseRate    = "local writes/s at cloud1, federation to onprem paused (the same writers)"
	fedBaseLatency = "put latency at cloud1 of the same writes (write to acknowledgement)"
	fedBaseRA      = "writing the entries at cloud1 in the first place (the same writers)"
)

// fedFigures measures the replicate-all, then the throughput runs, then
// the lag runs, on sites that hold nothing but the probe entry at first:
// a replicate-all sends the whole scheme, so it goes first. It returns
// the figures (Direct: baseline; Tunnel: federation) and the number of
// writes that failed.
func fedFigures(ctx context.Context, fp fedParams, runs int, e fedEnds, prog io.Writer) ([]Figure, int64) {
	var figs []Figure
	var failedOps int64
	label := fmt.Sprintf("%d clients, %s", fp.clients, fmtSize(fedValueSize))

	// Replicate-all: one run (a second would send the first one's entries
	// too).
	raFigs := []Figure{
		{Key: "fed_replicate_all_seconds", Name: fmt.Sprintf("replicate-all time (%d entries, %s)", fp.raEntries, label), Unit: "s", Baseline: fedBaseRA},
		{Key: "fed_replicate_all_rate", Name: fmt.Sprintf("replicate-all entries/s (%d entries, %s)", fp.raEntries, label), Unit: "/s", Baseline: fedBaseRA},
	}
	if local, ra, err := replicateAll(ctx, fp, e, prog); err != nil {
		fmt.Fprintf(prog, "  replicate-all: %v\n", err)
		for i := range raFigs {
			raFigs[i].Status = "failed: " + err.Error()
		}
	} else {
		n := float64(fp.raEntries)
		raFigs[0].set([]float64{local.Seconds()}, []float64{ra.Seconds()})
		raFigs[1].set([]float64{n / local.Seconds()}, []float64{n / ra.Seconds()})
	}
	figs = append(figs, raFigs...)

	// Throughput: a paused (baseline) and a federated run, alternating.
	tp := Figure{Key: "fed_entries_per_s", Name: fmt.Sprintf("entries/s replicated (%d entries, %s)", fp.entries, label), Unit: "/s", Baseline: fedBaseRate}
	var base, fed []float64
	var failure error
	for r := range runs {
		if ctx.Err() != nil {
			failure = ctx.Err()
			break
		}
		b, f, err := throughputRun(ctx, fp, e, r+1, prog)
		if err != nil {
			failure = fmt.Errorf("run %d: %w", r+1, err)
			fmt.Fprintf(prog, "  throughput run %d/%d: %v\n", r+1, runs, err)
			continue
		}
		base, fed = append(base, b), append(fed, f)
		fmt.Fprintf(prog, "  throughput run %d/%d: local %s/s paused, %s/s replicated\n", r+1, runs, fmtNum(b), fmtNum(f))
	}
	if len(fed) == 0 {
		tp.Status = fmt.Sprintf("failed: %v", failure)
	} else {
		tp.set(base, fed)
	}
	figs = append(figs, tp)

	// Lag at a fixed rate.
	lagLabel := fmt.Sprintf("%d writes/s for %v, %s", fp.rate, fp.rateDur, fmtSize(fedValueSize))
	lagFigs := []Figure{
		{Key: "fed_lag_p50", Name: fmt.Sprintf("replication lag p50 (%s)", lagLabel), Unit: "ms", Baseline: fedBaseLatency + ", p50"},
		{Key: "fed_lag_p99", Name: fmt.Sprintf("replication lag p99 (%s)", lagLabel), Unit: "ms", Baseline: fedBaseLatency + ", p99"},
	}
	out := [2][2][]float64{} // [p50, p99][baseline, lag]
	failure = nil
	for r := range runs {
		if ctx.Err() != nil {
			failure = ctx.Err()
			break
		}
		lr, err := lagRun(ctx, fp, e, fmt.Sprintf("trades-lag-%d", r+1))
		failedOps += lr.failed
		if err != nil {
			failure = fmt.Errorf("run %d: %w", r+1, err)
			fmt.Fprintf(prog, "  lag run %d/%d: %v\n", r+1, runs, err)
			continue
		}
		v := [2][2]float64{
			{millis(percentile(lr.put, 50)), millis(percentile(lr.lag, 50))},
			{millis(percentile(lr.put, 99)), millis(percentile(lr.lag, 99))},
		}
		for i := range v {
			for j := range v[i] {
				out[i][j] = append(out[i][j], v[i][j])
			}
		}
		note := fmt.Sprintf("; %d listings", lr.polls)
		if lr.early > 0 {
			note += fmt.Sprintf(", %d seen before their acknowledgement (lag 0)", lr.early)
		}
		if lr.failed > 0 {
			note += fmt.Sprintf(", %d puts failed", lr.failed)
		}
		fmt.Fprintf(prog, "  lag run %d/%d: %d writes at %s/s; put p50 %s ms, p99 %s ms; lag p50 %s ms, p99 %s ms%s\n",
			r+1, runs, len(lr.lag), fmtNum(lr.rate), fmtNum(v[0][0]), fmtNum(v[1][0]), fmtNum(v[0][1]), fmtNum(v[1][1]), note)
	}
	for i := range lagFigs {
		if len(out[i][1]) == 0 {
			lagFigs[i].Status = fmt.Sprintf("failed: %v", failure)
		} else {
			lagFigs[i].set(out[i][0], out[i][1])
		}
	}
	figs = append(figs, lagFigs...)
	return figs, failedOps
}

// replicateAll stops federation to onprem, writes fp.raEntries entries at
// cloud, then starts it with a replicate-all and waits until the status
// shows the round done with nothing pending and both sites' digests are
// equal. It returns the time the writes took and the time from the start
// to convergence.
func replicateAll(ctx context.Context, fp fedParams, e fedEnds, prog io.Writer) (local, ra time.Duration, err error) {
	const cache = "trades-ra"
	if err := e.cloudAdmin.op(ctx, "onprem", store.FedOpStop); err != nil {
		return 0, 0, err
	}
	t0 := time.Now()
	if err := fill(ctx, e.cloudPath(), fp.clients, cache, fedKeys(fp.raEntries), payload[:fedValueSize], fp.wait); err != nil {
		e.cloudAdmin.op(ctx, "onprem", store.FedOpStart)
		return 0, 0, fmt.Errorf("writing %d entries: %w", fp.raEntries, err)
	}
	local = time.Since(t0)
	before, err := e.cloudAdmin.status(ctx, "onprem")
	if err != nil {
		return 0, 0, err
	}
	round := uint64(0)
	if before.ReplicateAll != nil {
		round = before.ReplicateAll.Gen
	}
	if n, err := cacheSize(ctx, e.onprem, cache); err == nil && n > 0 {
		fmt.Fprintf(prog, "  replicate-all: onprem1 already holds %d of the entries written while stopped\n", n)
	}
	fmt.Fprintf(prog, "  replicate-all: %d entries written at cloud1 in %v, federation stopped\n", fp.raEntries, local.Round(time.Millisecond))

	t1 := time.Now()
	for _, op := range []string{store.FedOpStart, store.FedOpReplicateAll} {
		if err := e.cloudAdmin.op(ctx, "onprem", op); err != nil {
			return 0, 0, err
		}
	}
	err = pollUntil(ctx, fp.wait, 50*time.Millisecond, func(ctx context.Context) error {
		st, err := e.cloudAdmin.status(ctx, "onprem")
		if err != nil {
			return err
		}
		switch pr := st.ReplicateAll; {
		case pr == nil || pr.Gen <= round:
			return fmt.Errorf("no replicate-all round after %d", round)
		case pr.Percent < 100 || st.Pending != 0 || st.State != store.FedStarted:
			return fmt.Errorf("replicate-all %.0f%%, %d entries pending, %s", pr.Percent, st.Pending, st.State)
		}
		a, err := e.cloudAdmin.digests(ctx)
		if err != nil {
			return err
		}
		b, err := e.onpremAdmin.digests(ctx)
		if err != nil {
			return err
		}
		if !slices.Equal(a, b) {
			return fmt.Errorf("digests differ (%d and %d partitions)", len(a), len(b))
		}
		return nil
	})
	ra = time.Since(t1)
	if err != nil {
		return 0, 0, err
	}
	n, err := cacheSize(ctx, e.onprem, cache)
	if err != nil {
		return 0, 0, err
	}
	if n != int64(fp.raEntries) {
		return 0, 0, fmt.Errorf("onprem1 holds %d entries of %s, want %d", n, cache, fp.raEntries)
	}
	fmt.Fprintf(prog, "  replicate-all: converged %v after start, digests equal\n", ra.Round(time.Millisecond))
	return local, ra, nil
}

// throughputRun writes fp.entries entries at cloud with federation
// paused (the baseline; the paused backlog is then dropped with
// start-with-no-backlog), then as many into a new cache with federation
// on, and returns both rates: local writes/s, and entries/s from the
// first write to all of them at onprem.
func throughputRun(ctx context.Context, fp fedParams, e fedEnds, run int, prog io.Writer) (local, replicated float64, err error) {
	keys := fedKeys(fp.entries)
	value := payload[:fedValueSize]
	n := float64(fp.entries)
	if err := e.cloudAdmin.op(ctx, "onprem", store.FedOpPause); err != nil {
		return 0, 0, err
	}
	t0 := time.Now()
	err = fill(ctx, e.cloudPath(), fp.clients, fmt.Sprintf("trades-local-%d", run), keys, value, fp.wait)
	el := time.Since(t0)
	if oerr := e.cloudAdmin.op(ctx, "onprem", store.FedOpNoBacklog); err == nil {
		err = oerr
	}
	if err != nil {
		return 0, 0, err
	}
	local = n / el.Seconds()
	if err := e.waitDrained(ctx, fp.wait); err != nil {
		return 0, 0, err
	}

	cache := fmt.Sprintf("trades-tp-%d", run)
	pctx, pcancel := context.WithCancel(ctx) // ended when the writes fail
	defer pcancel()
	t0 = time.Now()
	var wrote time.Duration
	var fillErr error
	var wg sync.WaitGroup
	wg.Go(func() {
		fillErr = fill(ctx, e.cloudPath(), fp.clients, cache, keys, value, fp.wait)
		wrote = time.Since(t0)
		if fillErr != nil {
			pcancel()
		}
	})
	var have int64
	err = pollUntil(pctx, fp.wait, 20*time.Millisecond, func(ctx context.Context) error {
		var err error
		if have, err = cacheSize(ctx, e.onprem, cache); err != nil {
			return err
		}
		if have < int64(fp.entries) {
			return fmt.Errorf("onprem1 holds %d of %d entries", have, fp.entries)
		}
		return nil
	})
	all := time.Since(t0)
	wg.Wait()
	if err := errors.Join(fillErr, err); err != nil {
		return 0, 0, err
	}
	fmt.Fprintf(prog, "  throughput run %d: %d entries written at cloud1 in %v (federating), all at onprem1 after %v\n",
		run, fp.entries, wrote.Round(time.Millisecond), all.Round(time.Millisecond))
	return local, n / all.Seconds(), nil
}

// lagResult is the outcome of one lag run.
type lagResult struct {
	put, lag []time.Duration // one each per write acknowledged and seen at onprem
	rate     float64         // acknowledged writes/s achieved
	failed   int64           // puts that failed
	early    int             // seen at onprem before the writer had the acknowledgement (lag 0)
	polls    int             // key listings sent to onprem
}

// lagRun writes fp.rate entries per second for fp.rateDur at cloud, each
// on its schedule (lagWriters at once, so that one slow put delays no
// other), and records when each was acknowledged. Meanwhile a poller
// lists, every fp.pollEvery, the keys onprem holds from the first one it
// has not seen yet on (keys sort in write order, so one request returns
// the few written since), and records when the listing that first showed
// each key was sent. The lag of a write is that time minus its
// acknowledgement; the baseline is its put latency.
//
// A listing per sweep, rather than a get per key not yet seen, keeps the
// poller's load on onprem to one request per sweep whatever the lag.
func lagRun(ctx context.Context, fp fedParams, e fedEnds, cache string) (lagResult, error) {
	if err := e.waitDrained(ctx, fp.wait); err != nil {
		return lagResult{}, err
	}
	n := int(float64(fp.rate) * fp.rateDur.Seconds())
	keys := fedKeys(n)
	value := payload[:fedValueSize]
	interval := time.Second / time.Duration(fp.rate)
	ctx, cancel := context.WithTimeout(ctx, fp.rateDur+fp.wait)
	defer cancel()

	ackAt := make([]atomic.Int64, n)   // since start; 0: not acknowledged (yet)
	seenAt := make([]time.Duration, n) // since start; 0: not seen (yet); the poller's
	put := make([]time.Duration, n)    // each written by the writer of its key
	var writesDone atomic.Bool
	var failed atomic.Int64
	var firstErr atomic.Value
	var polls, pollErrs int
	var lastPollErr error
	start := time.Now()

	var polling sync.WaitGroup
	polling.Go(func() {
		lo := 0 // every key below lo is seen (or, once the writes are done, failed)
		for range int((fp.rateDur+fp.wait)/fp.pollEvery) + 1 {
			t0 := time.Now()
			cursor := ""
			if lo > 0 {
				cursor = keys[lo-1]
			}
			sent := time.Since(start)
			for range n/fedListLimit + 2 { // pages
				pg, err := e.onprem.Keys(ctx, cache, "", cursor, fedListLimit)
				polls++
				if err != nil {
					pollErrs++
					lastPollErr = err
					break
				}
				for _, k := range pg.Keys {
					if i, err := strconv.Atoi(strings.TrimPrefix(k, "k")); err == nil && i >= 0 && i < n && seenAt[i] == 0 {
						seenAt[i] = sent
					}
				}
				if pg.Next == "" {
					break
				}
				cursor = pg.Next
			}
			done := writesDone.Load()
			for lo < n && (seenAt[lo] != 0 || done && ackAt[lo].Load() == 0) {
				lo++
			}
			if lo >= n || sleepCtx(ctx, fp.pollEvery-time.Since(t0)) != nil {
				return
			}
		}
	})

	var next atomic.Int64
	var writing sync.WaitGroup
	for range lagWriters {
		writing.Go(func() {
			for i := next.Add(1) - 1; i < int64(n) && ctx.Err() == nil; i = next.Add(1) - 1 {
				if sleepCtx(ctx, time.Until(start.Add(time.Duration(i)*interval))) != nil {
					return
				}
				t0 := time.Now()
				if err := e.cloud.Put(ctx, cache, keys[i], value, 0); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Errorf("put %s: %w", keys[i], err))
					continue
				}
				at := time.Since(start)
				put[i] = at - t0.Sub(start)
				ackAt[i].Store(int64(at))
			}
		})
	}
	writing.Wait()
	writesDone.Store(true)
	polling.Wait()

	r := lagResult{failed: failed.Load(), polls: polls}
	var last time.Duration
	unseen := 0
	for i := range n {
		a := time.Duration(ackAt[i].Load())
		if a == 0 {
			continue
		}
		last = max(last, a)
		if seenAt[i] == 0 {
			unseen++
			continue
		}
		lag := seenAt[i] - a
		if lag < 0 {
			r.early++
			lag = 0
		}
		r.put = append(r.put, put[i])
		r.lag = append(r.lag, lag)
	}
	switch {
	case r.failed*100 > int64(n):
		err, _ := firstErr.Load().(error)
		return r, fmt.Errorf("%d of %d puts failed, the first: %v", r.failed, n, err)
	case unseen > 0:
		return r, fmt.Errorf("%d acknowledged keys not seen at onprem1 within %v (%d of %d listings failed, the last: %v): %w",
			unseen, fp.rateDur+fp.wait, pollErrs, polls, lastPollErr, ctx.Err())
	case len(r.lag) == 0:
		return r, errors.New("no write acknowledged")
	}
	r.rate = float64(len(r.lag)) / last.Seconds()
	return r, nil
}

// fedListLimit is the most keys one listing of a lag poller returns.
const fedListLimit = 10000

// sleepCtx sleeps for d (not at all if d <= 0), or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// writeFed prints the federation group: its setting and a table of
// figure, baseline, federation, ratio (× for times: federation /
// baseline) and what the baseline is.
func writeFed(w io.Writer, s *FedResults) {
	if s.Status != "ok" {
		fmt.Fprintf(w, "federation: %s\n", s.Status)
	} else {
		fmt.Fprintf(w, "federation: %s; federated %.1f s after start\n", s.Topology, s.Ready)
		if s.Failed > 0 {
			fmt.Fprintf(w, "%d writes failed (in no figure)\n", s.Failed)
		}
	}
	if len(s.Figures) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "figure\tbaseline\tfederation\tratio\tbaseline is\t")
	for _, f := range s.Figures {
		if f.Status != "" {
			fmt.Fprintf(tw, "%s\t%s\t\t\t\t\n", f.Name, f.Status)
			continue
		}
		ratio := "—"
		if f.Ratio != nil {
			ratio = fmt.Sprintf("%.2f", *f.Ratio)
			if f.Unit == "ms" || f.Unit == "s" {
				ratio += "×"
			}
		}
		fmt.Fprintf(tw, "%s\t%s %s\t%s %s\t%s\t%s\t\n", f.Name, fmtNum(*f.Direct), f.Unit, fmtNum(*f.Tunnel), f.Unit, ratio, f.Baseline)
	}
	tw.Flush()
}
