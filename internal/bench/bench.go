package bench

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	lb "github.com/sitebridge/sitebridge/internal/loopback"
)

// Options configure a run.
type Options struct {
	// Short selects the short mode: one run of each figure, shorter loads,
	// no WAN profile unless WAN is "on". It checks that everything works,
	// and its figures are rough.
	Short bool
	// Bin is the sitebridge binary to run the instances with.
	Bin string
	// Runs overrides the number of runs per figure (default 3, short 1).
	Runs int
	// WAN is "auto" (full mode only, when root and iproute2 are there),
	// "on" (fail if it cannot run) or "off".
	WAN string
	// WANDelay is the one-way delay of the WAN profile (default 20ms, so a
	// 40 ms round trip).
	WANDelay time.Duration
	// WANConnections is the tunnel.connections of an extra WAN run of the
	// 8-stream figure (default 4; 1 skips it).
	WANConnections int
	// IdleTimeout, if set, is cloud1's limits.idle-timeout in the
	// loopback layout: the memory figures then show what the idle guard
	// costs per held connection.
	IdleTimeout time.Duration
	// RelayCopy, if > 0, makes the reference relays copy every byte
	// through user-space buffers of this size (relay -copy-buffer): what
	// forwarding costs when the bytes must reach user space, as under TLS.
	RelayCopy int
	// Only, if set, limits the run to these groups (see [Groups]), for
	// profiling one figure or running the site store or federation alone.
	Only []string
	// RelayArgv, if set, starts a reference relay process when followed by
	// LISTEN=TARGET pairs (see Relay); the loopback figures then have a
	// reference column.
	RelayArgv []string
	// TLSRelayArgv is the same for the second reference, two relays with
	// mutual TLS between them: each relay's -tls-* flags and its
	// [tls://]LISTEN=[tls://]TARGET pairs are appended.
	TLSRelayArgv []string
	// ServersArgv, if set, runs the sink, echo and source servers in a
	// process of their own, started with their three addresses appended
	// (see Servers): every path then reaches them as a client reaches a
	// real server, across processes. Unset, they run in the bench process,
	// where the direct path's round trip never leaves one Go runtime.
	ServersArgv []string
	// NoLoopback skips the loopback figures, the site store and
	// federation (to run only the WAN profile).
	NoLoopback bool
	// Progress receives a line per measurement (may be nil).
	Progress io.Writer
}

// Groups are the names Options.Only accepts: the loopback groups, then
// the site store and federation.
var Groups = []string{"memory", "throughput_1", "throughput_8", "echo", "conns", "store", "federation"}

func (o Options) want(group string) bool { return len(o.Only) == 0 || slices.Contains(o.Only, group) }

// wantAny reports whether any of groups is to run.
func (o Options) wantAny(groups ...string) bool { return slices.ContainsFunc(groups, o.want) }

// params are the load sizes of a mode.
type params struct {
	runs        int
	tpDur       time.Duration // per throughput run
	tpMax       int64         // bytes per stream, an upper bound
	echoWarm    int
	echoN       int
	echoMax     time.Duration
	connWorkers int
	connDur     time.Duration
	connMax     int64
	held        int
	wanTPDur    time.Duration
	store       storeParams
	fed         fedParams
}

func paramsFor(o Options) params {
	p := params{
		runs: 3, tpDur: 1500 * time.Millisecond, tpMax: 32 << 30,
		echoWarm: 500, echoN: 10000, echoMax: 4 * time.Second,
		connWorkers: 4, connDur: 1500 * time.Millisecond, connMax: 40000,
		held: 1000, wanTPDur: 3 * time.Second, store: storeParamsFor(o.Short),
		fed: fedParamsFor(o.Short),
	}
	if o.Short {
		p.runs, p.tpDur = 1, 500*time.Millisecond
		p.echoWarm, p.echoN, p.echoMax = 200, 2000, 2*time.Second
		p.connDur, p.connMax = 500*time.Millisecond, 10000
		p.wanTPDur = 2 * time.Second
	}
	if o.Runs > 0 {
		p.runs = o.Runs
	}
	return p
}

