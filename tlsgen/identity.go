package tlsgen

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// identityScheme is the URI scheme of instance identities.
const identityScheme = "spiffe"

// Identity is the URI SAN identity of an instance. Tenant is optional; the
// other fields are required.
type Identity struct{ TrustDomain, Tenant, Site, Instance string }

// URI returns the identity as a URL:
// spiffe://<td>/site/<site>/instance/<instance>, or with a tenant
// spiffe://<td>/tenant/<tenant>/site/<site>/instance/<instance>.
// It does not validate the fields; see [ParseIdentity].
func (id Identity) URI() *url.URL {
	path := "/site/" + id.Site + "/instance/" + id.Instance
	if id.Tenant != "" {
		path = "/tenant/" + id.Tenant + path
	}
	return &url.URL{Scheme: identityScheme, Host: id.TrustDomain, Path: path}
}

// String returns the URI string of the identity.
func (id Identity) String() string { return id.URI().String() }

// Validate reports whether every field of id is well formed.
func (id Identity) Validate() error {
	if err := ValidTrustDomain(id.TrustDomain); err != nil {
		return err
	}
	if id.Tenant != "" {
		if err := ValidName(id.Tenant); err != nil {
			return fmt.Errorf("tenant: %w", err)
		}
	}
	if err := ValidName(id.Site); err != nil {
		return fmt.Errorf("site: %w", err)
	}
	if err := ValidName(id.Instance); err != nil {
		return fmt.Errorf("instance: %w", err)
	}
	return nil
}

// ParseIdentity parses an identity URI. It is strict: the input must be
// exactly the canonical form that [Identity.String] produces, with no
// userinfo, port, query, fragment, escapes or extra path segments.
func ParseIdentity(s string) (Identity, error) {
	id, err := parseIdentity(s)
	if err != nil {
		return Identity{}, fmt.Errorf("invalid identity %q: %w", s, err)
	}
	return id, nil
}

func parseIdentity(s string) (Identity, error) {
	u, err := url.Parse(s)
	if err != nil {
		return Identity{}, err
	}
	if u.Scheme != identityScheme || u.Opaque != "" {
		return Identity{}, errors.New("want a spiffe:// URI")
	}
	if u.User != nil || u.Port() != "" || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
		return Identity{}, errors.New("userinfo, port, query and fragment are not allowed")
	}
	id, err := identityFromPath(u.Host, u.Path)
	if err != nil {
		return Identity{}, err
	}
	if err := id.Validate(); err != nil {
		return Identity{}, err
	}
	if id.String() != s {
		return Identity{}, errors.New("not in canonical form")
	}
	return id, nil
}

// identityFromPath splits /[tenant/T/]site/S/instance/I into an Identity.
func identityFromPath(td, path string) (Identity, error) {
	seg := strings.Split(path, "/")
	id := Identity{TrustDomain: td}
	if len(seg) == 7 && seg[1] == "tenant" {
		id.Tenant = seg[2]
		seg = append(seg[:1], seg[3:]...)
	}
	if len(seg) != 5 || seg[0] != "" || seg[1] != "site" || seg[3] != "instance" {
		return Identity{}, errors.New("path must be [/tenant/<tenant>]/site/<site>/instance/<instance>")
	}
	id.Site, id.Instance = seg[2], seg[4]
	return id, nil
}

// IdentityFromCert returns the identity in c's URI SANs. The certificate
// must carry exactly one spiffe:// URI SAN; other URI schemes are ignored.
func IdentityFromCert(c *x509.Certificate) (Identity, error) {
	var found []*url.URL
	for _, u := range c.URIs {
		if u.Scheme == identityScheme {
			found = append(found, u)
		}
	}
	if len(found) != 1 {
		return Identity{}, fmt.Errorf("certificate %q has %d spiffe URI SANs, want exactly 1", c.Subject.CommonName, len(found))
	}
	return ParseIdentity(found[0].String())
}

// ValidName reports whether s can name a site, instance or tenant: 1 to 63
// characters of a-z, 0-9 and '-', not starting or ending with '-'.
func ValidName(s string) error {
	switch {
	case s == "":
		return errors.New("name is empty")
	case len(s) > 63:
		return fmt.Errorf("name %q is longer than 63 characters", s)
	case s[0] == '-' || s[len(s)-1] == '-':
		return fmt.Errorf("name %q starts or ends with '-'", s)
	}
	for _, c := range []byte(s) {
		if !isNameByte(c) {
			return fmt.Errorf("name %q has %q; only a-z, 0-9 and '-' are allowed", s, c)
		}
	}
	return nil
}

// ValidTrustDomain reports whether s is a trust domain: at most 253
// characters of dot-separated labels, each a valid name (see [ValidName]).
func ValidTrustDomain(s string) error {
	if s == "" || len(s) > 253 {
		return fmt.Errorf("trust domain %q must be 1 to 253 characters", s)
	}
	for label := range strings.SplitSeq(s, ".") {
		if err := ValidName(label); err != nil {
			return fmt.Errorf("trust domain %q: %w", s, err)
		}
	}
	return nil
}

func isNameByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-'
}
