package tests

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/sitebridge/sitebridge/dashboard"
	"github.com/sitebridge/sitebridge/demo"
)

// The dashboard in a real browser: `sitebridge demo` as a child process,
// headless Chromium (Debian's chromium, driven over the DevTools protocol
// by chromedp: no driver process, and the page's uncaught exceptions are
// visible to the test), and every assertion a poll of the page's DOM.
//
// Screenshots go to tests/artifacts/ (git-ignored) and, when it is set, to
// $SITEBRIDGE_ARTIFACTS.

const (
	dashStep      = 30 * time.Second // bound on each step that waits for the page
	dashTradesAdd = 200
	soloToken     = "dashboard-test-token"
)

// chromiumPath finds the browser: $SITEBRIDGE_CHROMIUM, or chromium in
// PATH. Without one the test is skipped, except in CI (CI=true), where
// .ci/run installs it and its absence is a failure.
func chromiumPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("SITEBRIDGE_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	msg := "headless Chromium not found (apt-get install chromium chromium-driver, or set SITEBRIDGE_CHROMIUM)"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + ": CI must run the browser test (.ci/run installs it)")
	}
	t.Skip("environment: " + msg)
	return ""
}

// browser is one headless Chromium with one tab.
type browser struct {
	t       *testing.T
	ctx     context.Context // the tab's
	shots   []string        // where screenshots go
	mu      sync.Mutex
	console []string // the page's uncaught exceptions and console errors
	done    chan struct{}
}

func startBrowser(t *testing.T, path, profile string) *browser {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.Flag("headless", "new"),
		chromedp.NoSandbox, // CI runs as root
		chromedp.DisableGPU,
		chromedp.WindowSize(1400, 1100),
		chromedp.UserDataDir(profile),
		chromedp.Flag("no-proxy-server", true),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(allocCtx)
	b := &browser{t: t, ctx: ctx, done: make(chan struct{})}
	t.Cleanup(func() {
		if err := chromedp.Cancel(ctx); err != nil {
			t.Logf("closing the browser: %v", err)
		}
		cancelTab()
		cancelAlloc()
		<-b.done
	})
	// The first call starts the browser; it has no timeout, which would
	// end the browser with it.
	messages := chromedp.Console(ctx)
	go func() {
		defer close(b.done)
		for m, err := range messages {
			if err != nil {
				return
			}
			// Failed requests are logged by the browser (source
			// "network"): the token prompt makes them on purpose.
			if m.IsException() || (m.Type == chromedp.ConsoleError && m.Source != "network") {
				b.mu.Lock()
				b.console = append(b.console, fmt.Sprintf("%s (%s:%d)", m, m.URL, m.Line))
				b.mu.Unlock()
			}
		}
	}()
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start %s: %v", path, err)
	}
	for _, d := range []string{os.Getenv("SITEBRIDGE_ARTIFACTS"), "artifacts"} {
		if d == "" {
			continue
		}
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if abs, err := filepath.Abs(d); err == nil {
			b.shots = append(b.shots, abs)
		}
	}
	return b
}

// do runs actions within dashStep; on failure it saves a screenshot and
// fails the test.
func (b *browser) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, dashStep)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.screenshot("dashboard-failure.png")
		b.t.Fatalf("%s: %v\npage console: %v", what, err, b.errors())
	}
}

// until polls a JavaScript predicate in the page (no sleeps). Right after
// a navigation chromedp may still hold the old page's execution context;
// the poll is then started again in the new one.
func (b *browser) until(what, predicate string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, dashStep)
	defer cancel()
	for {
		_, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](predicate,
			chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(dashStep)))
		if err != nil && strings.Contains(err.Error(), "Cannot find context with specified id") && ctx.Err() == nil {
			continue
		}
		if err != nil {
			b.screenshot("dashboard-failure.png")
			b.t.Fatalf("waiting for %s: %v\npage console: %v", what, err, b.errors())
		}
		return
	}
}

