package config

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

func TestMatchPattern(t *testing.T) {
	for _, tc := range []struct {
		pattern, name string
		want          bool
	}{
		{"*", "", true},
		{"*", "anything.at_all-1", true},
		{"", "", true},
		{"", "a", false},
		{"trades", "trades", true},
		{"trades", "Trades", false}, // case-sensitive
		{"trades", "trades-eu", false},
		{"trades-*", "trades-", true},
		{"trades-*", "trades-eu", true},
		{"trades-*", "trades", false},
		{"trades*", "trades", true},
		{"trades*", "tradesman", true},
		{"*.ref", "fx.ref", true},
		{"*.ref", ".ref", true},
		{"*.ref", "fx.ref.old", false},
		{"a*b*c", "abc", true},
		{"a*b*c", "a-b-b-c", true},
		{"a*b*c", "a-c-b", false},
		{"a*b*c", "abcc", true},
		{"*a*", "bab", true},
		{"*a*", "bbb", false},
		{"**", "x", true},
		{"a**b", "ab", true},
		{"*x*y*", "aaxbbycc", true},
		{"*x*y*", "aaybbxcc", false},
		{"t?", "t?", true}, // no '?' wildcard: it matches only itself
		{"t?", "tx", false},
	} {
		if got := MatchPattern(tc.pattern, tc.name); got != tc.want {
			t.Errorf("MatchPattern(%q, %q) = %v, want %v", tc.pattern, tc.name, got, tc.want)
		}
	}
}

func TestSchemeFor(t *testing.T) {
	s := Store{
		Schemes: []Scheme{
			{Name: "default"},
			{Name: "trades", BackupCount: new(2), Federation: "active-active"},
			{Name: "eu", BackupCount: new(0)},
		},
		Caches: []CacheMapping{
			{Pattern: "trades-eu-*", Scheme: "eu"},
			{Pattern: "trades*", Scheme: "trades"},
			{Pattern: "tmp-*", Scheme: "missing"}, // not validated here
			{Pattern: "*.x", Scheme: "default"},
		},
	}
	for _, tc := range []struct {
		cache   string
		scheme  string // "" for no match
		backups int
	}{
		{"trades-eu-1", "eu", 0}, // first match wins, though trades* matches too
		{"trades-us", "trades", 2},
		{"trades", "trades", 2},
		{"a.x", "default", 1}, // BackupCount nil: the default
		{"trades.x", "trades", 2},
		{"tmp-1", "", 0}, // maps to an unknown scheme
		{"other", "", 0}, // matches no pattern
	} {
		sc, ok := s.SchemeFor(tc.cache)
		if ok != (tc.scheme != "") || sc.Name != tc.scheme || ok && sc.Backups() != tc.backups {
			t.Errorf("SchemeFor(%q) = %q (backups %d), %v; want %q (backups %d)",
				tc.cache, sc.Name, sc.Backups(), ok, tc.scheme, tc.backups)
		}
	}
	if sc, ok := s.Scheme("trades"); !ok || sc.Federation != "active-active" {
		t.Errorf("Scheme(trades) = %+v, %v", sc, ok)
	}
	if _, ok := s.Scheme("nope"); ok {
		t.Error("Scheme(nope) found")
	}
}

func TestStoreSetDefaults(t *testing.T) {
	c := &Config{
		Instance: "a", Site: "b", TLS: TLS{Insecure: true},
		Tunnel: Tunnel{Listen: ":8443"}, Peers: []Peer{{Site: "c"}},
		Store: Store{Schemes: []Scheme{{Name: "trades", BackupCount: new(0)}, {Name: "other"}}},
	}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	s := c.Store
	if s.Partitions != DefaultPartitions || s.MaxValueSize != DefaultMaxValueSize ||
		s.RequestTimeout.D() != DefaultRequestTimeout || s.JournalRetain != DefaultJournalRetain {
		t.Errorf("store defaults not applied: %+v", s)
	}
	if *s.Schemes[0].BackupCount != 0 || *s.Schemes[1].BackupCount != DefaultBackupCount {
		t.Errorf("backup counts %d, %d; want 0 (explicit) and %d", *s.Schemes[0].BackupCount, *s.Schemes[1].BackupCount, DefaultBackupCount)
	}
	if want := []CacheMapping{{Pattern: "*", Scheme: "trades"}}; !reflect.DeepEqual(s.Caches, want) {
		t.Errorf("caches = %+v, want %+v", s.Caches, want)
	}

	c.Store.Caches = append(c.Store.Caches, CacheMapping{Pattern: "t*", Scheme: "tardes"})
	var errs Errors
	if err := c.Validate(); !errors.As(err, &errs) || len(errs) != 2 ||
		errs[0].Path != "store.caches[1].pattern" || !strings.Contains(errs[0].Msg, "never used") ||
		errs[1].Path != "store.caches[1].scheme" || !strings.Contains(errs[1].Msg, `did you mean "trades"`) {
		t.Errorf("Validate = %v", err)
	}
}