// Figure is one line of the table.
type Figure struct {
	Key        string    `json:"key"`
	Name       string    `json:"name"`
	Unit       string    `json:"unit,omitempty"`
	Direct     *float64  `json:"direct,omitempty"` // the baseline (site store and federation: see StoreResults)
	Tunnel     *float64  `json:"tunnel,omitempty"` // what is measured against it
	Ratio      *float64  `json:"ratio,omitempty"`  // tunnel / direct
	Target     string    `json:"target,omitempty"`
	Pass       *bool     `json:"pass,omitempty"`
	Status     string    `json:"status,omitempty"`   // set when there is no value
	Baseline   string    `json:"baseline,omitempty"` // what Direct is, when not direct TCP (federation)
	DirectRuns []float64 `json:"direct_runs,omitempty"`
	TunnelRuns []float64 `json:"tunnel_runs,omitempty"`
	// Relay is the reference: two plain TCP relays in a chain (loopback
	// only; see Relay).
	Relay     *float64  `json:"relay,omitempty"`
	RelayRuns []float64 `json:"relay_runs,omitempty"`
	// TLSRelay is the second reference: two relays in a chain with
	// mutual TLS 1.3 between them (loopback only; see Relay).
	// TLSRelayStatus says why there is no value, when the TLS relays ran
	// but have none for this figure.
	TLSRelay       *float64  `json:"tls_relay,omitempty"`
	TLSRelayRuns   []float64 `json:"tls_relay_runs,omitempty"`
	TLSRelayStatus string    `json:"tls_relay_status,omitempty"`
}

// Machine describes where a run happened.
type Machine struct {
	CPUs      int    `json:"cpus"`
	CPUModel  string `json:"cpu_model,omitempty"`
	Kernel    string `json:"kernel,omitempty"`
	GoVersion string `json:"go_version"`
	OS        string `json:"os"`
}

// WANResults is the WAN profile.
type WANResults struct {
	Status     string   `json:"status"` // "ok", or why it did not run
	Delay      string   `json:"delay,omitempty"`
	DelayKind  string   `json:"delay_kind,omitempty"` // "netem" or "tun delay line"
	RTTMillis  float64  `json:"rtt_ms,omitempty"`     // measured echo round trip, direct
	WindowSize int      `json:"yamux_window_bytes,omitempty"`
	Figures    []Figure `json:"figures,omitempty"`
}

// Results is what a run writes as JSON.
type Results struct {
	Schema   int           `json:"schema"`
	Time     time.Time     `json:"time"`
	Mode     string        `json:"mode"`
	Runs     int           `json:"runs"`
	Commit   string        `json:"commit,omitempty"`
	Machine  Machine       `json:"machine"`
	Params   ParamsJSON    `json:"params"`
	Figures  []Figure      `json:"figures"`
	WAN      *WANResults   `json:"wan,omitempty"`
	Store    *StoreResults `json:"store,omitempty"`
	Fed      *FedResults   `json:"federation,omitempty"`
	Seconds  float64       `json:"seconds"`
	Problems []string      `json:"problems,omitempty"`
}

// ParamsJSON records the load sizes used.
type ParamsJSON struct {
	ThroughputSeconds float64 `json:"throughput_seconds"`
	ChunkBytes        int     `json:"chunk_bytes"`
	EchoBytes         int     `json:"echo_bytes"`
	EchoRoundTrips    int     `json:"echo_round_trips"`
	ConnWorkers       int     `json:"conn_workers"`
	ConnSeconds       float64 `json:"conn_seconds"`
	HeldConnections   int     `json:"held_connections"`
	RelayCopyBytes    int     `json:"relay_copy_bytes,omitempty"` // -relay-copy: the relays' user-space buffer (0: io.Copy, splice)
}

