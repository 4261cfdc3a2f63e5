package tlsgen

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// pki is a generated directory with reloaders for cloud1 (server) and
// onprem1 (client), plus a foreign CA that the instances do not trust.
type pki struct {
	dir            string
	caCert         *x509.Certificate
	caKey          crypto.Signer
	otherCA        *x509.Certificate
	otherKey       crypto.Signer
	server, client *Reloader
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	dir, _ := generate(t)
	otherDir, _ := generate(t)
	p := &pki{dir: dir}
	var err error
	if p.caCert, p.caKey, err = LoadCA(dir); err != nil {
		t.Fatal(err)
	}
	if p.otherCA, p.otherKey, err = LoadCA(otherDir); err != nil {
		t.Fatal(err)
	}
	p.server = p.reloader(t, "cloud1")
	p.client = p.reloader(t, "onprem1")
	return p
}

func (p *pki) reloader(t *testing.T, name string) *Reloader {
	t.Helper()
	r, err := NewReloader(filepath.Join(p.dir, CAFileName), p.file(name+".crt"), p.file(name+".key"), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (p *pki) file(name string) string { return filepath.Join(p.dir, name) }

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), nil))
}

// leaf issues a key pair valid from now+from to now+to.
func leaf(t *testing.T, ca *x509.Certificate, key crypto.Signer, td string, in InstanceSpec, from, to time.Duration) tls.Certificate {
	t.Helper()
	now := time.Now()
	certPEM, keyPEM, err := IssueLeaf(ca, key, td, in, now.Add(from), now.Add(to))
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return pair
}

var (
	onprem2 = InstanceSpec{Name: "onprem2", Site: "onprem", Tenant: "acme"}
	cloud2  = InstanceSpec{Name: "cloud2", Site: "cloud", DNS: []string{"cloud1.example.test"}}
)

// rawClient presents pair and does not verify the server.
func rawClient(pair tls.Certificate) *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, Certificates: []tls.Certificate{pair}}
}

// rawServer presents pair and does not verify the client.
func rawServer(pair tls.Certificate) *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS13, ClientAuth: tls.RequireAnyClientCert, Certificates: []tls.Certificate{pair}}
}

func allowSite(site string) Authorize {
	return func(id Identity) error {
		if id.Site != site {
			return errNotAllowed
		}
		return nil
	}
}

var errNotAllowed = errors.New("site not allowed")

type hsResult struct {
	err   error
	state tls.ConnectionState
}

// handshake runs one TLS connection over loopback TCP. The server writes
// "ok" after its handshake and the client reads it, so a rejection by the
// server also fails the client.
func handshake(t *testing.T, srvCfg, cliCfg *tls.Config) (srv, cli hsResult) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan hsResult, 1)
	go func() { done <- serveOnce(ln, srvCfg) }()
	cli = dialOnce(ln.Addr().String(), cliCfg)
	ln.Close() // unblocks Accept if the client never connected
	return <-done, cli
}

