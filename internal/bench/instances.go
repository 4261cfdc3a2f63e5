package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
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
	"syscall"
	"text/template"
	"time"

	"github.com/sitebridge/sitebridge/tlsgen"
)

// spawner starts child processes from one OS thread that lives until the
// run ends. Children get SIGKILL when the thread that forked them dies
// (Pdeathsig), so they must not be forked from a thread that the Go runtime
// may end early, such as one a namespace switch used.
type spawner struct {
	reqs chan spawnReq
	done chan struct{}
}

type spawnReq struct {
	cmd *exec.Cmd
	err chan error
}

func newSpawner() *spawner {
	sp := &spawner{reqs: make(chan spawnReq), done: make(chan struct{})}
	go func() {
		defer close(sp.done)
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		for r := range sp.reqs {
			r.err <- r.cmd.Start()
		}
	}()
	return sp
}

func (sp *spawner) start(cmd *exec.Cmd) error {
	killWithParent(cmd)
	r := spawnReq{cmd: cmd, err: make(chan error, 1)}
	sp.reqs <- r
	return <-r.err
}

// close ends the spawner's thread; call it only after every child is gone.
func (sp *spawner) close() {
	close(sp.reqs)
	<-sp.done
}

// child is one running sitebridge instance.
type child struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error // valid once done is closed
}

func startChild(sp *spawner, name, logPath string, argv []string) (*child, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := sp.start(cmd); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	return c, nil
}

// exited reports an error if the process has ended.
func (c *child) exited() error {
	select {
	case <-c.done:
		return fmt.Errorf("%s exited: %v\n%s", c.name, c.err, c.logTail(20))
	default:
		return nil
	}
}

// stop asks the process to end (SIGTERM), and kills it after 3 s.
func (c *child) stop() {
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
		return
	case <-time.After(3 * time.Second):
	}
	c.cmd.Process.Kill()
	<-c.done
}

