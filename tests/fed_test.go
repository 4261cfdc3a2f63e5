package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sitebridge/sitebridge/cacheclient"
)

// cutProxy forwards host:port to host:target, and can cut every
// connection and refuse new ones for a while: all tunnels down.
type cutProxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	conns map[net.Conn]bool
	cut   bool
	wg    sync.WaitGroup
}

func newCutProxy(t *testing.T, listen, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target, conns: map[net.Conn]bool{}}
	p.wg.Go(p.serve)
	t.Cleanup(func() {
		ln.Close()
		p.setCut(true)
		p.wg.Wait()
	})
	return p
}

func (p *cutProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns[c] = true
		p.mu.Unlock()
		p.wg.Go(func() { p.pipe(c) })
	}
}

func (p *cutProxy) pipe(c net.Conn) {
	defer c.Close()
	u, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		return
	}
	p.mu.Lock()
	if p.cut {
		p.mu.Unlock()
		u.Close()
		return
	}
	p.conns[u] = true
	p.mu.Unlock()
	defer u.Close()
	done := make(chan struct{}, 2)
	go func() { io.Copy(u, c); done <- struct{}{} }()
	go func() { io.Copy(c, u); done <- struct{}{} }()
	<-done
	c.Close()
	u.Close()
	<-done
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, u)
	p.mu.Unlock()
}

// setCut closes every connection and refuses new ones (true), or lets them
// through again (false).
func (p *cutProxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for c := range p.conns {
			c.Close()
		}
	}
}

// fedCluster is the 2+2 demo topology with every tunnel through cut
// proxies, and cache clients for each instance.
type fedCluster struct {
	*cluster
	proxies []*cutProxy
	clients map[string]*cacheclient.Client
}

const proxyOffset = 10000 // proxy port = tunnel port + this

func startFedCluster(t *testing.T, edit func(name, cfg string) string) *fedCluster {
	t.Helper()
	bin := sitebridgeBinary(t)
	ip := pickLoopback(t)
	f := &fedCluster{clients: map[string]*cacheclient.Client{}}
	for _, port := range []int{portCloud1Tunnel, portCloud2Tunnel} {
		f.proxies = append(f.proxies, newCutProxy(t, net.JoinHostPort(ip, strconv.Itoa(port+proxyOffset)), net.JoinHostPort(ip, strconv.Itoa(port))))
	}
	f.cluster = startClusterWith(t, bin, ip, func(name, cfg string) string {
		// Tunnels are dialled (and announced) through the proxies.
		for _, port := range []int{portCloud1Tunnel, portCloud2Tunnel} {
			from := fmt.Sprintf("wss://%s:%d/", ip, port)
			to := fmt.Sprintf("wss://%s:%d/", ip, port+proxyOffset)
			cfg = strings.ReplaceAll(cfg, from, to)
		}
		if edit != nil {
			cfg = edit(name, cfg)
		}
		return cfg
	})
	for _, in := range f.insts {
		f.clients[in.name] = cacheclient.New(f.addr(in.adminPort))
	}
	t.Cleanup(func() {
		for _, c := range f.clients {
			c.CloseIdleConnections()
		}
	})
	return f
}

type digestAnswer struct {
	Site       string `json:"site"`
	Partitions []struct {
		Partition int    `json:"partition"`
		Count     int    `json:"count"`
		Hash      string `json:"hash"`
	} `json:"partitions"`
}