// Run measures everything and returns the results. An error means the run
// could not be made at all; a figure that failed is marked in its Status
// and listed in Problems.
func Run(ctx context.Context, o Options) (*Results, error) {
	start := time.Now()
	p := paramsFor(o)
	if o.WAN == "" {
		o.WAN = "auto"
	}
	if o.WANDelay == 0 {
		o.WANDelay = 20 * time.Millisecond
	}
	if o.WANConnections == 0 {
		o.WANConnections = 4
	}
	prog := o.Progress
	if prog == nil {
		prog = io.Discard
	}
	res := &Results{
		Schema: 1, Time: start.UTC(), Mode: map[bool]string{true: "short", false: "full"}[o.Short], Runs: p.runs,
		Commit: gitCommit(), Machine: machine(),
		Params: ParamsJSON{
			ThroughputSeconds: p.tpDur.Seconds(), ChunkBytes: chunkSize, EchoBytes: echoSize, EchoRoundTrips: p.echoN,
			ConnWorkers: p.connWorkers, ConnSeconds: p.connDur.Seconds(), HeldConnections: p.held,
			RelayCopyBytes: max(o.RelayCopy, 0),
		},
	}
	if _, err := os.Stat(o.Bin); err != nil {
		return nil, fmt.Errorf("sitebridge binary: %w", err)
	}
	sp := newSpawner()
	defer sp.close()

	if !o.NoLoopback && o.wantAny("memory", "throughput_1", "throughput_8", "echo", "conns") {
		if err := loopback(ctx, o, p, sp, res, prog); err != nil {
			return nil, err
		}
	}
	if !o.NoLoopback && o.want("store") {
		res.Store = storeProfile(ctx, o, p, sp, prog)
		if res.Store.Status != "ok" {
			res.Problems = append(res.Problems, "site store: "+res.Store.Status)
		}
	}
	if !o.NoLoopback && o.want("federation") {
		res.Fed = fedProfile(ctx, o, p, sp, prog)
		if res.Fed.Status != "ok" {
			res.Problems = append(res.Problems, "federation: "+res.Fed.Status)
		}
	}

	switch {
	case o.WAN == "off", o.WAN == "auto" && o.Short, !o.wantAny("throughput_1", "throughput_8"):
	default:
		w, err := wanProfile(ctx, o, p, sp, prog)
		if err != nil && o.WAN == "on" {
			return nil, err
		}
		res.WAN = w
		if w.Status != "ok" && o.WAN == "on" {
			return nil, errors.New("WAN profile: " + w.Status)
		}
	}
	figs := res.Figures
	if res.Store != nil {
		figs = append(slices.Clone(figs), res.Store.Figures...)
	}
	if res.Fed != nil {
		figs = append(slices.Clone(figs), res.Fed.Figures...)
	}
	for _, f := range figs {
		if strings.HasPrefix(f.Status, "failed") {
			res.Problems = append(res.Problems, f.Name+": "+f.Status)
		}
		if strings.HasPrefix(f.TLSRelayStatus, "failed") {
			res.Problems = append(res.Problems, f.Name+", 2 TLS relays: "+f.TLSRelayStatus)
		}
	}
	res.Seconds = time.Since(start).Seconds()
	return res, ctx.Err()
}