func serveOnce(ln net.Listener, cfg *tls.Config) hsResult {
	c, err := ln.Accept()
	if err != nil {
		return hsResult{err: err}
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	tc := tls.Server(c, cfg)
	if err := tc.Handshake(); err != nil {
		return hsResult{err: err}
	}
	_, err = tc.Write([]byte("ok"))
	return hsResult{err: err, state: tc.ConnectionState()}
}

func dialOnce(addr string, cfg *tls.Config) hsResult {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return hsResult{err: err}
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	tc := tls.Client(c, cfg)
	if err := tc.Handshake(); err != nil {
		return hsResult{err: err}
	}
	_, err = io.ReadFull(tc, make([]byte, 2))
	return hsResult{err: err, state: tc.ConnectionState()}
}

// wantReason checks that err is a *VerifyError with reason want.
func wantReason(t *testing.T, side string, err error, want RejectReason) {
	t.Helper()
	var ve *VerifyError
	if !errors.As(err, &ve) {
		t.Fatalf("%s error = %v, want VerifyError %s", side, err, want)
	}
	if ve.Reason != want {
		t.Fatalf("%s reason = %s, want %s (%v)", side, ve.Reason, want, err)
	}
	if ve.Subject == "" || !strings.Contains(ve.Error(), "("+string(want)+")") {
		t.Errorf("%s error %q lacks subject or reason", side, ve)
	}
}

func TestHandshake(t *testing.T) {
	p := newPKI(t)
	expiredCloud := leaf(t, p.caCert, p.caKey, DefaultTrustDomain, cloud2, -48*time.Hour, -24*time.Hour)
	tests := []struct {
		name     string
		server   func() *tls.Config
		client   func() *tls.Config
		srv, cli RejectReason // expected reasons; both empty means success
		check    func(t *testing.T, srv, cli hsResult)
	}{{
		name:   "success",
		server: func() *tls.Config { return p.server.ServerConfig(allowSite("onprem")) },
		client: func() *tls.Config { return p.client.ClientConfig("cloud1.example.test", allowSite("cloud")) },
		check: func(t *testing.T, srv, cli hsResult) {
			if v := srv.state.Version; v != tls.VersionTLS13 {
				t.Errorf("version = %x, want TLS 1.3", v)
			}
			if id, _ := IdentityFromCert(srv.state.PeerCertificates[0]); id != p.client.Identity() {
				t.Errorf("server saw %v, want %v", id, p.client.Identity())
			}
			if id, _ := IdentityFromCert(cli.state.PeerCertificates[0]); id != p.server.Identity() {
				t.Errorf("client saw %v, want %v", id, p.server.Identity())
			}
		},
	}, {
		name:   "success by IP, nil authorize",
		server: func() *tls.Config { return p.server.ServerConfig(nil) },
		client: func() *tls.Config { return p.client.ClientConfig("127.0.0.1", nil) },
	}, {
		name:   "client from another CA",
		server: func() *tls.Config { return p.server.ServerConfig(nil) },
		client: func() *tls.Config {
			return rawClient(leaf(t, p.otherCA, p.otherKey, DefaultTrustDomain, onprem2, -time.Hour, time.Hour))
		},
		srv: ReasonUnknownCA,
	}, {
		name:   "expired client from another CA",
		server: func() *tls.Config { return p.server.ServerConfig(nil) },
		client: func() *tls.Config {
			return rawClient(leaf(t, p.otherCA, p.otherKey, DefaultTrustDomain, onprem2, -48*time.Hour, -24*time.Hour))
		},
		srv: ReasonUnknownCA,
	}, {
		name:   "expired client",
		server: func() *tls.Config { return p.server.ServerConfig(nil) },
		client: func() *tls.Config {
			return rawClient(leaf(t, p.caCert, p.caKey, DefaultTrustDomain, onprem2, -48*time.Hour, -24*time.Hour))
		},
		srv: ReasonExpired,
	}, {
		name:   "not yet valid client",
		server: func() *tls.Config { return p.server.ServerConfig(nil) },
		client: func() *tls.Config {
			return rawClient(leaf(t, p.caCert, p.caKey, DefaultTrustDomain, onprem2, 24*time.Hour, 48*time.Hour))
		},
		srv: ReasonNotYetValid,
	}, {
		name:   "client from another trust domain",
		server: func() *tls.Config { return p.server.ServerConfig(nil) },
		client: func() *tls.Config {
			return rawClient(leaf(t, p.caCert, p.caKey, "other.example", onprem2, -time.Hour, time.Hour))
		},
		srv: ReasonBadIdentity,
	}, {
		name:   "client identity not allowed",
		server: func() *tls.Config { return p.server.ServerConfig(allowSite("elsewhere")) },
		client: func() *tls.Config { return p.client.ClientConfig("cloud1.example.test", nil) },
		srv:    ReasonIdentityNotAllowed,
		check: func(t *testing.T, srv, _ hsResult) {
			if !errors.Is(srv.err, errNotAllowed) {
				t.Errorf("server error %v does not wrap the authorize error", srv.err)
			}
		},
	}, {
		name:   "no client certificate",
		server: func() *tls.Config { return p.server.ServerConfig(nil) },
		client: func() *tls.Config { return &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true} },
		check: func(t *testing.T, srv, cli hsResult) {
			if srv.err == nil || cli.err == nil {
				t.Errorf("handshake without client certificate: server %v, client %v", srv.err, cli.err)
			}
		},
	}, {
		name:   "wrong hostname",
		server: func() *tls.Config { return p.server.ServerConfig(nil) },
		client: func() *tls.Config { return p.client.ClientConfig("wrong.example.test", nil) },
		cli:    ReasonHostnameMismatch,
	}, {
		name:   "server identity not allowed",
		server: func() *tls.Config { return p.server.ServerConfig(nil) },
		client: func() *tls.Config { return p.client.ClientConfig("cloud1.example.test", allowSite("onprem")) },
		cli:    ReasonIdentityNotAllowed,
	}, {
		name:   "expired server",
		server: func() *tls.Config { return rawServer(expiredCloud) },
		client: func() *tls.Config { return p.client.ClientConfig("cloud1.example.test", nil) },
		cli:    ReasonExpired,
	}, {
		name: "server from another CA",
		server: func() *tls.Config {
			return rawServer(leaf(t, p.otherCA, p.otherKey, DefaultTrustDomain, cloud2, -time.Hour, time.Hour))
		},
		client: func() *tls.Config { return p.client.ClientConfig("cloud1.example.test", nil) },
		cli:    ReasonUnknownCA,
	}, {
		name:   "TLS 1.2 client",
		server: func() *tls.Config { return p.server.ServerConfig(nil) },
		client: func() *tls.Config {
			cfg := p.client.ClientConfig("cloud1.example.test", nil)
			cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
			return cfg
		},
		check: func(t *testing.T, srv, cli hsResult) {
			var ve *VerifyError
			if srv.err == nil || cli.err == nil || errors.As(srv.err, &ve) {
				t.Errorf("TLS 1.2 client: server %v, client %v; want a version failure", srv.err, cli.err)
			}
		},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv, cli := handshake(t, tc.server(), tc.client())
			switch {
			case tc.srv != "":
				wantReason(t, "server", srv.err, tc.srv)
				if cli.err == nil {
					t.Error("client succeeded although the server rejected it")
				}
			case tc.cli != "":
				wantReason(t, "client", cli.err, tc.cli)
				if srv.err == nil {
					t.Error("server succeeded although the client rejected it")
				}
			case tc.check == nil && (srv.err != nil || cli.err != nil):
				t.Fatalf("server: %v; client: %v", srv.err, cli.err)
			}
			if tc.check != nil {
				tc.check(t, srv, cli)
			}
		})
	}
}

