package tlsgen

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.step.sm/crypto/jose"
)

// These tests drive the renewer against an in-process stand-in for
// step-ca's /1.0/renew, to reach failure paths a real CA does not take on
// demand. tests/stepca_test.go runs enrolment and renewal against a real
// step-ca.

// lockedBuffer is a log sink safe for concurrent writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), s)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// renewCA stands in for step-ca's renew endpoint: it requires a client
// certificate (mutual TLS) and answers according to its fields.
type renewCA struct {
	caCert   *x509.Certificate
	caKey    crypto.Signer
	fail     atomic.Int32 // answer this many requests with 500
	requests atomic.Int32
	life     time.Duration // lifetime of issued certificates
	// mutate, when set, changes the certificate issued.
	mutate func(tmpl *x509.Certificate)
	peer   atomic.Pointer[x509.Certificate] // the last client certificate
	srv    *httptest.Server
}

func newRenewCA(t *testing.T, p *pki) *renewCA {
	t.Helper()
	ca := &renewCA{caCert: p.caCert, caKey: p.caKey, life: time.Hour}
	pool := x509.NewCertPool()
	pool.AddCert(p.caCert)
	srvPair := leaf(t, p.caCert, p.caKey, DefaultTrustDomain, InstanceSpec{Name: "step-ca", Site: "ca", IPs: []string{"127.0.0.1"}}, -time.Minute, time.Hour)
	ca.srv = httptest.NewUnstartedServer(http.HandlerFunc(ca.serve))
	ca.srv.TLS = &tls.Config{Certificates: []tls.Certificate{srvPair}, ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: pool}
	ca.srv.StartTLS()
	t.Cleanup(ca.srv.Close)
	return ca
}

func (ca *renewCA) serve(w http.ResponseWriter, r *http.Request) {
	ca.requests.Add(1)
	w.Header().Set("Content-Type", "application/json")
	if r.Method != http.MethodPost || r.URL.Path != stepRenewPath {
		w.WriteHeader(http.StatusNotFound)
		fmt.Fprint(w, `{"status":404,"message":"not found"}`)
		return
	}
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprint(w, `{"status":400,"message":"missing client certificate"}`)
		return
	}
	old := r.TLS.PeerCertificates[0]
	ca.peer.Store(old)
	if ca.fail.Add(-1) >= 0 {
		w.WriteHeader(http.StatusInternalServerError)
		fmt.Fprint(w, `{"status":500,"message":"boom"}`)
		return
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(now.UnixNano()),
		Subject:      old.Subject,
		URIs:         old.URIs, DNSNames: old.DNSNames, IPAddresses: old.IPAddresses,
		KeyUsage: old.KeyUsage, ExtKeyUsage: old.ExtKeyUsage,
		NotBefore: now.Add(-time.Second), NotAfter: now.Add(ca.life),
		PublicKey: old.PublicKey,
	}
	if ca.mutate != nil {
		ca.mutate(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.caCert, tmpl.PublicKey, ca.caKey)
	if err != nil {
		w.WriteHeader(http.StatusInternalServerError)
		fmt.Fprintf(w, `{"status":500,"message":%q}`, err.Error())
		return
	}
	crt := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	w.WriteHeader(http.StatusCreated)
	json.NewEncoder(w).Encode(map[string]any{"crt": crt, "certChain": []string{crt}})
}

// shortLived writes a cloud1 key pair valid from now+from to now+to into
// p's directory and returns a reloader for it.
func shortLived(t *testing.T, p *pki, from, to time.Duration) *Reloader {
	t.Helper()
	in := testSpec().Instances[0]
	now := time.Now()
	certPEM, keyPEM, err := IssueLeaf(p.caCert, p.caKey, DefaultTrustDomain, in, now.Add(from), now.Add(to))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p.file("cloud1.key"), keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p.file("cloud1.crt"), certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return p.reloader(t, "cloud1")
}

// runRenewer runs a renewer with fast retries until the test ends; setup,
// if given, adjusts it first.
func runRenewer(t *testing.T, rel *Reloader, caURL string, before time.Duration, setup ...func(*Renewer)) (*Renewer, *lockedBuffer) {
	t.Helper()
	logs := &lockedBuffer{}
	r, err := NewRenewer(rel, caURL, before, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	r.backoffMin, r.backoffMax = 10*time.Millisecond, 50*time.Millisecond
	r.recheck = 20 * time.Millisecond
	for _, f := range setup {
		f(r)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		if t.Failed() {
			t.Logf("renewer log:\n%s", logs)
		}
	})
	return r, logs
}