// loopback runs the loopback figures.
func loopback(ctx context.Context, o Options, p params, sp *spawner, res *Results, prog io.Writer) error {
	ip, err := lb.Pick()
	if err != nil {
		return err
	}
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for range 3 {
		ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			return err
		}
		lns = append(lns, ln)
	}
	dir, err := os.MkdirTemp("", "sitebridge-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	direct := targets{sinkAddr: lns[0].Addr().String(), echoAddr: lns[1].Addr().String(), sourceAddr: lns[2].Addr().String()}
	if len(o.ServersArgv) > 0 {
		for _, ln := range lns {
			ln.Close()
		}
		lns = nil
		c, err := startChild(sp, "servers", filepath.Join(dir, "servers.log"),
			append(slices.Clone(o.ServersArgv), direct.sinkAddr, direct.echoAddr, direct.sourceAddr))
		if err != nil {
			return err
		}
		defer c.stop()
		sd := &deployment{cloud: c, onprem: c}
		if err := sd.waitReady(ctx, direct.echo(), 10*time.Second); err != nil {
			return fmt.Errorf("the servers process: %w", err)
		}
		fmt.Fprintf(prog, "servers: in their own process (pid %d)\n", c.cmd.Process.Pid)
	} else {
		srv := startServers(lns[0], lns[1], lns[2])
		defer srv.close()
		fmt.Fprintln(prog, "servers: in the bench process")
	}

	ports, err := freePorts(ip, 18)
	if err != nil {
		return err
	}
	hp := func(port int) string { return net.JoinHostPort(ip, fmt.Sprint(port)) }
	l := layout{
		cloudHost: ip, tunnelPort: ports[0],
		sinkAccept: hp(ports[1]), echoAccept: hp(ports[2]), sourceAccept: hp(ports[3]),
		sinkTarget: direct.sinkAddr, echoTarget: direct.echoAddr, sourceTarget: direct.sourceAddr,
		cloudAdmin: hp(ports[4]), onpremAdmin: hp(ports[5]),
		idleTimeout: o.IdleTimeout,
	}
	fmt.Fprintf(prog, "loopback: servers and instances on %s, files in %s\n", ip, dir)
	d, err := deploy(sp, o.Bin, dir, l)
	if err != nil {
		return err
	}
	defer d.stop()
	tunnel := targets{sinkAddr: l.sinkAccept, echoAddr: l.echoAccept, sourceAddr: l.sourceAccept, procs: d.children()}
	t0 := time.Now()
	if err := d.waitReady(ctx, tunnel.echo(), 20*time.Second); err != nil {
		return err
	}
	fmt.Fprintf(prog, "tunnel up in %v\n", time.Since(t0).Round(time.Millisecond))

	// The references: two relays in a chain, the same process and socket
	// layout as the tunnel without its layers. Hop i listens on ports
	// 6+3i to 8+3i.
	hop := func(i int) targets {
		return targets{sinkAddr: hp(ports[6+3*i]), echoAddr: hp(ports[7+3*i]), sourceAddr: hp(ports[8+3*i])}
	}
	refs, stopRefs, err := startReferences(ctx, o, sp, dir, ip, direct, hop)
	if err != nil {
		return err
	}
	defer stopRefs()

	if o.want("memory") {
		res.Figures = append(res.Figures, memoryFigures(ctx, d, tunnel, p, prog)...)
	}
	res.Figures = append(res.Figures, loadFigures(ctx, o, direct, tunnel, refs, p, p.tpDur, true, prog)...)
	if err := d.exited(); err != nil {
		return err
	}
	return ctx.Err()
}

// targets are the addresses of one path (direct, a tunnel's accept ports,
// or the reference relays) and how to dial them.
type targets struct {
	sinkAddr, echoAddr, sourceAddr string
	dial                           func(addr string, local net.Addr) dialFunc // nil: plain TCP
	procs                          []*child                                   // the forwarding processes, if any
}

// cpuSeconds is the CPU time the path's forwarding processes have used.
func (t targets) cpuSeconds() (float64, error) {
	var sum float64
	for _, c := range t.procs {
		s, err := c.cpuSeconds()
		if err != nil {
			return 0, err
		}
		sum += s
	}
	return sum, nil
}

func (t targets) dialer(addr string, local net.Addr) dialFunc {
	if t.dial != nil {
		return t.dial(addr, local)
	}
	return tcpDialer(addr, local)
}

func (t targets) sink() dialFunc   { return t.dialer(t.sinkAddr, nil) }
func (t targets) echo() dialFunc   { return t.dialer(t.echoAddr, nil) }
func (t targets) source() dialFunc { return t.dialer(t.sourceAddr, nil) }

// memoryFigures measures resident memory idle and while holding p.held
// connections.
func memoryFigures(ctx context.Context, d *deployment, tun targets, p params, prog io.Writer) []Figure {
	time.Sleep(time.Second) // let start-up garbage settle
	idle := map[*child]int64{}
	var figs []Figure
	for _, c := range d.children() {
		r, err := c.rssMedian(5, 100*time.Millisecond)
		f := Figure{Key: "rss_idle_" + c.name, Name: "RSS idle, " + c.name, Unit: "MB", Target: "< 20 MB"}
		if err != nil {
			f.Status = "failed: " + err.Error()
		} else {
			idle[c] = r
			f.set(nil, []float64{float64(r) / 1e6})
			pass := r < 20e6
			f.Pass = &pass
		}
		fmt.Fprintf(prog, "  %s: %.1f MB\n", f.Name, float64(r)/1e6)
		figs = append(figs, f)
	}
	name := fmt.Sprintf("RSS per held conn (%d), ", p.held)
	conns, err := hold(ctx, tun.echo(), p.held, 50)
	if err != nil {
		for _, c := range d.children() {
			figs = append(figs, Figure{Key: "rss_per_conn_" + c.name, Name: name + c.name, Status: "failed: " + err.Error()})
		}
		return figs
	}
	time.Sleep(time.Second)
	for _, c := range d.children() {
		f := Figure{Key: "rss_per_conn_" + c.name, Name: name + c.name, Unit: "KiB", Target: "≤ 16 KiB"}
		r, err := c.rssMedian(5, 100*time.Millisecond)
		if err != nil || idle[c] == 0 {
			f.Status = fmt.Sprintf("failed: %v", err)
		} else {
			per := float64(r-idle[c]) / float64(p.held) / 1024
			f.set(nil, []float64{per})
			pass := per <= 16
			f.Pass = &pass
			fmt.Fprintf(prog, "  %s: %.1f MB held, %.1f KiB per connection\n", c.name, float64(r)/1e6, per)
		}
		figs = append(figs, f)
	}
	closeAll(conns)
	time.Sleep(500 * time.Millisecond) // let the instances see the closes
	return figs
}