func TestStoreClone(t *testing.T) {
	var src string
	for _, tc := range validConfigs {
		if tc.name == "store-schemes-only" {
			src = tc.yaml
		}
	}
	c, err := Parse(testFile, []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	d := c.Clone()
	if !reflect.DeepEqual(c, d) {
		t.Fatalf("Clone differs:\n%+v\n%+v", c, d)
	}
	*d.Store.Schemes[0].BackupCount = 5
	d.Store.Schemes[1].Name = "changed"
	d.Store.Caches[0].Pattern = "changed"
	if c.Store.Schemes[0].Backups() == 5 || c.Store.Schemes[1].Name == "changed" || c.Store.Caches[0].Pattern == "changed" {
		t.Error("Clone shares store data with the original")
	}
}

func TestParseByteSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want ByteSize
		err  string // substring of the error; "" for success
	}{
		{"0", 0, ""},
		{"1048576", 1 << 20, ""},
		{"1_048_576", 1 << 20, ""},
		{"512B", 512, ""},
		{"1KiB", 1 << 10, ""},
		{"64KiB", 64 << 10, ""},
		{"1MiB", 1 << 20, ""},
		{"1536KiB", 1536 << 10, ""},
		{"2GiB", 2 << 30, ""},
		{"8589934591GiB", 8589934591 << 30, ""},
		{"8589934592GiB", 0, "out of range"},
		{"99999999999999999999", 0, "out of range"},
		{"-1", 0, "must not be negative"},
		{"-1MiB", 0, "must not be negative"},
		{"1MB", 0, "use KiB, MiB or GiB"},
		{"1KB", 0, "use KiB, MiB or GiB"},
		{"1kB", 0, "use KiB, MiB or GiB"},
		{"1G", 0, "use KiB, MiB or GiB"},
		{"1mib", 0, "units are written B, KiB, MiB, GiB"},
		{"1 MiB", 0, "invalid byte size"},
		{"1.5MiB", 0, "invalid byte size"},
		{"0x100", 0, "invalid byte size"},
		{"MiB", 0, "invalid byte size"},
		{"_1", 0, "invalid byte size"},
		{"", 0, "invalid byte size"},
		{"1TiB", 0, "invalid byte size"},
	} {
		got, err := parseByteSize(tc.in)
		switch {
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("parseByteSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("parseByteSize(%q) = %d, %v; want an error containing %q", tc.in, got, err, tc.err)
		}
	}
}

func TestByteSizeMarshal(t *testing.T) {
	for _, tc := range []struct {
		b          ByteSize
		str, yaml_ string
	}{
		{0, "0", "0"},
		{1000, "1000", "1000"},
		{1536, "1536", "1536"},
		{1 << 10, "1KiB", "1KiB"},
		{1536 << 10, "1536KiB", "1536KiB"},
		{1 << 20, "1MiB", "1MiB"},
		{64 << 20, "64MiB", "64MiB"},
		{3 << 30, "3GiB", "3GiB"},
	} {
		if got := tc.b.String(); got != tc.str {
			t.Errorf("ByteSize(%d).String() = %q, want %q", tc.b, got, tc.str)
		}
		v := struct {
			S ByteSize `yaml:"s"`
		}{tc.b}
		out, err := yaml.Marshal(v)
		if err != nil || string(out) != "s: "+tc.yaml_+"\n" {
			t.Errorf("yaml.Marshal(%d) = %q, %v; want %q", tc.b, out, err, "s: "+tc.yaml_)
		}
		v.S = -1
		if err := yaml.Unmarshal(out, &v); err != nil || v.S != tc.b {
			t.Errorf("yaml.Unmarshal(%q) = %d, %v", out, v.S, err)
		}
		j, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		v.S = -1
		if err := json.Unmarshal(j, &v); err != nil || v.S != tc.b {
			t.Errorf("json round trip of %d via %s = %d, %v", tc.b, j, v.S, err)
		}
	}
	var v struct {
		S ByteSize `yaml:"s"`
	}
	for _, bad := range []string{"s: 1MB", "s: [1]", "s: -5"} {
		if err := yaml.Unmarshal([]byte(bad), &v); err == nil {
			t.Errorf("yaml.Unmarshal(%q) succeeded", bad)
		}
	}
}