func waitUntil(t *testing.T, what string, timeout time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRenewerRenewsAfterFailures(t *testing.T) {
	p := newPKI(t)
	ca := newRenewCA(t, p)
	ca.fail.Store(2)
	// Lifetime 12s, due a third (4s) before expiry: at once.
	rel := shortLived(t, p, -10*time.Second, 2*time.Second)
	old := rel.Leaf()
	keyBefore, _ := os.ReadFile(p.file("cloud1.key"))
	_, logs := runRenewer(t, rel, ca.srv.URL, 0)

	waitUntil(t, "the renewed certificate", 5*time.Second, func() bool { return logs.count(`msg="certificate renewed"`) == 1 })
	cur := rel.Leaf()
	if cur.Equal(old) || cur.NotAfter.Before(time.Now().Add(50*time.Minute)) {
		t.Fatalf("leaf after renewal: serial %x until %s", cur.SerialNumber, cur.NotAfter)
	}
	if got := logs.count(`msg="certificate renewal failed"`); got != 2 || logs.count(`err="CA renew: 500 Internal Server Error: boom"`) != 2 {
		t.Errorf("%d failures logged, want 2 with the CA's message", got)
	}
	if !ca.peer.Load().Equal(old) {
		t.Error("the renew requests were not authenticated with the current certificate")
	}
	onDisk := readCert(t, p.file("cloud1.crt"))
	if !onDisk.Equal(cur) {
		t.Errorf("file holds serial %x, reloader %x", onDisk.SerialNumber, cur.SerialNumber)
	}
	if keyAfter, _ := os.ReadFile(p.file("cloud1.key")); !bytes.Equal(keyBefore, keyAfter) {
		t.Error("the key file changed")
	}
	if fi, err := os.Stat(p.file("cloud1.crt")); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("certificate file mode: %v, %v", fi.Mode(), err)
	}
	// The next renewal is 20 minutes away: no more requests.
	n := ca.requests.Load()
	if n != 3 {
		t.Errorf("%d requests, want 3", n)
	}
}

func TestRenewerRefusesBadCertificates(t *testing.T) {
	other, err := newKey()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, want string
		mutate     func(*x509.Certificate)
	}{
		{"other key", "not for this key", func(c *x509.Certificate) { c.PublicKey = other.Public() }},
		{"other identity", "/instance/cloud9, not spiffe://", func(c *x509.Certificate) {
			c.URIs = []*url.URL{Identity{TrustDomain: DefaultTrustDomain, Site: "cloud", Instance: "cloud9"}.URI()}
		}},
		{"server only", "tunnels need serverAuth and clientAuth", func(c *x509.Certificate) {
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		}},
		{"no later", "no later than the current one", func(c *x509.Certificate) { c.NotAfter = time.Now().Add(time.Second) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPKI(t)
			ca := newRenewCA(t, p)
			ca.mutate = tc.mutate
			rel := shortLived(t, p, -10*time.Second, 3*time.Second)
			before, _ := os.ReadFile(p.file("cloud1.crt"))
			_, logs := runRenewer(t, rel, ca.srv.URL, 0)
			waitUntil(t, "a refused renewal", 5*time.Second, func() bool { return logs.count(`msg="certificate renewal failed"`) >= 2 })
			if !strings.Contains(logs.String(), tc.want) {
				t.Errorf("log lacks %q:\n%s", tc.want, logs)
			}
			if after, _ := os.ReadFile(p.file("cloud1.crt")); !bytes.Equal(before, after) {
				t.Error("the certificate file was replaced")
			}
		})
	}
}

