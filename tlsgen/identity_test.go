package tlsgen

import (
	"crypto/x509"
	"net/url"
	"strings"
	"testing"
)

var identityRoundTrips = []struct {
	s  string
	id Identity
}{
	{"spiffe://sitebridge.local/site/cloud/instance/cloud1", Identity{"sitebridge.local", "", "cloud", "cloud1"}},
	{"spiffe://example.org/tenant/acme/site/onprem/instance/onprem-2", Identity{"example.org", "acme", "onprem", "onprem-2"}},
	{"spiffe://td/site/0/instance/a-b-c", Identity{"td", "", "0", "a-b-c"}},
	{"spiffe://a.b.c/site/" + strings.Repeat("x", 63) + "/instance/i", Identity{"a.b.c", "", strings.Repeat("x", 63), "i"}},
}

var identityRejects = []string{
	"",
	"cloud1",
	"http://td/site/a/instance/b",
	"SPIFFE://td/site/a/instance/b",
	"spiffe:td/site/a/instance/b",
	"spiffe://",
	"spiffe:///site/a/instance/b",
	"spiffe://TD/site/a/instance/b",
	"spiffe://td_x/site/a/instance/b",
	"spiffe://td./site/a/instance/b",
	"spiffe://user@td/site/a/instance/b",
	"spiffe://td:443/site/a/instance/b",
	"spiffe://td/site/a/instance/b?x=1",
	"spiffe://td/site/a/instance/b?",
	"spiffe://td/site/a/instance/b#f",
	"spiffe://td/site/a/instance/b#",
	"spiffe://td/site/a",
	"spiffe://td/site/a/instance",
	"spiffe://td/site/a/instance/",
	"spiffe://td/site/a/instance/b/",
	"spiffe://td/site/a/instance/b/extra",
	"spiffe://td//site/a/instance/b",
	"spiffe://td/instance/b/site/a",
	"spiffe://td/tenant/t/site/a",
	"spiffe://td/tenant//site/a/instance/b",
	"spiffe://td/tenant/t/site/a/instance/b/x",
	"spiffe://td/team/t/site/a/instance/b",
	"spiffe://td/site/A/instance/b",
	"spiffe://td/site/-a/instance/b",
	"spiffe://td/site/a-/instance/b",
	"spiffe://td/site/a_b/instance/b",
	"spiffe://td/site/a%2Db/instance/b",
	"spiffe://td/site/" + strings.Repeat("x", 64) + "/instance/b",
	" spiffe://td/site/a/instance/b",
}

func TestParseIdentityRoundTrip(t *testing.T) {
	for _, tc := range identityRoundTrips {
		t.Run(tc.s, func(t *testing.T) {
			id, err := ParseIdentity(tc.s)
			if err != nil {
				t.Fatal(err)
			}
			if id != tc.id {
				t.Errorf("ParseIdentity = %+v, want %+v", id, tc.id)
			}
			if got := tc.id.String(); got != tc.s {
				t.Errorf("String() = %q, want %q", got, tc.s)
			}
		})
	}
}

func TestParseIdentityRejects(t *testing.T) {
	for _, s := range identityRejects {
		t.Run(s, func(t *testing.T) {
			if id, err := ParseIdentity(s); err == nil {
				t.Errorf("ParseIdentity(%q) = %+v, want error", s, id)
			}
		})
	}
}

func FuzzParseIdentity(f *testing.F) {
	for _, tc := range identityRoundTrips {
		f.Add(tc.s)
	}
	for _, s := range identityRejects {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseIdentity(s)
		if err != nil {
			return
		}
		if id.String() != s {
			t.Fatalf("ParseIdentity(%q) accepted a non-canonical form of %q", s, id.String())
		}
		again, err := ParseIdentity(id.String())
		if err != nil || again != id {
			t.Fatalf("re-parse of %q = %+v, %v; want %+v", id.String(), again, err, id)
		}
	})
}

func TestValidName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"a", true},
		{"cloud1", true},
		{"on-prem-2", true},
		{"0", true},
		{strings.Repeat("a", 63), true},
		{"", false},
		{strings.Repeat("a", 64), false},
		{"-a", false},
		{"a-", false},
		{"A", false},
		{"a_b", false},
		{"a.b", false},
		{"a b", false},
		{"é", false},
	}
	for _, tc := range tests {
		if err := ValidName(tc.name); (err == nil) != tc.ok {
			t.Errorf("ValidName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

func TestIdentityFromCert(t *testing.T) {
	good := "spiffe://td/site/s/instance/i"
	tests := []struct {
		name string
		uris []string
		ok   bool
	}{
		{"one", []string{good}, true},
		{"other schemes ignored", []string{"https://example.org/x", good}, true},
		{"none", nil, false},
		{"only https", []string{"https://example.org/x"}, false},
		{"two", []string{good, "spiffe://td/site/s/instance/j"}, false},
		{"malformed", []string{"spiffe://td/site/s"}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := &x509.Certificate{}
			for _, s := range tc.uris {
				u, err := url.Parse(s)
				if err != nil {
					t.Fatal(err)
				}
				c.URIs = append(c.URIs, u)
			}
			id, err := IdentityFromCert(c)
			if (err == nil) != tc.ok {
				t.Fatalf("IdentityFromCert = %+v, %v; want ok=%v", id, err, tc.ok)
			}
			if tc.ok && id.String() != good {
				t.Errorf("identity = %s, want %s", id, good)
			}
		})
	}
}
