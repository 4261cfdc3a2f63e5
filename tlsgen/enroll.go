package tlsgen

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"go.step.sm/crypto/pemutil"
	"go.step.sm/crypto/x509util"
)

// Enrollment describes the enrolment of an instance at a smallstep CA
// (step-ca) with a one-time token; see [Enroll].
type Enrollment struct {
	// CAURL is the CA's URL, https://host[:port].
	CAURL string
	// RootFile is a PEM file with the CA's root certificate: it verifies
	// the CA's TLS and the issued chain.
	RootFile string
	// Token is the one-time token, as `step ca token` prints it. Its SANs
	// must hold exactly one identity URI (spiffe://...).
	Token string
	// Name, when set, is the instance the token must name.
	Name string
	// DNS and IPs, when either is set, are the DNS and IP SANs the token
	// must authorize, exactly (in any order).
	DNS, IPs []string
}

// Enrolled is the outcome of [Enroll]: a new key and the certificate the CA
// issued for it.
type Enrolled struct {
	Identity Identity
	Chain    []*x509.Certificate // leaf first, then the intermediates
	Key      crypto.Signer       // ECDSA P-256
}

// Leaf is the issued certificate.
func (e *Enrolled) Leaf() *x509.Certificate { return e.Chain[0] }

// Enroll gets a first certificate from a step-ca: it reads the token's
// identity and SANs, checks them against e.Name, e.DNS and e.IPs, generates
// an ECDSA P-256 key and a certificate request with exactly the token's
// SANs (the identity URI among them) and its subject as common name, and
// posts both to the CA's /1.0/sign over TLS verified with the root file.
// The issued chain must carry the token's identity, hold the new key,
// verify against the root for serverAuth and clientAuth, and be valid now.
//
// A token the CA refuses comes back as an error wrapping the [*CAError],
// with what this host can tell about the reason (expired, audience of
// another CA, already used).
func Enroll(ctx context.Context, e Enrollment) (*Enrolled, error) {
	roots, err := pemutil.ReadCertificateBundle(e.RootFile)
	if err != nil {
		return nil, fmt.Errorf("enroll: root: %w", err)
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	ca, err := NewCAClient(e.CAURL, pool)
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	tok, err := ParseToken(e.Token)
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	if err := e.check(tok); err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	if err := tok.checkRootSHA(roots); err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}

	key, err := newKey()
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	csr, err := x509util.CreateCertificateRequest(tok.Subject, tok.SANs, key)
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	chain, err := ca.Sign(ctx, csr, e.Token)
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", explainSignError(err, tok, ca.SignURL(), time.Now()))
	}
	if err := checkIssued(chain, key.Public(), tok.Identity, pool, time.Now()); err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	return &Enrolled{Identity: tok.Identity, Chain: chain, Key: key}, nil
}

// check compares the token with what the operator asked for.
func (e *Enrollment) check(tok *Token) error {
	id := tok.Identity
	if e.Name != "" && id.Instance != e.Name {
		return fmt.Errorf("the token is for %s (instance %q), not for instance %q", id, id.Instance, e.Name)
	}
	if len(e.DNS) == 0 && len(e.IPs) == 0 {
		return nil
	}
	dns, ips, _, _ := x509util.SplitSANs(tok.SANs)
	var tokIPs []string
	for _, ip := range ips {
		tokIPs = append(tokIPs, ip.String())
	}
	var wantIPs []string
	for _, s := range e.IPs {
		a, err := parseIP(s)
		if err != nil {
			return err
		}
		wantIPs = append(wantIPs, a.String())
	}
	if !sameSet(dns, e.DNS) || !sameSet(tokIPs, wantIPs) {
		return fmt.Errorf("the token authorizes DNS names %q and IP addresses %q, but --dns %q and --ip %q were asked for: mint a token with exactly those SANs",
			dns, tokIPs, e.DNS, wantIPs)
	}
	return nil
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	for i := range a {
		a[i] = strings.ToLower(a[i])
	}
	for i := range b {
		b[i] = strings.ToLower(b[i])
	}
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}

// explainSignError adds to a refusal of the CA what this host can tell
// about its reason.
func explainSignError(err error, tok *Token, signURL string, now time.Time) error {
	var ce *CAError
	if !errors.As(err, &ce) {
		return err
	}
	switch ce.Status {
	case http.StatusUnauthorized:
		return fmt.Errorf("the CA refused the one-time token: %w\n  possible reasons:\n  - %s",
			err, strings.Join(tok.refusalHints(signURL, now), "\n  - "))
	case http.StatusForbidden, http.StatusBadRequest:
		return fmt.Errorf("the CA refused the certificate request for %s: %w", tok.Identity, err)
	}
	return err
}

// WriteFiles writes the key (mode 0600) and then the chain to dir/name.key
// and dir/name.crt, each replaced atomically, creating dir with mode 0700
// if missing. It returns the two paths.
func (e *Enrolled) WriteFiles(dir, name string) (certFile, keyFile string, err error) {
	if err := ValidName(name); err != nil {
		return "", "", fmt.Errorf("file name: %w", err)
	}
	if reservedName(name) {
		return "", "", fmt.Errorf("file name %q is reserved (%s, %s, %s)", name, CAFileName, CAKeyFileName, GossipKeyFileName)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", fmt.Errorf("create output directory: %w", err)
	}
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	_, keyPEM, err := encodePEM(e.Leaf(), e.Key)
	if err != nil {
		return "", "", err
	}
	if err := writeFileAtomic(keyFile, keyPEM, 0o600); err != nil {
		return "", "", err
	}
	if err := writeFileAtomic(certFile, encodeChain(e.Chain), 0o644); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}