func TestRenewerExpired(t *testing.T) {
	p := newPKI(t)
	ca := newRenewCA(t, p)
	ca.fail.Store(1 << 30)
	rel := shortLived(t, p, -10*time.Second, 2*time.Second)
	var loops atomic.Int32
	_, logs := runRenewer(t, rel, ca.srv.URL, 0, func(r *Renewer) {
		r.now = func() time.Time { loops.Add(1); return time.Now() }
	})
	waitUntil(t, "the expiry error", 5*time.Second, func() bool { return logs.count(`msg="certificate expired`) > 0 })
	// Many more turns of the loop: still one error, no more requests.
	reqs, seen := ca.requests.Load(), loops.Load()
	waitUntil(t, "20 more turns", 5*time.Second, func() bool { return loops.Load() > seen+20 })
	if n := logs.count(`msg="certificate expired`); n != 1 {
		t.Errorf("expiry logged %d times, want once", n)
	}
	if !strings.Contains(logs.String(), "level=ERROR") {
		t.Error("expiry not logged as an error")
	}
	if ca.requests.Load() != reqs {
		t.Error("renewal requests continued after expiry")
	}
	if logs.count(`msg="certificate renewal failed"`) == 0 {
		t.Error("no failed renewal logged before expiry")
	}
}

func TestRenewerDoesNotLoopOnCertificatesDueAtOnce(t *testing.T) {
	p := newPKI(t)
	ca := newRenewCA(t, p)
	var mu sync.Mutex
	var issued []time.Time
	// Backdated 10s, valid 3s more: due (a third of 13s before expiry)
	// the moment it is issued.
	ca.mutate = func(c *x509.Certificate) {
		now := time.Now()
		c.NotBefore, c.NotAfter = now.Add(-10*time.Second), now.Add(3*time.Second)
		mu.Lock()
		issued = append(issued, now)
		mu.Unlock()
	}
	rel := shortLived(t, p, -10*time.Second, 2*time.Second)
	_, logs := runRenewer(t, rel, ca.srv.URL, 0)
	waitUntil(t, "two renewals", 10*time.Second, func() bool { return logs.count(`msg="certificate renewed"`) >= 2 })
	mu.Lock()
	gap := issued[1].Sub(issued[0])
	mu.Unlock()
	if gap < 500*time.Millisecond {
		t.Errorf("second renewal %v after the first: renewing in a loop", gap)
	}
	if logs.count("is due for renewal at once") == 0 {
		t.Error("no warning about a certificate due at once")
	}
}

func TestRenewAt(t *testing.T) {
	nb := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	m := &material{cert: &tls.Certificate{Leaf: &x509.Certificate{NotBefore: nb, NotAfter: nb.Add(90 * time.Minute)}}}
	for _, tc := range []struct {
		before time.Duration
		want   time.Duration // after NotBefore
		cut    bool
	}{
		{0, 60 * time.Minute, false},                // a third of the lifetime before expiry
		{10 * time.Minute, 80 * time.Minute, false}, // as configured
		{45 * time.Minute, 45 * time.Minute, false}, // half: allowed
		{60 * time.Minute, 45 * time.Minute, true},  // more than half: halfway
	} {
		r := &Renewer{before: tc.before}
		at, cut := r.renewAt(m)
		if at != nb.Add(tc.want) || cut != tc.cut {
			t.Errorf("before %v: renew at +%v (cut %v), want +%v (cut %v)", tc.before, at.Sub(nb), cut, tc.want, tc.cut)
		}
	}
}

// signToken makes a token like `step ca token` with the given claims.
func signToken(t *testing.T, sub string, sans []string, extra map[string]any) string {
	t.Helper()
	jwk, err := jose.GenerateJWK("EC", "P-256", "ES256", "sig", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jwk.Key},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", jwk.KeyID))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	claims := map[string]any{
		"iss": "sitebridge", "sub": sub, "aud": []string{"https://ca.example.com:9000/1.0/sign"},
		"jti": "abc", "nbf": now.Unix(), "exp": now.Add(5 * time.Minute).Unix(),
	}
	if sans != nil {
		claims["sans"] = sans
	}
	for k, v := range extra {
		claims[k] = v
	}
	tok, err := jose.Signed(sig).Claims(claims).CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestParseToken(t *testing.T) {
	const cloud1 = "spiffe://sitebridge.local/site/cloud/instance/cloud1"
	for _, tc := range []struct {
		name, sub string
		sans      []string
		want      string // identity, or an error substring
	}{
		{"identity and names", "cloud1", []string{cloud1, "cloud1.example.com", "10.0.0.1"}, cloud1},
		{"subject only", "spiffe://sitebridge.local/tenant/acme/site/dc/instance/a1", nil, "spiffe://sitebridge.local/tenant/acme/site/dc/instance/a1"},
		{"no identity", "cloud1.example.com", nil, "authorizes 0 spiffe:// identities"},
		{"two identities", "x", []string{cloud1, "spiffe://sitebridge.local/site/cloud/instance/cloud2"}, "authorizes 2 spiffe:// identities"},
		{"not canonical", "x", []string{"spiffe://sitebridge.local/site/cloud/instance/Cloud1"}, "invalid identity"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok, err := ParseToken(signToken(t, tc.sub, tc.sans, nil) + "\n")
			if err != nil {
				if !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("error %v, want %q", err, tc.want)
				}
				return
			}
			if tok.Identity.String() != tc.want {
				t.Fatalf("identity %s, want %s", tok.Identity, tc.want)
			}
		})
	}
	if _, err := ParseToken("not-a-token"); err == nil || !strings.Contains(err.Error(), "not a signed JWT") {
		t.Errorf("garbage: %v", err)
	}
}

