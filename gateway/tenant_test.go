package gateway

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sitebridge/sitebridge/tlsgen"
	"github.com/sitebridge/sitebridge/tunnel"
)

// tagServer answers each connection's first line with "tag:line" and
// closes, so a test can tell which server a connection reached.
func tagServer(t *testing.T, tag string) string {
	t.Helper()
	return serveConns(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return
		}
		fmt.Fprintf(c, "%s:%s", tag, line)
	})
}

// serveConns runs handle on each connection to a new loopback listener,
// which it closes when handle returns, until the test ends; it returns
// the listener's address.
func serveConns(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				handle(c)
			})
		}
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

// ask sends line to addr and returns the answer ("" when the connection is
// closed without one).
func ask(addr, line string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(c, "%s\n", line); err != nil {
		return "", err
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil && got == "" {
		return "", nil
	}
	return strings.TrimSuffix(got, "\n"), nil
}

// tenantEnv is one shared cloud instance serving two tenants' on-prem sites.
type tenantEnv struct {
	*env
	cloud, acme, globex *running
}

func startTenants(t *testing.T) *tenantEnv {
	e := &env{t: t, dir: t.TempDir()}
	spec := tlsgen.Spec{Instances: []tlsgen.InstanceSpec{
		{Name: "cloud1", Site: "cloud"},
		{Name: "acme1", Site: "acme-dc", Tenant: "acme"},
		{Name: "globex1", Site: "globex-dc", Tenant: "globex"},
		{Name: "mallory", Site: "globex-dc", Tenant: "globex"},     // a valid globex certificate
		{Name: "imposter", Site: "acme-dc", Tenant: "globex"},      // globex's CA-signed claim to acme's site
		{Name: "rogue", Site: "acme-dc", Tenant: "initech"},        // a tenant the cloud does not serve
		{Name: "nobody", Site: "acme-dc"},                          // acme's site, no tenant
		{Name: "shared2", Site: "cloud2-unconfigured", Tenant: ""}, // a site nobody configured
	}}
	for i := range spec.Instances {
		spec.Instances[i].DNS = []string{"localhost"}
		spec.Instances[i].IPs = []string{"127.0.0.1"}
	}
	if _, err := tlsgen.Generate(spec, e.dir, false); err != nil {
		t.Fatal(err)
	}
	te := &tenantEnv{env: e}
	te.cloud = e.start(fmt.Sprintf(`
instance: cloud1
site: cloud
tls: {ca: ca.crt, cert: cloud1.crt, key: cloud1.key}
tunnel: {listen: "127.0.0.1:2"}
limits: {open-timeout: 1s}
peers:
  - {site: acme-dc, tenant: acme}
  - {site: globex-dc, tenant: globex}
services:
  - {name: db, tenant: acme, accept: "127.0.0.1:3"}
  - {name: db, tenant: globex, accept: "127.0.0.1:4"}
  - {name: wiki, tenant: acme, accept: "127.0.0.1:5"}
  - {name: crm, tenant: acme, connect: "%s"}
  - {name: crm, tenant: globex, connect: "%s"}
  - {name: billing, tenant: acme, connect: "%s"}
admin: {listen: "127.0.0.1:0"}
`, tagServer(t, "crm-acme"), tagServer(t, "crm-globex"), tagServer(t, "billing-acme")), listenOn("127.0.0.1:0", "127.0.0.1:0"))
	url := wssURL(te.cloud.TunnelAddr())
	onprem := func(name, tenant, extra string) *running {
		return e.start(fmt.Sprintf(`
instance: %[1]s
site: %[2]s-dc
tenant: %[2]s
tls: {ca: ca.crt, cert: %[1]s.crt, key: %[1]s.key}
peers: [{site: cloud, urls: ["%[3]s"]}]
services:
  - {name: db, connect: "%[4]s"}
  - {name: crm, accept: "127.0.0.1:3"}
%[5]s
admin: {listen: "127.0.0.1:0"}
tunnel: {backoff-min: 50ms, backoff-max: 500ms}
`, name, tenant, url, tagServer(t, "db-"+tenant), extra), listenOn("", "127.0.0.1:0"))
	}
	te.acme = onprem("acme1", "acme", "")
	// globex offers a service named like acme's wiki: the cloud must
	// never send acme's clients there.
	te.globex = onprem("globex1", "globex", fmt.Sprintf(`  - {name: wiki, connect: "%s"}`, tagServer(t, "wiki-globex")))
	waitFor(t, "tunnels up", 10*time.Second, func() bool {
		return tunnels(te.cloud) == 2 && tunnels(te.acme) == 1 && tunnels(te.globex) == 1
	})
	return te
}

func TestTenantsAreKeptApart(t *testing.T) {
	te := startTenants(t)
	cloud := te.cloud
	for _, tc := range []struct {
		name, addr, want string
	}{
		{"acme's db from the cloud", cloud.AcceptAddr("acme/db"), "db-acme:hi"},
		{"globex's db from the cloud", cloud.AcceptAddr("globex/db"), "db-globex:hi"},
		{"acme's crm from acme's site", te.acme.AcceptAddr("acme/crm"), "crm-acme:hi"},
		{"globex's crm from globex's site", te.globex.AcceptAddr("globex/crm"), "crm-globex:hi"},
		// Only globex's tunnel offers "wiki", and wiki here is acme's: no route.
		{"acme's wiki is not routed to globex", cloud.AcceptAddr("acme/wiki"), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.addr == "" {
				t.Fatal("no accept address")
			}
			for range 5 {
				got, err := ask(tc.addr, "hi")
				if err != nil || got != tc.want {
					t.Fatalf("answer %q, %v; want %q", got, err, tc.want)
				}
			}
		})
	}
	// The cloud never even tried globex for acme's wiki (globex would have
	// refused it too, but the route must not exist).
	if strings.Contains(te.globex.logs.String(), `msg="stream refused"`) {
		t.Error("the cloud opened a stream to globex for a service that is not globex's")
	}
	if !strings.Contains(cloud.logs.String(), `msg="peer offers a service of another tenant; ignored"`) ||
		!strings.Contains(cloud.logs.String(), `tenant=globex service=wiki owner=acme`) {
		t.Error("globex's offer of acme's service name was not logged")
	}
	// What the cloud offers each tenant: only that tenant's services.
	for _, p := range te.acme.peers.all() {
		if got := strings.Join(p.sess.Services(), ","); got != "billing,crm" {
			t.Errorf("cloud offers acme %q, want billing,crm", got)
		}
	}
	for _, p := range te.globex.peers.all() {
		if got := strings.Join(p.sess.Services(), ","); got != "crm" {
			t.Errorf("cloud offers globex %q, want crm", got)
		}
	}
}