// loadFigures measures the load figures on direct, the tunnel and the
// references, alternating the paths run by run. With all false (WAN), only
// throughput is measured.
func loadFigures(ctx context.Context, o Options, direct, tun targets, refs []reference, p params, tpDur time.Duration, all bool, prog io.Writer) []Figure {
	type measure struct {
		group, unit, target string
		run                 func(t targets) ([]float64, error) // one run: one value per figure
		// runAll, instead of run, measures every path in one run: one
		// value per figure for each path, in the order given.
		runAll func(ts []targets) ([][]float64, error)
		keys   []string
		names  []string
		// cpu names a figure of the CPU time the forwarding processes
		// spend per GB moved, from this throughput measure (MB/s).
		cpuKey, cpuName string
		// noTLSRelay, if set, says why the TLS relays are not measured.
		noTLSRelay string
	}
	bps := func(v float64, err error) ([]float64, error) { return []float64{v / 1e6}, err }
	ms := []measure{
		{group: "throughput_1", keys: []string{"throughput_1"}, names: []string{"single-stream throughput"}, unit: "MB/s", target: "≥ 0.25",
			run:    func(t targets) ([]float64, error) { return bps(throughput(ctx, t.sink(), 1, tpDur, p.tpMax)) },
			cpuKey: "cpu_per_gb_1", cpuName: "forwarding CPU per GB, single stream"},
		{group: "throughput_1", keys: []string{"throughput_1_down"}, names: []string{"single-stream throughput, server to client"}, unit: "MB/s", target: "≥ 0.25",
			run:    func(t targets) ([]float64, error) { return bps(pull(ctx, t.source(), tpDur, p.tpMax)) },
			cpuKey: "cpu_per_gb_1_down", cpuName: "forwarding CPU per GB, server to client"},
		{group: "throughput_8", keys: []string{"throughput_8"}, names: []string{"8-stream throughput"}, unit: "MB/s", target: "≥ 0.35",
			run:    func(t targets) ([]float64, error) { return bps(throughput(ctx, t.sink(), 8, tpDur, p.tpMax/8)) },
			cpuKey: "cpu_per_gb_8", cpuName: "forwarding CPU per GB, 8 streams"},
	}
	if all {
		ms = append(ms,
			measure{group: "echo", keys: []string{"echo_p50", "echo_p99"}, names: []string{"echo 64 B round trip p50", "echo 64 B round trip p99"}, unit: "µs",
				// All paths take turns on their connections (see
				// echoInterleaved): the direct baseline jumps between
				// latency modes on these machines.
				runAll: func(ts []targets) ([][]float64, error) {
					dials := make([]dialFunc, len(ts))
					for i, t := range ts {
						dials[i] = t.echo()
					}
					s, err := echoInterleaved(ctx, dials, p.echoWarm, p.echoN, time.Duration(len(ts))*p.echoMax)
					if err != nil {
						return nil, err
					}
					us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
					out := make([][]float64, len(s))
					for i, ps := range s {
						out[i] = []float64{us(percentile(ps, 50)), us(percentile(ps, 99))}
					}
					return out, nil
				}},
			measure{group: "conns", keys: []string{"conns_per_s"}, names: []string{fmt.Sprintf("new conns/s (%d workers, 1 round trip each)", p.connWorkers)}, unit: "/s", target: "≥ 0.5",
				noTLSRelay: "not measured: a full TLS handshake per connection, where the tunnel opens a stream on its long-lived TLS session",
				run: func(t targets) ([]float64, error) {
					// A fresh client address per run keeps TIME_WAIT of
					// earlier runs out of the way.
					ip, err := lb.Pick()
					if err != nil {
						return nil, err
					}
					dial := t.dialer(t.echoAddr, &net.TCPAddr{IP: net.ParseIP(ip)})
					r, failed, err := connRate(ctx, dial, p.connWorkers, p.connDur, p.connMax)
					if err == nil && failed > 0 {
						fmt.Fprintf(prog, "    (%d connections failed)\n", failed)
					}
					return []float64{r}, err
				}},
		)
	}
	targetsFor := map[string]string{"echo_p50": "≤ 2×", "echo_p99": "≤ 1.8×"}

	// A short warm-up of every path: first runs pay for TLS record size
	// ramp-up, window growth and cold caches.
	throughput(ctx, direct.sink(), 1, 200*time.Millisecond, p.tpMax)
	throughput(ctx, tun.sink(), 1, 200*time.Millisecond, p.tpMax)
	for _, r := range refs {
		throughput(ctx, r.t.sink(), 1, 200*time.Millisecond, p.tpMax)
	}

	var figs, cpuFigs []Figure
	for _, m := range ms {
		if !o.want(m.group) {
			continue
		}
		type path struct {
			name string
			t    targets
			out  [][]float64
			cpu  []float64 // CPU seconds per GB of the forwarding processes, per run
			err  error     // the last failed run's
		}
		paths := []*path{{name: "direct", t: direct}, {name: "tunnel", t: tun}}
		for _, r := range refs {
			if r.name == refTLSRelay && m.noTLSRelay != "" {
				continue
			}
			paths = append(paths, &path{name: r.name, t: r.t})
		}
		for _, pa := range paths {
			pa.out = make([][]float64, len(m.keys))
		}
		var failure error
		for r := range p.runs {
			if m.runAll != nil {
				ts := make([]targets, len(paths))
				for i, pa := range paths {
					ts[i] = pa.t
				}
				vs, err := m.runAll(ts)
				if err != nil {
					failure = fmt.Errorf("run %d: %w", r+1, err)
					for _, pa := range paths {
						pa.err = failure
					}
					fmt.Fprintf(prog, "  %s run %d: %v\n", m.names[0], r+1, err)
					continue
				}
				for j, pa := range paths {
					for i := range vs[j] {
						pa.out[i] = append(pa.out[i], vs[j][i])
					}
					fmt.Fprintf(prog, "  %-42s %-9s run %d/%d: %s\n", m.names[0], pa.name, r+1, p.runs, fmtVals(vs[j], m.unit))
				}
				continue
			}
			for _, pa := range paths {
				if ctx.Err() != nil {
					failure = ctx.Err()
					break
				}
				cpu0, cpuErr := pa.t.cpuSeconds()
				t0 := time.Now()
				v, err := m.run(pa.t)
				if err != nil {
					failure = fmt.Errorf("%s run %d: %w", pa.name, r+1, err)
					pa.err = failure
					fmt.Fprintf(prog, "  %s %s run %d: %v\n", m.names[0], pa.name, r+1, err)
					continue
				}
				if m.cpuKey != "" && len(pa.t.procs) > 0 && cpuErr == nil {
					// The rate times the run's time is the bytes moved
					// (within the time to connect).
					if cpu1, err := pa.t.cpuSeconds(); err == nil && v[0] > 0 {
						pa.cpu = append(pa.cpu, (cpu1-cpu0)/(v[0]*time.Since(t0).Seconds()/1000))
					}
				}
				for i := range v {
					pa.out[i] = append(pa.out[i], v[i])
				}
				fmt.Fprintf(prog, "  %-42s %-9s run %d/%d: %s\n", m.names[0], pa.name, r+1, p.runs, fmtVals(v, m.unit))
			}
		}
		for i, key := range m.keys {
			f := Figure{Key: key, Name: m.names[i], Unit: m.unit, Target: m.target}
			if t, ok := targetsFor[key]; ok {
				f.Target = t
			}
			if len(paths[0].out[i]) == 0 || len(paths[1].out[i]) == 0 {
				f.Status = fmt.Sprintf("failed: %v", failure)
			} else {
				f.set(paths[0].out[i], paths[1].out[i])
				f.check()
				for _, pa := range paths[2:] {
					f.setRef(pa.name, pa.out[i], cmp.Or(pa.err, failure))
				}
				if hasRef(refs, refTLSRelay) && m.noTLSRelay != "" {
					f.TLSRelayStatus = m.noTLSRelay
				}
			}
			figs = append(figs, f)
		}
		if m.cpuKey != "" && len(paths[1].cpu) > 0 {
			f := Figure{Key: m.cpuKey, Name: m.cpuName, Unit: "s/GB"}
			f.set(nil, paths[1].cpu)
			for _, pa := range paths[2:] {
				f.setRef(pa.name, pa.cpu, cmp.Or(pa.err, failure))
			}
			cpuFigs = append(cpuFigs, f)
		}
	}
	return append(figs, cpuFigs...)
}

