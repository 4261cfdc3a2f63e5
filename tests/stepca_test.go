package tests

import (
	"bufio"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.step.sm/crypto/jose"
	"go.step.sm/crypto/keyutil"
	"go.step.sm/crypto/pemutil"
	"go.step.sm/crypto/x509util"

	"github.com/sitebridge/sitebridge/tlsgen"
)

// The step-ca test's ports, on the run's random loopback address.
const (
	portStepCA        = 9000
	portSCloudTunnel  = 8443
	portSCloudClient  = 5551 // reaches server-a on the on-prem side
	portSOnpremClient = 6661 // reaches server-b on the cloud side
	portSServerA      = 7001
	portSServerB      = 7002
	portSCloudAdmin   = 9101
	portSOnpremAdmin  = 9102
)

// stepCAVersion is the step-ca .ci/run installs.
const stepCAVersion = "v0.30.2"

// Certificates of the test's provisioner: 60s, the shortest step-ca's
// claims allow here being 10s. step-ca backdates NotBefore by 1m, so a
// certificate's lifetime is 2m and it is renewed a third of that, 40s,
// before it expires: 20s after it was issued.
const (
	stepCertDuration = 60 * time.Second
	stepProvisioner  = "sitebridge"
)

// stepCABinary returns the step-ca in PATH. Without one the test is
// skipped, except with CI=true, where it fails.
func stepCABinary(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("step-ca")
	if err == nil {
		return p
	}
	msg := "step-ca not found in PATH; install it with: CGO_ENABLED=0 go install github.com/smallstep/certificates/cmd/step-ca@" + stepCAVersion + " (.ci/run does)"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip("environment: " + msg)
	return ""
}

// stepCA is a running step-ca with a JWK provisioner whose key the test
// holds, so it mints one-time tokens as `step ca token` would.
type stepCA struct {
	url      string // https://ip:port
	rootFile string
	roots    *x509.CertPool
	rootSHA  string
	prov     *jose.JSONWebKey // the provisioner's private key
	proc     *proc
}

