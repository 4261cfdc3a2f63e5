package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sitebridge/sitebridge/demo"
	"github.com/sitebridge/sitebridge/internal/loopback"
)

// The topology and fixed ports are the demo's (package demo), on the
// per-run loopback address; the configs come from the demo's template.
const (
	portCloud1Tunnel  = demo.PortCloud1Tunnel
	portCloud2Tunnel  = demo.PortCloud2Tunnel
	portCloud1Client  = demo.PortCloud1Client  // reaches server-a (on-prem side)
	portCloud2Client  = demo.PortCloud2Client  // reaches server-a
	portOnprem1Client = demo.PortOnprem1Client // reaches server-b (cloud side)
	portOnprem2Client = demo.PortOnprem2Client // reaches server-b
	portServerA       = demo.PortServerA       // echo, on-prem side
	portServerB       = demo.PortServerB       // echo, cloud side
	portCloud1Gossip  = demo.PortCloud1Gossip  // memberlist gossip (TCP and UDP)
	portCloud2Gossip  = demo.PortCloud2Gossip
	portOnprem1Gossip = demo.PortOnprem1Gossip
	portOnprem2Gossip = demo.PortOnprem2Gossip
	portCloud1Admin   = demo.PortCloud1Admin
	portCloud2Admin   = demo.PortCloud2Admin
	portOnprem1Admin  = demo.PortOnprem1Admin
	portOnprem2Admin  = demo.PortOnprem2Admin
)

const (
	readyTimeout  = 15 * time.Second // the whole mesh is up within this
	readyInterval = 50 * time.Millisecond
	logTailLines  = 60
	logTime       = "2006-01-02T15:04:05.000000Z07:00" // like the instances' log times, finer
)

// pickLoopback returns a random loopback address this host can bind.
func pickLoopback(t *testing.T) string {
	t.Helper()
	ip, err := loopback.Pick()
	if err != nil {
		t.Fatalf("%v (on Linux all of 127.0.0.0/8 is routed to lo)", err)
	}
	return ip
}

// instance is one sitebridge instance of the 2+2 topology.
type instance struct {
	name, site string
	tunnelPort int // 0 for on-prem instances
	clientPort int // its accept port
	adminPort  int
	gossipPort int      // cluster gossip; relay on gossipPort+demo.RelayOffset
	wantPeers  []string // instances it must hold a tunnel to, sorted
	config     string   // path of its YAML config
	proc       *proc
}

// cluster is the running topology: two echo servers and four instances,
// each a child process of the test.
type cluster struct {
	bin, ip, dir string
	insts        []*instance
	echoes       []*proc
	http         *http.Client
}

func (c *cluster) addr(port int) string { return net.JoinHostPort(c.ip, strconv.Itoa(port)) }

func (c *cluster) inst(name string) *instance {
	for _, in := range c.insts {
		if in.name == name {
			return in
		}
	}
	panic("no instance " + name)
}

func (c *cluster) procs() []*proc {
	ps := slices.Clone(c.echoes)
	for _, in := range c.insts {
		ps = append(ps, in.proc)
	}
	return ps
}

// startCluster generates certificates with `sitebridge tlsgen`, writes and
// checks the four configs, starts the echo servers and the instances, and
// waits until every instance holds its two tunnels. Cleanup kills every
// child; if the test failed, the tail of every process log is printed.
func startCluster(t *testing.T, bin, ip string) *cluster {
	t.Helper()
	return startClusterWith(t, bin, ip, nil)
}

