package charttest

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sitebridge/sitebridge/cacheclient"
	"github.com/sitebridge/sitebridge/tlsgen"
)

// sigkillMode is how sitebridge-cloud-0 comes back after step 5's SIGKILL:
// "recreate", the pod deleted by force and re-created by the StatefulSet
// with a new pod IP (the default); or "restart", its container restarted
// in place by the kubelet, same pod IP, as after an OOM kill or a crash
// (see the chart README: the binary does not recover from that yet).
var sigkillMode = flag.String("emulation-sigkill", "recreate", "TestStatefulSetEmulated step 5: recreate (new pod, new pod IP) or restart (the container in place)")

// TestStatefulSetEmulated runs what the chart renders for the two example
// sites (examples/cloud.yaml accepting, examples/onprem.yaml connecting, 2
// replicas each) as real sitebridge processes, the way the StatefulSet, its
// Services and the kubelet would run them, on loopback addresses (see
// emulator_test.go for what is emulated and how), and goes through the
// README's "Scale 2 → 3 → 2" and delete-pod drill while a writer puts keys
// into a federated cache through the cloud site's admin endpoints:
//
//  1. helm install of both sites: the pods come up in order and become
//     ready; each on-prem pod holds a tunnel to each cloud pod; the store
//     tables settle; the services carry traffic both ways.
//  2. helm upgrade --set replicaCount=3 on the cloud site: pod 2 starts and
//     becomes ready, the store gives it partitions, and the on-prem pods
//     dial it (the other site's mesh follows).
//  3. helm upgrade back to 2: pod 2 alone is removed (preStop, SIGTERM), the
//     tables settle on the two others, the on-prem pods drop its tunnel.
//  4. kubectl delete pod sitebridge-cloud-1 (the README's drill): preStop,
//     SIGTERM; the StatefulSet re-creates it with the same name and a new
//     pod IP; it becomes ready, is synced, and is dialled again.
//  5. kubectl delete pod sitebridge-cloud-0 --force: SIGKILL, no preStop,
//     no graceful leave; the StatefulSet re-creates it with the same name
//     and a new pod IP; it becomes ready, is synced, and is dialled again.
//     -emulation-sigkill restart restarts the container in place instead.
//  6. The other kind of SIGKILL on sitebridge-cloud-1: its container is
//     restarted in place (same pod IP) before the site noticed the death
//     (or re-created, with -emulation-sigkill restart).
//
// Then no acknowledged write may be lost: every one is read back through
// every cloud pod and every on-prem pod, and 'sitebridge fed verify'
// finds both sites converged.
func TestStatefulSetEmulated(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("needs Linux: each emulated pod binds its own address in 127.0.0.0/8 (Linux routes all of it to lo), and the pods die with the test (Pdeathsig)")
	}
	if testing.Short() {
		t.Skip("runs the chart as processes for about 100 s; not in -short mode")
	}
	var figures []string
	figure := func(format string, args ...any) {
		figures = append(figures, fmt.Sprintf(format, args...))
	}
	// Printed at the end, also when a step fails.
	defer func() { t.Logf("figures:\n  %s", strings.Join(figures, "\n  ")) }()
	bin, buildTook := buildSitebridge(t)
	testStart := time.Now()
	c := loadChart(t)
	w := newWorld(t, c, bin)
	cloudVals := readValues(t, "../examples/cloud.yaml")
	onpremVals := readValues(t, "../examples/onprem.yaml")
	for _, v := range []map[string]any{cloudVals, onpremVals} {
		if v["replicaCount"] != 2.0 {
			t.Fatalf("the examples set replicaCount %v; this test scales from 2", v["replicaCount"])
		}
	}
	cloud := w.addSite(t, cloudVals)
	onprem := w.addSite(t, onpremVals)
	w.makeCertificates(t, cloud, onprem)

	// The servers the services connect to, in another namespace: echo
	// servers on an address of their own, in DNS under the names the
	// configs use.
	apps := w.addr(t)
	cache := ""
	for _, s := range []*siteEmu{cloud, onprem} {
		cfg := parsePodConfig(t, s.text, podEnv(s.full, 0))
		for _, sv := range cfg.Services {
			if sv.Connect == "" {
				continue
			}
			host, port, _ := net.SplitHostPort(sv.Connect)
			w.extDNS[host] = apps
			w.startEcho(t, "echo-"+sv.Name, net.JoinHostPort(apps, port))
		}
		if s == cloud {
			// The federated cache: the first cache pattern whose scheme
			// federates, as the example sets it ("trades*").
			for _, cm := range cfg.Store.Caches {
				for _, sc := range cfg.Store.Schemes {
					if sc.Name == cm.Scheme && sc.Federation != "" && cache == "" {
						cache = strings.TrimSuffix(cm.Pattern, "*")
					}
				}
			}
		}
	}
	if cache == "" || strings.ContainsAny(cache, "*?[") {
		t.Fatalf("the cloud example federates no cache this test can name (%q)", cache)
	}

	// 1. helm install, both sites.
	took := reconcile(t, "helm install: both sites at 2 ready pods", 60*time.Second, cloud, onprem)
	for _, s := range []*siteEmu{cloud, onprem} {
		for _, p := range s.podList() {
			_, _, fr := p.state()
			figure("%s ready %v after its creation", p.name, fr.Round(time.Millisecond))
		}
	}
	figure("both sites at 2 ready pods %v after helm install (minReadySeconds %d between pods)", took.Round(time.Millisecond), cloud.sts.Spec.MinReadySeconds)
	pollUntil(t, "a tunnel from each on-prem pod to each cloud pod", 20*time.Second, 50*time.Millisecond, func() error { return meshComplete(cloud, onprem) })
	cloudT, _ := cloud.waitSettled(t, "the cloud store tables settled", nil, 30*time.Second)
	onpremT, _ := onprem.waitSettled(t, "the on-prem store tables settled", nil, 30*time.Second)
	checkServices(t, cloud, onprem)

	// At most 20,000 writes and 3 minutes, 100 writes/s: enough for the
	// scenario (about 90 s of writing) with room to spare.
	writer := newCacheWriter(cloud, cache, 20000, 100)
	writer.start(4, 3*time.Minute)
	defer writer.stopAndWait()
	writer.waitMore(t, 200, 20*time.Second)

	// 2. Scale the cloud site 2 -> 3.
	cloud.upgrade(t, with(cloudVals, "replicaCount", 3))
	t0 := time.Now()
	took = reconcile(t, "scale-up: sitebridge-cloud-2 ready", 30*time.Second, cloud)
	_, _, fr := cloud.pod(2).state()
	figure("scale 2 -> 3: %s-2 ready %v after helm upgrade (created once the pods before it were available, ready %v after its creation)",
		cloud.full, took.Round(time.Millisecond), fr.Round(time.Millisecond))
	pollUntil(t, "the on-prem pods to dial the new cloud pod", 30*time.Second, 50*time.Millisecond, func() error { return meshComplete(cloud, onprem) })
	figure("scale 2 -> 3: the on-prem mesh holds a tunnel to every one of 3 cloud pods %v after helm upgrade", time.Since(t0).Round(time.Millisecond))
	cloudT, took = cloud.waitSettled(t, "the cloud store rebalanced over 3 members", cloudT, 60*time.Second)
	prim, err := cloud.primaries(cloud.pod(2))
	if err != nil {
		t.Fatal(err)
	}
	for scheme, m := range prim {
		if m[cloud.pod(2).name] == 0 {
			t.Errorf("scheme %s: %s-2 is primary of no partition after the rebalance: %v", scheme, cloud.full, m)
		}
	}
	figure("scale 2 -> 3: store settled %v after %s-2 was ready; primaries %v", took.Round(time.Millisecond), cloud.full, prim)
	writer.waitMore(t, 100, 30*time.Second)

	// 3. Scale the cloud site 3 -> 2.
	cloud.upgrade(t, cloudVals)
	t0 = time.Now()
	reconcile(t, "scale-down: sitebridge-cloud-2 removed", 60*time.Second, cloud)
	figure("scale 3 -> 2: %s-2 gone %v after helm upgrade (preStop %v included)", cloud.full, time.Since(t0).Round(time.Millisecond), preStopOf(cloud))
	cloudT, took = cloud.waitSettled(t, "the cloud store settled on 2 members", cloudT, 60*time.Second)
	figure("scale 3 -> 2: store settled on 2 members %v after the pod was gone", took.Round(time.Millisecond))
	took = pollUntil(t, "the on-prem mesh to drop the removed pod", 30*time.Second, 50*time.Millisecond, func() error { return meshComplete(cloud, onprem) })
	figure("scale 3 -> 2: on-prem mesh back to 2 cloud pods %v later", took.Round(time.Millisecond))
	writer.waitMore(t, 100, 30*time.Second)

	// 4. kubectl delete pod sitebridge-cloud-1 (the README's drill): the
	// kubelet's preStop pause, SIGTERM, a graceful leave; the StatefulSet
	// re-creates the pod, with a new pod IP.
	victim := cloud.pod(1)
	oldIP := victim.ip
	t0 = time.Now()
	cloud.terminate(t, victim)
	reconcile(t, victim.name+" re-created and ready", 30*time.Second, cloud)
	reborn := cloud.pod(1)
	_, _, fr = reborn.state()
	figure("kubectl delete pod %s: gone after %v (preStop %v), re-created with pod IP %s (was %s), ready %v after the delete",
		victim.name, reborn.createdAt.Sub(t0).Round(time.Millisecond), preStopOf(cloud), reborn.ip, oldIP, (reborn.createdAt.Sub(t0) + fr).Round(time.Millisecond))
	cloudT = afterRecreate(t, figure, cloud, onprem, "delete pod", cloudT, t0)
	writer.waitMore(t, 100, 30*time.Second)

	// 5. kubectl delete pod sitebridge-cloud-0 --force --grace-period=0:
	// SIGKILL (no preStop, no graceful leave), and the StatefulSet
	// re-creates the pod, same name, new pod IP. With -emulation-sigkill
	// restart, the container is killed and restarted in place instead (an
	// OOM kill, a crash): same pod, same pod IP.
	victim = cloud.pod(0)
	oldIP = victim.ip
	before := writer.acked()
	t0 = time.Now()
	var how string
	switch *sigkillMode {
	case "recreate":
		how = "kubectl delete pod --force (SIGKILL), re-created by the StatefulSet"
		cloud.kill(t, victim)
	case "restart":
		how = "container SIGKILLed, restarted in place by the kubelet"
		cloud.crash(t, victim)
	default:
		t.Fatalf("-emulation-sigkill %q: want recreate or restart", *sigkillMode)
	}
	reconcile(t, victim.name+" back and ready", 30*time.Second, cloud)
	reborn = cloud.pod(0)
	_, _, fr = reborn.state()
	figure("%s: %s after %d acknowledged writes (pod IP %s -> %s), ready %v after the SIGKILL",
		victim.name, how, before, oldIP, reborn.ip, (reborn.createdAt.Sub(t0) + fr).Round(time.Millisecond))
	cloudT = afterRecreate(t, figure, cloud, onprem, "SIGKILL", cloudT, t0)
	writer.waitMore(t, 100, 30*time.Second)

	// 6. The other kind of SIGKILL, on another pod: the container of
	// sitebridge-cloud-1 is killed and restarted in place (an OOM kill, a
	// crash), before the site has noticed the death.
	victim = cloud.pod(1)
	before = writer.acked()
	t0 = time.Now()
	if *sigkillMode == "recreate" {
		cloud.crash(t, victim)
		how = "container SIGKILLed, restarted in place by the kubelet"
	} else {
		cloud.kill(t, victim)
		how = "kubectl delete pod --force (SIGKILL), re-created by the StatefulSet"
	}
	reconcile(t, victim.name+" back and ready", 30*time.Second, cloud)
	reborn = cloud.pod(1)
	_, _, fr = reborn.state()
	figure("%s: %s after %d acknowledged writes (pod IP %s), ready %v after the SIGKILL",
		victim.name, how, before, reborn.ip, (reborn.createdAt.Sub(t0) + fr).Round(time.Millisecond))
	cloudT = afterRecreate(t, figure, cloud, onprem, "second SIGKILL", cloudT, t0)
	// The on-prem site's own cluster saw none of this.
	if got, err := onprem.settled(nil); err != nil || fmt.Sprint(got) != fmt.Sprint(onpremT) {
		t.Errorf("the on-prem store changed: %v (%v), was %v", got, err, onpremT)
	}
	figure("store tables at the end: cloud %v, on-prem %v (unchanged)", cloudT, onpremT)
	writer.waitMore(t, 100, 30*time.Second)
	writer.stopAndWait()
	checkServices(t, cloud, onprem)

	// Both sites are back at their replica count, every pod ready.
	for _, s := range []*siteEmu{cloud, onprem} {
		var want []string
		for i := range int(*s.sts.Spec.Replicas) {
			want = append(want, fmt.Sprintf("%s-%d", s.full, i))
		}
		if got := s.names(); !slices.Equal(got, want) {
			t.Errorf("%s runs %v, want %v", s.site, got, want)
		}
		for _, p := range s.live() {
			if ready, _, _ := p.state(); !ready {
				t.Errorf("%s is not ready at the end", p.name)
			}
		}
	}

	// Nothing acknowledged is lost, on either site.
	acked := writer.ackedKeys()
	figure("writer: %d writes acknowledged, %d failed (in doubt, not checked), %d skipped with no ready endpoint; longest gap between acknowledgements %v; per pod %v; errors %v",
		len(acked), writer.nFailed.Load(), writer.nNoEndpoint.Load(), time.Duration(writer.stallMax.Load()).Round(time.Millisecond), writer.perPod(), writer.errorSummary())
	if len(acked) < 500 {
		t.Errorf("only %d writes acknowledged: the writer did not write through the scenario", len(acked))
	}
	cp, op := cloud.live(), onprem.live()
	out, err := w.runCLI(t, 90*time.Second, "fed", "verify", "--admin", cp[0].admin, "--token", cloud.token,
		"--other", op[0].admin, "--other-token", onprem.token, "--scheme", schemeOf(t, cloud, cache), "--wait", "60s")
	if err != nil {
		t.Errorf("sitebridge fed verify: %v\n%s", err, out)
	}
	figure("sitebridge fed verify %s vs %s: %s", cp[0].name, op[0].name, strings.TrimSpace(out))
	t0 = time.Now()
	for _, s := range []*siteEmu{cloud, onprem} {
		for _, p := range s.live() {
			lost := readBack(t, s, p, cache, acked)
			if len(lost) > 0 {
				t.Errorf("%s: %d of %d acknowledged writes lost, such as %v", p.name, len(lost), len(acked), lost[:min(5, len(lost))])
			} else {
				figure("%s reads back all %d acknowledged writes", p.name, len(acked))
			}
		}
	}
	figure("reading every acknowledged write back through %d pods took %v", len(cp)+len(op), time.Since(t0).Round(time.Millisecond))
	figure("scenario took %v (building the binary %v before it)", time.Since(testStart).Round(time.Millisecond), buildTook.Round(time.Millisecond))
}

