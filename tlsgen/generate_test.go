package tlsgen

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"go.step.sm/crypto/pemutil"
)

func testSpec() Spec {
	return Spec{Instances: []InstanceSpec{
		{Name: "cloud1", Site: "cloud", DNS: []string{"cloud1.example.test", "localhost"}, IPs: []string{"127.0.0.1"}},
		{Name: "onprem1", Site: "onprem", Tenant: "acme", DNS: []string{"onprem1.example.test"}},
	}}
}

// generate runs Generate on testSpec into a new directory that Generate
// creates itself.
func generate(t *testing.T) (string, *Result) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "pki")
	res, err := Generate(testSpec(), dir, false)
	if err != nil {
		t.Fatal(err)
	}
	return dir, res
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	c, err := pemutil.ReadCertificate(path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestGenerateFiles(t *testing.T) {
	dir, res := generate(t)
	if res.CAReused {
		t.Error("CAReused on first run")
	}
	wantFiles := []string{"ca.crt", "ca.key", "cloud1.crt", "cloud1.key", "gossip.key", "onprem1.crt", "onprem1.key"}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if !slices.Equal(got, wantFiles) {
		t.Errorf("files = %v, want %v (no temporary files left)", got, wantFiles)
	}
	wantModes := map[string]os.FileMode{".": 0o700, "ca.key": 0o600, "gossip.key": 0o600, "cloud1.key": 0o600, "onprem1.key": 0o600, "ca.crt": 0o644}
	for name, want := range wantModes {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode = %v, want %v", name, fi.Mode().Perm(), want)
		}
	}
}

func TestGenerateCA(t *testing.T) {
	_, res := generate(t)
	ca := readCert(t, res.CAFile)
	pub, ok := ca.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		t.Errorf("CA key is %T, want ECDSA P-256", ca.PublicKey)
	}
	if !ca.IsCA || ca.Subject.CommonName != "sitebridge CA" {
		t.Errorf("CA: IsCA=%v CN=%q", ca.IsCA, ca.Subject.CommonName)
	}
	if years := time.Until(ca.NotAfter).Hours() / 24 / 365; years < 9.9 || years > 10.1 {
		t.Errorf("CA valid for %.1f years, want 10", years)
	}
	if err := ca.CheckSignatureFrom(ca); err != nil {
		t.Errorf("CA is not self-signed: %v", err)
	}
}

func TestGenerateLeaves(t *testing.T) {
	_, res := generate(t)
	roots := x509.NewCertPool()
	roots.AddCert(readCert(t, res.CAFile))
	spec := testSpec()
	for i, ic := range res.Certs {
		in := spec.Instances[i]
		t.Run(ic.Name, func(t *testing.T) {
			leaf := readCert(t, ic.CertFile)
			if leaf.Subject.CommonName != in.Name || !slices.Equal(leaf.DNSNames, in.DNS) {
				t.Errorf("CN=%q DNS=%v, want %q %v", leaf.Subject.CommonName, leaf.DNSNames, in.Name, in.DNS)
			}
			if len(leaf.IPAddresses) != len(in.IPs) {
				t.Errorf("IPs = %v, want %v", leaf.IPAddresses, in.IPs)
			}
			want := Identity{DefaultTrustDomain, in.Tenant, in.Site, in.Name}
			if id, err := IdentityFromCert(leaf); err != nil || id != want || ic.Identity != want {
				t.Errorf("identity = %+v, %v; result %+v; want %+v", id, err, ic.Identity, want)
			}
			for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
				opts := x509.VerifyOptions{Roots: roots, DNSName: in.DNS[0], KeyUsages: []x509.ExtKeyUsage{usage}}
				if _, err := leaf.Verify(opts); err != nil {
					t.Errorf("verify for usage %v: %v", usage, err)
				}
			}
			if days := time.Until(leaf.NotAfter).Hours() / 24; days < 364 || days > 366 {
				t.Errorf("leaf valid for %.1f days, want 365", days)
			}
			if _, err := tls.LoadX509KeyPair(ic.CertFile, ic.KeyFile); err != nil {
				t.Errorf("key pair: %v", err)
			}
		})
	}
	if ip := readCert(t, res.Certs[0].CertFile).IPAddresses; len(ip) != 1 || !ip[0].Equal(net.IPv4(127, 0, 0, 1)) {
		t.Errorf("cloud1 IPs = %v", ip)
	}
}