// startStepCA writes a PKI (root, intermediate with an encrypted key, JWK
// provisioner with its encrypted private key), a minimal ca.json and a
// password file into dir, starts step-ca and waits until /health answers
// over TLS verified with the root.
func startStepCA(t *testing.T, bin, ip, dir string) *stepCA {
	t.Helper()
	password := []byte("test-password-" + rand.Text())
	now := time.Now()

	rootKey, err := keyutil.GenerateSigner("EC", "P-256", 0)
	if err != nil {
		t.Fatal(err)
	}
	rootTmpl := (&x509util.Certificate{
		Subject:          x509util.Subject{CommonName: "sitebridge test Root CA"},
		KeyUsage:         x509util.KeyUsage(x509.KeyUsageCertSign | x509.KeyUsageCRLSign),
		BasicConstraints: &x509util.BasicConstraints{IsCA: true, MaxPathLen: 1},
		NotBefore:        now.Add(-time.Hour),
		NotAfter:         now.Add(24 * time.Hour),
		PublicKey:        rootKey.Public(),
	}).GetCertificate()
	root, err := x509util.CreateCertificate(rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	interKey, err := keyutil.GenerateSigner("EC", "P-256", 0)
	if err != nil {
		t.Fatal(err)
	}
	interTmpl := (&x509util.Certificate{
		Subject:          x509util.Subject{CommonName: "sitebridge test Intermediate CA"},
		KeyUsage:         x509util.KeyUsage(x509.KeyUsageCertSign | x509.KeyUsageCRLSign),
		BasicConstraints: &x509util.BasicConstraints{IsCA: true, MaxPathLen: 0},
		NotBefore:        now.Add(-time.Hour),
		NotAfter:         now.Add(24 * time.Hour),
		PublicKey:        interKey.Public(),
	}).GetCertificate()
	inter, err := x509util.CreateCertificate(interTmpl, root, interKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	ca := &stepCA{
		url:      "https://" + net.JoinHostPort(ip, strconv.Itoa(portStepCA)),
		rootFile: filepath.Join(dir, "root_ca.crt"),
		roots:    x509.NewCertPool(),
	}
	ca.roots.AddCert(root)
	ca.rootSHA = x509util.Fingerprint(root)
	writePEM(t, ca.rootFile, root, nil)
	interFile, interKeyFile := filepath.Join(dir, "intermediate_ca.crt"), filepath.Join(dir, "intermediate_ca_key")
	writePEM(t, interFile, inter, nil)
	writePEM(t, interKeyFile, interKey, password)

	// The JWK provisioner: public key and password-encrypted private key,
	// as `step ca init` writes them.
	ca.prov, err = jose.GenerateJWK("EC", "P-256", "ES256", "sig", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	jwe, err := jose.EncryptJWK(ca.prov, password)
	if err != nil {
		t.Fatal(err)
	}
	encryptedKey, err := jwe.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	pub := ca.prov.Public()
	cfg := map[string]any{
		"root":     ca.rootFile,
		"crt":      interFile,
		"key":      interKeyFile,
		"address":  net.JoinHostPort(ip, strconv.Itoa(portStepCA)),
		"dnsNames": []string{ip},
		"logger":   map[string]any{"format": "text"},
		"db":       nil, // no database: used tokens are remembered in memory
		"authority": map[string]any{
			"provisioners": []any{map[string]any{
				"type":         "JWK",
				"name":         stepProvisioner,
				"key":          &pub,
				"encryptedKey": encryptedKey,
				"claims": map[string]any{
					"minTLSCertDuration":     "10s",
					"maxTLSCertDuration":     "10m",
					"defaultTLSCertDuration": stepCertDuration.String(),
				},
			}},
		},
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	caJSON, pwFile := filepath.Join(dir, "ca.json"), filepath.Join(dir, "password.txt")
	if err := os.WriteFile(caJSON, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pwFile, password, 0o600); err != nil {
		t.Fatal(err)
	}

	ca.proc = &proc{name: "step-ca", bin: bin, args: []string{caJSON, "--password-file", pwFile}, log: filepath.Join(dir, "step-ca.log")}
	t.Cleanup(func() {
		ca.proc.stop(t)
		if t.Failed() {
			ca.proc.dumpLog(t)
		}
	})
	ca.proc.start(t)
	client := ca.httpClient()
	defer client.CloseIdleConnections()
	var ready time.Time
	took := waitFor(t, "step-ca /health", 30*time.Second, 50*time.Millisecond, func() error {
		if err := ca.proc.exited(); err != nil {
			t.Fatal(err)
		}
		resp, err := client.Get(ca.url + "/health")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET /health: %s", resp.Status)
		}
		ready = time.Now()
		return nil
	})
	t.Logf("step-ca %s ready in %v", ca.url, took.Round(time.Millisecond))
	// step-ca refuses tokens issued (iat, whole seconds) before it
	// started: mint none within the second it became ready.
	time.Sleep(time.Until(ready.Truncate(time.Second).Add(time.Second)))
	return ca
}

func (ca *stepCA) httpClient() *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: ca.roots}, DisableKeepAlives: true,
	}}
}