// TestTenantRefusedWhileOthersCarryOn: an instance of tenant globex with a
// valid certificate asks for acme's services, in every way a stream header
// can, while acme's clients keep going; every attempt is refused and
// logged, and acme sees no failure.
func TestTenantRefusedWhileOthersCarryOn(t *testing.T) {
	te := startTenants(t)
	cloud := te.cloud

	// acme's traffic, during and after the attack.
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var acmeOK, acmeFailed int
	var mu sync.Mutex
	wg.Go(func() {
		for i := 0; i < 2000 && ctx.Err() == nil; i++ {
			got, err := ask(cloud.AcceptAddr("acme/db"), fmt.Sprint(i))
			mu.Lock()
			if err == nil && got == fmt.Sprintf("db-acme:%d", i) {
				acmeOK++
			} else {
				acmeFailed++
				t.Errorf("acme round trip %d: %q, %v", i, got, err)
			}
			mu.Unlock()
		}
	})

	r, err := tlsgen.NewReloader(te.dir+"/ca.crt", te.dir+"/mallory.crt", te.dir+"/mallory.key", nil)
	if err != nil {
		t.Fatal(err)
	}
	dial := func(site, tenant, instance string, offers ...string) (*tunnel.Session, error) {
		tc := r.ClientConfig("localhost", nil)
		tc.NextProtos = []string{"http/1.1"}
		cfg := tunnel.Config{Local: tunnel.Hello{Instance: instance, Site: site, Tenant: tenant, Epoch: uint64(time.Now().UnixNano()), Services: offers}}
		return tunnel.Dial(context.Background(), wssURL(cloud.TunnelAddr()), tc, cfg)
	}
	sess, err := dial("globex-dc", "globex", "mallory", "db", "wiki")
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	waitFor(t, "mallory's tunnel registered", 5*time.Second, func() bool { return tunnels(cloud) == 3 })
	if got := strings.Join(sess.Services(), ","); got != "crm" {
		t.Errorf("the cloud offers mallory %q, want only globex's crm", got)
	}
	for _, tt := range []struct {
		tenant, service string
		want            tunnel.Code
	}{
		{"acme", "billing", tunnel.CodeForbidden},   // another tenant named in the header
		{"acme", "crm", tunnel.CodeForbidden},       // even for a name globex also has
		{"globex", "billing", tunnel.CodeForbidden}, // acme's service, under globex's name
		{"", "billing", tunnel.CodeForbidden},       // no tenant at all
		{"globex", "nosuch", tunnel.CodeUnknownService},
	} {
		for range 20 {
			_, err := sess.OpenService(context.Background(), tt.tenant, tt.service)
			var re *tunnel.RefusedError
			if !errors.As(err, &re) || re.Code != tt.want {
				t.Fatalf("open %q/%q = %v, want refusal %s", tt.tenant, tt.service, err, tt.want)
			}
		}
	}
	// Its own tenant's service works for it.
	st, err := sess.OpenService(context.Background(), "globex", "crm")
	if err != nil {
		t.Fatalf("globex's own service refused: %v", err)
	}
	fmt.Fprintf(st, "x\n")
	if got, _ := bufio.NewReader(st).ReadString('\n'); got != "crm-globex:x\n" {
		t.Errorf("globex crm answered %q", got)
	}
	st.Close()

	// Certificates that do not fit the site they claim never get a tunnel.
	for _, tc := range []struct{ name, site, tenant, want string }{
		{"imposter", "acme-dc", "globex", `peer site \"acme-dc\" is of tenant \"acme\"`},
		{"rogue", "acme-dc", "initech", `belongs to tenant \"initech\"`},
		{"nobody", "acme-dc", "", `belongs to tenant \"\", but peer site \"acme-dc\" is of tenant \"acme\"`},
		{"shared2", "cloud2-unconfigured", "", `not a configured peer site`},
	} {
		r, err := tlsgen.NewReloader(te.dir+"/ca.crt", te.dir+"/"+tc.name+".crt", te.dir+"/"+tc.name+".key", nil)
		if err != nil {
			t.Fatal(err)
		}
		tlsc := r.ClientConfig("localhost", nil)
		tlsc.NextProtos = []string{"http/1.1"}
		cfg := tunnel.Config{Local: tunnel.Hello{Instance: tc.name, Site: tc.site, Tenant: tc.tenant, Epoch: 1}}
		if s, err := tunnel.Dial(context.Background(), wssURL(cloud.TunnelAddr()), tlsc, cfg); err == nil {
			s.Close()
			t.Errorf("%s: tunnel accepted", tc.name)
		}
		waitFor(t, tc.name+" refusal logged", 5*time.Second, func() bool { return strings.Contains(cloud.logs.String(), tc.want) })
	}
	stop()
	wg.Wait()
	// After the attack, acme still works.
	if got, err := ask(cloud.AcceptAddr("acme/db"), "after"); err != nil || got != "db-acme:after" {
		t.Errorf("acme after the attack: %q, %v", got, err)
	}
	logs := cloud.logs.String()
	for _, want := range []string{
		`msg="stream refused" instance=cloud1 site=cloud peer=mallory peer_site=globex-dc peer_tenant=globex service=billing code=forbidden tenant=acme`,
		`reason="service \"billing\" belongs to tenant \"acme\"; this tunnel serves tenant \"globex\""`,
		`reason="the stream names tenant \"acme\", but this tunnel serves tenant \"globex\""`,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %s", want)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("acme round trips during the attack: %d ok, %d failed", acmeOK, acmeFailed)
	if acmeOK == 0 || acmeFailed != 0 {
		t.Errorf("acme: %d ok, %d failed", acmeOK, acmeFailed)
	}
}