// open loads url and waits for the page's script to have drawn once.
func (b *browser) open(url string) {
	b.t.Helper()
	b.do("load "+url, chromedp.Navigate(url), chromedp.WaitReady(chromedp.CSS(`#sites`)))
}

func evaluate[T any](b *browser, expr string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, dashStep)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// screenshot saves the whole page as name in every artifacts directory.
func (b *browser) screenshot(name string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, dashStep)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Errorf("screenshot %s: %v", name, err)
		return
	}
	for _, d := range b.shots {
		p := filepath.Join(d, name)
		if err := os.WriteFile(p, png, 0o644); err != nil {
			b.t.Errorf("screenshot: %v", err)
			continue
		}
		b.t.Logf("screenshot: %s", p)
	}
}

func (b *browser) errors() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.console...)
}

// js quotes s as a JavaScript string.
func js(s string) string {
	q, _ := json.Marshal(s)
	return string(q)
}

// TestDashboard: the demo's dashboard loads and shows four instances and
// their tunnels; a click stops an instance and the page shows it down,
// another starts it and the page shows it back; the load generator adds
// trades on one site and the page shows the other site's cache grow; price
// updates run and stop by themselves. Then an instance's own dashboard
// shows its site and the other site through tunnels, and a single instance
// with an admin token makes the page ask for the token.
func TestDashboard(t *testing.T) {
	skipUnlessLinux(t)
	chromium := chromiumPath(t)
	bin := sitebridgeBinary(t)
	ip := pickLoopback(t)
	dir := t.TempDir()
	o := demo.Options{Host: ip}

	d := &proc{name: "demo", bin: bin, args: []string{"demo", "--host", ip, "--dir", filepath.Join(dir, "demo")}, log: filepath.Join(dir, "demo.log")}
	t.Cleanup(func() {
		if t.Failed() {
			d.dumpLog(t)
		}
	})
	t.Cleanup(func() { d.stop(t) })
	d.start(t)
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	waitFor(t, "the demo's four instances with two tunnels each", 60*time.Second, 100*time.Millisecond, func() error {
		if err := d.exited(); err != nil {
			t.Fatal(err)
		}
		resp, err := hc.Get(o.DashboardURL() + "api/v1/topology")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var top dashboard.Topology
		if err := json.NewDecoder(resp.Body).Decode(&top); err != nil {
			return err
		}
		n := 0
		for _, s := range top.Sites {
			for _, in := range s.Instances {
				if in.State != dashboard.StateRunning || len(in.Tunnels) != 2 {
					return fmt.Errorf("%s: %s, %d tunnels", in.Name, in.State, len(in.Tunnels))
				}
				n++
			}
		}
		if n != 4 {
			return fmt.Errorf("%d instances", n)
		}
		return nil
	})
	if b, err := os.ReadFile(d.log); err != nil || !strings.Contains(string(b), o.DashboardURL()) {
		t.Fatalf("the demo does not print its dashboard's URL %s (%v)", o.DashboardURL(), err)
	}

	b := startBrowser(t, chromium, filepath.Join(dir, "chromium"))

	// The page loads and shows four instances, all running, and their four tunnels.
	b.open(o.DashboardURL())
	running := func(n int) string {
		return fmt.Sprintf(`document.querySelectorAll('#sites .inst[data-state="running"]').length === %d`, n)
	}
	tunnels := func(n int) string {
		return fmt.Sprintf(`document.querySelectorAll('#links g.tunnel').length === %d`, n)
	}
	b.until("four running instances, each with two tunnels, and four tunnel lines",
		running(4)+` && `+tunnels(4)+` && [...document.querySelectorAll('#sites .inst')].every(e => e.dataset.tunnels === '2')`+
			` && document.querySelector('#conn')?.dataset.ok === 'true' && !document.querySelector('#demo')?.hidden`)
	for _, site := range []string{"cloud", "onprem"} {
		if n := evaluate[int](b, `document.querySelectorAll('#site-`+site+` .inst').length`); n != 2 {
			t.Fatalf("site %s shows %d instances, want 2", site, n)
		}
	}
	b.until("federation participants started on both sites",
		`document.querySelectorAll('#fed .fed-part-head .badge.running').length === 2`)

	// Stop cloud1 with its button: it shows stopped, its two tunnels go.
	b.do("click stop on cloud1", chromedp.Click(chromedp.CSS(`#inst-cloud1 button.stop`)))
	b.until("cloud1 shown stopped, with its tunnels gone",
		`document.querySelector('#inst-cloud1')?.dataset.state === 'stopped' && `+running(3)+` && `+tunnels(2)+
			` && document.querySelector('#inst-cloud1 .badge')?.textContent === 'stopped'`+
			` && !document.querySelector('#links g.tunnel[data-a="cloud1"], #links g.tunnel[data-b="cloud1"]')`)
	b.screenshot("dashboard-demo-cloud1-stopped.png")

	// Start it again: back up, the whole mesh again.
	b.do("click start on cloud1", chromedp.Click(chromedp.CSS(`#inst-cloud1 button.start`)))
	b.until("cloud1 back up with the whole mesh",
		`document.querySelector('#inst-cloud1')?.dataset.state === 'running' && `+running(4)+` && `+tunnels(4))

	// Add trades on the cloud site: the on-prem site's trades cache grows.
	size := `(() => { const e = document.querySelector('#cache-sites tr.cache[data-site="onprem"][data-cache="trades"]'); return e ? Number(e.dataset.size) : 0 })()`
	before := evaluate[int](b, size)
	b.do("add trades on cloud",
		chromedp.SetValue(chromedp.CSS(`#add-count`), fmt.Sprint(dashTradesAdd)),
		chromedp.SetValue(chromedp.CSS(`#add-site`), "cloud"),
		chromedp.Click(chromedp.CSS(`#add-btn`)))
	b.until(fmt.Sprintf("the onprem site's trades cache to grow by %d", dashTradesAdd),
		fmt.Sprintf(`%s >= %d && document.querySelector('#add-status')?.dataset.done === '%d'`, size, before+dashTradesAdd, dashTradesAdd))
	cloud := evaluate[int](b, strings.ReplaceAll(size, `"onprem"`, `"cloud"`))
	if cloud < before+dashTradesAdd {
		t.Fatalf("cloud's trades cache shows %d, want at least %d", cloud, before+dashTradesAdd)
	}

	// Price updates on the on-prem site, for 2 s: they run, then stop by themselves.
	b.do("start price updates",
		chromedp.SetValue(chromedp.CSS(`#prices-rate`), "25"),
		chromedp.SetValue(chromedp.CSS(`#prices-seconds`), "2"),
		chromedp.SetValue(chromedp.CSS(`#prices-site`), "onprem"),
		chromedp.Click(chromedp.CSS(`#prices-btn`)))
	b.until("price updates done by themselves",
		`document.querySelector('#prices-status')?.dataset.running === 'false' && Number(document.querySelector('#prices-status')?.dataset.done) > 0`+
			` && !document.querySelector('#prices-btn')?.disabled`)
	b.until("federation caught up", `[...document.querySelectorAll('#fed tr[data-scheme]')].every(r => r.children[2].textContent.trim().startsWith('0'))`)

	// Two clients hold connections (through cloud1 and onprem2): the page
	// counts them on the services and on the tunnels that carry them.
	for _, port := range []int{o.Instances()[0].ClientPort, o.Instances()[3].ClientPort} {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(ip, fmt.Sprint(port)), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, "hello dashboard\n"); err != nil {
			t.Fatal(err)
		}
		if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || line != "hello dashboard\n" {
			t.Fatalf("echo through port %d: %q %v", port, line, err)
		}
	}
	b.until("the held connections counted",
		`document.querySelector('#inst-cloud1 li.svc[data-service="server-a"] .conns')?.textContent === '1 conn'`+
			` && document.querySelector('#inst-onprem2 li.svc[data-service="server-b"] .conns')?.textContent === '1 conn'`+
			` && document.querySelectorAll('#links g.tunnel.busy').length >= 1`)
	b.screenshot("dashboard-demo.png")

	// onprem1's own dashboard: its site (itself and its member) and the
	// cloud instances through the tunnels; no demo controls.
	own := "http://" + ip + ":" + fmt.Sprint(o.Instances()[2].AdminPort) + "/"
	b.open(own)
	b.until("onprem1's view: four instances, four tunnel lines",
		running(4)+` && `+tunnels(4)+
			` && document.querySelector('#inst-onprem1')?.dataset.seen === 'self'`+
			` && document.querySelector('#inst-onprem2')?.dataset.seen === 'member'`+
			` && document.querySelector('#inst-cloud1')?.dataset.seen === 'tunnel'`+
			` && document.querySelector('#demo')?.hidden && document.querySelector('#inst-onprem1 .inst-ops')?.hidden`+
			` && document.querySelector('#cache-sites tr.cache[data-site="onprem"][data-cache="trades"]') !== null`)
	b.screenshot("dashboard-instance-onprem1.png")

	soloDashboard(t, b, bin, ip, dir)

	if errs := b.errors(); len(errs) > 0 {
		t.Errorf("the page logged errors:\n%s", strings.Join(errs, "\n"))
	}
}