// afterRecreate waits until the other site's mesh reaches the pods of
// cloud that run now and cloud's store has settled on them in a table
// newer than prev, and returns that table.
func afterRecreate(t *testing.T, figure func(string, ...any), cloud, onprem *siteEmu, what string, prev tables, t0 time.Time) tables {
	t.Helper()
	pollUntil(t, "the on-prem mesh to reach the new pod", 90*time.Second, 50*time.Millisecond, func() error { return meshComplete(cloud, onprem) })
	figure("%s: the on-prem mesh holds tunnels to the pods running now %v after it", what, time.Since(t0).Round(time.Millisecond))
	cur, _ := cloud.waitSettled(t, "the cloud store settled again", prev, 90*time.Second)
	figure("%s: store settled on the pods running now %v after it (table %v)", what, time.Since(t0).Round(time.Millisecond), cur)
	return cur
}

// buildSitebridge builds cmd/sitebridge of the main module (the working
// tree, two directories above the chart) once, as the main tests do:
// CGO_ENABLED=0, no -race.
func buildSitebridge(t *testing.T) (string, time.Duration) {
	t.Helper()
	root, err := filepath.Abs(filepath.Join(chartDir, "..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if mod, err := os.ReadFile(filepath.Join(root, "go.mod")); err != nil || !strings.HasPrefix(string(mod), "module github.com/sitebridge/sitebridge\n") {
		t.Fatalf("%s is not the main module (%v)", root, err)
	}
	gobin, err := exec.LookPath("go") // go test puts GOROOT/bin first in PATH
	if err != nil {
		t.Fatalf("go command not found: %v", err)
	}
	out := filepath.Join(t.TempDir(), "sitebridge")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, gobin, "build", "-o", out, "./cmd/sitebridge")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/sitebridge in %s: %v\n%s", root, err, msg)
	}
	return out, time.Since(start)
}