func (f *fedCluster) getJSON(in *instance, path string, v any) error {
	hc := &http.Client{Timeout: 30 * time.Second}
	resp, err := hc.Get("http://" + f.addr(in.adminPort) + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("GET %s: %s %s", path, resp.Status, b)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// converged compares the trades digests of the two sites.
func (f *fedCluster) converged(a, b string) (int, error) {
	var da, db digestAnswer
	if err := f.getJSON(f.inst(a), "/api/v1/federation/digests?scheme=trades", &da); err != nil {
		return 0, err
	}
	if err := f.getJSON(f.inst(b), "/api/v1/federation/digests?scheme=trades", &db); err != nil {
		return 0, err
	}
	if len(da.Partitions) != len(db.Partitions) {
		return 0, fmt.Errorf("%d vs %d partitions", len(da.Partitions), len(db.Partitions))
	}
	n, diff := 0, 0
	for i := range da.Partitions {
		n += da.Partitions[i].Count
		if da.Partitions[i] != db.Partitions[i] {
			diff++
		}
	}
	if diff > 0 {
		return n, fmt.Errorf("%d partitions differ (%s holds %d entries)", diff, a, n)
	}
	return n, nil
}

func (f *fedCluster) waitConverged(t *testing.T, within time.Duration) (int, time.Duration) {
	t.Helper()
	var n int
	took := waitFor(t, "both sites to converge", within, 200*time.Millisecond, func() error {
		var err error
		n, err = f.converged("cloud1", "onprem1")
		return err
	})
	return n, took
}

type fedStatusAnswer struct {
	Participants []struct {
		Participant string  `json:"participant"`
		State       string  `json:"state"`
		Pending     int64   `json:"pending_entries"`
		Lag         float64 `json:"lag_seconds"`
		Applied     uint64  `json:"applied_from_participant"`
		Duplicates  uint64  `json:"duplicates_from_participant"`
		Superseded  uint64  `json:"superseded_from_participant"`
		Produced    uint64  `json:"changes_made_here"`
		LastError   string  `json:"last_error"`
	} `json:"participants"`
}

func (f *fedCluster) fedStatus(t *testing.T, name string) fedStatusAnswer {
	t.Helper()
	var st fedStatusAnswer
	waitFor(t, "federation status of "+name, 30*time.Second, 200*time.Millisecond, func() error {
		return f.getJSON(f.inst(name), "/api/v1/federation", &st)
	})
	return st
}

// checkExactlyOnce: each site applied every change the other made, and
// none twice; both journals are drained.
func (f *fedCluster) checkExactlyOnce(t *testing.T) {
	t.Helper()
	waitFor(t, "journals drained and every change applied once", 60*time.Second, 250*time.Millisecond, func() error {
		cloud, onprem := f.fedStatus(t, "cloud1"), f.fedStatus(t, "onprem1")
		if len(cloud.Participants) != 1 || len(onprem.Participants) != 1 {
			return fmt.Errorf("participants: %+v %+v", cloud, onprem)
		}
		c, o := cloud.Participants[0], onprem.Participants[0]
		if c.Pending != 0 || o.Pending != 0 {
			return fmt.Errorf("pending: cloud %d, onprem %d", c.Pending, o.Pending)
		}
		if o.Duplicates != 0 || c.Duplicates != 0 {
			t.Fatalf("changes arrived twice: cloud %d, onprem %d", c.Duplicates, o.Duplicates)
		}
		if got := o.Applied + o.Superseded; got != c.Produced {
			return fmt.Errorf("onprem took %d (applied %d, superseded %d) of the %d changes made at cloud", got, o.Applied, o.Superseded, c.Produced)
		}
		if got := c.Applied + c.Superseded; got != o.Produced {
			return fmt.Errorf("cloud took %d of the %d changes made at onprem", got, o.Produced)
		}
		t.Logf("exactly once: onprem applied %d + superseded %d of %d cloud changes; cloud applied %d + superseded %d of %d onprem changes; no duplicates; journals drained",
			o.Applied, o.Superseded, c.Produced, c.Applied, c.Superseded, o.Produced)
		return nil
	})
}

// fedLoad writes unique keys through every live instance of both sites
// and records which were acknowledged.
type fedLoad struct {
	f     *fedCluster
	cache string
	down  sync.Map // instance name -> true while killed

	mu     sync.Mutex
	acked  []string
	failed atomic.Int64
	n      atomic.Int64
}

func (l *fedLoad) run(ctx context.Context, writers int) *sync.WaitGroup {
	var wg sync.WaitGroup
	names := []string{"cloud1", "cloud2", "onprem1", "onprem2"}
	for w := range writers {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				name := names[(w+i)%len(names)]
				if _, down := l.down.Load(name); down {
					continue
				}
				key := fmt.Sprintf("%s-w%d-%d", name, w, i)
				cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
				err := l.f.clients[name].Put(cctx, l.cache, key, []byte(key), 0)
				cancel()
				if err != nil {
					l.failed.Add(1)
					continue
				}
				l.mu.Lock()
				l.acked = append(l.acked, key)
				l.mu.Unlock()
				l.n.Add(1)
			}
		})
	}
	return &wg
}

