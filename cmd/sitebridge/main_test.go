package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sitebridge/sitebridge/config"
	"github.com/sitebridge/sitebridge/gateway"
)

func runCmd(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var o, e bytes.Buffer
	err = run(context.Background(), args, &o, &e)
	return o.String(), e.String(), err
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		nil,
		{"frobnicate"},
		{"run"},
		{"run", "--no-such-flag"},
		{"tlsgen", "--out", t.TempDir()},
		{"tlsgen", "--instance", "cloud/cloud1"},
		{"tlsgen", "--out", t.TempDir(), "--instance", "no-slash"},
	} {
		_, _, err := runCmd(t, args...)
		if !errors.Is(err, errUsage) || exitCode(err) != 2 {
			t.Errorf("%q: err %v (exit %d), want a usage error (exit 2)", args, err, exitCode(err))
		}
	}
}

func TestTLSGenThenCheckConfig(t *testing.T) {
	dir := t.TempDir()
	out, _, err := runCmd(t, "tlsgen", "--out", dir, "--instance", "cloud/cloud1=cloud1.example.com,127.0.0.1", "--instance", "acme:onprem/onprem1")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"created", "spiffe://sitebridge.local/site/cloud/instance/cloud1", "spiffe://sitebridge.local/tenant/acme/site/onprem/instance/onprem1"} {
		if !strings.Contains(out, want) {
			t.Errorf("tlsgen output lacks %q:\n%s", want, out)
		}
	}
	for _, f := range []string{"ca.key", "cloud1.key", "onprem1.key", "gossip.key"} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, mode %v; want 0600", f, err, fi.Mode().Perm())
		}
	}
	ca, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	out, _, err = runCmd(t, "tlsgen", "--out", dir, "--instance", "cloud/cloud1")
	if again, _ := os.ReadFile(filepath.Join(dir, "ca.crt")); err != nil || !bytes.Equal(ca, again) || !strings.Contains(out, "kept") {
		t.Fatalf("re-run replaced the CA (err %v):\n%s", err, out)
	}
	if _, _, err := runCmd(t, "tlsgen", "--out", dir, "--force", "--instance", "cloud/cloud1"); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.ReadFile(filepath.Join(dir, "ca.crt")); bytes.Equal(ca, again) {
		t.Fatal("--force kept the CA")
	}

	good := filepath.Join(dir, "cloud1.yaml")
	os.WriteFile(good, []byte(`instance: cloud1
site: cloud
tls: {ca: ca.crt, cert: cloud1.crt, key: cloud1.key}
tunnel: {listen: "127.0.0.1:8441"}
peers: [{site: onprem}]
services: [{name: server-a, accept: "127.0.0.1:5551"}]
`), 0o644)
	stdout, stderr, err := runCmd(t, "run", "--config", good, "--check", "-v")
	if err != nil || !strings.Contains(stderr, "config is valid") || !strings.Contains(stdout, "path: /sitebridge") {
		t.Fatalf("check of a good config: %v\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr)
	}

	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte(`instance: cloud1
site: cloud
tunnle: {listen: "127.0.0.1:8441"}
peers: [{site: onprem}]
services: [{name: server-a, accept: "127.0.0.1:99999"}]
`), 0o644)
	_, _, err = runCmd(t, "run", "--config", bad, "--check")
	var cerrs config.Errors
	if !errors.As(err, &cerrs) || exitCode(err) != 1 {
		t.Fatalf("check of a bad config: %v", err)
	}
	for _, want := range []string{bad + ":3:", bad + ":5:"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("errors do not point at %s:\n%v", want, err)
		}
	}
}

func TestVersion(t *testing.T) {
	out, _, err := runCmd(t, "version")
	if err != nil || !strings.HasPrefix(out, "sitebridge ") {
		t.Fatalf("version: %q %v", out, err)
	}
}

func TestStatusCommand(t *testing.T) {
	st := gateway.Status{Instance: "cloud1", Site: "cloud", State: "running", Epoch: 7, Services: []string{"server-b"},
		Tunnels: []gateway.TunnelStatus{{Peer: "onprem1", Site: "onprem", Services: []string{"server-a"}, Addr: "127.0.0.1:1"}},
		Members: []gateway.MemberStatus{{Name: "cloud2", Addr: "127.0.0.1:7302", Reach: []string{"server-a"}}}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/status" || r.Header.Get("Authorization") != "Bearer s3cret" {
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		json.NewEncoder(w).Encode(st)
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	out, _, err := runCmd(t, "status", "--admin", addr, "--token", "s3cret")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"instance cloud1  site cloud  state running", "onprem1", "server-a", "MEMBERS (1)", "cloud2"} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
	out, _, err = runCmd(t, "status", "--admin", addr, "--token", "s3cret", "-o", "json")
	var back gateway.Status
	if err != nil || json.Unmarshal([]byte(out), &back) != nil || back.Instance != "cloud1" {
		t.Fatalf("-o json: %v\n%s", err, out)
	}
	if _, _, err := runCmd(t, "status", "--admin", addr); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("without the token: %v, want a 401 error", err)
	}
}
