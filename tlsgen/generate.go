package tlsgen

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"time"

	"go.step.sm/crypto/keyutil"
	"go.step.sm/crypto/pemutil"
	"go.step.sm/crypto/x509util"
)

// File names inside a [Generate] directory.
const (
	CAFileName        = "ca.crt"
	CAKeyFileName     = "ca.key"
	GossipKeyFileName = "gossip.key"
)

const (
	caCommonName  = "sitebridge CA"
	caValidYears  = 10
	backdate      = time.Minute // tolerance for peers whose clocks run behind
	gossipKeySize = 32
)

// Result lists the files [Generate] wrote or kept.
type Result struct {
	CAFile, CAKeyFile, GossipKeyFile string
	CAReused                         bool // the existing CA was kept
	Certs                            []IssuedCert
}

// IssuedCert is one instance certificate written by [Generate].
type IssuedCert struct {
	Name, CertFile, KeyFile string
	Identity                Identity
}

// Generate validates spec (after applying defaults) and writes into dir,
// creating it with mode 0700 if missing:
//
//   - ca.crt and ca.key (0600): an ECDSA P-256 root CA "sitebridge CA",
//     valid 10 years;
//   - <name>.crt and <name>.key (0600) per instance: a leaf signed by the CA
//     with serverAuth and clientAuth, the DNS and IP SANs given, the URI SAN
//     identity and CN = name, valid spec.ValidFor but never past the CA;
//   - gossip.key (0600): 32 random bytes, base64 standard encoding and "\n".
//
// Unless force is set, an existing CA (both ca.crt and ca.key) is reused and
// an existing gossip.key kept; only one of ca.crt and ca.key is an error.
// Instance certificates are issued anew on every run. Each file is replaced
// atomically, key before certificate.
func Generate(spec Spec, dir string, force bool) (*Result, error) {
	spec.SetDefaults()
	if err := spec.Validate(); err != nil {
		return nil, fmt.Errorf("invalid spec: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create output directory: %w", err)
	}
	res := &Result{
		CAFile:        filepath.Join(dir, CAFileName),
		CAKeyFile:     filepath.Join(dir, CAKeyFileName),
		GossipKeyFile: filepath.Join(dir, GossipKeyFileName),
	}
	now := time.Now()
	caCert, caKey, reused, err := ensureCA(dir, force, now)
	if err != nil {
		return nil, err
	}
	res.CAReused = reused
	if err := ensureGossipKey(res.GossipKeyFile, force); err != nil {
		return nil, err
	}
	for _, in := range spec.Instances {
		c, err := issueFiles(dir, caCert, caKey, &spec, in, now)
		if err != nil {
			return nil, err
		}
		res.Certs = append(res.Certs, c)
	}
	return res, nil
}

// ensureCA loads the CA in dir, or creates one if there is none or force is
// set. It reports whether an existing CA was reused.
func ensureCA(dir string, force bool, now time.Time) (*x509.Certificate, crypto.Signer, bool, error) {
	if !force {
		haveCert, err := fileExists(filepath.Join(dir, CAFileName))
		if err != nil {
			return nil, nil, false, err
		}
		haveKey, err := fileExists(filepath.Join(dir, CAKeyFileName))
		if err != nil {
			return nil, nil, false, err
		}
		if haveCert || haveKey {
			cert, key, err := reuseCA(dir, haveCert && haveKey, now)
			return cert, key, err == nil, err
		}
	}
	cert, key, err := createCA(dir, now)
	return cert, key, false, err
}

func reuseCA(dir string, complete bool, now time.Time) (*x509.Certificate, crypto.Signer, error) {
	if !complete {
		return nil, nil, fmt.Errorf("%s holds only one of %s and %s; restore the other or regenerate with force", dir, CAFileName, CAKeyFileName)
	}
	cert, key, err := LoadCA(dir)
	if err != nil {
		return nil, nil, err
	}
	if !now.Before(cert.NotAfter) {
		return nil, nil, fmt.Errorf("CA in %s expired at %s; regenerate with force", dir, cert.NotAfter.UTC().Format(time.RFC3339))
	}
	return cert, key, nil
}