func hasRef(refs []reference, name string) bool {
	return slices.ContainsFunc(refs, func(r reference) bool { return r.name == name })
}

func fmtVals(v []float64, unit string) string {
	var s []string
	for _, x := range v {
		s = append(s, fmtNum(x)+" "+unit)
	}
	return strings.Join(s, ", ")
}

// set stores the runs and their medians.
func (f *Figure) set(direct, tunnel []float64) {
	f.DirectRuns, f.TunnelRuns = direct, tunnel
	if len(tunnel) > 0 {
		v := median(tunnel)
		f.Tunnel = &v
	}
	if len(direct) > 0 {
		v := median(direct)
		f.Direct = &v
		if f.Tunnel != nil && v != 0 {
			r := *f.Tunnel / v
			f.Ratio = &r
		}
	}
}

// setRef stores the runs and median of the reference path named ref; with
// no runs, the TLS relays' status says why (the plain relays have none).
func (f *Figure) setRef(ref string, runs []float64, err error) {
	var v *float64
	if len(runs) > 0 {
		m := median(runs)
		v = &m
	}
	switch ref {
	case refRelay:
		f.Relay, f.RelayRuns = v, runs
	case refTLSRelay:
		f.TLSRelay, f.TLSRelayRuns = v, runs
		switch {
		case v != nil:
		case err != nil:
			f.TLSRelayStatus = "failed: " + err.Error()
		default:
			f.TLSRelayStatus = "failed: no value"
		}
	}
}

