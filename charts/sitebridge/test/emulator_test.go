package charttest

// A StatefulSet, its Services and the kubelet, emulated with real sitebridge
// processes on loopback addresses, for TestStatefulSetEmulated. What is
// emulated, and how:
//
//   - Pods: each pod incarnation is a child process running exactly the
//     container's rendered args (the image's entrypoint is the binary) with
//     the rendered env (downward API and Secret references resolved), in a
//     directory of its own where the rendered volumes are laid out (the
//     ConfigMap and the certificate Secret, mount paths moved under it).
//     Each incarnation gets a new 127.X.Y.Z address, as a re-created pod
//     gets a new pod IP.
//   - The pod network namespace: a pod binds 0.0.0.0, which in a pod means
//     its own addresses; here every pod shares the host, so 0.0.0.0 in the
//     rendered config is replaced by the pod's address.
//   - Cluster DNS: no process here can be given another resolver, so the
//     names in the rendered config are replaced, each time a pod's
//     container starts, by what cluster DNS would answer then: the headless Service's name by
//     the address of every pod that exists (publishNotReadyAddresses), a
//     per-pod Service's names (its cluster name and its external-dns host
//     name) by that Service's address, and the names of the services in
//     other namespaces the config connects to by an echo server's address.
//     Nothing else in the config is changed, and every address in the
//     result must be an IP, so no name is left to the host's resolver.
//   - Services of type LoadBalancer (the per-pod tunnel Services): a TCP
//     forwarder on an address of their own, to the pod's current address
//     and the target port; TLS passes through, as through a cloud load
//     balancer, so a pod's certificate must name that address (see
//     makeCertificates). Deleting the Service closes its connections.
//   - The kubelet: the readiness probe (the rendered httpGet port and path,
//     timeout and failureThreshold, polled every probeEvery rather than
//     every periodSeconds, to keep the test short); on deletion, the
//     preStop sleep, then SIGTERM, then SIGKILL after the grace period; a
//     container that dies is restarted in the same pod (same pod IP).
//     Liveness and startup probes are not run.
//   - The StatefulSet controller, podManagementPolicy OrderedReady: one pod
//     at a time, in ordinal order, each created only when the ones before
//     it are ready and available (minReadySeconds); scale-down removes the
//     highest ordinal, one at a time, once every remaining pod is ready and
//     available; a deleted pod is re-created with the same name.
//   - The admin Service: the writer's requests go to ready pods that are
//     not terminating, as the Service's endpoints would.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"helm.sh/helm/v3/pkg/chart"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/sitebridge/sitebridge/config"
	"github.com/sitebridge/sitebridge/gateway"
	"github.com/sitebridge/sitebridge/store"
)

// emulationLogs keeps the processes' logs (go test -run
// TestStatefulSetEmulated -args -emulation-logs DIR); by default they are
// in a temporary directory, and their tails are printed if the test fails.
var emulationLogs = flag.String("emulation-logs", "", "keep the emulated pods' logs in this directory")

const (
	// probeEvery is how often the emulated kubelet runs the readiness
	// probe (the chart's periodSeconds is 5 s; polling faster only makes
	// the emulated controller react sooner).
	probeEvery = 100 * time.Millisecond
	// clusterDomain is the chart's default clusterDomain.
	clusterDomain = "cluster.local"
	// podNameLabel is the label the StatefulSet controller puts on each pod,
	// which the per-pod Services select.
	podNameLabel = "statefulset.kubernetes.io/pod-name"
	logTail      = 40
	// kubeletRestartDelay is how long the kubelet takes to restart a
	// container that died: it notices within its PLEG relist period (1 s).
	kubeletRestartDelay = time.Second
)

// ---- processes -----------------------------------------------------------

// proc is one child process (one pod incarnation, or an echo server).
type proc struct {
	name, bin string
	args, env []string
	dir, log  string

	cmd     *exec.Cmd
	done    chan struct{} // closed once the process has exited
	err     error         // its exit status, valid once done is closed
	started time.Time
}

func (p *proc) start(t *testing.T) {
	t.Helper()
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close() // the child has its own copy
	fmt.Fprintf(f, "=== emulation: start at %s: sitebridge %s\n", time.Now().UTC().Format(time.RFC3339Nano), strings.Join(p.args, " "))
	cmd := exec.Command(p.bin, p.args...)
	cmd.Env, cmd.Dir = p.env, p.dir
	cmd.Stdout, cmd.Stderr = f, f
	killWithParent(cmd)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", p.name, err)
	}
	p.cmd, p.started, p.done = cmd, time.Now(), make(chan struct{})
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

// exited reports an error if the process has exited.
func (p *proc) exited() error {
	if p.done == nil || p.running() {
		return nil
	}
	return fmt.Errorf("%s exited: %v (log %s)", p.name, p.err, p.log)
}

// signal sends sig and notes it in the log.
func (p *proc) signal(sig syscall.Signal) error {
	if f, err := os.OpenFile(p.log, os.O_WRONLY|os.O_APPEND, 0); err == nil {
		fmt.Fprintf(f, "=== emulation: %v at %s\n", sig, time.Now().UTC().Format(time.RFC3339Nano))
		f.Close()
	}
	return p.cmd.Process.Signal(sig)
}

// waitExit waits up to d for the process to exit.
func (p *proc) waitExit(d time.Duration) bool {
	select {
	case <-p.done:
		return true
	case <-time.After(d):
		return false
	}
}