// startClusterWith is startCluster with each instance's config passed
// through edit (when not nil) before it is checked and used.
func startClusterWith(t *testing.T, bin, ip string, edit func(name, cfg string) string) *cluster {
	t.Helper()
	c := &cluster{
		bin: bin, ip: ip, dir: t.TempDir(),
		http: &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}},
	}
	c.insts = []*instance{
		{name: "cloud1", site: "cloud", tunnelPort: portCloud1Tunnel, clientPort: portCloud1Client, adminPort: portCloud1Admin, gossipPort: portCloud1Gossip, wantPeers: []string{"onprem1", "onprem2"}},
		{name: "cloud2", site: "cloud", tunnelPort: portCloud2Tunnel, clientPort: portCloud2Client, adminPort: portCloud2Admin, gossipPort: portCloud2Gossip, wantPeers: []string{"onprem1", "onprem2"}},
		{name: "onprem1", site: "onprem", clientPort: portOnprem1Client, adminPort: portOnprem1Admin, gossipPort: portOnprem1Gossip, wantPeers: []string{"cloud1", "cloud2"}},
		{name: "onprem2", site: "onprem", clientPort: portOnprem2Client, adminPort: portOnprem2Admin, gossipPort: portOnprem2Gossip, wantPeers: []string{"cloud1", "cloud2"}},
	}
	// Registered first, so it runs last: after every child is dead and its
	// log complete.
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range c.procs() {
				p.dumpLog(t)
			}
		}
	})
	t.Cleanup(func() {
		for _, p := range c.procs() {
			p.stop(t)
		}
		c.http.CloseIdleConnections()
	})

	// Certificates (and gossip.key): the IP SAN must match the host of the
	// wss:// URLs.
	args := []string{"tlsgen", "--out", c.dir}
	for _, in := range c.insts {
		args = append(args, "--instance", fmt.Sprintf("%s/%s=localhost,%s", in.site, in.name, ip))
	}
	runCLI(t, bin, args...)

	if _, err := (demo.Options{Host: ip}).WriteConfigs(c.dir); err != nil {
		t.Fatal(err)
	}
	for _, in := range c.insts {
		in.config = filepath.Join(c.dir, in.name+".yaml")
		if edit != nil {
			b, err := os.ReadFile(in.config)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(in.config, []byte(edit(in.name, string(b))), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		out := runCLI(t, bin, "run", "--config", in.config, "--check")
		if !strings.Contains(out, "config is valid") {
			t.Fatalf("sitebridge run --config %s --check: unexpected output %q", in.config, out)
		}
		in.proc = &proc{name: in.name, bin: bin, args: []string{"run", "--config", in.config}, log: filepath.Join(c.dir, in.name+".log")}
	}

	for _, e := range []struct {
		name string
		port int
	}{{"echo-server-a", portServerA}, {"echo-server-b", portServerB}} {
		p := &proc{name: e.name, bin: bin, args: []string{"echo", "--listen", c.addr(e.port)}, log: filepath.Join(c.dir, e.name+".log")}
		c.echoes = append(c.echoes, p)
		p.start(t)
	}
	for _, e := range c.echoes {
		addr := e.args[len(e.args)-1]
		waitFor(t, "echo server "+addr+" listening", readyTimeout, readyInterval, func() error {
			if err := e.exited(); err != nil {
				t.Fatal(err)
			}
			conn, err := net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				conn.Close()
			}
			return err
		})
	}
	for _, in := range c.insts {
		in.proc.start(t)
	}
	took := c.waitReady(t)
	t.Logf("cluster on %s ready in %v: each instance holds 2 tunnels", ip, took.Round(time.Millisecond))
	return c
}

// runCLI runs the binary to completion and fails the test unless it exits 0.
// It returns stdout and stderr together.
func runCLI(t *testing.T, bin string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("sitebridge %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// status is the part of GET /api/v1/status the tests read.
type status struct {
	Instance string `json:"instance"`
	Site     string `json:"site"`
	Epoch    uint64 `json:"epoch"`
	Tunnels  []struct {
		Peer  string `json:"peer"`
		Site  string `json:"site"`
		Epoch uint64 `json:"epoch"`
		URL   string `json:"url"`
		Addr  string `json:"addr"`
	} `json:"tunnels"`
}

func (c *cluster) status(in *instance) (*status, error) {
	resp, err := c.http.Get("http://" + c.addr(in.adminPort) + "/api/v1/status")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s status: %s", in.name, resp.Status)
	}
	var st status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, fmt.Errorf("%s status: %w", in.name, err)
	}
	return &st, nil
}

// checkReady reports nil when every instance holds exactly one tunnel to
// each instance it should, and every tunnel carries the current epoch of
// the instance at its far end (no stale session of a killed process).
func (c *cluster) checkReady() error {
	sts := map[string]*status{}
	for _, in := range c.insts {
		st, err := c.status(in)
		if err != nil {
			return err
		}
		if st.Instance != in.name || st.Site != in.site {
			return fmt.Errorf("admin port of %s answers as %s/%s", in.name, st.Site, st.Instance)
		}
		sts[in.name] = st
	}
	for _, in := range c.insts {
		st := sts[in.name]
		var peers []string
		for _, tn := range st.Tunnels {
			peers = append(peers, tn.Peer)
		}
		slices.Sort(peers)
		if !slices.Equal(peers, in.wantPeers) {
			return fmt.Errorf("%s has tunnels to %v, want %v", in.name, peers, in.wantPeers)
		}
		for _, tn := range st.Tunnels {
			if want := sts[tn.Peer].Epoch; tn.Epoch != want {
				return fmt.Errorf("%s holds a tunnel to %s of epoch %d, but %s runs epoch %d", in.name, tn.Peer, tn.Epoch, tn.Peer, want)
			}
		}
	}
	return nil
}