// createCA makes a new root CA and writes ca.key, then ca.crt.
func createCA(dir string, now time.Time) (*x509.Certificate, crypto.Signer, error) {
	key, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	tmpl := (&x509util.Certificate{
		Subject:          x509util.Subject{CommonName: caCommonName},
		KeyUsage:         x509util.KeyUsage(x509.KeyUsageCertSign | x509.KeyUsageCRLSign),
		BasicConstraints: &x509util.BasicConstraints{IsCA: true, MaxPathLen: 0},
		NotBefore:        now.Add(-backdate),
		NotAfter:         now.AddDate(caValidYears, 0, 0),
		PublicKey:        key.Public(),
	}).GetCertificate()
	cert, err := x509util.CreateCertificate(tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("create CA certificate: %w", err)
	}
	if err := writeKeyPair(filepath.Join(dir, CAFileName), filepath.Join(dir, CAKeyFileName), cert, key); err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

// LoadCA reads ca.crt and ca.key from dir and checks that the certificate is
// a CA and that the key belongs to it.
func LoadCA(dir string) (*x509.Certificate, crypto.Signer, error) {
	certPath, keyPath := filepath.Join(dir, CAFileName), filepath.Join(dir, CAKeyFileName)
	cert, err := pemutil.ReadCertificate(certPath)
	if err != nil {
		return nil, nil, fmt.Errorf("load CA certificate: %w", err)
	}
	if !cert.IsCA {
		return nil, nil, fmt.Errorf("load CA certificate: %s is not a CA certificate", certPath)
	}
	k, err := pemutil.Read(keyPath)
	if err != nil {
		return nil, nil, fmt.Errorf("load CA key: %w", err)
	}
	key, ok := k.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("load CA key: %s holds a %T, not a private key", keyPath, k)
	}
	if err := keyutil.VerifyPair(cert.PublicKey, key); err != nil {
		return nil, nil, fmt.Errorf("load CA: %s does not match %s: %w", keyPath, certPath, err)
	}
	return cert, key, nil
}

// IssueLeaf issues a leaf certificate for in, signed by the CA, valid from
// notBefore to notAfter, with the identity of in in trust domain td. It is
// what [Generate] uses; tests call it directly for unusual validity windows.
// It returns PEM certificate and PKCS#8 PEM private key.
func IssueLeaf(caCert *x509.Certificate, caKey crypto.Signer, td string, in InstanceSpec, notBefore, notAfter time.Time) (certPEM, keyPEM []byte, err error) {
	id := Identity{TrustDomain: td, Tenant: in.Tenant, Site: in.Site, Instance: in.Name}
	if err := id.Validate(); err != nil {
		return nil, nil, fmt.Errorf("issue leaf %q: %w", in.Name, err)
	}
	if !notAfter.After(notBefore) {
		return nil, nil, fmt.Errorf("issue leaf %q: not-after %s is not after not-before %s", in.Name, notAfter, notBefore)
	}
	ips, err := parseIPs(in.IPs)
	if err != nil {
		return nil, nil, fmt.Errorf("issue leaf %q: %w", in.Name, err)
	}
	key, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	tmpl := (&x509util.Certificate{
		Subject:          x509util.Subject{CommonName: in.Name},
		DNSNames:         in.DNS,
		IPAddresses:      ips,
		URIs:             x509util.MultiURL{id.URI()},
		KeyUsage:         x509util.KeyUsage(x509.KeyUsageDigitalSignature),
		ExtKeyUsage:      x509util.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraints: &x509util.BasicConstraints{IsCA: false},
		NotBefore:        notBefore,
		NotAfter:         notAfter,
		PublicKey:        key.Public(),
	}).GetCertificate()
	cert, err := x509util.CreateCertificate(tmpl, caCert, key.Public(), caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("issue leaf %q: %w", in.Name, err)
	}
	return encodePEM(cert, key)
}