// makeCertificates makes the sites' Secrets the way the chart's README
// does: the tlsgen spec the notes print, 'sitebridge tlsgen --spec' for the
// first site (which makes the CA), the CA copied for the second, which
// gets its own gossip key; then ca.crt, gossip.key, admin-token and every
// pod's pair in each site's Secret.
//
// One addition: in the emulation the per-pod Service's host name in the
// tunnel URL is replaced by that Service's address (see podConfig), so the
// certificate of a pod whose DNS names include it also names the address
// (an IP SAN). That the host name itself is in the certificate is checked
// by TestRender.
func (w *world) makeCertificates(t *testing.T, sites ...*siteEmu) {
	t.Helper()
	var first string
	for _, s := range sites {
		// Every per-pod Service the site could have (replicaCount up to
		// maxReplicas), and the names that resolve to its address.
		out, err := render(t, w.chart, with(s.vals, "replicaCount", s.maxReplicas()))
		if err != nil {
			t.Fatal(err)
		}
		addrOf := map[string]string{}
		for _, svc := range decodeAll(t, out).services {
			pod := svc.Spec.Selector[podNameLabel]
			if pod == "" {
				continue
			}
			ord, _ := strconv.Atoi(strings.TrimPrefix(pod, s.full+"-"))
			for n := range strings.SplitSeq(svc.Annotations["external-dns.alpha.kubernetes.io/hostname"], ",") {
				if n = strings.TrimSuffix(strings.TrimSpace(n), "."); n != "" {
					addrOf[n] = s.svcAddr[ord]
				}
			}
			addrOf[svc.Name+"."+namespace+".svc."+clusterDomain] = s.svcAddr[ord]
		}

		dir := filepath.Join(w.dir, "tls-"+s.site)
		notesFile := filepath.Join(w.dir, s.site+"-notes-spec.yaml")
		if err := os.WriteFile(notesFile, []byte(notesSpec(t, s.notes)), 0o600); err != nil {
			t.Fatal(err)
		}
		spec, err := tlsgen.LoadSpec(notesFile)
		if err != nil {
			t.Fatalf("the tlsgen spec the notes print: %v", err)
		}
		var b strings.Builder
		fmt.Fprintf(&b, "trust-domain: %s\ninstances:\n", spec.TrustDomain)
		for _, in := range spec.Instances {
			ips := slices.Clone(in.IPs)
			for _, n := range in.DNS {
				if a := addrOf[n]; a != "" && !slices.Contains(ips, a) {
					ips = append(ips, a)
				}
			}
			fmt.Fprintf(&b, "  - name: %s\n    site: %s\n    dns: %s\n", in.Name, in.Site, jsonText(in.DNS))
			if in.Tenant != "" {
				fmt.Fprintf(&b, "    tenant: %s\n", in.Tenant)
			}
			if len(ips) > 0 {
				fmt.Fprintf(&b, "    ips: %s\n", jsonText(ips))
			}
		}
		specFile := filepath.Join(w.dir, s.site+"-spec.yaml")
		if err := os.WriteFile(specFile, []byte(b.String()), 0o600); err != nil {
			t.Fatal(err)
		}
		if first == "" {
			first = dir
		} else {
			// mkdir -m 0700 tls-onprem && cp tls-cloud/ca.crt tls-cloud/ca.key tls-onprem/
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			for _, f := range []string{"ca.crt", "ca.key"} {
				if err := os.WriteFile(filepath.Join(dir, f), readFile(t, first, f), 0o600); err != nil {
					t.Fatal(err)
				}
			}
		}
		if out, err := w.runCLI(t, 30*time.Second, "tlsgen", "--out", dir, "--spec", specFile); err != nil {
			t.Fatalf("sitebridge tlsgen --out %s --spec %s: %v\n%s", dir, specFile, err, out)
		}

		// The Secret: every file but ca.key, and a random admin token
		// (head -c 24 /dev/urandom | base64).
		tok := make([]byte, 24)
		rand.Read(tok)
		s.token = base64.StdEncoding.EncodeToString(tok)
		data := map[string][]byte{"ca.crt": readFile(t, dir, "ca.crt"), "gossip.key": readFile(t, dir, "gossip.key"), "admin-token": []byte(s.token)}
		for _, in := range spec.Instances {
			data[in.Name+".crt"] = readFile(t, dir, in.Name+".crt")
			data[in.Name+".key"] = readFile(t, dir, in.Name+".key")
		}
		name := ""
		for _, v := range s.sts.Spec.Template.Spec.Volumes {
			if v.Secret != nil {
				name = v.Secret.SecretName
			}
		}
		if name == "" {
			t.Fatalf("%s mounts no Secret of certificates", s.full)
		}
		s.secrets[name] = data
	}
}