// soloDashboard: a single instance whose admin endpoint has a token. The
// page asks for it, refuses a wrong one, and shows the instance once given
// the right one.
func soloDashboard(t *testing.T, b *browser, bin, ip, dir string) {
	t.Helper()
	sdir := filepath.Join(dir, "solo")
	runCLI(t, bin, "tlsgen", "--out", sdir, "--instance", "cloud/solo=localhost,"+ip)
	admin := ip + ":9301"
	cfg := fmt.Sprintf(`instance: solo
site: cloud
tls: {ca: ca.crt, cert: solo.crt, key: solo.key}
tunnel:
  listen: %[1]s:8451
peers:
  - site: onprem
admin:
  listen: %[2]s
  token: %[3]s
`, ip, admin, soloToken)
	path := filepath.Join(sdir, "solo.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	runCLI(t, bin, "run", "--config", path, "--check")
	p := &proc{name: "solo", bin: bin, args: []string{"run", "--config", path}, log: filepath.Join(sdir, "solo.log")}
	t.Cleanup(func() {
		if t.Failed() {
			p.dumpLog(t)
		}
	})
	t.Cleanup(func() { p.stop(t) })
	p.start(t)
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	waitFor(t, "solo's admin endpoint", 30*time.Second, 100*time.Millisecond, func() error {
		if err := p.exited(); err != nil {
			t.Fatal(err)
		}
		resp, err := hc.Get("http://" + admin + "/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})

	b.open("http://" + admin + "/")
	b.until("the page asking for the token",
		`!document.querySelector('#auth')?.hidden && document.querySelector('#conn')?.dataset.ok === 'false' && !document.querySelector('#inst-solo')`)
	b.do("enter a wrong token",
		chromedp.SetValue(chromedp.CSS(`#token`), "wrong"),
		chromedp.Click(chromedp.CSS(`#token-use`)))
	b.until("the wrong token refused",
		`!document.querySelector('#auth')?.hidden && document.querySelector('#conn-text')?.textContent.includes('refused')`)
	b.do("enter the token",
		chromedp.SetValue(chromedp.CSS(`#token`), soloToken),
		chromedp.Click(chromedp.CSS(`#token-use`)))
	b.until("solo shown running, the token kept in the tab",
		`document.querySelector('#auth')?.hidden && document.querySelector('#inst-solo')?.dataset.state === 'running'`+
			` && sessionStorage.getItem('sitebridge.token') === `+js(soloToken))
}