// issueFiles issues the leaf for in and writes <name>.key, then <name>.crt.
func issueFiles(dir string, caCert *x509.Certificate, caKey crypto.Signer, spec *Spec, in InstanceSpec, now time.Time) (IssuedCert, error) {
	notAfter := now.Add(spec.ValidFor)
	if notAfter.After(caCert.NotAfter) {
		notAfter = caCert.NotAfter
	}
	certPEM, keyPEM, err := IssueLeaf(caCert, caKey, spec.TrustDomain, in, now.Add(-backdate), notAfter)
	if err != nil {
		return IssuedCert{}, err
	}
	c := IssuedCert{
		Name:     in.Name,
		CertFile: filepath.Join(dir, in.Name+".crt"),
		KeyFile:  filepath.Join(dir, in.Name+".key"),
		Identity: Identity{TrustDomain: spec.TrustDomain, Tenant: in.Tenant, Site: in.Site, Instance: in.Name},
	}
	if err := writeFileAtomic(c.KeyFile, keyPEM, 0o600); err != nil {
		return IssuedCert{}, err
	}
	if err := writeFileAtomic(c.CertFile, certPEM, 0o644); err != nil {
		return IssuedCert{}, err
	}
	return c, nil
}

// ensureGossipKey writes a new gossip key unless one exists and force is
// false, in which case the existing key is checked and kept.
func ensureGossipKey(path string, force bool) error {
	if !force {
		ok, err := fileExists(path)
		if err != nil {
			return err
		}
		if ok {
			_, err := LoadGossipKey(path)
			return err
		}
	}
	b := make([]byte, gossipKeySize)
	if _, err := rand.Read(b); err != nil {
		return fmt.Errorf("generate gossip key: %w", err)
	}
	return writeFileAtomic(path, []byte(base64.StdEncoding.EncodeToString(b)+"\n"), 0o600)
}

// LoadGossipKey reads a base64 memberlist key written by [Generate] and
// returns its raw bytes; memberlist accepts 16, 24 or 32 bytes.
func LoadGossipKey(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load gossip key: %w", err)
	}
	key, err := base64.StdEncoding.DecodeString(string(trimNewline(data)))
	if err != nil {
		return nil, fmt.Errorf("load gossip key %s: %w", path, err)
	}
	switch len(key) {
	case 16, 24, 32:
		return key, nil
	}
	return nil, fmt.Errorf("load gossip key %s: %d bytes, want 16, 24 or 32", path, len(key))
}

func trimNewline(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

func newKey() (crypto.Signer, error) {
	key, err := keyutil.GenerateSigner("EC", "P-256", 0)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	return key, nil
}

func parseIPs(ss []string) ([]net.IP, error) {
	var ips []net.IP
	for _, s := range ss {
		a, err := parseIP(s)
		if err != nil {
			return nil, err
		}
		ips = append(ips, a.AsSlice())
	}
	return ips, nil
}

// encodePEM returns the certificate and the PKCS#8 private key as PEM.
func encodePEM(cert *x509.Certificate, key crypto.Signer) (certPEM, keyPEM []byte, err error) {
	cb, err := pemutil.Serialize(cert)
	if err != nil {
		return nil, nil, fmt.Errorf("encode certificate: %w", err)
	}
	kb, err := pemutil.Serialize(key, pemutil.WithPKCS8(true))
	if err != nil {
		return nil, nil, fmt.Errorf("encode key: %w", err)
	}
	return pem.EncodeToMemory(cb), pem.EncodeToMemory(kb), nil
}

// writeKeyPair writes the key (0600) and then the certificate (0644).
func writeKeyPair(certPath, keyPath string, cert *x509.Certificate, key crypto.Signer) error {
	certPEM, keyPEM, err := encodePEM(cert, key)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return err
	}
	return writeFileAtomic(certPath, certPEM, 0o644)
}

// writeFileAtomic replaces path with data through a synced temporary file in
// the same directory and a rename, so readers see the old or the new file,
// never a partial one.
func writeFileAtomic(path string, data []byte, perm fs.FileMode) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
			err = fmt.Errorf("write %s: %w", path, err)
		}
	}()
	if err = f.Chmod(perm); err != nil {
		return err
	}
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

func fileExists(path string) (bool, error) {
	_, err := os.Stat(path)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	}
	return false, fmt.Errorf("check %s: %w", path, err)
}