// check sets Pass from Target ("≥ x" or "≤ x×" on the ratio).
func (f *Figure) check() {
	if f.Ratio == nil || f.Target == "" {
		return
	}
	var op string
	var x float64
	t := strings.TrimSuffix(f.Target, "×")
	if _, err := fmt.Sscanf(t, "%s %g", &op, &x); err != nil {
		return
	}
	var pass bool
	switch op {
	case "≥":
		pass = *f.Ratio >= x
	case "≤":
		pass = *f.Ratio <= x
	default:
		return
	}
	f.Pass = &pass
}

// WriteTable prints the results as one table.
func WriteTable(w io.Writer, r *Results) {
	fmt.Fprintf(w, "sitebridge bench: %s mode, %d run(s) per figure, medians; %s, %d CPUs (%s), kernel %s, commit %s\n",
		r.Mode, r.Runs, r.Machine.GoVersion, r.Machine.CPUs, r.Machine.CPUModel, r.Machine.Kernel, r.Commit)
	if len(r.Figures) > 0 {
		if r.Params.RelayCopyBytes > 0 {
			fmt.Fprintf(w, "reference relays copy every byte through %d-byte user-space buffers (-relay-copy): no splice\n", r.Params.RelayCopyBytes)
		}
		writeFigures(w, r.Figures)
	}
	if r.Store != nil {
		fmt.Fprintln(w)
		writeStore(w, r.Store)
	}
	if r.Fed != nil {
		fmt.Fprintln(w)
		writeFed(w, r.Fed)
	}
	if r.WAN != nil {
		fmt.Fprintln(w)
		if r.WAN.Status != "ok" {
			fmt.Fprintf(w, "WAN profile: not run: %s\n", r.WAN.Status)
		} else {
			fmt.Fprintf(w, "WAN profile: %s each way (%s); measured direct round trip %.1f ms\n", r.WAN.Delay, r.WAN.DelayKind, r.WAN.RTTMillis)
			if r.WAN.RTTMillis > 0 {
				fmt.Fprintf(w, "yamux window %d KiB: one stream's ceiling is about window/2 per round trip = %.0f MB/s\n",
					r.WAN.WindowSize>>10, float64(r.WAN.WindowSize)/2/(r.WAN.RTTMillis/1000)/1e6)
			}
			writeFigures(w, r.WAN.Figures)
		}
	}
	fmt.Fprintf(w, "(%.0f s)\n", r.Seconds)
}

