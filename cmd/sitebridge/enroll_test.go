package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sitebridge/sitebridge/tlsgen"
)

// Enrolment against a real step-ca is tested in tests/stepca_test.go.

func TestEnrollUsage(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "root.crt")
	for _, args := range [][]string{
		{"enroll"},
		{"enroll", "--root", root, "--out", dir, "--token", "x"},
		{"enroll", "--ca-url", "https://ca:9000", "--out", dir, "--token", "x"},
		{"enroll", "--ca-url", "https://ca:9000", "--root", root, "--token", "x"},
		{"enroll", "--ca-url", "https://ca:9000", "--root", root, "--out", dir},
		{"enroll", "--ca-url", "https://ca:9000", "--root", root, "--out", dir, "--token", "x", "--token-file", root},
	} {
		_, _, err := runCmd(t, args...)
		if !errors.Is(err, errUsage) || exitCode(err) != 2 {
			t.Errorf("%q: err %v (exit %d), want a usage error (exit 2)", args, err, exitCode(err))
		}
	}
}

func TestEnrollRefusesBeforeContactingTheCA(t *testing.T) {
	dir := t.TempDir()
	if _, err := tlsgen.Generate(tlsgen.Spec{Instances: []tlsgen.InstanceSpec{{Name: "x", Site: "s"}}}, dir, false); err != nil {
		t.Fatal(err)
	}
	tokFile := filepath.Join(dir, "token")
	os.WriteFile(tokFile, []byte("not a token\n"), 0o600)
	// Port 1 of a reserved address: any contact with a CA would fail
	// differently.
	_, _, err := runCmd(t, "enroll", "--ca-url", "https://192.0.2.1:1", "--root", filepath.Join(dir, "ca.crt"),
		"--token-file", tokFile, "--out", filepath.Join(dir, "out"))
	if err == nil || !strings.Contains(err.Error(), "not a signed JWT") || exitCode(err) != 1 {
		t.Fatalf("bad token: %v", err)
	}
	_, _, err = runCmd(t, "enroll", "--ca-url", "http://ca.example.com", "--root", filepath.Join(dir, "ca.crt"),
		"--token", "x", "--out", filepath.Join(dir, "out"))
	if err == nil || !strings.Contains(err.Error(), "scheme must be https") {
		t.Fatalf("http CA URL: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "out")); !os.IsNotExist(err) {
		t.Errorf("a refused enrolment created the output directory (%v)", err)
	}
}

func TestConfigSnippet(t *testing.T) {
	id := tlsgen.Identity{TrustDomain: "corp.example.com", Tenant: "acme", Site: "dc1", Instance: "a1"}
	got := configSnippet(id, "/r.crt", "/d/a1.crt", "/d/a1.key", "https://ca:9000")
	want := `instance: a1
site: dc1
tenant: acme
trust-domain: corp.example.com
tls:
  ca: /r.crt
  cert: /d/a1.crt
  key: /d/a1.key
  renew:
    ca-url: https://ca:9000
`
	if got != want {
		t.Errorf("snippet:\n%s\nwant:\n%s", got, want)
	}
}
