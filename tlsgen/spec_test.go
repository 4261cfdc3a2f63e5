package tlsgen

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeSpec(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "spec.yaml")
	if err := os.WriteFile(path, []byte(strings.TrimLeft(text, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoadSpec(t *testing.T) {
	path := writeSpec(t, `
trust-domain: example.org
valid-for: 720h
instances:
  - name: cloud1
    site: cloud
    dns: [cloud1.example.org, "*.cloud.example.org"]
    ips: ["10.0.0.1", "::1"]
  - name: onprem1
    site: onprem
    tenant: acme
`)
	s, err := LoadSpec(path)
	if err != nil {
		t.Fatal(err)
	}
	if s.TrustDomain != "example.org" || s.ValidFor != 720*time.Hour || len(s.Instances) != 2 {
		t.Fatalf("spec = %+v", s)
	}
	in := s.Instances[0]
	if in.Name != "cloud1" || in.Site != "cloud" || len(in.DNS) != 2 || len(in.IPs) != 2 {
		t.Errorf("instances[0] = %+v", in)
	}
	if s.Instances[1].Tenant != "acme" {
		t.Errorf("instances[1] = %+v", s.Instances[1])
	}
}

func TestLoadSpecDefaults(t *testing.T) {
	s, err := LoadSpec(writeSpec(t, "instances:\n  - {name: a, site: s}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s.TrustDomain != DefaultTrustDomain || s.ValidFor != DefaultValidFor {
		t.Errorf("defaults not applied: %+v", s)
	}
}

func TestLoadSpecErrors(t *testing.T) {
	tests := []struct {
		name string
		text string
		want []string // substrings of the error, "spec.yaml:N" gives the line
	}{
		{"unknown top-level key", "instances:\n  - {name: a, site: s}\nextra: 1\n",
			[]string{"spec.yaml:3:", "extra"}},
		{"unknown instance key", "instances:\n  - name: a\n    site: s\n    sans: [x]\n",
			[]string{"spec.yaml:4:", "sans"}},
		{"bad duration", "valid-for: 1y\ninstances:\n  - {name: a, site: s}\n",
			[]string{"spec.yaml:1:"}},
		{"syntax", "instances:\n  - {name: a, site: s}\n\tbad: tab\n",
			[]string{"spec.yaml:3:"}},
		{"invalid name", "instances:\n  - name: a\n    site: s\n  - name: Cloud_1\n    site: s\n",
			[]string{"spec.yaml:4: instances[1].name"}},
		{"invalid site and tenant", "instances:\n  - name: a\n    site: -s\n    tenant: T\n",
			[]string{"spec.yaml:3: instances[0].site", "spec.yaml:4: instances[0].tenant"}},
		{"missing site", "instances:\n  - name: a\n",
			[]string{"spec.yaml:2: instances[0].site"}},
		{"duplicate name", "instances:\n  - {name: a, site: s}\n  - {name: a, site: t}\n",
			[]string{"spec.yaml:3: instances[1].name", "duplicate"}},
		{"reserved name", "instances:\n  - {name: ca, site: s}\n",
			[]string{"instances[0].name", "reserved"}},
		{"bad dns and ip", "instances:\n  - name: a\n    site: s\n    dns: [ok.example, bad_name]\n    ips: [10.0.0.300]\n",
			[]string{"spec.yaml:4: instances[0].dns[1]", "spec.yaml:5: instances[0].ips[0]"}},
		{"bad trust domain", "trust-domain: Example.org\ninstances:\n  - {name: a, site: s}\n",
			[]string{"spec.yaml:1: trust-domain"}},
		{"negative validity", "valid-for: -1h\ninstances:\n  - {name: a, site: s}\n",
			[]string{"spec.yaml:1: valid-for"}},
		{"no instances", "trust-domain: example.org\n",
			[]string{"spec.yaml:1: instances"}},
		{"empty file", "", []string{"instances"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadSpec(writeSpec(t, tc.text))
			if err == nil {
				t.Fatal("LoadSpec succeeded, want error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestLoadSpecMissingFile(t *testing.T) {
	if _, err := LoadSpec(filepath.Join(t.TempDir(), "nope.yaml")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("err = %v, want not-exist", err)
	}
}

func TestValidateReportsAll(t *testing.T) {
	s := Spec{ValidFor: -time.Hour, Instances: []InstanceSpec{{Name: "-x", Site: ""}}}
	err := s.Validate()
	if err == nil {
		t.Fatal("Validate succeeded, want error")
	}
	for _, w := range []string{"valid-for", "instances[0].name", "instances[0].site"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not mention %s", err, w)
		}
	}
	if err := (&Spec{Instances: []InstanceSpec{{Name: "a", Site: "s"}}}).Validate(); err != nil {
		t.Errorf("zero-default spec: %v", err)
	}
}