func jsonText(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// schemeOf is the scheme a cache maps to in site s's config.
func schemeOf(t *testing.T, s *siteEmu, cache string) string {
	t.Helper()
	cfg := parsePodConfig(t, s.text, podEnv(s.full, 0))
	sc, ok := cfg.Store.SchemeFor(cache)
	if !ok {
		t.Fatalf("%s maps cache %s to no scheme", s.full, cache)
	}
	return sc.Name
}

func preStopOf(s *siteEmu) time.Duration {
	if ls := s.container().Lifecycle; ls != nil && ls.PreStop != nil && ls.PreStop.Sleep != nil {
		return time.Duration(ls.PreStop.Sleep.Seconds) * time.Second
	}
	return 0
}

// checkServices sends a line through every accept port of every ready pod
// of both sites and expects it back from the echo server behind the other
// site (the services' health checks run every 5 s in prod mode, so a fresh
// pod may take that long to offer them).
func checkServices(t *testing.T, sites ...*siteEmu) {
	t.Helper()
	for _, s := range sites {
		for _, p := range s.live() {
			cfg := parsePodConfig(t, s.text, podEnv(s.full, 0))
			for _, sv := range cfg.Services {
				if !sv.IsAccept() {
					continue
				}
				_, port, _ := net.SplitHostPort(sv.Accept)
				addr := net.JoinHostPort(p.ip, port)
				pollUntil(t, fmt.Sprintf("service %s through %s (%s)", sv.Name, p.name, addr), 30*time.Second, 100*time.Millisecond, func() error {
					return echoRoundTrip(addr)
				})
			}
		}
	}
}

// readBack reads every acknowledged key through pod p and returns those
// missing or holding another value.
func readBack(t *testing.T, s *siteEmu, p *podEmu, cache string, acked map[string]string) []string {
	t.Helper()
	cl := cacheclient.New(p.admin, cacheclient.WithToken(s.token))
	defer cl.CloseIdleConnections()
	keys := slices.Sorted(mapsKeys(acked))
	var mu sync.Mutex
	var lost []string
	var errs atomic.Int64
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(keys) {
					return
				}
				ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
				v, ok, err := cl.Get(ctx, cache, keys[i])
				cancel()
				if err != nil {
					if errs.Add(1) == 1 {
						t.Errorf("get %s/%s via %s: %v", cache, keys[i], p.name, err)
					}
					continue
				}
				if !ok || string(v) != acked[keys[i]] {
					mu.Lock()
					lost = append(lost, fmt.Sprintf("%s (found %v, %q)", keys[i], ok, v))
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if n := errs.Load(); n > 0 {
		t.Errorf("%d reads through %s failed", n, p.name)
	}
	slices.Sort(lost)
	return lost
}

// ---- the writer ------------------------------------------------------------

// cacheWriter puts unique keys into a cache through a site's admin
// endpoints (the admin Service: ready pods that are not terminating, taken
// in turn), at a bounded rate, up to a bounded count and time, and records
// which writes were acknowledged.
type cacheWriter struct {
	s     *siteEmu
	cache string
	limit int64 // writes attempted, at most
	rate  int   // writes per second, all writers together

	stop chan struct{}
	wg   sync.WaitGroup
	once sync.Once

	mu      sync.Mutex
	clients map[string]*cacheclient.Client
	ackedKV map[string]string
	errs    map[string]int
	byPod   map[string]int

	nAcked, nFailed, nNoEndpoint atomic.Int64
	lastAck, stallMax            atomic.Int64
	finished                     atomic.Bool // every writer has returned
}

func newCacheWriter(s *siteEmu, cache string, limit int64, rate int) *cacheWriter {
	return &cacheWriter{s: s, cache: cache, limit: limit, rate: rate, stop: make(chan struct{}),
		clients: map[string]*cacheclient.Client{}, ackedKV: map[string]string{}, errs: map[string]int{}, byPod: map[string]int{}}
}

func (cw *cacheWriter) client(p *podEmu) *cacheclient.Client {
	cw.mu.Lock()
	defer cw.mu.Unlock()
	c := cw.clients[p.admin]
	if c == nil {
		c = cacheclient.New(p.admin, cacheclient.WithToken(cw.s.token))
		cw.clients[p.admin] = c
	}
	return c
}

func (cw *cacheWriter) start(writers int, maxTime time.Duration) {
	ctx, cancel := context.WithTimeout(cw.s.w.ctx, maxTime)
	tick := time.NewTicker(time.Second / time.Duration(cw.rate))
	var turn atomic.Int64
	var attempts atomic.Int64
	for wid := range writers {
		cw.wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-cw.stop:
					return
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				if attempts.Add(1) > cw.limit {
					return
				}
				eps := cw.s.endpoints()
				if len(eps) == 0 {
					cw.nNoEndpoint.Add(1)
					continue
				}
				p := eps[int(turn.Add(1))%len(eps)]
				key := fmt.Sprintf("k%d-%06d", wid, i)
				val := fmt.Sprintf("v%d-%d-%d", wid, i, time.Now().UnixNano())
				// Longer than the store's request timeout (15 s), so that
				// the instance answers rather than the client giving up.
				wctx, wcancel := context.WithTimeout(context.Background(), 25*time.Second)
				err := cw.client(p).Put(wctx, cw.cache, key, []byte(val), 0)
				wcancel()
				cw.mu.Lock()
				if err != nil {
					cw.nFailed.Add(1)
					msg := err.Error()
					if len(msg) > 90 {
						msg = msg[:90]
					}
					cw.errs[msg]++
				} else {
					cw.ackedKV[key] = val
					cw.byPod[p.name]++
					cw.nAcked.Add(1)
					now := time.Now().UnixNano()
					if prev := cw.lastAck.Swap(now); prev != 0 && now-prev > cw.stallMax.Load() {
						cw.stallMax.Store(now - prev)
					}
				}
				cw.mu.Unlock()
			}
		})
	}
	go func() {
		cw.wg.Wait()
		cw.finished.Store(true)
		tick.Stop()
		cancel()
	}()
}

