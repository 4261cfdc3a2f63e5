package tests

import (
	"bufio"
	"context"
	"fmt"
	"maps"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"
)

// The load of TestFailoverUnderLoad.
const (
	loadRate           = 100 // new connections per second, spread over every targeted accept port
	minLoadRate        = 50  // the floor the issue sets, checked in every phase
	loadAttemptTimeout = 3 * time.Second
	loadMaxInFlight    = 256 // attempts in flight at once; a tick finding none free is skipped

	baselineLoad = time.Second             // all instances up, before the first kill
	downLoad     = 1500 * time.Millisecond // load on the survivors while the victims are down
	tailLoad     = 500 * time.Millisecond  // all instances up again, after the last phase

	// maxCutDelay bounds how soon after the kill a connection in flight
	// through a victim fails: on loopback the kernel resets the victim's
	// sockets at once, so its tunnels end at once.
	maxCutDelay = time.Second

	// maxRecovery bounds the time from a killed instance's new process
	// starting until a new connection to its own accept port echoes.
	maxRecovery = 2 * time.Second
)

// TestFailoverUnderLoad is the HA guarantee of the 2+2 deployment: while a
// load generator opens new connections (loadRate per second, each one
// round trip) to the accept port of every surviving instance, kill -9 one
// instance, keep the load on the survivors, restart it and see it carry
// traffic again within maxRecovery; one instance after the other, then the
// four pairs of one cloud and one on-prem instance killed at once. No
// connection through a surviving instance may fail, including while the
// victims restart. The load stops targeting a victim's accept port at the
// kill; connections already in flight to it are lost with it (TCP cannot
// migrate) and are counted apart, as are connections through a survivor
// that were in flight at the kill, spliced through the victim to their
// target (see account). With -short, three phases kill every instance once.
func TestFailoverUnderLoad(t *testing.T) {
	skipUnlessLinux(t)
	bin := sitebridgeBinary(t)
	ip := pickLoopback(t)
	c := startCluster(t, bin, ip)

	type phaseSpec struct{ victims []string }
	phases := []phaseSpec{
		{[]string{"cloud1"}}, {[]string{"cloud2"}}, {[]string{"onprem1"}}, {[]string{"onprem2"}},
		{[]string{"cloud1", "onprem1"}}, {[]string{"cloud1", "onprem2"}},
		{[]string{"cloud2", "onprem1"}}, {[]string{"cloud2", "onprem2"}},
	}
	if testing.Short() {
		phases = []phaseSpec{{[]string{"cloud1"}}, {[]string{"onprem2"}}, {[]string{"cloud2", "onprem1"}}}
	}

	var all []int
	for _, in := range c.insts {
		all = append(all, in.clientPort)
	}
	g := &loadGen{ip: ip, targets: slices.Clone(all), sem: make(chan struct{}, loadMaxInFlight)}
	ctx, cancel := context.WithCancel(t.Context())
	// Runs before startCluster's cleanups: no attempt outlives the cluster.
	t.Cleanup(func() { cancel(); g.wait() })
	g.start(ctx, loadRate)
	t.Logf("load: %d new connections/s over %v, one round trip each, %v per attempt", loadRate, all, loadAttemptTimeout)

	var results []*phaseResult
	// report stops the load and prints the table; deferred too, so a phase
	// that fails the test at once (t.Fatal) still shows what went before.
	reported := false
	report := func() {
		if reported {
			return
		}
		reported = true
		cancel()
		g.wait()
		// After a t.Fatal the last phases may be unfinished or unstarted.
		results = slices.DeleteFunc(results, func(r *phaseResult) bool { return r.from.IsZero() })
		for i, r := range results {
			if r.to.IsZero() {
				r.to = time.Now()
				if i+1 < len(results) {
					r.to = results[i+1].from
				}
			}
		}
		account(results, g.snapshot())
		t.Logf("failover under load on %s (%d phases%s):\n%s", ip, len(phases), map[bool]string{true: ", -short"}[testing.Short()], formatResults(results, g.skips()))
	}
	defer report()

	// Baseline: every instance up.
	results = append(results, &phaseResult{name: "baseline", killed: "-", from: g.began})
	hold(t, baselineLoad)

	for _, ph := range phases {
		var victims []*instance
		for _, name := range ph.victims {
			victims = append(victims, c.inst(name))
		}
		res := &phaseResult{}
		results = append(results, res)
		runPhase(t, c, g, victims, res)
		results[len(results)-2].to = res.from
	}

	results[len(results)-1].to = time.Now()
	results = append(results, &phaseResult{name: "after", killed: "-", from: time.Now()})
	hold(t, tailLoad)
	results[len(results)-1].to = time.Now()
	report()

	total, failed := 0, 0
	for _, r := range results {
		total += r.attempts
		failed += len(r.failures)
		if rate := r.rate(); rate < minLoadRate {
			t.Errorf("%s: load of %.0f new connections/s, want at least %d (load generator starved?)", r.name, rate, minLoadRate)
		}
		for _, f := range r.cut {
			t.Logf("%s: connection to %s (%s) started %v before the kill, cut %v after it (not counted): %v", r.name, c.addr(f.port), c.instByPort(f.port),
				r.from.Sub(f.start).Round(100*time.Microsecond), f.end.Sub(r.from).Round(100*time.Microsecond), f.err)
		}
		for _, f := range r.failures {
			t.Errorf("%s: connection to %s (%s) started %s, %v into the phase, failed after %v: %v", r.name, c.addr(f.port), c.instByPort(f.port),
				f.start.UTC().Format(logTime), f.start.Sub(r.from).Round(time.Millisecond), f.end.Sub(f.start).Round(time.Millisecond), f.err)
		}
		for _, rec := range r.recoveries {
			if rec.err != nil {
				t.Errorf("%s: %s never carried traffic again: %v", r.name, rec.name, rec.err)
			} else if rec.took > maxRecovery {
				t.Errorf("%s: first echo through %s (%s) came %v after its process started, want at most %v",
					r.name, rec.name, c.addr(rec.port), rec.took.Round(time.Millisecond), maxRecovery)
			}
		}
	}
	t.Logf("total: %d connections through surviving instances, %d failed", total, failed)
	var refusals []string
	for _, in := range c.insts {
		refusals = append(refusals, fmt.Sprintf("%s %d", in.name, len(grepFile(in.proc.log, "client connection refused", "relay refused"))))
	}
	t.Logf("client connections and relayed streams the instances refused (their logs): %s", strings.Join(refusals, ", "))
	if failed > 0 {
		c.logRefusals(t)
	}
}