func TestGenerateGossipKey(t *testing.T) {
	_, res := generate(t)
	data, err := os.ReadFile(res.GossipKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	key, err := base64.StdEncoding.DecodeString(string(bytes.TrimSuffix(data, []byte("\n"))))
	if err != nil || len(key) != 32 || data[len(data)-1] != '\n' {
		t.Errorf("gossip.key = %q: %d bytes, %v", data, len(key), err)
	}
	if got, err := LoadGossipKey(res.GossipKeyFile); err != nil || !bytes.Equal(got, key) {
		t.Errorf("LoadGossipKey = %x, %v", got, err)
	}
}

func TestGenerateReusesCA(t *testing.T) {
	dir, first := generate(t)
	read := func(path string) []byte {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	ca, gossip, leaf := read(first.CAFile), read(first.GossipKeyFile), read(first.Certs[0].CertFile)

	again, err := Generate(testSpec(), dir, false)
	if err != nil {
		t.Fatal(err)
	}
	if !again.CAReused || !bytes.Equal(read(again.CAFile), ca) || !bytes.Equal(read(again.GossipKeyFile), gossip) {
		t.Error("second run without force replaced the CA or gossip key")
	}
	if bytes.Equal(read(again.Certs[0].CertFile), leaf) {
		t.Error("second run did not reissue the instance certificate")
	}

	forced, err := Generate(testSpec(), dir, true)
	if err != nil {
		t.Fatal(err)
	}
	if forced.CAReused || bytes.Equal(read(forced.CAFile), ca) || bytes.Equal(read(forced.GossipKeyFile), gossip) {
		t.Error("forced run kept the CA or gossip key")
	}
}

func TestGenerateErrors(t *testing.T) {
	t.Run("invalid spec", func(t *testing.T) {
		if _, err := Generate(Spec{}, t.TempDir(), false); err == nil {
			t.Error("want error for spec without instances")
		}
	})
	t.Run("half a CA", func(t *testing.T) {
		dir, _ := generate(t)
		if err := os.Remove(filepath.Join(dir, CAKeyFileName)); err != nil {
			t.Fatal(err)
		}
		if _, err := Generate(testSpec(), dir, false); err == nil {
			t.Error("want error when ca.key is missing but ca.crt exists")
		}
		if _, err := Generate(testSpec(), dir, true); err != nil {
			t.Errorf("force: %v", err)
		}
	})
	t.Run("corrupt gossip key", func(t *testing.T) {
		dir, res := generate(t)
		if err := os.WriteFile(res.GossipKeyFile, []byte("not base64!\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Generate(testSpec(), dir, false); err == nil {
			t.Error("want error for corrupt gossip.key")
		}
	})
}

func TestGenerateLeafNeverOutlivesCA(t *testing.T) {
	spec := testSpec()
	spec.ValidFor = 20 * 365 * 24 * time.Hour
	res, err := Generate(spec, t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	ca, leaf := readCert(t, res.CAFile), readCert(t, res.Certs[0].CertFile)
	if !leaf.NotAfter.Equal(ca.NotAfter) {
		t.Errorf("leaf NotAfter %v, CA NotAfter %v", leaf.NotAfter, ca.NotAfter)
	}
}

func TestLoadCAMismatchedKey(t *testing.T) {
	dir, _ := generate(t)
	other, _ := generate(t)
	key, err := os.ReadFile(filepath.Join(other, CAKeyFileName))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, CAKeyFileName), key, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadCA(dir); err == nil {
		t.Error("LoadCA accepted a key that does not match ca.crt")
	}
}

func TestIssueLeafErrors(t *testing.T) {
	dir, _ := generate(t)
	caCert, caKey, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tests := []struct {
		name     string
		td       string
		in       InstanceSpec
		from, to time.Time
	}{
		{"empty window", "td", InstanceSpec{Name: "a", Site: "s"}, now, now},
		{"bad name", "td", InstanceSpec{Name: "A", Site: "s"}, now, now.Add(time.Hour)},
		{"bad trust domain", "", InstanceSpec{Name: "a", Site: "s"}, now, now.Add(time.Hour)},
		{"bad ip", "td", InstanceSpec{Name: "a", Site: "s", IPs: []string{"x"}}, now, now.Add(time.Hour)},
	}
	for _, tc := range tests {
		if _, _, err := IssueLeaf(caCert, caKey, tc.td, tc.in, tc.from, tc.to); err == nil {
			t.Errorf("%s: IssueLeaf succeeded, want error", tc.name)
		}
	}
}
