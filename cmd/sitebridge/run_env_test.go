package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sitebridge/sitebridge/config"
)

// TestRunCheckExpandEnv checks 'run --check --expand-env': one config file
// shared by two instances (as the pods of a StatefulSet share a
// ConfigMap), each filling in its own name from the environment, and the
// certificate check done against the expanded names.
func TestRunCheckExpandEnv(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := runCmd(t, "tlsgen", "--out", dir, "--instance", "cloud/sb-0", "--instance", "cloud/sb-1"); err != nil {
		t.Fatal(err)
	}
	shared := filepath.Join(dir, "shared.yaml")
	os.WriteFile(shared, []byte(`# one file for every pod: ${POD_NAME} and ${POD_IP} come from the environment
instance: ${POD_NAME}
site: cloud
tls: {ca: ca.crt, cert: "${POD_NAME}.crt", key: "${POD_NAME}.key"}
tunnel:
  listen: "127.0.0.1:8441"
  advertise: wss://${POD_NAME}.example.com:8441/sitebridge
peers: [{site: onprem}]
admin: {listen: "${ADMIN_LISTEN:-127.0.0.1:9100}"}
cluster:
  name: sb
  bind: 127.0.0.1:7946
  advertise: ${POD_IP}:7946
  gossip-key: gossip.key
`), 0o644)

	for _, pod := range []string{"sb-0", "sb-1"} {
		t.Setenv("POD_NAME", pod)
		t.Setenv("POD_IP", "10.0.0.7")
		stdout, stderr, err := runCmd(t, "run", "--config", shared, "--expand-env", "--check", "-v")
		if err != nil || !strings.Contains(stderr, "config is valid") {
			t.Fatalf("%s: check: %v\nstderr:\n%s", pod, err, stderr)
		}
		for _, want := range []string{"instance: " + pod, "advertise: 10.0.0.7:7946", "wss://" + pod + ".example.com:8441/sitebridge", "listen: 127.0.0.1:9100"} {
			if !strings.Contains(stdout, want) {
				t.Errorf("%s: effective config lacks %q:\n%s", pod, want, stdout)
			}
		}
	}

	// A pod name with no certificate fails the TLS check, naming both.
	t.Setenv("POD_NAME", "sb-2")
	_, _, err := runCmd(t, "run", "--config", shared, "--expand-env", "--check")
	if err == nil || !strings.Contains(err.Error(), "sb-2.crt") {
		t.Errorf("check for a pod without a certificate: %v", err)
	}

	// The same certificate under another instance's name is refused.
	t.Setenv("POD_NAME", "sb-0")
	os.WriteFile(filepath.Join(dir, "wrong.yaml"), []byte("instance: sb-1\nsite: cloud\ntls: {ca: ca.crt, cert: \"${POD_NAME}.crt\", key: \"${POD_NAME}.key\"}\ntunnel: {listen: \"127.0.0.1:8441\"}\npeers: [{site: onprem}]\n"), 0o644)
	_, _, err = runCmd(t, "run", "--config", filepath.Join(dir, "wrong.yaml"), "--expand-env", "--check")
	if err == nil || !strings.Contains(err.Error(), "does not match this instance") {
		t.Errorf("check of a certificate for another instance: %v", err)
	}

	// Unset: a config error with file and line, exit status 1.
	os.Unsetenv("POD_NAME")
	_, _, err = runCmd(t, "run", "--config", shared, "--expand-env", "--check")
	var cerrs config.Errors
	if !errors.As(err, &cerrs) || exitCode(err) != 1 || !strings.Contains(err.Error(), shared+":2:11: ${POD_NAME}: environment variable POD_NAME is not set") {
		t.Errorf("check with POD_NAME unset: %v (exit %d)", err, exitCode(err))
	}

	// Without the flag the references are taken literally, and refused.
	t.Setenv("POD_NAME", "sb-0")
	_, _, err = runCmd(t, "run", "--config", shared, "--check")
	if !errors.As(err, &cerrs) || !strings.Contains(err.Error(), shared+":2:") {
		t.Errorf("check without --expand-env: %v", err)
	}
}