func (l *fedLoad) waitAcked(t *testing.T, more int64) {
	t.Helper()
	target := l.n.Load() + more
	waitFor(t, fmt.Sprintf("%d more writes acknowledged", more), 2*time.Minute, 10*time.Millisecond, func() error {
		if n := l.n.Load(); n < target {
			return fmt.Errorf("%d of %d", n, target)
		}
		return nil
	})
}

// checkAll reads every acknowledged key through both sites.
func (l *fedLoad) checkAll(t *testing.T) {
	t.Helper()
	for _, name := range []string{"cloud1", "onprem2"} {
		missing := 0
		for _, key := range l.acked {
			v, ok, err := l.f.clients[name].Get(t.Context(), l.cache, key)
			if err != nil {
				t.Fatalf("get %s via %s: %v", key, name, err)
			}
			if !ok || string(v) != key {
				missing++
				if missing < 5 {
					t.Errorf("%s: acknowledged %s/%s is missing", name, l.cache, key)
				}
			}
		}
		if missing > 0 {
			t.Fatalf("%s: %d of %d acknowledged writes missing", name, missing, len(l.acked))
		}
	}
	t.Logf("every one of %d acknowledged writes (%d more failed, in doubt) is on both sites", len(l.acked), l.failed.Load())
}

// TestFederationE2E runs the 2+2 demo topology as real processes with the
// trades cache federated active-active, and proves, in order: (a) 100,000
// entries written on the cloud site reach the on-prem site; (b) concurrent
// writes to the same keys on both sites converge; (c) killing any instance
// with SIGKILL during writes on both sites loses no acknowledged write and
// applies no change twice; (d) with every tunnel down for 30 s during
// writes, the sites converge once they are back and the journals drain.
func TestFederationE2E(t *testing.T) {
	skipUnlessLinux(t)
	f := startFedCluster(t, nil)
	ctx := t.Context()

	t.Run("a-100k-entries", func(t *testing.T) {
		const total, writers = 100000, 16
		var next atomic.Int64
		var wg sync.WaitGroup
		start := time.Now()
		for w := range writers {
			wg.Go(func() {
				c := f.clients[[]string{"cloud1", "cloud2"}[w%2]]
				for {
					i := next.Add(1) - 1
					if i >= total {
						return
					}
					key := "a-" + strconv.FormatInt(i, 10)
					for attempt := 0; ; attempt++ {
						err := c.Put(ctx, "trades", key, []byte("value-"+key), 0)
						if err == nil {
							break
						}
						if attempt == 5 || ctx.Err() != nil {
							t.Errorf("put %s: %v", key, err)
							return
						}
					}
				}
			})
		}
		wg.Wait()
		wrote := time.Since(start)
		n, took := f.waitConverged(t, 2*time.Minute)
		if n < total {
			t.Fatalf("converged with %d entries, want %d", n, total)
		}
		t.Logf("(a) %d entries written on the cloud site in %v (%.0f/s); the on-prem site converged %v after the last write",
			total, wrote.Round(time.Millisecond), float64(total)/wrote.Seconds(), took.Round(time.Millisecond))
		out, err := exec.CommandContext(ctx, f.bin, "fed", "verify", "--admin", f.addr(portCloud1Admin),
			"--other", f.addr(portOnprem2Admin), "--scheme", "trades", "--wait", "30s").CombinedOutput()
		if err != nil || !strings.HasPrefix(strings.TrimSpace(string(out)), "converged:") {
			t.Fatalf("sitebridge fed verify: %v\n%s", err, out)
		}
		t.Logf("sitebridge fed verify: %s", strings.TrimSpace(string(out)))
	})

	t.Run("b-concurrent-same-keys", func(t *testing.T) {
		var wg sync.WaitGroup
		for _, name := range []string{"cloud1", "cloud2", "onprem1", "onprem2"} {
			wg.Go(func() {
				for i := range 1000 {
					key := fmt.Sprintf("b-%d", i%100)
					if err := f.clients[name].Put(ctx, "trades", key, []byte(name+"-"+strconv.Itoa(i)), 0); err != nil {
						t.Errorf("put via %s: %v", name, err)
						return
					}
				}
			})
		}
		wg.Wait()
		f.waitConverged(t, time.Minute)
		for i := range 100 {
			key := fmt.Sprintf("b-%d", i)
			a, _, _ := f.clients["cloud2"].Get(ctx, "trades", key)
			b, _, _ := f.clients["onprem1"].Get(ctx, "trades", key)
			if string(a) != string(b) {
				t.Fatalf("%s: cloud %q, onprem %q", key, a, b)
			}
		}
		t.Logf("(b) 4,000 concurrent writes to the same 100 keys from both sites converged to identical values")
	})

	t.Run("c-kill-during-writes", func(t *testing.T) {
		l := &fedLoad{f: f, cache: "trades-c"}
		lctx, cancel := context.WithCancel(ctx)
		wg := l.run(lctx, 8)
		for _, victim := range []string{"cloud1", "onprem2"} {
			l.waitAcked(t, 2000)
			l.down.Store(victim, true)
			f.inst(victim).proc.kill(t)
			t.Logf("killed %s (SIGKILL) after %d acknowledged writes", victim, l.n.Load())
			l.waitAcked(t, 2000)
			f.inst(victim).proc.start(t)
			f.waitReady(t)
			l.down.Delete(victim)
			t.Logf("restarted %s after %d acknowledged writes", victim, l.n.Load())
		}
		l.waitAcked(t, 1000)
		cancel()
		wg.Wait()
		f.waitConverged(t, 2*time.Minute)
		l.checkAll(t)
		f.checkExactlyOnce(t)
	})

	t.Run("d-all-tunnels-down-30s", func(t *testing.T) {
		l := &fedLoad{f: f, cache: "trades-d"}
		lctx, cancel := context.WithCancel(ctx)
		wg := l.run(lctx, 8)
		l.waitAcked(t, 1000)
		for _, p := range f.proxies {
			p.setCut(true)
		}
		cutAt, before := time.Now(), l.n.Load()
		hold(t, 30*time.Second)
		for _, p := range f.proxies {
			p.setCut(false)
		}
		during := l.n.Load() - before
		t.Logf("every tunnel down for %v; %d writes acknowledged meanwhile (each site on its own)", time.Since(cutAt).Round(time.Second), during)
		if during == 0 {
			t.Fatal("no write was acknowledged while the tunnels were down")
		}
		l.waitAcked(t, 1000)
		cancel()
		wg.Wait()
		_, took := f.waitConverged(t, 2*time.Minute)
		t.Logf("(d) converged %v after the writes stopped", took.Round(time.Millisecond))
		l.checkAll(t)
		f.checkExactlyOnce(t)
	})
}