func TestConfigsAreFresh(t *testing.T) {
	p := newPKI(t)
	a, b := p.server.ServerConfig(nil), p.server.ServerConfig(nil)
	a.NextProtos = []string{"x"}
	if a == b || b.NextProtos != nil || a.MinVersion != tls.VersionTLS13 {
		t.Error("ServerConfig must return a fresh TLS 1.3 config")
	}
	if c := p.client.ClientConfig("h", nil); c.MinVersion != tls.VersionTLS13 || c.ServerName != "h" {
		t.Errorf("ClientConfig: %+v", c)
	}
}

// servedSerial returns the serial of the certificate the server presents.
func servedSerial(t *testing.T, p *pki) string {
	t.Helper()
	srv, cli := handshake(t, p.server.ServerConfig(nil), p.client.ClientConfig("cloud1.example.test", nil))
	if srv.err != nil || cli.err != nil {
		t.Fatalf("handshake: server %v, client %v", srv.err, cli.err)
	}
	return serial(cli.state.PeerCertificates[0])
}

// rotate reissues every instance certificate in p.dir, keeping the CA.
func rotate(t *testing.T, p *pki) {
	t.Helper()
	if _, err := Generate(testSpec(), p.dir, false); err != nil {
		t.Fatal(err)
	}
}

func TestReloaderExplicitRotation(t *testing.T) {
	p := newPKI(t)
	before := servedSerial(t, p)
	rotate(t, p)
	if err := p.server.Reload(); err != nil {
		t.Fatal(err)
	}
	after := servedSerial(t, p)
	if after == before || after != serial(p.server.Leaf()) {
		t.Errorf("serial before %s, after %s, leaf %s", before, after, serial(p.server.Leaf()))
	}
}