// stop kills the process if it runs (cleanup).
func (p *proc) stop(t *testing.T) {
	if p.running() {
		p.cmd.Process.Kill()
		if !p.waitExit(5 * time.Second) {
			t.Errorf("%s (pid %d) still running 5s after SIGKILL", p.name, p.cmd.Process.Pid)
		}
	}
}

func (p *proc) dumpLog(t *testing.T) {
	b, err := os.ReadFile(p.log)
	if err != nil {
		t.Logf("---- %s: %v", p.name, err)
		return
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > logTail {
		lines = lines[len(lines)-logTail:]
	}
	t.Logf("---- %s: last %d lines of %s ----\n%s", p.name, len(lines), p.log, strings.Join(lines, "\n"))
}

// ---- the world: addresses, DNS, probes -------------------------------------

type world struct {
	chart *chart.Chart
	bin   string
	dir   string
	logs  string
	base  string // 127.X.Y of every address of this run
	nextZ int

	ctx    context.Context
	cancel context.CancelFunc
	bg     sync.WaitGroup // the prober and the forwarders
	hc     *http.Client   // admin API calls of the test

	mu     sync.Mutex // guards the pods maps and pod state (read by the prober and the writer)
	sites  []*siteEmu
	extDNS map[string]string // names outside the releases -> address
	procs  []*proc           // every process started, for cleanup and logs
}

func newWorld(t *testing.T, c *chart.Chart, bin string) *world {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &world{
		chart: c, bin: bin, dir: t.TempDir(), nextZ: 2,
		base: fmt.Sprintf("127.%d.%d", 1+rand.IntN(250), 1+rand.IntN(250)),
		ctx:  ctx, cancel: cancel, extDNS: map[string]string{},
		hc: &http.Client{Timeout: 5 * time.Second},
	}
	w.logs = filepath.Join(w.dir, "logs")
	if *emulationLogs != "" {
		w.logs = *emulationLogs
	}
	if err := os.MkdirAll(w.logs, 0o755); err != nil {
		t.Fatal(err)
	}
	// Registered first, so it runs last: after every child is dead.
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range w.procs {
				p.dumpLog(t)
			}
		}
	})
	t.Cleanup(func() {
		for _, p := range w.procs {
			p.stop(t)
		}
		w.cancel()
		w.mu.Lock()
		var lbs []*lbService
		for _, s := range w.sites {
			for _, lb := range s.lbs {
				lbs = append(lbs, lb)
			}
		}
		w.mu.Unlock()
		for _, lb := range lbs {
			lb.close()
		}
		w.bg.Wait()
		w.hc.CloseIdleConnections()
	})
	w.bg.Add(1)
	go w.probeLoop()
	return w
}

// addr allocates the next free address of this run (Linux routes all of
// 127.0.0.0/8 to lo, so any of them binds).
func (w *world) addr(t *testing.T) string {
	t.Helper()
	for w.nextZ < 255 {
		ip := fmt.Sprintf("%s.%d", w.base, w.nextZ)
		w.nextZ++
		ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err == nil {
			ln.Close()
			return ip
		}
	}
	t.Fatalf("no free address left in %s.0/24", w.base)
	return ""
}

// dnsTable is what cluster DNS answers now, for the names the rendered
// configs use, with pod self (being created) already in its site's
// headless Service.
func (w *world) dnsTable(self *podEmu) map[string][]string {
	w.mu.Lock()
	defer w.mu.Unlock()
	tab := map[string][]string{}
	for n, a := range w.extDNS {
		tab[n] = []string{a}
	}
	for _, s := range w.sites {
		var all []string
		pods := s.podsLocked()
		if self.s == s && s.pods[self.ordinal] != self { // not yet listed (a restart in place is)
			pods = append(pods, self)
			sort.Slice(pods, func(i, j int) bool { return pods[i].ordinal < pods[j].ordinal })
		}
		for _, p := range pods {
			if p.terminating {
				continue
			}
			all = append(all, p.ip)
			tab[p.name+"."+s.headless] = []string{p.ip}
		}
		if len(all) > 0 {
			tab[s.headless] = all
		}
		for _, lb := range s.lbs {
			for _, n := range lb.names {
				tab[n] = []string{lb.host}
			}
		}
	}
	return tab
}

// probeLoop is the kubelet's readiness prober for every pod.
func (w *world) probeLoop() {
	defer w.bg.Done()
	tick := time.NewTicker(probeEvery)
	defer tick.Stop()
	for {
		select {
		case <-w.ctx.Done():
			return
		case <-tick.C:
		}
		w.mu.Lock()
		var pods []*podEmu
		for _, s := range w.sites {
			pods = append(pods, s.podsLocked()...)
		}
		w.mu.Unlock()
		for _, p := range pods {
			ok, why := p.probe(w.ctx)
			w.mu.Lock()
			p.lastProbe = why
			if ok {
				p.fails = 0
				if !p.ready {
					p.ready, p.readySince = true, time.Now()
					if p.firstReady == 0 {
						p.firstReady = time.Since(p.createdAt)
					}
				}
			} else if p.fails++; p.ready && p.fails >= p.failureThreshold {
				p.ready = false
			}
			w.mu.Unlock()
		}
	}
}

