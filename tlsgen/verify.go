package tlsgen

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// RejectReason says why a peer certificate was rejected.
type RejectReason string

// Reasons carried by [VerifyError].
const (
	ReasonNoCertificate      RejectReason = "no-certificate"
	ReasonUnknownCA          RejectReason = "unknown-ca"
	ReasonExpired            RejectReason = "expired"
	ReasonNotYetValid        RejectReason = "not-yet-valid"
	ReasonBadIdentity        RejectReason = "bad-identity"
	ReasonIdentityNotAllowed RejectReason = "identity-not-allowed"
	ReasonHostnameMismatch   RejectReason = "hostname-mismatch" // client side: server name not in the SANs
	ReasonBadKeyUsage        RejectReason = "bad-key-usage"     // missing serverAuth or clientAuth
	ReasonInvalid            RejectReason = "invalid-certificate"
)

// VerifyError is returned by the VerifyConnection callbacks of
// [Reloader.ServerConfig] and [Reloader.ClientConfig]; the handshake fails
// with it. Use errors.As to read the reason.
type VerifyError struct {
	Reason  RejectReason
	Subject string // the peer leaf's subject, such as "CN=onprem1"; empty if none
	Err     error
}

func (e *VerifyError) Error() string {
	if e.Subject == "" {
		return fmt.Sprintf("peer certificate rejected (%s): %v", e.Reason, e.Err)
	}
	return fmt.Sprintf("peer certificate rejected (%s): %s: %v", e.Reason, e.Subject, e.Err)
}

func (e *VerifyError) Unwrap() error { return e.Err }

// Authorize is called with the verified peer identity; return an error to
// refuse the peer (it is wrapped in a [VerifyError] with
// [ReasonIdentityNotAllowed]). A nil Authorize accepts every identity in
// the trust domain.
type Authorize func(Identity) error

// ServerConfig returns a new TLS 1.3 server configuration that serves the
// current leaf and requires a client certificate. VerifyConnection checks
// the client's chain against the current CA pool for clientAuth, its
// validity window, that its identity is in this instance's trust domain, and
// then calls authorize. The caller may set fields such as NextProtos on the
// returned config before first use.
func (r *Reloader) ServerConfig(authorize Authorize) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ClientAuth: tls.RequireAnyClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return r.current().cert, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			return r.verifyPeer(cs.PeerCertificates, x509.ExtKeyUsageClientAuth, "", authorize)
		},
	}
}

// ClientConfig returns a new TLS 1.3 client configuration that presents the
// current leaf. The standard verification is turned off (InsecureSkipVerify)
// because VerifyConnection does all of it against the current CA pool: the
// chain for serverAuth, the validity window, serverName against the DNS and
// IP SANs (skipped if serverName is empty), the identity's trust domain and
// then authorize on the server's identity.
func (r *Reloader) ClientConfig(serverName string, authorize Authorize) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		ServerName:         serverName,
		InsecureSkipVerify: true, // verified in VerifyConnection with the reloaded pool
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return r.current().cert, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			return r.verifyPeer(cs.PeerCertificates, x509.ExtKeyUsageServerAuth, serverName, authorize)
		},
	}
}

// verifyPeer runs every check on the peer's certificates, in order: present,
// chain and validity, host name, identity, authorization.
func (r *Reloader) verifyPeer(certs []*x509.Certificate, usage x509.ExtKeyUsage, host string, authorize Authorize) error {
	if len(certs) == 0 {
		return &VerifyError{Reason: ReasonNoCertificate, Err: errors.New("peer sent no certificate")}
	}
	leaf, m := certs[0], r.current()
	reason, err := verifyChain(certs, m.pool, usage, time.Now())
	if err == nil && host != "" {
		if err = leaf.VerifyHostname(host); err != nil {
			reason = ReasonHostnameMismatch
		}
	}
	if err == nil {
		reason, err = checkIdentity(leaf, m.id.TrustDomain, authorize)
	}
	if err != nil {
		return &VerifyError{Reason: reason, Subject: leaf.Subject.String(), Err: err}
	}
	return nil
}

// verifyChain verifies certs[0] against roots, with certs[1:] as
// intermediates, and names the reason if it fails. A certificate from a
// foreign CA is reported as unknown-ca even if it is also out of date.
func verifyChain(certs []*x509.Certificate, roots *x509.CertPool, usage x509.ExtKeyUsage, now time.Time) (RejectReason, error) {
	leaf := certs[0]
	opts := verifyOptions(roots, certs[1:], usage, now)
	_, err := leaf.Verify(opts)
	if err == nil {
		return "", nil
	}
	if reason, terr := checkValidity(leaf, now); terr != nil {
		opts.CurrentTime = leaf.NotBefore
		if _, err := leaf.Verify(opts); classify(err) == ReasonUnknownCA {
			return ReasonUnknownCA, err
		}
		return reason, terr
	}
	return classify(err), err
}

func verifyOptions(roots *x509.CertPool, chain []*x509.Certificate, usage x509.ExtKeyUsage, now time.Time) x509.VerifyOptions {
	opts := x509.VerifyOptions{
		Roots:         roots,
		Intermediates: x509.NewCertPool(),
		KeyUsages:     []x509.ExtKeyUsage{usage},
		CurrentTime:   now,
	}
	for _, c := range chain {
		opts.Intermediates.AddCert(c)
	}
	return opts
}

// classify maps an x509 verification error to a reason.
func classify(err error) RejectReason {
	var unknown x509.UnknownAuthorityError
	var invalid x509.CertificateInvalidError
	switch {
	case err == nil:
		return ""
	case errors.As(err, &unknown):
		return ReasonUnknownCA
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return ReasonExpired // an intermediate or the root is out of date
	case errors.As(err, &invalid) && invalid.Reason == x509.IncompatibleUsage:
		return ReasonBadKeyUsage
	}
	return ReasonInvalid
}

// checkValidity reports whether c is outside its validity window at now.
func checkValidity(c *x509.Certificate, now time.Time) (RejectReason, error) {
	switch {
	case now.Before(c.NotBefore):
		return ReasonNotYetValid, fmt.Errorf("certificate is not valid before %s (now %s)", utc(c.NotBefore), utc(now))
	case now.After(c.NotAfter):
		return ReasonExpired, fmt.Errorf("certificate expired at %s (now %s)", utc(c.NotAfter), utc(now))
	}
	return "", nil
}

func utc(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// checkIdentity extracts the identity of leaf, checks its trust domain and
// asks authorize.
func checkIdentity(leaf *x509.Certificate, trustDomain string, authorize Authorize) (RejectReason, error) {
	id, err := IdentityFromCert(leaf)
	if err != nil {
		return ReasonBadIdentity, err
	}
	if id.TrustDomain != trustDomain {
		return ReasonBadIdentity, fmt.Errorf("identity %s is not in trust domain %q", id, trustDomain)
	}
	if authorize != nil {
		if err := authorize(id); err != nil {
			return ReasonIdentityNotAllowed, fmt.Errorf("identity %s: %w", id, err)
		}
	}
	return "", nil
}