// waitReady polls every admin endpoint until checkReady passes, and fails
// the test if that takes longer than readyTimeout or a child exits.
func (c *cluster) waitReady(t *testing.T) time.Duration {
	t.Helper()
	return waitFor(t, "every instance to hold its 2 tunnels", readyTimeout, readyInterval, func() error {
		for _, p := range c.procs() {
			if err := p.exited(); err != nil {
				t.Fatal(err)
			}
		}
		return c.checkReady()
	})
}

// waitFor calls check every interval until it returns nil, and fails the
// test with the last error once timeout has passed. It returns how long it
// waited.
func waitFor(t *testing.T, what string, timeout, interval time.Duration, check func() error) time.Duration {
	t.Helper()
	start := time.Now()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		err := check()
		if err == nil {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("waited %v for %s: %v", timeout, what, err)
		}
		select {
		case <-tick.C:
		case <-t.Context().Done():
			t.Fatalf("waiting for %s: %v (last: %v)", what, t.Context().Err(), err)
		}
	}
}

// proc is a child process that can be killed and started again; every
// incarnation appends to the same log file. Its methods are called from
// the test goroutine only.
type proc struct {
	name, bin string
	args      []string
	log       string

	cmd     *exec.Cmd
	done    chan struct{} // closed when the current incarnation has exited
	err     error         // its exit status, valid once done is closed
	starts  int
	started time.Time // when the current incarnation's process was started
}

func (p *proc) start(t *testing.T) {
	t.Helper()
	if p.running() {
		t.Fatalf("%s is already running", p.name)
	}
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close() // the child has its own copy
	p.starts++
	fmt.Fprintf(f, "=== e2e: start #%d at %s: sitebridge %s\n", p.starts, time.Now().UTC().Format(logTime), strings.Join(p.args, " "))
	cmd := exec.Command(p.bin, p.args...)
	cmd.Stdout, cmd.Stderr = f, f
	killWithParent(cmd)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", p.name, err)
	}
	p.started = time.Now()
	p.cmd, p.done, p.err = cmd, make(chan struct{}), nil
	done := p.done
	go func() {
		err := cmd.Wait()
		p.err = err // read only after done is closed
		close(done)
	}()
}

func (p *proc) running() bool {
	if p.done == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// exited reports an error if the process has died on its own.
func (p *proc) exited() error {
	if p.done == nil || p.running() {
		return nil
	}
	return fmt.Errorf("%s exited unexpectedly: %v (log %s)", p.name, p.err, p.log)
}

// kill sends SIGKILL and waits until the process is gone.
func (p *proc) kill(t *testing.T) {
	t.Helper()
	killAll(t, p)
}

// killAll sends SIGKILL to every process first, so they die at once, then
// waits until each is gone.
func killAll(t *testing.T, ps ...*proc) {
	t.Helper()
	for _, p := range ps {
		if !p.running() {
			t.Fatalf("kill %s: not running (%v)", p.name, p.exited())
		}
	}
	at := time.Now()
	for _, p := range ps {
		if err := p.cmd.Process.Kill(); err != nil {
			t.Fatalf("kill %s: %v", p.name, err)
		}
	}
	for _, p := range ps {
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			t.Fatalf("%s still running 5s after SIGKILL", p.name)
		}
		if f, err := os.OpenFile(p.log, os.O_WRONLY|os.O_APPEND, 0); err == nil {
			fmt.Fprintf(f, "=== e2e: SIGKILL at %s\n", at.UTC().Format(logTime))
			f.Close()
		}
	}
}

// stop kills the process if it runs; for Cleanup.
func (p *proc) stop(t *testing.T) {
	if p.running() {
		p.cmd.Process.Kill()
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			t.Errorf("%s (pid %d) still running 5s after SIGKILL", p.name, p.cmd.Process.Pid)
		}
	}
}

// dumpLog prints the last lines of the process log.
func (p *proc) dumpLog(t *testing.T) {
	b, err := os.ReadFile(p.log)
	if err != nil {
		t.Logf("---- %s: %v", p.name, err)
		return
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > logTailLines {
		lines = lines[len(lines)-logTailLines:]
	}
	t.Logf("---- %s: last %d lines of %s ----\n%s", p.name, len(lines), p.log, strings.Join(lines, "\n"))
}

func skipUnlessLinux(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("needs Linux (CI runs Linux): the test binds random addresses in 127.0.0.0/8")
	}
}