// token mints a one-time token of the test's provisioner, as `step ca
// token SUBJECT --san ...` does: iss the provisioner, aud the sign URL,
// sub, sans, a random jti, sha the root's fingerprint, valid from now for
// 5 minutes (or from and until the given times).
func (ca *stepCA) token(t *testing.T, sub string, sans []string, validity ...time.Time) string {
	t.Helper()
	so := (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", ca.prov.KeyID)
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: ca.prov.Key}, so)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	nbf, exp := now, now.Add(5*time.Minute)
	if len(validity) == 2 {
		nbf, exp = validity[0], validity[1]
	}
	id := make([]byte, 32)
	rand.Read(id)
	claims := struct {
		jose.Claims
		SANs []string `json:"sans,omitempty"`
		SHA  string   `json:"sha"`
	}{
		Claims: jose.Claims{
			ID: hex.EncodeToString(id), Issuer: stepProvisioner, Subject: sub,
			Audience:  jose.Audience{ca.url + "/1.0/sign"},
			IssuedAt:  jose.NewNumericDate(now),
			NotBefore: jose.NewNumericDate(nbf),
			Expiry:    jose.NewNumericDate(exp),
		},
		SANs: sans,
		SHA:  ca.rootSHA,
	}
	tok, err := jose.Signed(sig).Claims(claims).CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// writePEM writes a certificate, or a private key (encrypted when password
// is set), as PEM with mode 0600.
func writePEM(t *testing.T, path string, v any, password []byte) {
	t.Helper()
	var opts []pemutil.Options
	if password != nil {
		opts = append(opts, pemutil.WithPassword(password))
	}
	if _, ok := v.(crypto.Signer); ok {
		opts = append(opts, pemutil.WithPKCS8(true))
	}
	blk, err := pemutil.Serialize(v, opts...)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(blk), 0o600); err != nil {
		t.Fatal(err)
	}
}

// runCLIFail runs the binary, which must exit with an error, and returns
// its output.
func runCLIFail(t *testing.T, bin string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("sitebridge %s succeeded, want an error:\n%s", strings.Join(args, " "), out)
	}
	return string(out)
}

// certFile reads the leaf of a PEM chain file.
func certFile(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	certs, err := pemutil.ReadCertificateBundle(path)
	if err != nil {
		t.Fatal(err)
	}
	return certs[0]
}

// renewals returns the serials logged as "certificate renewed" in a log.
var renewedSerial = regexp.MustCompile(`msg="certificate renewed".* serial=([0-9a-f]+) `)

// renewedTimes picks the time of a renewal and the expiry of the
// certificate it replaced.
var renewedTimes = regexp.MustCompile(`^time=(\S+) .*msg="certificate renewed".* previous_not_after=(\S+) `)

func renewals(log string) []string {
	var out []string
	for _, l := range grepFile(log, `msg="certificate renewed"`) {
		if m := renewedSerial.FindStringSubmatch(l); m != nil {
			out = append(out, m[1])
		}
	}
	return out
}