// getJSON GETs an admin API path with a bearer token.
func (w *world) getJSON(addr, path, token string, v any) error {
	req, err := http.NewRequestWithContext(w.ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := w.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("GET %s%s: %s %s", addr, path, resp.Status, strings.TrimSpace(string(b)))
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// runCLI runs the sitebridge binary to completion and returns its output.
func (w *world) runCLI(t *testing.T, timeout time.Duration, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(w.ctx, timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, w.bin, args...).CombinedOutput()
	return string(out), err
}

// startEcho runs 'sitebridge echo' on addr: a server the sites' connect
// services reach.
func (w *world) startEcho(t *testing.T, name, addr string) {
	t.Helper()
	p := &proc{name: name, bin: w.bin, args: []string{"echo", "--listen", addr}, log: filepath.Join(w.logs, name+".log")}
	w.procs = append(w.procs, p)
	p.start(t)
	pollUntil(t, name+" listening on "+addr, 10*time.Second, 20*time.Millisecond, func() error {
		if err := p.exited(); err != nil {
			t.Fatal(err)
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err
	})
}

// ---- one release: a site -----------------------------------------------------

// siteEmu is one Helm release of the chart (one site) in its emulated
// cluster.
type siteEmu struct {
	w        *world
	vals     map[string]any
	m        *manifests
	sts      *appsv1.StatefulSet
	text     string // the ConfigMap's sitebridge.yaml, as rendered
	notes    string
	full     string // the StatefulSet's name
	site     string
	headless string // the headless Service's FQDN
	token    string // the admin token in the site's Secret
	secrets  map[string]map[string][]byte

	svcAddr map[int]string // the address of each ordinal's per-pod Service (reserved, as a load balancer's)
	lbs     map[string]*lbService
	pods    map[int]*podEmu // guarded by w.mu
	created int             // pods created, for log names
}

// addSite renders the chart with vals (helm install) and keeps what it
// renders; pods are created by reconcile.
func (w *world) addSite(t *testing.T, vals map[string]any) *siteEmu {
	t.Helper()
	out, err := render(t, w.chart, vals)
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	m := decodeAll(t, out)
	sts := m.statefulSets[0]
	s := &siteEmu{
		w: w, vals: vals, full: sts.Name, site: vals["site"].(string),
		headless: sts.Spec.ServiceName + "." + namespace + ".svc." + clusterDomain,
		notes:    out["sitebridge/templates/NOTES.txt"],
		secrets:  map[string]map[string][]byte{}, svcAddr: map[int]string{},
		lbs: map[string]*lbService{}, pods: map[int]*podEmu{},
	}
	if sts.Spec.PodManagementPolicy != appsv1.OrderedReadyPodManagement {
		t.Fatalf("%s: podManagementPolicy %q: this emulation implements OrderedReady only", s.full, sts.Spec.PodManagementPolicy)
	}
	for i := range s.maxReplicas() {
		s.svcAddr[i] = w.addr(t)
	}
	w.mu.Lock()
	w.sites = append(w.sites, s)
	w.mu.Unlock()
	s.apply(t, m)
	return s
}

func (s *siteEmu) maxReplicas() int {
	if v, ok := s.vals["maxReplicas"].(float64); ok {
		return int(v)
	}
	return int(s.w.chart.Values["maxReplicas"].(float64))
}

// upgrade renders the chart with vals (helm upgrade) and applies what
// changed. A change of the pod template (the config or its checksum) would
// make the StatefulSet roll every pod; this emulation does not do rolling
// updates, so that fails the test.
func (s *siteEmu) upgrade(t *testing.T, vals map[string]any) {
	t.Helper()
	out, err := render(t, s.w.chart, vals)
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	m := decodeAll(t, out)
	if m.configMaps[0].Data["sitebridge.yaml"] != s.text ||
		m.statefulSets[0].Spec.Template.Annotations["checksum/config"] != s.sts.Spec.Template.Annotations["checksum/config"] {
		t.Fatalf("helm upgrade of %s changes the pods' config: the StatefulSet would restart every pod", s.full)
	}
	s.vals = vals
	s.apply(t, m)
}

// apply takes the rendered objects: the StatefulSet, the config, and the
// per-pod Services (started or deleted).
func (s *siteEmu) apply(t *testing.T, m *manifests) {
	t.Helper()
	s.m, s.sts, s.text = m, m.statefulSets[0], m.configMaps[0].Data["sitebridge.yaml"]
	want := map[string]*corev1.Service{}
	for _, svc := range m.services {
		if svc.Spec.Selector[podNameLabel] != "" {
			want[svc.Name] = svc
		}
	}
	s.w.mu.Lock()
	var gone []*lbService
	for name, lb := range s.lbs {
		if want[name] == nil {
			gone = append(gone, lb)
			delete(s.lbs, name)
		}
	}
	s.w.mu.Unlock()
	for _, lb := range gone {
		lb.close()
	}
	for name, svc := range want {
		if s.lbs[name] != nil {
			continue
		}
		lb := s.startLB(t, svc)
		s.w.mu.Lock()
		s.lbs[name] = lb
		s.w.mu.Unlock()
	}
}

func (s *siteEmu) container() *corev1.Container {
	return &s.sts.Spec.Template.Spec.Containers[0]
}

// containerPort resolves a probe's or a Service's target port.
func (s *siteEmu) containerPort(t *testing.T, p intOrName) int {
	t.Helper()
	if p.name == "" {
		return p.num
	}
	for _, cp := range s.container().Ports {
		if cp.Name == p.name {
			return int(cp.ContainerPort)
		}
	}
	t.Fatalf("%s: no container port named %q", s.full, p.name)
	return 0
}

type intOrName struct {
	num  int
	name string
}

func portRef(p intstr.IntOrString) intOrName {
	if p.Type == intstr.String {
		return intOrName{name: p.StrVal}
	}
	return intOrName{num: p.IntValue()}
}

// podsLocked lists the pods by ordinal; w.mu must be held.
func (s *siteEmu) podsLocked() []*podEmu {
	var out []*podEmu
	for _, p := range s.pods {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ordinal < out[j].ordinal })
	return out
}

func (s *siteEmu) podList() []*podEmu {
	s.w.mu.Lock()
	defer s.w.mu.Unlock()
	return s.podsLocked()
}

func (s *siteEmu) pod(ordinal int) *podEmu {
	s.w.mu.Lock()
	defer s.w.mu.Unlock()
	return s.pods[ordinal]
}

// live lists the pods that are not terminating.
func (s *siteEmu) live() []*podEmu {
	var out []*podEmu
	for _, p := range s.podList() {
		if !p.isTerminating() {
			out = append(out, p)
		}
	}
	return out
}

func (s *siteEmu) names() []string {
	var out []string
	for _, p := range s.live() {
		out = append(out, p.name)
	}
	return out
}

// endpoints is what the admin Service would send requests to: each ready
// pod that is not terminating.
func (s *siteEmu) endpoints() []*podEmu {
	s.w.mu.Lock()
	defer s.w.mu.Unlock()
	var out []*podEmu
	for _, p := range s.podsLocked() {
		if p.ready && !p.terminating {
			out = append(out, p)
		}
	}
	return out
}

// ---- pods ---------------------------------------------------------------------

type podEmu struct {
	s                *siteEmu
	name             string
	ordinal          int
	ip               string
	root             string // where the pod's volumes are mounted
	admin            string // ip:admin port
	configFile       string // the config as mounted from the ConfigMap
	probeURL         string
	probeClient      *http.Client
	failureThreshold int
	proc             *proc
	createdAt        time.Time

	// guarded by w.mu
	ready       bool
	readySince  time.Time
	fails       int
	lastProbe   string // why the last probe failed
	terminating bool
	firstReady  time.Duration // from creation to the first successful probe
}

// probe runs the readiness probe once; on failure it says why, as the
// kubelet's events do.
func (p *podEmu) probe(ctx context.Context) (bool, string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.probeURL, nil)
	if err != nil {
		return false, err.Error()
	}
	resp, err := p.probeClient.Do(req)
	if err != nil {
		return false, err.Error()
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	resp.Body.Close()
	// The kubelet: 200 <= code < 400 is a success.
	if resp.StatusCode >= 200 && resp.StatusCode < 400 {
		return true, ""
	}
	return false, fmt.Sprintf("HTTP probe failed with statuscode: %d: %s", resp.StatusCode, strings.Join(strings.Fields(string(body)), " "))
}

func (p *podEmu) state() (ready bool, since time.Time, firstReady time.Duration) {
	p.s.w.mu.Lock()
	defer p.s.w.mu.Unlock()
	return p.ready, p.readySince, p.firstReady
}

func (p *podEmu) isTerminating() bool {
	p.s.w.mu.Lock()
	defer p.s.w.mu.Unlock()
	return p.terminating
}

// createPod creates pod ordinal i: a new address, its volumes, its config
// as cluster DNS resolves it now, and the process.
func (s *siteEmu) createPod(t *testing.T, i int) *podEmu {
	t.Helper()
	w := s.w
	c := s.container()
	s.created++
	p := &podEmu{s: s, name: fmt.Sprintf("%s-%d", s.full, i), ordinal: i, ip: w.addr(t), createdAt: time.Now()}
	p.root = filepath.Join(w.dir, "pods", fmt.Sprintf("%s.%d", p.name, s.created))

	env := s.podEnv(t, p)

	// Volumes, laid out under the pod's root.
	vols := map[string]corev1.Volume{}
	for _, v := range s.sts.Spec.Template.Spec.Volumes {
		vols[v.Name] = v
	}
	for _, vm := range c.VolumeMounts {
		dir := filepath.Join(p.root, vm.MountPath)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		v, ok := vols[vm.Name]
		switch {
		case !ok:
			t.Fatalf("%s: volumeMount %s has no volume", s.full, vm.Name)
		case v.ConfigMap != nil:
			if v.ConfigMap.Name != s.m.configMaps[0].Name || len(v.ConfigMap.Items) > 0 {
				t.Fatalf("%s: config volume %+v: this emulation mounts the chart's ConfigMap, every key", s.full, v.ConfigMap)
			}
			for k := range s.m.configMaps[0].Data {
				if k != "sitebridge.yaml" {
					t.Fatalf("%s: ConfigMap key %s not known to the emulation", s.full, k)
				}
				p.configFile = filepath.Join(dir, k)
			}
		default:
			mountVolume(t, v, s.secrets, dir)
		}
	}

	args := slices.Clone(c.Args)
	for i := range args {
		args[i] = s.rewriteMounts(p, args[i])
	}
	if len(c.Command) > 0 {
		t.Fatalf("%s: container command %v: this emulation runs the image's entrypoint (the binary) with args", s.full, c.Command)
	}
	var envList []string
	for _, k := range slices.Sorted(mapsKeys(env)) {
		envList = append(envList, k+"="+env[k])
	}
	envList = append(envList, "HOSTNAME="+p.name) // as the container runtime sets it

	rp := c.ReadinessProbe
	if rp == nil || rp.HTTPGet == nil || (rp.HTTPGet.Scheme != "" && rp.HTTPGet.Scheme != corev1.URISchemeHTTP) {
		t.Fatalf("%s: readiness probe %+v: this emulation runs HTTP GET probes", s.full, rp)
	}
	port := s.containerPort(t, portRef(rp.HTTPGet.Port))
	p.probeURL = "http://" + net.JoinHostPort(p.ip, strconv.Itoa(port)) + rp.HTTPGet.Path
	p.probeClient = &http.Client{Timeout: time.Duration(max(rp.TimeoutSeconds, 1)) * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	p.failureThreshold = int(max(rp.FailureThreshold, 1))
	adminPort := s.containerPort(t, intOrName{name: "admin"})
	p.admin = net.JoinHostPort(p.ip, strconv.Itoa(adminPort))

	p.proc = &proc{name: fmt.Sprintf("%s#%d", p.name, s.created), bin: w.bin, args: args, env: envList, dir: p.root,
		log: filepath.Join(w.logs, fmt.Sprintf("%s.%d.log", p.name, s.created))}
	w.procs = append(w.procs, p.proc)
	s.writeConfig(t, p, env)
	p.proc.start(t)
	// In the pod list (and so in DNS: the headless Service publishes
	// unready pods) from now on.
	w.mu.Lock()
	s.pods[i] = p
	w.mu.Unlock()
	return p
}

// writeConfig writes the config pod p's container reads when it starts
// (podConfig: with the names resolved as cluster DNS answers at that
// moment, as the process would resolve them) and checks it through the
// same helper as the config test: expanded as --expand-env does and
// accepted by sitebridge's validator, and every address in it an IP, so
// that nothing is left to the host's resolver.
func (s *siteEmu) writeConfig(t *testing.T, p *podEmu, env map[string]string) {
	t.Helper()
	text := s.podConfig(t, p)
	checkAllIPs(t, p.name, parsePodConfig(t, text, env))
	os.Remove(p.configFile)
	if err := os.WriteFile(p.configFile, []byte(text), 0o444); err != nil {
		t.Fatal(err)
	}
}

// podEnv resolves the container's env for pod p: the downward API fields
// and Secret keys the chart uses, and literal values.
func (s *siteEmu) podEnv(t *testing.T, p *podEmu) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, e := range s.container().Env {
		switch vf := e.ValueFrom; {
		case vf == nil:
			env[e.Name] = e.Value
		case vf.FieldRef != nil:
			switch vf.FieldRef.FieldPath {
			case "metadata.name":
				env[e.Name] = p.name
			case "metadata.namespace":
				env[e.Name] = namespace
			case "status.podIP":
				env[e.Name] = p.ip
			default:
				t.Fatalf("%s: env %s from field %s: not emulated", s.full, e.Name, vf.FieldRef.FieldPath)
			}
		case vf.SecretKeyRef != nil:
			v, ok := s.secrets[vf.SecretKeyRef.Name][vf.SecretKeyRef.Key]
			if !ok {
				t.Fatalf("%s: env %s: Secret %s has no key %s: the pod would not start", s.full, e.Name, vf.SecretKeyRef.Name, vf.SecretKeyRef.Key)
			}
			env[e.Name] = string(v)
		default:
			t.Fatalf("%s: env %s: source %+v not emulated", s.full, e.Name, vf)
		}
	}
	return env
}

var anyAddr = regexp.MustCompile(`(^|[^0-9.])0\.0\.0\.0:`)

// podConfig is the rendered config as pod p sees it: 0.0.0.0 is its own
// address (its network namespace), names resolve as cluster DNS answers
// now, and the volume mount paths are under its root. Nothing else changes.
func (s *siteEmu) podConfig(t *testing.T, p *podEmu) string {
	t.Helper()
	text := anyAddr.ReplaceAllString(s.text, "${1}"+p.ip+":")

	// This emulates cluster DNS, which the processes cannot be given: each
	// name is replaced by the addresses it would resolve to.
	tab := s.w.dnsTable(p)
	names := slices.Collect(mapsKeys(tab))
	sort.Slice(names, func(i, j int) bool {
		return len(names[i]) > len(names[j]) || len(names[i]) == len(names[j]) && names[i] < names[j]
	})
	for _, n := range names {
		addrs := tab[n]
		forms := []string{n}
		if rest, ok := strings.CutPrefix(n, p.name+"."); ok {
			forms = append(forms, "${POD_NAME}."+rest) // a name given per pod in the shared config
		}
		for _, f := range forms {
			// A list item host:port (cluster.join) becomes one item per
			// address: memberlist joins every address a name resolves to.
			item := regexp.MustCompile(`(?m)^([ \t]*-[ \t]+)` + regexp.QuoteMeta(f) + `:([0-9]+)[ \t]*$`)
			text = item.ReplaceAllStringFunc(text, func(line string) string {
				sm := item.FindStringSubmatch(line)
				var lines []string
				for _, a := range addrs {
					lines = append(lines, sm[1]+a+":"+sm[2])
				}
				return strings.Join(lines, "\n")
			})
			other := regexp.MustCompile(`(^|[^A-Za-z0-9.\-])` + regexp.QuoteMeta(f) + `([^A-Za-z0-9.\-]|$)`)
			if other.MatchString(text) && len(addrs) > 1 {
				t.Fatalf("%s: %s resolves to %v and is used where one address goes:\n%s", p.name, f, addrs, text)
			}
			text = other.ReplaceAllString(text, "${1}"+addrs[0]+"${2}")
		}
	}
	return s.rewriteMounts(p, text)
}

// rewriteMounts moves the container's mount paths under the pod's root.
func (s *siteEmu) rewriteMounts(p *podEmu, text string) string {
	for _, vm := range s.container().VolumeMounts {
		mp := strings.TrimSuffix(vm.MountPath, "/")
		re := regexp.MustCompile(`(^|[\s"'=:\[,])` + regexp.QuoteMeta(mp) + `/`)
		to := filepath.Join(p.root, mp) + "/"
		text = re.ReplaceAllStringFunc(text, func(m string) string {
			return re.FindStringSubmatch(m)[1] + to
		})
	}
	return text
}

// checkAllIPs fails unless every address in cfg is an IP (or empty): a
// name left would go to the host's resolver instead of the emulated DNS.
func checkAllIPs(t *testing.T, pod string, cfg *config.Config) {
	t.Helper()
	hostOf := func(what, hp string) {
		if hp == "" {
			return
		}
		host, _, err := net.SplitHostPort(hp)
		if err != nil || net.ParseIP(host) == nil {
			t.Fatalf("%s: %s %q: not an address (the emulated DNS does not know the name)", pod, what, hp)
		}
	}
	urlOf := func(what, s string) {
		if s == "" {
			return
		}
		u, err := url.Parse(s)
		if err != nil || net.ParseIP(u.Hostname()) == nil {
			t.Fatalf("%s: %s %q: not an address (the emulated DNS does not know the name)", pod, what, s)
		}
	}
	cl := cfg.Cluster
	hostOf("cluster.bind", cl.Bind)
	hostOf("cluster.advertise", cl.Advertise)
	hostOf("cluster.relay", cl.Relay)
	hostOf("cluster.relay-advertise", cl.RelayAdvertise)
	for _, j := range cl.Join {
		hostOf("cluster.join", j)
	}
	hostOf("admin.listen", cfg.Admin.Listen)
	hostOf("tunnel.listen", cfg.Tunnel.Listen)
	urlOf("tunnel.advertise", cfg.Tunnel.Advertise)
	for _, pe := range cfg.Peers {
		for _, u := range pe.URLs {
			urlOf("peers "+pe.Site+" url", u)
		}
	}
	for _, sv := range cfg.Services {
		hostOf("services "+sv.Name+" accept", sv.Accept)
		hostOf("services "+sv.Name+" connect", sv.Connect)
	}
}

// terminate deletes pod p as the kubelet does: out of the Services'
// endpoints and DNS at once, the preStop sleep, SIGTERM, and SIGKILL if it
// has not exited at the end of the grace period (which fails the test).
func (s *siteEmu) terminate(t *testing.T, p *podEmu) (preStop, exit time.Duration) {
	t.Helper()
	s.w.mu.Lock()
	p.terminating = true
	s.w.mu.Unlock()
	spec := s.sts.Spec.Template.Spec
	if ls := s.container().Lifecycle; ls != nil && ls.PreStop != nil {
		if ls.PreStop.Sleep == nil {
			t.Fatalf("%s: preStop %+v: this emulation runs the sleep action only", s.full, ls.PreStop)
		}
		preStop = time.Duration(ls.PreStop.Sleep.Seconds) * time.Second
	}
	grace := 30 * time.Second
	if spec.TerminationGracePeriodSeconds != nil {
		grace = time.Duration(*spec.TerminationGracePeriodSeconds) * time.Second
	}
	select {
	case <-time.After(preStop):
	case <-s.w.ctx.Done():
	}
	if err := p.proc.exited(); err != nil {
		t.Fatalf("%s during its preStop pause", err)
	}
	at := time.Now()
	if err := p.proc.signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if !p.proc.waitExit(grace - preStop) {
		p.proc.signal(syscall.SIGKILL)
		p.proc.waitExit(5 * time.Second)
		t.Errorf("%s still ran %v after SIGTERM: the kubelet SIGKILLed it", p.name, grace-preStop)
	}
	exit = time.Since(at)
	s.w.mu.Lock()
	delete(s.pods, p.ordinal)
	s.w.mu.Unlock()
	return preStop, exit
}

// kill removes pod p at once with SIGKILL, as a forced deletion or a lost
// node does (no preStop, no SIGTERM, no graceful leave).
func (s *siteEmu) kill(t *testing.T, p *podEmu) {
	t.Helper()
	s.w.mu.Lock()
	p.terminating = true
	s.w.mu.Unlock()
	if err := p.proc.signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if !p.proc.waitExit(5 * time.Second) {
		t.Fatalf("%s still running 5s after SIGKILL", p.name)
	}
	s.w.mu.Lock()
	delete(s.pods, p.ordinal)
	s.w.mu.Unlock()
}

// crash kills pod p's container with SIGKILL (an OOM kill, a crash) and
// restarts it in the same pod, as the kubelet does: same name, same pod IP,
// same volumes. The pod is unready from the moment its container dies.
func (s *siteEmu) crash(t *testing.T, p *podEmu) {
	t.Helper()
	s.w.mu.Lock()
	p.ready, p.fails, p.lastProbe = false, 0, "the container exited"
	s.w.mu.Unlock()
	if err := p.proc.signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if !p.proc.waitExit(5 * time.Second) {
		t.Fatalf("%s still running 5s after SIGKILL", p.name)
	}
	// The kubelet notices the exit within its PLEG relist period (1 s) and
	// restarts a container at once the first time (CrashLoopBackOff delays
	// only the later restarts).
	select {
	case <-time.After(kubeletRestartDelay):
	case <-s.w.ctx.Done():
	}
	s.w.mu.Lock()
	p.createdAt, p.firstReady = time.Now(), 0
	s.w.mu.Unlock()
	s.writeConfig(t, p, s.podEnv(t, p))
	p.proc.start(t)
}

// step is one pass of the StatefulSet controller (OrderedReady) over the
// site. It makes at most one change and returns what the site is waiting
// for, or nil once exactly the desired ordinals run and are ready.
func (s *siteEmu) step(t *testing.T) error {
	t.Helper()
	for _, p := range s.live() {
		if err := p.proc.exited(); err != nil {
			t.Fatalf("%v: a pod's process died on its own", err)
		}
	}
	desired := int(*s.sts.Spec.Replicas)
	minReady := time.Duration(s.sts.Spec.MinReadySeconds) * time.Second
	available := func(p *podEmu) error {
		ready, since, _ := p.state()
		switch {
		case !ready:
			return fmt.Errorf("%s is not ready", p.name)
		case time.Since(since) < minReady:
			return fmt.Errorf("%s is ready but not yet available (minReadySeconds %v)", p.name, minReady)
		}
		return nil
	}
	for i := range desired {
		p := s.pod(i)
		if p == nil {
			for j := range i {
				if err := available(s.pod(j)); err != nil {
					return fmt.Errorf("%s-%d waits: %w", s.full, i, err)
				}
			}
			s.createPod(t, i)
			return fmt.Errorf("%s-%d created", s.full, i)
		}
		if ready, _, _ := p.state(); !ready {
			s.w.mu.Lock()
			why := p.lastProbe
			s.w.mu.Unlock()
			return fmt.Errorf("%s is not ready (readiness probe: %s)", p.name, why)
		}
	}
	pods := s.podList()
	if last := pods[len(pods)-1]; last.ordinal >= desired {
		// Scale-down: the highest ordinal alone, once every other pod is
		// ready and available, and so is the condemned pod itself unless
		// it is unhealthy (not ready), which goes at once.
		for _, p := range pods {
			if ready, _, _ := p.state(); p == last && !ready {
				continue
			}
			if err := available(p); err != nil {
				return fmt.Errorf("removing %s waits: %w", last.name, err)
			}
		}
		s.terminate(t, last)
		return fmt.Errorf("%s removed", last.name)
	}
	return nil
}

// reconcile runs the StatefulSet controllers of sites until every one is
// at its desired state, or fails the test after timeout.
func reconcile(t *testing.T, what string, timeout time.Duration, sites ...*siteEmu) time.Duration {
	t.Helper()
	return pollUntil(t, what, timeout, 20*time.Millisecond, func() error {
		var errs []error
		for _, s := range sites {
			if err := s.step(t); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	})
}

// ---- Services of type LoadBalancer ----------------------------------------------

// lbService forwards TCP from the Service's address to the pod it selects.
type lbService struct {
	name  string
	names []string // the DNS names that resolve to host
	host  string
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]bool
}

func (s *siteEmu) startLB(t *testing.T, svc *corev1.Service) *lbService {
	t.Helper()
	podName := svc.Spec.Selector[podNameLabel]
	ord, err := strconv.Atoi(strings.TrimPrefix(podName, s.full+"-"))
	if err != nil || s.svcAddr[ord] == "" {
		t.Fatalf("Service %s selects pod %q, not an ordinal below maxReplicas", svc.Name, podName)
	}
	if len(svc.Spec.Ports) != 1 {
		t.Fatalf("Service %s: %d ports, the emulation forwards one", svc.Name, len(svc.Spec.Ports))
	}
	sp := svc.Spec.Ports[0]
	target := s.containerPort(t, portRef(sp.TargetPort))
	lb := &lbService{name: svc.Name, host: s.svcAddr[ord], conns: map[net.Conn]bool{},
		names: []string{svc.Name + "." + namespace + ".svc." + clusterDomain}}
	if h := svc.Annotations["external-dns.alpha.kubernetes.io/hostname"]; h != "" {
		for n := range strings.SplitSeq(h, ",") {
			lb.names = append(lb.names, strings.TrimSuffix(strings.TrimSpace(n), "."))
		}
	}
	lb.ln, err = net.Listen("tcp", net.JoinHostPort(lb.host, strconv.Itoa(int(sp.Port))))
	if err != nil {
		t.Fatalf("Service %s: %v", svc.Name, err)
	}
	// The Service's endpoint: the pod, ready or not (publishNotReadyAddresses).
	endpoint := func() (string, bool) {
		s.w.mu.Lock()
		defer s.w.mu.Unlock()
		p := s.pods[ord]
		if p == nil || !svc.Spec.PublishNotReadyAddresses && !p.ready {
			return "", false
		}
		return net.JoinHostPort(p.ip, strconv.Itoa(target)), true
	}
	s.w.bg.Add(1)
	go func() {
		defer s.w.bg.Done()
		for {
			c, err := lb.ln.Accept()
			if err != nil {
				return
			}
			lb.wg.Add(1)
			go lb.pipe(c, endpoint)
		}
	}()
	return lb
}

func (lb *lbService) track(c net.Conn, add bool) bool {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	if lb.conns == nil {
		return false
	}
	if add {
		lb.conns[c] = true
	} else {
		delete(lb.conns, c)
	}
	return true
}

func (lb *lbService) pipe(c net.Conn, endpoint func() (string, bool)) {
	defer lb.wg.Done()
	defer c.Close()
	addr, ok := endpoint()
	if !ok {
		return
	}
	u, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return
	}
	defer u.Close()
	if !lb.track(c, true) || !lb.track(u, true) {
		return
	}
	defer lb.track(c, false)
	defer lb.track(u, false)
	done := make(chan struct{})
	go func() {
		io.Copy(u, c)
		u.Close()
		close(done)
	}()
	io.Copy(c, u)
	c.Close()
	<-done
}

// close deletes the Service: the listener and every connection through it.
func (lb *lbService) close() {
	lb.ln.Close()
	lb.mu.Lock()
	for c := range lb.conns {
		c.Close()
	}
	lb.conns = nil
	lb.mu.Unlock()
	lb.wg.Wait()
}

// ---- admin API views -----------------------------------------------------------

type storeView struct {
	Instance string                `json:"instance"`
	Schemes  []store.ServiceStatus `json:"schemes"`
}

// tables is a site's partition tables: per scheme, its lineage and epoch.
type tables map[string]tableID

type tableID struct {
	lineage string
	epoch   store.Epoch
}

func (id tableID) String() string { return id.lineage + "@" + id.epoch.String() }

// settled reports the site's tables once every live pod of s reports, for
// every scheme, the same settled table whose primaries are exactly the live
// pods, newer than prev (a membership change makes a new table; a
// re-created pod has the old one's name, so an older settled table proves
// nothing) and of the same lineage (a new lineage is a history started
// again, as after a split brain, which drops copies). prev nil: any settled
// table.
func (s *siteEmu) settled(prev tables) (tables, error) {
	want := s.names()
	var ref tables
	for _, p := range s.live() {
		var v storeView
		if err := s.w.getJSON(p.admin, "/api/v1/store", s.token, &v); err != nil {
			return nil, err
		}
		if len(v.Schemes) == 0 {
			return nil, fmt.Errorf("%s: no schemes", p.name)
		}
		cur := tables{}
		for _, sc := range v.Schemes {
			got := slices.Sorted(mapsKeys(sc.Primaries))
			if !sc.Settled || !slices.Equal(got, want) {
				return nil, fmt.Errorf("%s: scheme %s settled %v, primaries %v; want settled on %v", p.name, sc.Scheme, sc.Settled, sc.Primaries, want)
			}
			id := tableID{sc.Lineage, sc.Epoch}
			if old, ok := prev[sc.Scheme]; ok {
				if id.lineage != old.lineage {
					return nil, fmt.Errorf("%s: scheme %s has a new partition history %s (was %s): the site split and dropped copies", p.name, sc.Scheme, id, old)
				}
				if id.epoch.Compare(old.epoch) <= 0 {
					return nil, fmt.Errorf("%s: scheme %s still at table %s, not newer than %s", p.name, sc.Scheme, id, old)
				}
			}
			cur[sc.Scheme] = id
		}
		if ref == nil {
			ref = cur
		} else if fmt.Sprint(cur) != fmt.Sprint(ref) {
			return nil, fmt.Errorf("%s holds tables %v, others %v", p.name, cur, ref)
		}
	}
	return ref, nil
}

// waitSettled waits until settled(prev) passes and returns the tables and
// how long that took.
func (s *siteEmu) waitSettled(t *testing.T, what string, prev tables, timeout time.Duration) (tables, time.Duration) {
	t.Helper()
	var cur tables
	took := pollUntil(t, what, timeout, 100*time.Millisecond, func() error {
		var err error
		cur, err = s.settled(prev)
		return err
	})
	return cur, took
}

// primaries is the number of partitions each member is primary of, per
// scheme, as pod p sees it.
func (s *siteEmu) primaries(p *podEmu) (map[string]map[string]int, error) {
	var v storeView
	if err := s.w.getJSON(p.admin, "/api/v1/store", s.token, &v); err != nil {
		return nil, err
	}
	out := map[string]map[string]int{}
	for _, sc := range v.Schemes {
		out[sc.Scheme] = sc.Primaries
	}
	return out, nil
}

// meshComplete reports nil when every live pod of each site holds exactly
// one tunnel to every live pod of the other, each to the far end's current
// incarnation (epoch).
func meshComplete(a, b *siteEmu) error {
	sts := map[string]*gateway.Status{}
	for _, s := range []*siteEmu{a, b} {
		for _, p := range s.live() {
			var st gateway.Status
			if err := s.w.getJSON(p.admin, "/api/v1/status", s.token, &st); err != nil {
				return err
			}
			if st.Instance != p.name {
				return fmt.Errorf("the admin endpoint of %s answers as %s", p.name, st.Instance)
			}
			sts[p.name] = &st
		}
	}
	for _, pair := range [][2]*siteEmu{{a, b}, {b, a}} {
		want := pair[1].names()
		for _, name := range pair[0].names() {
			var got []string
			for _, tn := range sts[name].Tunnels {
				if tn.Site != pair[1].site {
					continue
				}
				got = append(got, tn.Peer)
				if far := sts[tn.Peer]; far != nil && far.Epoch != tn.Epoch {
					return fmt.Errorf("%s holds a tunnel to %s of epoch %d, which runs epoch %d", name, tn.Peer, tn.Epoch, far.Epoch)
				}
			}
			slices.Sort(got)
			if !slices.Equal(got, want) {
				return fmt.Errorf("%s holds tunnels to %v, want %v", name, got, want)
			}
		}
	}
	return nil
}

// echoRoundTrip sends a line to addr (an accept port) and expects it back
// from the echo server on the other side of the tunnel.
func echoRoundTrip(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	msg := fmt.Sprintf("ping %d\n", rand.Int64())
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("%s: %w", addr, err)
	}
	if got != msg {
		return fmt.Errorf("%s echoed %q, want %q", addr, got, msg)
	}
	return nil
}

// pollUntil calls check every interval until it returns nil, and fails the
// test with the last error once timeout has passed. It returns how long it
// took.
func pollUntil(t *testing.T, what string, timeout, interval time.Duration, check func() error) time.Duration {
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