// TestFederationActivePassiveE2E: with cloud active and onprem passive,
// cloud's writes reach onprem, and onprem's writes are not sent.
func TestFederationActivePassiveE2E(t *testing.T) {
	skipUnlessLinux(t)
	f := startFedCluster(t, func(name, cfg string) string {
		return strings.Replace(cfg, "      type: active-active\n      sites: [cloud, onprem]",
			"      type: active-passive\n      active: [cloud]\n      passive: [onprem]", 1)
	})
	ctx := t.Context()
	if err := f.clients["onprem1"].Put(ctx, "trades", "from-passive", []byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.clients["cloud2"].Put(ctx, "trades", "from-active", []byte("y"), 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the active site's write on the passive site", 30*time.Second, 50*time.Millisecond, func() error {
		_, ok, err := f.clients["onprem2"].Get(ctx, "trades", "from-active")
		if err == nil && !ok {
			err = fmt.Errorf("not there yet")
		}
		return err
	})
	// Anything the passive site sent would have arrived by now: it ships
	// every 50 ms, and the active site's write took one trip.
	for _, name := range []string{"cloud1", "cloud2"} {
		if _, ok, err := f.clients[name].Get(ctx, "trades", "from-passive"); err != nil || ok {
			t.Fatalf("%s: the passive site's write reached the active site (%v, %v)", name, ok, err)
		}
	}
	if st := f.fedStatus(t, "onprem1"); len(st.Participants) != 0 {
		t.Fatalf("the passive site sends to %+v", st.Participants)
	}
	t.Logf("(e) active -> passive delivered; the passive site's write stayed there")
}