// TestStepCA enrols a cloud and an on-prem instance at a real step-ca with
// one-time tokens (`sitebridge enroll`), runs them with 60-second
// certificates renewed automatically (tls.renew), and keeps traffic going
// through the tunnel (a held connection and new connections both ways)
// until each side has renewed twice and its enrolled certificate has
// expired: no tunnel may go down and no connection may fail. It also checks
// that a used, an expired and a foreign-identity token are refused with
// clear messages, and that the CA itself refuses a request whose identity
// differs from the token's.
func TestStepCA(t *testing.T) {
	skipUnlessLinux(t)
	stepca := stepCABinary(t)
	bin := sitebridgeBinary(t)
	ip := pickLoopback(t)
	dir := t.TempDir()
	addr := func(port int) string { return net.JoinHostPort(ip, strconv.Itoa(port)) }
	ca := startStepCA(t, stepca, ip, dir)

	// Enrolment. cloud1's token names its identity and the DNS and IP
	// names on-prem dials; onprem1's token has the identity as subject and
	// no --san (step ca token's simplest form) and comes on stdin.
	cloudID := "spiffe://sitebridge.local/site/cloud/instance/cloud1"
	onpremID := "spiffe://sitebridge.local/site/onprem/instance/onprem1"
	cloudTok := ca.token(t, "cloud1", []string{cloudID, "localhost", ip})
	out := runCLI(t, bin, "enroll", "--ca-url", ca.url, "--root", ca.rootFile, "--token", cloudTok,
		"--out", filepath.Join(dir, "cloud1"), "--name", "cloud1", "--dns", "localhost", "--ip", ip)
	t.Logf("sitebridge enroll (cloud1):\n%s", out)
	if !strings.Contains(out, "identity     "+cloudID) || !strings.Contains(out, "ca-url: "+ca.url) {
		t.Fatalf("enroll output lacks the identity or the config snippet:\n%s", out)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "enroll", "--ca-url", ca.url, "--root", ca.rootFile, "--token", "-",
		"--out", filepath.Join(dir, "onprem1"))
	cmd.Stdin = strings.NewReader(ca.token(t, onpremID, nil) + "\n")
	if b, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(b), onpremID) {
		t.Fatalf("sitebridge enroll --token - (onprem1): %v\n%s", err, b)
	}
	files := map[string][2]string{}
	enrolled := map[string]*x509.Certificate{}
	for _, name := range []string{"cloud1", "onprem1"} {
		crt, key := filepath.Join(dir, name, name+".crt"), filepath.Join(dir, name, name+".key")
		files[name] = [2]string{crt, key}
		fi, err := os.Stat(key)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: mode %v, want 0600", key, fi.Mode())
		}
		enrolled[name] = certFile(t, crt)
		if certs, _ := pemutil.ReadCertificateBundle(crt); len(certs) != 2 {
			t.Fatalf("%s holds %d certificates, want leaf and intermediate", crt, len(certs))
		}
		if life := enrolled[name].NotAfter.Sub(enrolled[name].NotBefore); life < stepCertDuration || life > stepCertDuration+2*time.Minute {
			t.Fatalf("%s: lifetime %v, want about %v plus the CA's backdate", crt, life, stepCertDuration)
		}
	}

	t.Run("refusals", func(t *testing.T) {
		// A used token: step-ca answers 401 with a generic message (its log
		// says why); enroll shows it with the possible reasons.
		out := runCLIFail(t, bin, "enroll", "--ca-url", ca.url, "--root", ca.rootFile, "--token", cloudTok,
			"--out", filepath.Join(dir, "again"))
		t.Logf("reused token:\n%s", out)
		for _, want := range []string{"the CA refused the one-time token", "401 Unauthorized", "good for one enrolment"} {
			if !strings.Contains(out, want) {
				t.Errorf("reused token: output lacks %q:\n%s", want, out)
			}
		}
		if len(grepFile(ca.proc.log, "token already used")) == 0 {
			t.Error(`step-ca did not log "token already used" for the reused token`)
		}
		// An expired token.
		old := time.Now().Add(-10 * time.Minute)
		out = runCLIFail(t, bin, "enroll", "--ca-url", ca.url, "--root", ca.rootFile, "--out", filepath.Join(dir, "again"),
			"--token", ca.token(t, "x", []string{"spiffe://sitebridge.local/site/cloud/instance/cloud9"}, old, old.Add(5*time.Minute)))
		t.Logf("expired token:\n%s", out)
		if !strings.Contains(out, "401 Unauthorized") || !strings.Contains(out, "the token expired at") {
			t.Errorf("expired token: output lacks the 401 or the expiry:\n%s", out)
		}
		// A token for another identity: refused before it is used.
		other := ca.token(t, "onprem2", []string{"spiffe://sitebridge.local/site/onprem/instance/onprem2"})
		out = runCLIFail(t, bin, "enroll", "--ca-url", ca.url, "--root", ca.rootFile, "--token", other,
			"--out", filepath.Join(dir, "again"), "--name", "onprem1")
		t.Logf("token for another identity:\n%s", out)
		if !strings.Contains(out, `the token is for spiffe://sitebridge.local/site/onprem/instance/onprem2 (instance "onprem2"), not for instance "onprem1"`) {
			t.Errorf("token for another identity: unexpected output:\n%s", out)
		}
		// SANs other than the token's: refused before it is used.
		out = runCLIFail(t, bin, "enroll", "--ca-url", ca.url, "--root", ca.rootFile, "--token", other,
			"--out", filepath.Join(dir, "again"), "--dns", "evil.example.com")
		if !strings.Contains(out, `--dns ["evil.example.com"]`) {
			t.Errorf("SANs other than the token's: unexpected output:\n%s", out)
		}
		// The CA itself: a request for onprem1's identity with the onprem2
		// token, which the refusals above did not use up (else this would
		// be a 401).
		key, err := keyutil.GenerateSigner("EC", "P-256", 0)
		if err != nil {
			t.Fatal(err)
		}
		csr, err := x509util.CreateCertificateRequest("onprem2", []string{onpremID}, key)
		if err != nil {
			t.Fatal(err)
		}
		client, err := tlsgen.NewCAClient(ca.url, ca.roots)
		if err != nil {
			t.Fatal(err)
		}
		_, err = client.Sign(t.Context(), csr, other)
		var ce *tlsgen.CAError
		if !errors.As(err, &ce) || ce.Status != http.StatusForbidden || !strings.Contains(ce.Message, "URIs") {
			t.Errorf("CSR for another identity than the token's: got %v, want a 403 about the URIs", err)
		} else {
			t.Logf("CSR for another identity than the token's: %v", err)
		}
	})
	if t.Failed() {
		return
	}

	// The instances, their echo servers, and a config for each that renews
	// at the CA.
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
	configs := map[string]string{
		"cloud1": fmt.Sprintf(`instance: cloud1
site: cloud
tls: {ca: %q, cert: %q, key: %q, renew: {ca-url: %q}}
tunnel: {listen: %q}
peers: [{site: onprem}]
services:
  - {name: server-a, accept: %q}
  - {name: server-b, connect: %q}
admin: {listen: %q}
`, ca.rootFile, files["cloud1"][0], files["cloud1"][1], ca.url, addr(portSCloudTunnel),
			addr(portSCloudClient), addr(portSServerB), addr(portSCloudAdmin)),
		"onprem1": fmt.Sprintf(`instance: onprem1
site: onprem
tls: {ca: %q, cert: %q, key: %q, renew: {ca-url: %q}}
peers: [{site: cloud, urls: [%q]}]
services:
  - {name: server-a, connect: %q}
  - {name: server-b, accept: %q}
admin: {listen: %q}
`, ca.rootFile, files["onprem1"][0], files["onprem1"][1], ca.url, "wss://"+addr(portSCloudTunnel)+"/sitebridge",
			addr(portSServerA), addr(portSOnpremClient), addr(portSOnpremAdmin)),
	}
	inst := map[string]*proc{}
	for _, e := range []struct{ name, addr string }{{"echo-server-a", addr(portSServerA)}, {"echo-server-b", addr(portSServerB)}} {
		p := &proc{name: e.name, bin: bin, args: []string{"echo", "--listen", e.addr}, log: filepath.Join(dir, e.name+".log")}
		procs = append(procs, p)
		p.start(t)
	}
	for _, name := range []string{"cloud1", "onprem1"} {
		path := filepath.Join(dir, name+".yaml")
		if err := os.WriteFile(path, []byte(configs[name]), 0o600); err != nil {
			t.Fatal(err)
		}
		if out := runCLI(t, bin, "run", "--config", path, "--check"); !strings.Contains(out, "config is valid") {
			t.Fatalf("run --check %s: %s", path, out)
		}
		p := &proc{name: name, bin: bin, args: []string{"run", "--config", path}, log: filepath.Join(dir, name+".log")}
		procs = append(procs, p)
		inst[name] = p
		p.start(t)
	}
	admin := map[string]string{"cloud1": addr(portSCloudAdmin), "onprem1": addr(portSOnpremAdmin)}
	hc := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	defer hc.CloseIdleConnections()
	tunnelOf := func(name string) (string, error) {
		resp, err := hc.Get("http://" + admin[name] + "/api/v1/status")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		var st status
		if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
			return "", err
		}
		if len(st.Tunnels) != 1 {
			return "", fmt.Errorf("%s holds %d tunnels, want 1", name, len(st.Tunnels))
		}
		tn := st.Tunnels[0]
		return fmt.Sprintf("%s epoch %d via %s", tn.Peer, tn.Epoch, tn.Addr), nil
	}
	alive := func() {
		for _, p := range procs {
			if err := p.exited(); err != nil {
				t.Fatal(err)
			}
		}
	}
	tunnels := map[string]string{}
	waitFor(t, "the tunnel between cloud1 and onprem1", readyTimeout, readyInterval, func() error {
		alive()
		for _, name := range []string{"cloud1", "onprem1"} {
			tn, err := tunnelOf(name)
			if err != nil {
				return err
			}
			tunnels[name] = tn
		}
		return roundTrip(addr(portSCloudClient), "ready?\n", time.Second)
	})
	t.Logf("tunnel up: cloud1 holds %s; onprem1 holds %s", tunnels["cloud1"], tunnels["onprem1"])

	// Traffic until the renewals are done: a connection held open the
	// whole time, and new connections both ways.
	held, err := net.Dial("tcp", addr(portSCloudClient))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures []string
	var heldTrips, newConns int
	fail := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		failures = append(failures, time.Now().Format("15:04:05.000")+" "+fmt.Sprintf(format, args...))
	}
	wg.Go(func() {
		r := bufio.NewReader(held)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
			line := fmt.Sprintf("held %d\n", i)
			held.SetDeadline(time.Now().Add(3 * time.Second))
			if _, err := held.Write([]byte(line)); err != nil {
				fail("held connection write: %v", err)
				return
			}
			got, err := r.ReadString('\n')
			if err != nil || got != line {
				fail("held connection: %q, %v", got, err)
				return
			}
			mu.Lock()
			heldTrips++
			mu.Unlock()
		}
	})
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			a := addr(portSCloudClient)
			if i%2 == 1 {
				a = addr(portSOnpremClient)
			}
			if err := roundTrip(a, fmt.Sprintf("new connection %d\n", i), 3*time.Second); err != nil {
				fail("new connection %d to %s: %v", i, a, err)
			}
			mu.Lock()
			newConns++
			mu.Unlock()
		}
	})
	stopTraffic := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopTraffic()

	// Each side renews every 20s: wait for two renewals of each, and until
	// both enrolled certificates have expired.
	expiry := enrolled["cloud1"].NotAfter
	if e := enrolled["onprem1"].NotAfter; e.After(expiry) {
		expiry = e
	}
	took := waitFor(t, "two renewals on each side and the enrolled certificates expired", 150*time.Second, 500*time.Millisecond, func() error {
		alive()
		for _, name := range []string{"cloud1", "onprem1"} {
			if tn, err := tunnelOf(name); err != nil || tn != tunnels[name] {
				t.Fatalf("%s: tunnel %q (%v), was %q", name, tn, err, tunnels[name])
			}
			if d := grepFile(inst[name].log, "tunnel down", "certificate renewal failed", "level=ERROR"); len(d) > 0 {
				t.Fatalf("%s logged:\n%s", name, strings.Join(d, "\n"))
			}
			if n := len(renewals(inst[name].log)); n < 2 {
				return fmt.Errorf("%s renewed %d times", name, n)
			}
		}
		if time.Now().Before(expiry) {
			return fmt.Errorf("the enrolled certificates expire at %s", expiry.Format(time.TimeOnly))
		}
		return nil
	})
	stopTraffic()
	mu.Lock()
	t.Logf("waited %v: %d round trips on the held connection, %d new connections, %d failures", took.Round(time.Millisecond), heldTrips, newConns, len(failures))
	if len(failures) > 0 {
		t.Errorf("traffic failed during the renewals:\n%s", strings.Join(failures, "\n"))
	}
	if heldTrips < 100 || newConns < 200 {
		t.Errorf("too little traffic: %d held round trips, %d new connections", heldTrips, newConns)
	}
	mu.Unlock()
	if err := roundTripConn(held, "held after the renewals\n", 3*time.Second); err != nil {
		t.Errorf("held connection after the renewals: %v", err)
	}

	// The files hold renewed certificates, which the processes loaded.
	for _, name := range []string{"cloud1", "onprem1"} {
		cur := certFile(t, files[name][0])
		old := enrolled[name]
		if cur.SerialNumber.Cmp(old.SerialNumber) == 0 || !cur.NotAfter.After(old.NotAfter) {
			t.Errorf("%s: certificate not renewed: serial %x until %s, enrolled %x until %s", name, cur.SerialNumber, cur.NotAfter, old.SerialNumber, old.NotAfter)
		}
		id, err := tlsgen.IdentityFromCert(cur)
		if err != nil || !strings.HasSuffix(id.String(), "/instance/"+name) {
			t.Errorf("%s: renewed certificate identity %v, %v", name, id, err)
		}
		// The renewer writes the file, reloads, then logs: the file's
		// serial is logged as renewed and as reloaded within moments.
		want := fmt.Sprintf("%x", cur.SerialNumber)
		waitFor(t, name+" to log the renewal and reload of "+want, 5*time.Second, 50*time.Millisecond, func() error {
			if !slices.Contains(renewals(inst[name].log), want) {
				return fmt.Errorf("serial %s not logged as renewed", want)
			}
			for _, l := range grepFile(inst[name].log, `msg="tls certificate reloaded"`) {
				if strings.Contains(l, " serial="+want+" ") {
					return nil
				}
			}
			return fmt.Errorf("serial %s not logged as reloaded", want)
		})
		// Each renewal came when a third of its certificate's lifetime was
		// left, give or take the CA's answer.
		life := old.NotAfter.Sub(old.NotBefore)
		for _, l := range grepFile(inst[name].log, `msg="certificate renewed"`) {
			t.Logf("%s: %s", name, l)
			m := renewedTimes.FindStringSubmatch(l)
			if m == nil {
				t.Errorf("%s: unexpected renewal log line %q", name, l)
				continue
			}
			at, err1 := time.Parse(time.RFC3339Nano, m[1])
			prev, err2 := time.Parse(time.RFC3339Nano, m[2])
			due := prev.Add(-life / 3)
			if err1 != nil || err2 != nil || at.Before(due) || at.After(due.Add(5*time.Second)) {
				t.Errorf("%s: renewed at %s, due at %s (a third of %v before %s)", name, m[1], due.Format(time.RFC3339Nano), life, m[2])
			}
		}
	}
	// A new handshake with cloud1 now, as onprem1 with its current files:
	// cloud1 serves a renewed certificate and accepts onprem1's (the
	// enrolled ones have expired).
	r, err := tlsgen.NewReloader(ca.rootFile, files["onprem1"][0], files["onprem1"][1], nil)
	if err != nil {
		t.Fatal(err)
	}
	tc := r.ClientConfig(ip, nil)
	tc.NextProtos = []string{"http/1.1"}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr(portSCloudTunnel), tc)
	if err != nil {
		t.Fatalf("handshake with cloud1 after the renewals: %v", err)
	}
	served := conn.ConnectionState().PeerCertificates[0]
	conn.Close()
	if served.SerialNumber.Cmp(enrolled["cloud1"].SerialNumber) == 0 || !time.Now().Before(served.NotAfter) {
		t.Errorf("cloud1 serves serial %x until %s after the renewals", served.SerialNumber, served.NotAfter)
	}
}