// hold keeps the load running for d (a fixed load duration, not a wait for
// a condition).
func hold(t *testing.T, d time.Duration) {
	select {
	case <-time.After(d):
	case <-t.Context().Done():
		t.Fatal(t.Context().Err())
	}
}

// recovery is how one restarted instance came back.
type recovery struct {
	name     string
	port     int           // its accept port
	took     time.Duration // from its process starting to the first echo through port
	attempts int
	err      error
}

// phaseResult is one phase of the failover test: the connections started
// in [from, to), plus the victims' own connections cut by the kill.
type phaseResult struct {
	name, killed string
	from, to     time.Time
	victimPorts  []int
	recoveries   []recovery
	meshAfter    time.Duration // from the restart to every instance holding its 2 tunnels again

	attempts       int
	durations      []time.Duration // of the attempts that echoed
	perPort        map[int]int
	failures       []attempt
	victimInFlight int // connections to a victim's port in flight at the kill (not counted)
	victimLost     int // how many of them failed

	// cutPorts are the survivors' ports whose connections may be spliced
	// through a victim: those of the other site than a victim.
	cutPorts []int
	cut      []attempt // connections through them in flight at the kill that failed at once (not counted)
}

// runPhase kills victims at once while the load runs, keeps the load on
// the survivors for downLoad, restarts the victims, measures their
// recovery, waits for the full mesh and puts their ports back under load.
func runPhase(t *testing.T, c *cluster, g *loadGen, victims []*instance, res *phaseResult) {
	t.Helper()
	c.waitReady(t)
	var names []string
	var procs []*proc
	var ports []int
	for _, v := range victims {
		names = append(names, v.name)
		procs = append(procs, v.proc)
		ports = append(ports, v.clientPort)
	}
	res.name, res.killed, res.victimPorts = "kill "+strings.Join(names, "+"), strings.Join(names, "+"), ports
	for _, in := range c.insts {
		if !slices.Contains(victims, in) && slices.ContainsFunc(victims, func(v *instance) bool { return v.site != in.site }) {
			res.cutPorts = append(res.cutPorts, in.clientPort)
		}
	}
	// From this moment no new connection goes to a victim's port.
	res.from = g.remove(ports...)
	killAll(t, procs...)
	hold(t, downLoad)

	for _, v := range victims {
		v.proc.start(t)
	}
	// Probe every restarted instance concurrently, so one's recovery does
	// not delay the measurement of another's.
	res.recoveries = make([]recovery, len(victims))
	var wg sync.WaitGroup
	for i, v := range victims {
		started := v.proc.started
		wg.Go(func() {
			pr, err := pollEcho(t.Context(), c.addr(v.clientPort), 10*time.Second, time.Second)
			res.recoveries[i] = recovery{name: v.name, port: v.clientPort, attempts: pr.attempts, err: err}
			if err == nil {
				res.recoveries[i].took = pr.ok.Sub(started)
			}
		})
	}
	wg.Wait()
	c.waitReady(t)
	res.meshAfter = time.Since(slices.MinFunc(procs, func(a, b *proc) int { return a.started.Compare(b.started) }).started)
	g.add(ports...)
}

