package tlsgen

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"go.step.sm/crypto/pemutil"
)

// API paths of a smallstep CA (step-ca).
const (
	stepSignPath  = "/1.0/sign"
	stepRenewPath = "/1.0/renew"
)

const (
	caRequestTimeout = 30 * time.Second // one request to the CA, TLS included
	maxCAResponse    = 1 << 20          // bytes of a CA answer read at most
)

// CAClient talks to the HTTPS API of a smallstep CA (step-ca): it has a
// certificate request signed with a one-time token (POST /1.0/sign) and a
// certificate renewed by presenting it (POST /1.0/renew over mutual TLS).
// The CA's own server certificate must chain to the roots the client was
// made with. Every request uses a new connection, which it closes.
type CAClient struct {
	base  *url.URL
	roots *x509.CertPool
}

// NewCAClient returns a client of the step-ca at caURL (https://host[:port],
// optionally with a path prefix; see [ParseCAURL]) that trusts roots for the
// CA's TLS.
func NewCAClient(caURL string, roots *x509.CertPool) (*CAClient, error) {
	u, err := ParseCAURL(caURL)
	if err != nil {
		return nil, err
	}
	if roots == nil {
		return nil, errors.New("CA client: no root certificates to verify the CA with")
	}
	return &CAClient{base: u, roots: roots}, nil
}

// ParseCAURL parses the URL of a step-ca: https, with a host, without user
// information, query or fragment. A trailing "/" is dropped.
func ParseCAURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return nil, fmt.Errorf("invalid CA URL %q: %w", s, err)
	case u.Scheme != "https":
		return nil, fmt.Errorf("invalid CA URL %q: the scheme must be https", s)
	case u.Opaque != "" || u.Hostname() == "":
		return nil, fmt.Errorf("invalid CA URL %q: a host is required", s)
	case u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return nil, fmt.Errorf("invalid CA URL %q: user information, query and fragment are not allowed", s)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.RawPath = ""
	return u, nil
}

// SignURL is the URL of the CA's sign endpoint, which a one-time token for
// this CA names as its audience.
func (c *CAClient) SignURL() string { return c.base.JoinPath(stepSignPath).String() }

// CAError is an error answer of the CA. Message is the CA's own message;
// step-ca answers a refused one-time token with 401 and a generic message,
// and logs the precise reason itself.
type CAError struct {
	Op      string // "sign" or "renew"
	Status  int    // HTTP status code
	Message string
}

func (e *CAError) Error() string {
	return fmt.Sprintf("CA %s: %d %s: %s", e.Op, e.Status, http.StatusText(e.Status), e.Message)
}

// signResponse is the answer of /1.0/sign and /1.0/renew: PEM strings.
type signResponse struct {
	Crt       string   `json:"crt"`
	CA        string   `json:"ca"`
	CertChain []string `json:"certChain"`
}

// Sign sends csr with the one-time token ott and returns the issued chain,
// leaf first, as the CA sent it (the root is not part of it). The chain is
// not verified here.
func (c *CAClient) Sign(ctx context.Context, csr *x509.CertificateRequest, ott string) ([]*x509.Certificate, error) {
	body := map[string]string{
		"csr": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr.Raw})),
		"ott": ott,
	}
	return c.post(ctx, "sign", stepSignPath, body, nil)
}

// Renew asks for a new certificate for cert's leaf: same subject, SANs,
// public key and lifetime, valid from now. The request is authenticated by
// cert itself (mutual TLS), so the leaf must still be valid. It returns the
// new chain, leaf first, not yet verified.
func (c *CAClient) Renew(ctx context.Context, cert *tls.Certificate) ([]*x509.Certificate, error) {
	return c.post(ctx, "renew", stepRenewPath, nil, cert)
}

func (c *CAClient) post(ctx context.Context, op, path string, body any, client *tls.Certificate) ([]*x509.Certificate, error) {
	var rd io.Reader = http.NoBody
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("CA %s: %w", op, err)
		}
		rd = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(ctx, caRequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base.JoinPath(path).String(), rd)
	if err != nil {
		return nil, fmt.Errorf("CA %s: %w", op, err)
	}
	req.Header.Set("Content-Type", "application/json")
	tc := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: c.roots}
	if client != nil {
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return client, nil }
	}
	tr := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		TLSClientConfig:     tc,
		TLSHandshakeTimeout: caRequestTimeout / 3,
		DisableKeepAlives:   true,
	}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("CA %s: %w", op, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxCAResponse))
	if err != nil {
		return nil, fmt.Errorf("CA %s: read answer: %w", op, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, caError(op, resp.StatusCode, data)
	}
	var sr signResponse
	if err := json.Unmarshal(data, &sr); err != nil {
		return nil, fmt.Errorf("CA %s: answer is not a certificate response: %w", op, err)
	}
	chain, err := parseSignResponse(&sr)
	if err != nil {
		return nil, fmt.Errorf("CA %s: %w", op, err)
	}
	return chain, nil
}

// caError makes a CAError from an error answer: step-ca sends
// {"status": N, "message": "..."}; anything else is quoted, shortened.
func caError(op string, status int, data []byte) error {
	var e struct {
		Message string `json:"message"`
	}
	msg := ""
	if json.Unmarshal(data, &e) == nil {
		msg = e.Message
	}
	if msg == "" {
		msg = strings.TrimSpace(string(data))
		if len(msg) > 200 {
			msg = msg[:200] + "..."
		}
		if msg == "" {
			msg = "(empty answer)"
		}
	}
	return &CAError{Op: op, Status: status, Message: msg}
}

// parseSignResponse returns the chain of an answer: certChain, or crt and
// ca for CAs that send no certChain.
func parseSignResponse(sr *signResponse) ([]*x509.Certificate, error) {
	pems := sr.CertChain
	if len(pems) == 0 {
		pems = []string{sr.Crt}
		if sr.CA != "" {
			pems = append(pems, sr.CA)
		}
	}
	var chain []*x509.Certificate
	for i, p := range pems {
		certs, err := pemutil.ParseCertificateBundle([]byte(p))
		if err != nil {
			return nil, fmt.Errorf("certificate %d of the answer: %w", i, err)
		}
		chain = append(chain, certs...)
	}
	if len(chain) == 0 {
		return nil, errors.New("the answer holds no certificate")
	}
	return chain, nil
}

// checkIssued checks a chain issued by a CA for this instance: the leaf
// holds pub and the identity want, is valid at now, and chains to roots
// through the rest of the chain, for both serverAuth and clientAuth (a
// tunnel needs both).
func checkIssued(chain []*x509.Certificate, pub crypto.PublicKey, want Identity, roots *x509.CertPool, now time.Time) error {
	leaf := chain[0]
	if k, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !k.Equal(pub) {
		return errors.New("the issued certificate is not for this key")
	}
	id, err := IdentityFromCert(leaf)
	if err != nil {
		return fmt.Errorf("the issued certificate: %w", err)
	}
	if id != want {
		return fmt.Errorf("the issued certificate is for %s, not %s", id, want)
	}
	if _, err := checkValidity(leaf, now); err != nil {
		return fmt.Errorf("the issued certificate: %w", err)
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Verify(verifyOptions(roots, chain[1:], usage, now)); err != nil {
			return fmt.Errorf("the issued certificate does not verify against the root (tunnels need serverAuth and clientAuth): %w", err)
		}
	}
	return nil
}

// encodeChain returns the certificates as concatenated PEM blocks.
func encodeChain(chain []*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, c := range chain {
		pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return b.Bytes()
}