// stopAndWait stops the writers and waits for the writes in flight.
func (cw *cacheWriter) stopAndWait() {
	cw.once.Do(func() { close(cw.stop) })
	cw.wg.Wait()
	cw.mu.Lock()
	for _, c := range cw.clients {
		c.CloseIdleConnections()
	}
	cw.mu.Unlock()
}

func (cw *cacheWriter) acked() int64 { return cw.nAcked.Load() }

// waitMore waits until n more writes have been acknowledged.
func (cw *cacheWriter) waitMore(t *testing.T, n int64, timeout time.Duration) {
	t.Helper()
	target := cw.acked() + n
	pollUntil(t, fmt.Sprintf("%d more acknowledged writes", n), timeout, 20*time.Millisecond, func() error {
		if got := cw.acked(); got < target {
			if cw.finished.Load() {
				t.Fatalf("the writer stopped (at its bound of %d writes or its time limit) with %d acknowledged", cw.limit, got)
			}
			return fmt.Errorf("%d of %d acknowledged, %d failed", got, target, cw.nFailed.Load())
		}
		return nil
	})
}

func (cw *cacheWriter) ackedKeys() map[string]string {
	cw.mu.Lock()
	defer cw.mu.Unlock()
	out := make(map[string]string, len(cw.ackedKV))
	for k, v := range cw.ackedKV {
		out[k] = v
	}
	return out
}

func (cw *cacheWriter) perPod() map[string]int {
	cw.mu.Lock()
	defer cw.mu.Unlock()
	out := map[string]int{}
	for k, v := range cw.byPod {
		out[k] = v
	}
	return out
}

func (cw *cacheWriter) errorSummary() map[string]int {
	cw.mu.Lock()
	defer cw.mu.Unlock()
	out := map[string]int{}
	for k, v := range cw.errs {
		out[k] = v
	}
	return out
}