// account sorts the attempts into phases. Each counts in the phase in
// which it started, except two kinds of connections that were in flight at
// a kill, which count apart for the phase of that kill: those to a victim's
// own accept port (their client socket died with it), and those through a
// survivor that failed at once and could have been spliced through a
// victim of the other site (their socket to the target died with it; the
// gateway cannot replay bytes it has forwarded). Neither is a new
// connection; every other failure counts.
func account(rs []*phaseResult, all []attempt) {
	for _, r := range rs {
		r.perPort = map[int]int{}
	}
next:
	for _, a := range all {
		for _, r := range rs {
			if !a.start.Before(r.from) || a.end.Before(r.from) {
				continue // not in flight at this kill
			}
			if slices.Contains(r.victimPorts, a.port) {
				r.victimInFlight++
				if a.err != nil {
					r.victimLost++
				}
				continue next
			}
			if a.err != nil && slices.Contains(r.cutPorts, a.port) && a.end.Sub(r.from) < maxCutDelay {
				r.cut = append(r.cut, a)
				continue next
			}
		}
		for _, r := range rs {
			if a.start.Before(r.from) || !a.start.Before(r.to) {
				continue
			}
			r.attempts++
			r.perPort[a.port]++
			if a.err != nil {
				r.failures = append(r.failures, a)
			} else {
				r.durations = append(r.durations, a.end.Sub(a.start))
			}
			continue next
		}
	}
}

func (r *phaseResult) rate() float64 {
	return float64(r.attempts) / r.to.Sub(r.from).Seconds()
}

// formatResults prints one row per phase.
func formatResults(rs []*phaseResult, skipped int) string {
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "phase\tkilled\tattempts\tfailures\trate/s\tround trip p50/p99/max\tper port\tin flight at kill: to victim (lost), cut via victim\tfirst echo via restarted\tmesh complete")
	for _, r := range rs {
		var pp []string
		for _, p := range slices.Sorted(maps.Keys(r.perPort)) {
			pp = append(pp, fmt.Sprintf("%d:%d", p, r.perPort[p]))
		}
		var rec []string
		for _, x := range r.recoveries {
			if x.err != nil {
				rec = append(rec, x.name+" never")
			} else {
				rec = append(rec, fmt.Sprintf("%s %v", x.name, x.took.Round(time.Millisecond)))
			}
		}
		inflight, mesh := "-", "-"
		if len(r.victimPorts) > 0 {
			inflight = fmt.Sprintf("%d (%d), %d", r.victimInFlight, r.victimLost, len(r.cut))
			if r.meshAfter > 0 {
				mesh = r.meshAfter.Round(time.Millisecond).String()
			}
		}
		if len(rec) == 0 {
			rec = []string{"-"}
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%.0f\t%s\t%s\t%s\t%s\t%s\n", r.name, r.killed, r.attempts, len(r.failures), r.rate(),
			percentiles(r.durations), strings.Join(pp, " "), inflight, strings.Join(rec, ", "), mesh)
	}
	w.Flush()
	fmt.Fprintf(&b, "(per port: connections started in the phase; a victim's port is loaded again once the mesh is complete. First echo: from the\n"+
		"restarted process starting to a new connection to its own accept port echoing; mesh: from the first restart to every instance holding\n"+
		"its 2 tunnels at current epochs. Ticks skipped for want of a free slot: %d)", skipped)
	return b.String()
}

