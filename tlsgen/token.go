package tlsgen

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"go.step.sm/crypto/jose"
)

// tokenLeeway is the clock skew step-ca tolerates on a token's nbf and exp.
const tokenLeeway = time.Minute

// Token is what a one-time token of a step-ca provisioner (such as `step ca
// token` makes) says. [ParseToken] reads it without verifying the
// signature: only the CA, which holds the provisioner's public key, can.
type Token struct {
	Issuer    string   // the provisioner name
	Subject   string   // becomes the certificate's common name
	SANs      []string // the SANs the token authorizes, exactly (or the subject, when none)
	Audience  []string // the CA's sign URL
	ID        string   // jti; the CA refuses a second use
	NotBefore time.Time
	Expiry    time.Time
	// RootSHA is the SHA-256 fingerprint (hex) of the CA's root that `step
	// ca token` puts in the "sha" claim; empty if the token has none.
	RootSHA string
	// Identity is the token's one spiffe:// SAN.
	Identity Identity
}

// ParseToken reads a one-time token and finds the sitebridge identity in
// its SANs: exactly one spiffe:// URI in the canonical form of
// [ParseIdentity]. A token without "sans" authorizes its subject alone, as
// step-ca treats it.
func ParseToken(ott string) (*Token, error) {
	jwt, err := jose.ParseSigned(strings.TrimSpace(ott))
	if err != nil {
		return nil, fmt.Errorf("one-time token: not a signed JWT: %w", err)
	}
	var c struct {
		jose.Claims
		SANs []string `json:"sans"`
		SHA  string   `json:"sha"`
	}
	if err := jwt.UnsafeClaimsWithoutVerification(&c); err != nil {
		return nil, fmt.Errorf("one-time token: claims: %w", err)
	}
	t := &Token{
		Issuer: c.Issuer, Subject: c.Subject, SANs: c.SANs, Audience: c.Audience, ID: c.ID,
		NotBefore: c.NotBefore.Time(), Expiry: c.Expiry.Time(), RootSHA: strings.ToLower(c.SHA),
	}
	if t.Subject == "" {
		return nil, errors.New("one-time token: no subject (sub)")
	}
	if len(t.SANs) == 0 {
		t.SANs = []string{t.Subject}
	}
	var ids []string
	for _, s := range t.SANs {
		if u, err := url.Parse(s); err == nil && u.Scheme == identityScheme {
			ids = append(ids, s)
		}
	}
	if len(ids) != 1 {
		return nil, fmt.Errorf("one-time token: it authorizes %d spiffe:// identities (SANs %q), want exactly 1: mint it with --san spiffe://TRUST-DOMAIN/[tenant/TENANT/]site/SITE/instance/NAME",
			len(ids), t.SANs)
	}
	if t.Identity, err = ParseIdentity(ids[0]); err != nil {
		return nil, fmt.Errorf("one-time token: %w", err)
	}
	return t, nil
}

// refusalHints lists what this host can tell about why the CA may have
// refused t with 401 (used, expired, for another CA, ...), most specific
// first.
func (t *Token) refusalHints(signURL string, now time.Time) []string {
	var hints []string
	if !t.Expiry.IsZero() && now.After(t.Expiry) {
		hints = append(hints, fmt.Sprintf("the token expired at %s (%s ago by this host's clock); mint a new one", utc(t.Expiry), now.Sub(t.Expiry).Round(time.Second)))
	}
	if !t.NotBefore.IsZero() && now.Add(tokenLeeway).Before(t.NotBefore) {
		hints = append(hints, fmt.Sprintf("the token is not valid before %s (by this host's clock)", utc(t.NotBefore)))
	}
	if !audienceMatches(t.Audience, signURL) {
		hints = append(hints, fmt.Sprintf("the token's audience %q is not this CA's sign URL %s: mint it with --ca-url for this CA", t.Audience, signURL))
	}
	return append(hints, "a one-time token is good for one enrolment: if it was used before (or the enrolment was retried), mint a new one",
		fmt.Sprintf("the token must be signed by a provisioner of this CA (its issuer is %q)", t.Issuer))
}

// audienceMatches reports whether one of aud is signURL, ports ignored (as
// step-ca compares them).
func audienceMatches(aud []string, signURL string) bool {
	strip := func(s string) string {
		u, err := url.Parse(s)
		if err != nil {
			return s
		}
		u.Host = strings.ToLower(u.Hostname())
		return u.String()
	}
	for _, a := range aud {
		if strip(a) == strip(signURL) {
			return true
		}
	}
	return false
}

// checkRootSHA reports an error if t names a root fingerprint and none of
// roots has it.
func (t *Token) checkRootSHA(roots []*x509.Certificate) error {
	if t.RootSHA == "" {
		return nil
	}
	var have []string
	for _, r := range roots {
		sum := sha256.Sum256(r.Raw)
		fp := hex.EncodeToString(sum[:])
		if fp == t.RootSHA {
			return nil
		}
		have = append(have, fp)
	}
	return fmt.Errorf("the token was minted for the CA whose root has fingerprint %s, but the root file holds %s", t.RootSHA, strings.Join(have, ", "))
}