func writeFigures(w io.Writer, figs []Figure) {
	// A reference's columns appear only if some figure has it (the WAN
	// profile runs none).
	var hasRelay, hasTLS bool
	for _, f := range figs {
		hasRelay = hasRelay || f.Relay != nil
		hasTLS = hasTLS || f.TLSRelay != nil || f.TLSRelayStatus != ""
	}
	row := func(cells []string, relay, tls [2]string) string {
		if hasRelay {
			cells = append(cells, relay[:]...)
		}
		if hasTLS {
			cells = append(cells, tls[:]...)
		}
		return strings.Join(cells, "\t") + "\t"
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, row([]string{"figure", "direct", "tunnel", "ratio", "target", ""},
		[2]string{"2 TCP relays (ref.)", "ratio"}, [2]string{"2 TLS relays (ref.)", "ratio"}))
	var notes []string
	for _, f := range figs {
		if f.Status != "" {
			fmt.Fprintln(tw, row([]string{f.Name, f.Status, "", "", f.Target, ""}, [2]string{}, [2]string{}))
			continue
		}
		dv, rv, mark := "—", "—", ""
		if f.Direct != nil {
			dv = fmtNum(*f.Direct) + " " + f.Unit
		}
		if f.Ratio != nil {
			rv = fmt.Sprintf("%.2f", *f.Ratio)
			if strings.HasSuffix(f.Target, "×") {
				rv += "×"
			}
		}
		if f.Pass != nil {
			mark = map[bool]string{true: "ok", false: "MISSED"}[*f.Pass]
		}
		relay, relayRatio := refCells(f, f.Relay)
		tlsRelay, tlsRelayRatio := refCells(f, f.TLSRelay)
		if f.TLSRelayStatus != "" {
			tlsRelay = "—"
			notes = append(notes, fmt.Sprintf("2 TLS relays, %s: %s", f.Name, f.TLSRelayStatus))
		}
		fmt.Fprintln(tw, row([]string{f.Name, dv, fmtNum(*f.Tunnel) + " " + f.Unit, rv, f.Target, mark},
			[2]string{relay, relayRatio}, [2]string{tlsRelay, tlsRelayRatio}))
	}
	tw.Flush()
	for _, n := range notes {
		fmt.Fprintln(w, "—", n)
	}
}

// refCells are a reference's value and its ratio to direct, or empty.
func refCells(f Figure, v *float64) (value, ratio string) {
	if v == nil {
		return "", ""
	}
	value = fmtNum(*v) + " " + f.Unit
	if f.Direct != nil && *f.Direct != 0 {
		ratio = fmt.Sprintf("%.2f", *v / *f.Direct)
	}
	return value, ratio
}

func fmtNum(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1000:
		return fmt.Sprintf("%.0f", v)
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

// WriteJSON writes the results to path.
func WriteJSON(path string, r *Results) error {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return err
	}
	return os.WriteFile(path, b.Bytes(), 0o644)
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), OS: runtime.GOOS + "/" + runtime.GOARCH}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				m.CPUModel = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

func gitCommit() string {
	out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return ""
	}
	c := strings.TrimSpace(string(out))
	if err := exec.Command("git", "diff", "--quiet", "HEAD").Run(); err != nil {
		c += "+dirty"
	}
	return c
}

// Missed lists the figures whose target was missed (WAN figures included).
func Missed(r *Results) []string {
	var out []string
	figs := r.Figures
	if r.WAN != nil {
		figs = append(append([]Figure(nil), figs...), r.WAN.Figures...)
	}
	for _, f := range figs {
		if f.Pass != nil && !*f.Pass {
			out = append(out, f.Name)
		}
	}
	return out
}