// percentiles formats the median, 99th percentile and maximum of ds.
func percentiles(ds []time.Duration) string {
	if len(ds) == 0 {
		return "-"
	}
	ds = slices.Clone(ds)
	slices.Sort(ds)
	at := func(q float64) time.Duration { return ds[min(len(ds)-1, int(q*float64(len(ds))))] }
	r := func(d time.Duration) string { return d.Round(100 * time.Microsecond).String() }
	return r(at(0.5)) + "/" + r(at(0.99)) + "/" + r(ds[len(ds)-1])
}

func (c *cluster) instByPort(port int) string {
	for _, in := range c.insts {
		if in.clientPort == port {
			return in.name
		}
	}
	return "?"
}

// logRefusals prints, per instance, the log lines where it gave up on a
// client or a relayed stream, with their reasons.
func (c *cluster) logRefusals(t *testing.T) {
	for _, in := range c.insts {
		lines := grepFile(in.proc.log, "client connection refused", "relay refused", "stream refused", "tunnel down", "=== e2e:")
		t.Logf("---- %s: refusals, tunnel losses, starts and kills (%s) ----\n%s", in.name, in.proc.log, strings.Join(lines, "\n"))
	}
}

// grepFile returns the lines of path that contain any of subs.
func grepFile(path string, subs ...string) []string {
	f, err := os.Open(path)
	if err != nil {
		return []string{err.Error()}
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		for _, s := range subs {
			if strings.Contains(line, s) {
				out = append(out, line)
				break
			}
		}
	}
	return out
}

// attempt is one connection of the load: connect, write a unique line,
// read it back.
type attempt struct {
	port       int
	start, end time.Time
	err        error
}

// loadGen opens new connections at a fixed rate, round robin over its
// target ports, each on its own goroutine and bounded in time, with at most
// cap(sem) in flight.
type loadGen struct {
	ip  string
	sem chan struct{}
	wg  sync.WaitGroup

	began time.Time

	mu      sync.Mutex
	targets []int
	next    int
	seq     int
	skipped int
	results []attempt
}

func (g *loadGen) start(ctx context.Context, rate int) {
	g.began = time.Now()
	g.wg.Go(func() {
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			g.mu.Lock()
			if len(g.targets) == 0 {
				g.mu.Unlock()
				continue
			}
			port := g.targets[g.next%len(g.targets)]
			g.next++
			g.seq++
			seq := g.seq
			start := time.Now() // under mu: ordered with remove
			g.mu.Unlock()
			select {
			case g.sem <- struct{}{}:
			default:
				g.mu.Lock()
				g.skipped++
				g.mu.Unlock()
				continue
			}
			g.wg.Go(func() {
				defer func() { <-g.sem }()
				err := g.roundTrip(port, seq, start)
				g.mu.Lock()
				g.results = append(g.results, attempt{port: port, start: start, end: time.Now(), err: err})
				g.mu.Unlock()
			})
		}
	})
}

// roundTrip is one attempt, bounded by loadAttemptTimeout from start.
func (g *loadGen) roundTrip(port, seq int, start time.Time) error {
	deadline := start.Add(loadAttemptTimeout)
	conn, err := net.DialTimeout("tcp", net.JoinHostPort(g.ip, strconv.Itoa(port)), time.Until(deadline))
	if err != nil {
		return err
	}
	defer conn.Close()
	return roundTripConn(conn, "load "+strconv.Itoa(seq)+" to "+strconv.Itoa(port)+"\n", time.Until(deadline))
}

// remove stops targeting ports and returns the moment it did: every
// attempt on them started before.
func (g *loadGen) remove(ports ...int) time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.targets = slices.DeleteFunc(g.targets, func(p int) bool { return slices.Contains(ports, p) })
	return time.Now()
}

func (g *loadGen) add(ports ...int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.targets = append(g.targets, ports...)
	slices.Sort(g.targets)
}

// wait returns when the generator has stopped (its context ended) and
// every attempt has finished.
func (g *loadGen) wait() { g.wg.Wait() }

func (g *loadGen) snapshot() []attempt {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.results)
}

func (g *loadGen) skips() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.skipped
}