func TestReloaderLazyRotation(t *testing.T) {
	p := newPKI(t)
	p.server.every = 10 * time.Millisecond // before any concurrent use
	before := servedSerial(t, p)
	rotate(t, p)
	deadline := time.Now().Add(10 * time.Second)
	for serial(p.server.Leaf()) == before {
		if time.Now().After(deadline) {
			t.Fatal("rotated certificate was not picked up")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if after := servedSerial(t, p); after == before {
		t.Errorf("handshake still presents serial %s", before)
	}
}

func TestReloaderBadRotationKeepsOld(t *testing.T) {
	p := newPKI(t)
	var logs bytes.Buffer
	p.server.log = slog.New(slog.NewTextHandler(&logs, nil))
	before := servedSerial(t, p)

	rotate(t, p)
	copyFile(t, p.file("onprem1.key"), p.file("cloud1.key")) // key no longer matches cloud1.crt
	if err := p.server.Reload(); err == nil {
		t.Fatal("Reload accepted a mismatched key")
	}
	if got := servedSerial(t, p); got != before {
		t.Errorf("serial after failed reload = %s, want %s", got, before)
	}
	if !strings.Contains(logs.String(), "level=WARN") {
		t.Errorf("failed reload not logged: %q", logs.String())
	}

	rotate(t, p) // a good rotation recovers
	if err := p.server.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := servedSerial(t, p); got == before {
		t.Error("good rotation after a bad one was not picked up")
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeFileAtomic(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestNewReloaderErrors(t *testing.T) {
	p := newPKI(t)
	dir := t.TempDir()
	write := func(name string, pair tls.Certificate) (string, string) {
		certPEM, keyPEM, err := encodePEM(pair.Leaf, pair.PrivateKey.(crypto.Signer))
		if err != nil {
			t.Fatal(err)
		}
		c, k := filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
		if err := os.WriteFile(c, certPEM, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(k, keyPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		return c, k
	}
	ca := p.file(CAFileName)
	expC, expK := write("expired", leaf(t, p.caCert, p.caKey, DefaultTrustDomain, onprem2, -48*time.Hour, -time.Hour))
	nyvC, nyvK := write("future", leaf(t, p.caCert, p.caKey, DefaultTrustDomain, onprem2, time.Hour, 48*time.Hour))
	forC, forK := write("foreign", leaf(t, p.otherCA, p.otherKey, DefaultTrustDomain, onprem2, -time.Hour, time.Hour))
	noIDC, noIDK := write("noid", noIdentityLeaf(t, p))
	tests := []struct {
		name             string
		ca, cert, key    string
		wantErrNotExists bool
	}{
		{"missing CA", filepath.Join(dir, "nope.crt"), p.file("cloud1.crt"), p.file("cloud1.key"), true},
		{"missing cert", ca, filepath.Join(dir, "nope.crt"), p.file("cloud1.key"), true},
		{"missing key", ca, p.file("cloud1.crt"), filepath.Join(dir, "nope.key"), true},
		{"mismatched key", ca, p.file("cloud1.crt"), p.file("onprem1.key"), false},
		{"expired", ca, expC, expK, false},
		{"not yet valid", ca, nyvC, nyvK, false},
		{"other CA", ca, forC, forK, false},
		{"no identity", ca, noIDC, noIDK, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := NewReloader(tc.ca, tc.cert, tc.key, nil)
			if err == nil {
				t.Fatalf("NewReloader succeeded with leaf %v", r.Leaf().Subject)
			}
			if tc.wantErrNotExists != errors.Is(err, os.ErrNotExist) {
				t.Errorf("err = %v; want not-exist %v", err, tc.wantErrNotExists)
			}
		})
	}
}

// noIdentityLeaf issues a leaf for the CA in p that has no URI SAN.
func noIdentityLeaf(t *testing.T, p *pki) tls.Certificate {
	t.Helper()
	pair := leaf(t, p.caCert, p.caKey, DefaultTrustDomain, onprem2, -time.Hour, time.Hour)
	tmpl := *pair.Leaf
	tmpl.URIs = nil
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, p.caCert, pair.Leaf.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: pair.PrivateKey, Leaf: c}
}