// TestFederationCentralE2E: three single-instance sites as real processes,
// a hub and two spokes in a central topology; a change made at one spoke
// reaches the other through the hub, which repeats it.
func TestFederationCentralE2E(t *testing.T) {
	skipUnlessLinux(t)
	bin := sitebridgeBinary(t)
	ip := pickLoopback(t)
	dir := t.TempDir()
	const tunnelPort, adminBase = 8640, 9640
	sites := []string{"hub", "spoke1", "spoke2"}
	args := []string{"tlsgen", "--out", dir}
	for _, s := range sites {
		args = append(args, "--instance", fmt.Sprintf("%s/%s-1=localhost,%s", s, s, ip))
	}
	runCLI(t, bin, args...)
	topology := `  topologies:
    - name: star
      type: central
      hub: hub
      spokes: [spoke1, spoke2]
`
	var procs []*proc
	t.Cleanup(func() {
		for _, p := range procs {
			p.stop(t)
		}
		if t.Failed() {
			for _, p := range procs {
				p.dumpLog(t)
			}
		}
	})
	clients := map[string]*cacheclient.Client{}
	for i, s := range sites {
		var side string
		if s == "hub" {
			side = fmt.Sprintf("tunnel: {listen: \"%s:%d\"}\npeers: [{site: spoke1}, {site: spoke2}]\n", ip, tunnelPort)
		} else {
			side = fmt.Sprintf("peers: [{site: hub, urls: [\"wss://%s:%d/sitebridge\"]}]\n", ip, tunnelPort)
		}
		var parts []string
		for _, o := range sites {
			if o != s {
				parts = append(parts, "{site: "+o+"}")
			}
		}
		cfg := fmt.Sprintf(`instance: %s-1
site: %s
tls: {ca: ca.crt, cert: %s-1.crt, key: %s-1.key}
%sadmin: {listen: "%s:%d"}
store:
  schemes: [{name: trades, federation: star}]
federation:
  participants: [%s]
%s`, s, s, s, s, side, ip, adminBase+i, strings.Join(parts, ", "), topology)
		path := fmt.Sprintf("%s/%s.yaml", dir, s)
		if err := writeFile(path, cfg); err != nil {
			t.Fatal(err)
		}
		runCLI(t, bin, "run", "--config", path, "--check")
		p := &proc{name: s, bin: bin, args: []string{"run", "--config", path}, log: fmt.Sprintf("%s/%s.log", dir, s)}
		procs = append(procs, p)
		p.start(t)
		clients[s] = cacheclient.New(fmt.Sprintf("%s:%d", ip, adminBase+i))
	}
	defer func() {
		for _, c := range clients {
			c.CloseIdleConnections()
		}
	}()
	ctx := t.Context()
	waitFor(t, "a put at spoke1", 30*time.Second, 100*time.Millisecond, func() error {
		return clients["spoke1"].Put(ctx, "trades", "from-spoke1", []byte("hello"), 0)
	})
	for _, s := range []string{"hub", "spoke2"} {
		took := waitFor(t, "spoke1's change at "+s, 30*time.Second, 20*time.Millisecond, func() error {
			v, ok, err := clients[s].Get(ctx, "trades", "from-spoke1")
			if err == nil && (!ok || string(v) != "hello") {
				err = fmt.Errorf("not there yet")
			}
			return err
		})
		t.Logf("(f) spoke1's change reached %s in %v", s, took.Round(time.Millisecond))
	}
	// And back the other way, from spoke2 to spoke1.
	if err := clients["spoke2"].Put(ctx, "trades", "from-spoke2", []byte("world"), 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "spoke2's change at spoke1", 30*time.Second, 20*time.Millisecond, func() error {
		_, ok, err := clients["spoke1"].Get(ctx, "trades", "from-spoke2")
		if err == nil && !ok {
			err = fmt.Errorf("not there yet")
		}
		return err
	})
}

func writeFile(path, s string) error { return os.WriteFile(path, []byte(s), 0o600) }