func TestEnrollmentChecks(t *testing.T) {
	const cloud1 = "spiffe://sitebridge.local/site/cloud/instance/cloud1"
	tok, err := ParseToken(signToken(t, "cloud1", []string{cloud1, "Cloud1.example.com", "10.0.0.1", "::1"},
		map[string]any{"sha": "AB12"}))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		e    Enrollment
		want string // "" for no error
	}{
		{Enrollment{}, ""},
		{Enrollment{Name: "cloud1", DNS: []string{"cloud1.example.com"}, IPs: []string{"0:0::1", "10.0.0.1"}}, ""},
		{Enrollment{Name: "cloud2"}, `the token is for ` + cloud1 + ` (instance "cloud1"), not for instance "cloud2"`},
		{Enrollment{DNS: []string{"cloud1.example.com"}}, `but --dns ["cloud1.example.com"] and --ip [] were asked for`},
		{Enrollment{DNS: []string{"cloud1.example.com", "x"}, IPs: []string{"10.0.0.1", "::1"}}, "mint a token with exactly those SANs"},
	} {
		err := tc.e.check(tok)
		if (err == nil) != (tc.want == "") || err != nil && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.e, err, tc.want)
		}
	}
	if tok.RootSHA != "ab12" {
		t.Errorf("RootSHA %q", tok.RootSHA)
	}
	if err := tok.checkRootSHA(nil); err == nil || !strings.Contains(err.Error(), "fingerprint ab12") {
		t.Errorf("root fingerprint check: %v", err)
	}
	hints := strings.Join(tok.refusalHints("https://other.example.com/1.0/sign", time.Now().Add(10*time.Minute)), "\n")
	for _, want := range []string{"the token expired at", "is not this CA's sign URL https://other.example.com/1.0/sign", "good for one enrolment"} {
		if !strings.Contains(hints, want) {
			t.Errorf("hints lack %q:\n%s", want, hints)
		}
	}
	if h := tok.refusalHints("https://ca.example.com/1.0/sign", time.Now()); len(h) != 2 {
		t.Errorf("a fresh token for this CA (port ignored): hints %q, want only the generic two", h)
	}
	var ce *CAError
	err = explainSignError(caError("sign", 401, []byte(`{"status":401,"message":"nope"}`)), tok, "https://ca.example.com/1.0/sign", time.Now())
	if !errors.As(err, &ce) || ce.Message != "nope" || !strings.Contains(err.Error(), "the CA refused the one-time token") {
		t.Errorf("401: %v", err)
	}
	if err := caError("renew", 502, []byte("<html>bad gateway</html>")); err.Error() != "CA renew: 502 Bad Gateway: <html>bad gateway</html>" {
		t.Errorf("non-JSON answer: %v", err)
	}
}

func TestParseCAURL(t *testing.T) {
	for in, want := range map[string]string{
		"https://ca.example.com:9000/":    "https://ca.example.com:9000",
		"https://ca.example.com/step":     "https://ca.example.com/step",
		"http://ca.example.com":           "scheme must be https",
		"https://user@ca.example.com":     "user information",
		"https://ca.example.com/?x=1":     "query",
		"https:///nohost":                 "a host is required",
		"https://ca.example.com:9000/#id": "fragment",
	} {
		u, err := ParseCAURL(in)
		got := ""
		if err != nil {
			got = err.Error()
		} else {
			got = u.String()
		}
		if !strings.Contains(got, want) {
			t.Errorf("ParseCAURL(%q) = %q, want %q", in, got, want)
		}
	}
}