// rss is the resident set size of the process, from /proc/PID/status.
func (c *child) rss() (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			f := strings.Fields(v) // "12345 kB"
			if len(f) != 2 || f[1] != "kB" {
				break
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("%s: no VmRSS in /proc/%d/status", c.name, c.cmd.Process.Pid)
}

// cpuSeconds is the CPU time (user and system) the process has used, from
// /proc/PID/stat (in clock ticks of 1/100 s, the USER_HZ of Linux).
func (c *child) cpuSeconds() (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces;
	// utime and stime are fields 14 and 15.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("%s: unexpected /proc/%d/stat", c.name, c.cmd.Process.Pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("%s: unexpected /proc/%d/stat", c.name, c.cmd.Process.Pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return float64(ut+st) / 100, nil
}

// rssMedian samples the resident set size n times, gap apart, and returns
// the median.
func (c *child) rssMedian(n int, gap time.Duration) (int64, error) {
	var v []int64
	for i := range n {
		if i > 0 {
			time.Sleep(gap)
		}
		r, err := c.rss()
		if err != nil {
			return 0, err
		}
		v = append(v, r)
	}
	slices.Sort(v)
	return v[len(v)/2], nil
}

func (c *child) logTail(n int) string {
	b, err := os.ReadFile(c.log)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return fmt.Sprintf("---- last lines of %s ----\n%s", c.log, strings.Join(lines, "\n"))
}

// layout says where each piece of a 1+1 deployment listens, as the
// instances see it, and how to run each instance (a prefix such as
// `ip netns exec NS`).
type layout struct {
	cloudHost                  string // IP of cloud1's tunnel listener (also its IP SAN)
	tunnelPort                 int
	sinkAccept, echoAccept     string // cloud1's accept addresses
	sinkTarget, echoTarget     string // what onprem1 connects
	sourceAccept, sourceTarget string // like sink and echo
	cloudAdmin, onpremAdmin    string
	cloudPrefix, onpremPrefix  []string
	connections                int           // onprem1's tunnel.connections; 0 means the default
	idleTimeout                time.Duration // cloud1's limits.idle-timeout; 0 means none
}

// deployment is a running cloud1 + onprem1 pair.
type deployment struct {
	dir           string
	cloud, onprem *child
	l             layout
}

var configTmpl = template.Must(template.New("config").Parse(`# sitebridge bench: {{.Name}}
instance: {{.Name}}
site: {{.Site}}
mode: prod
tls:
  ca: ca.crt
  cert: {{.Name}}.crt
  key: {{.Name}}.key
{{- if .Cloud}}
tunnel:
  listen: {{.L.CloudHost}}:{{.L.TunnelPort}}
peers:
  - site: onprem
services:
  - name: sink
    accept: {{.L.SinkAccept}}
  - name: echo
    accept: {{.L.EchoAccept}}
  - name: source
    accept: {{.L.SourceAccept}}
admin:
  listen: {{.L.CloudAdmin}}
{{- if .IdleTimeout}}
limits:
  idle-timeout: {{.IdleTimeout}}
{{- end}}
{{- else}}
peers:
  - site: cloud
    urls:
      - wss://{{.L.CloudHost}}:{{.L.TunnelPort}}/sitebridge
services:
  - name: sink
    connect: {{.L.SinkTarget}}
  - name: echo
    connect: {{.L.EchoTarget}}
  - name: source
    connect: {{.L.SourceTarget}}
admin:
  listen: {{.L.OnpremAdmin}}
{{- if gt .Connections 0}}
tunnel:
  connections: {{.Connections}}
{{- end}}
{{- end}}
log:
  level: info
`))

// exported view of layout for the template
type layoutView struct {
	CloudHost                                      string
	TunnelPort                                     int
	SinkAccept, EchoAccept, SinkTarget, EchoTarget string
	SourceAccept, SourceTarget                     string
	CloudAdmin, OnpremAdmin                        string
}

// deploy generates certificates and configs in dir, checks the configs
// with the binary, and starts both instances. It does not wait for the
// tunnel.
func deploy(sp *spawner, bin, dir string, l layout) (*deployment, error) {
	spec := tlsgen.Spec{Instances: []tlsgen.InstanceSpec{
		{Name: "cloud1", Site: "cloud", IPs: []string{l.cloudHost}},
		{Name: "onprem1", Site: "onprem"},
	}}
	if _, err := tlsgen.Generate(spec, dir, false); err != nil {
		return nil, fmt.Errorf("tlsgen: %w", err)
	}
	view := layoutView{
		CloudHost: l.cloudHost, TunnelPort: l.tunnelPort,
		SinkAccept: l.sinkAccept, EchoAccept: l.echoAccept, SinkTarget: l.sinkTarget, EchoTarget: l.echoTarget,
		SourceAccept: l.sourceAccept, SourceTarget: l.sourceTarget,
		CloudAdmin: l.cloudAdmin, OnpremAdmin: l.onpremAdmin,
	}
	d := &deployment{dir: dir, l: l}
	for _, in := range []struct {
		name, site string
		cloud      bool
		prefix     []string
		out        **child
	}{
		{"cloud1", "cloud", true, l.cloudPrefix, &d.cloud},
		{"onprem1", "onprem", false, l.onpremPrefix, &d.onprem},
	} {
		var b bytes.Buffer
		if err := configTmpl.Execute(&b, map[string]any{"Name": in.name, "Site": in.site, "Cloud": in.cloud, "L": view, "Connections": l.connections, "IdleTimeout": idleTimeoutYAML(l.idleTimeout)}); err != nil {
			return nil, err
		}
		cfg := filepath.Join(dir, in.name+".yaml")
		if err := os.WriteFile(cfg, b.Bytes(), 0o600); err != nil {
			return nil, err
		}
		if out, err := exec.Command(bin, "run", "--config", cfg, "--check").CombinedOutput(); err != nil {
			d.stop()
			return nil, fmt.Errorf("sitebridge run --config %s --check: %v\n%s", cfg, err, out)
		}
		argv := append(slices.Clone(in.prefix), bin, "run", "--config", cfg)
		c, err := startChild(sp, in.name, filepath.Join(dir, in.name+".log"), argv)
		if err != nil {
			d.stop()
			return nil, err
		}
		*in.out = c
	}
	return d, nil
}

func (d *deployment) children() []*child {
	var cs []*child
	for _, c := range []*child{d.cloud, d.onprem} {
		if c != nil {
			cs = append(cs, c)
		}
	}
	return cs
}

func (d *deployment) stop() {
	for _, c := range d.children() {
		c.stop()
	}
}

func (d *deployment) exited() error {
	var errs []error
	for _, c := range d.children() {
		errs = append(errs, c.exited())
	}
	return errors.Join(errs...)
}

// waitReady echoes through cloud1's echo accept port until it works: the
// tunnel is up and onprem1 reaches the echo server.
func (d *deployment) waitReady(ctx context.Context, dial dialFunc, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if err := d.exited(); err != nil {
			return err
		}
		c, err := dial(ctx)
		if err == nil {
			c.SetDeadline(time.Now().Add(2 * time.Second))
			err = roundTrip(c)
			c.Close()
			if err == nil {
				return nil
			}
		}
		last = err
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("tunnel not up within %v: %v\n%s\n%s", timeout, last, d.cloud.logTail(15), d.onprem.logTail(15))
}

// waitTunnels polls onprem1's admin status (through dial, which reaches
// its admin address) until it holds n tunnels.
func (d *deployment) waitTunnels(ctx context.Context, dial dialFunc, n int, timeout time.Duration) error {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx) },
	}}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(timeout)
	have := -1
	for time.Now().Before(deadline) {
		var st struct {
			Tunnels []json.RawMessage `json:"tunnels"`
		}
		if resp, err := client.Get("http://" + d.l.onpremAdmin + "/api/v1/status"); err == nil {
			err = json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
			if err == nil {
				if have = len(st.Tunnels); have >= n {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("onprem1 holds %d of %d tunnels after %v", have, n, timeout)
}

// freePort returns a TCP port that is free on ip right now.
func freePort(ip string) (int, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// freePorts returns n distinct TCP ports that are free on ip right now:
// it holds each until it has them all, so that none comes back twice.
func freePorts(ip string, n int) ([]int, error) {
	var lns []net.Listener
	defer func() { closeListeners(lns) }()
	ports := make([]int, n)
	for i := range ports {
		ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			return nil, fmt.Errorf("free port: %w", err)
		}
		lns = append(lns, ln)
		ports[i] = ln.Addr().(*net.TCPAddr).Port
	}
	return ports, nil
}

// idleTimeoutYAML is d as a config duration, or "" for none.
func idleTimeoutYAML(d time.Duration) string {
	if d <= 0 {
		return ""
	}
	return d.String()
}
