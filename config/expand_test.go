package config

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// testEnv is the environment of the expansion tests.
var testEnv = map[string]string{
	"POD_NAME":  "sitebridge-cloud-1",
	"POD_IP":    "10.1.2.3",
	"EMPTY":     "",
	"DOLLAR":    "a$b",
	"BRACES":    "${POD_NAME}", // values are not expanded again
	"MULTILINE": "one\ntwo",
	"CR":        "one\rtwo",
	"_x1":       "underscore",
	"UNICODE":   "héllo",
}

func testLookup(name string) (string, bool) {
	v, ok := testEnv[name]
	return v, ok
}

func TestExpandEnv(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
	}{
		{"no reference", "instance: a\nsite: b\n", "instance: a\nsite: b\n"},
		{"one", "instance: ${POD_NAME}\n", "instance: sitebridge-cloud-1\n"},
		{"several on a line", "x: ${POD_NAME}/${POD_IP}:${POD_IP}", "x: sitebridge-cloud-1/10.1.2.3:10.1.2.3"},
		{"in a path", "cert: /tls/${POD_NAME}.crt", "cert: /tls/sitebridge-cloud-1.crt"},
		{"empty value", "a: '${EMPTY}'", "a: ''"},
		{"default unused", "a: ${POD_IP:-127.0.0.1}", "a: 10.1.2.3"},
		{"default for unset", "a: ${NOPE:-127.0.0.1}:7946", "a: 127.0.0.1:7946"},
		{"default for empty", "a: ${EMPTY:-fallback}", "a: fallback"},
		{"empty default", "a: '${NOPE:-}'", "a: ''"},
		{"default with colon and dash", "a: ${NOPE:-wss://h:1/p-q}", "a: wss://h:1/p-q"},
		{"default is literal", "a: ${NOPE:-$x}", "a: $x"},
		{"value is literal", "a: ${DOLLAR} ${BRACES}", "a: a$b ${POD_NAME}"},
		{"escaped dollar", "a: $${POD_NAME} $$ $$$$", "a: ${POD_NAME} $ $$"},
		{"escape then reference", "a: $$${POD_NAME}", "a: $sitebridge-cloud-1"},
		{"lone dollars", "token: a$b$ c $1 $POD_NAME", "token: a$b$ c $1 $POD_NAME"},
		{"dollar at end", "a: b$", "a: b$"},
		{"underscore name", "a: ${_x1}", "a: underscore"},
		{"unicode value", "a: ${UNICODE}", "a: héllo"},
		{"comments too", "# ${POD_NAME}\na: 1 # $${literal}\n", "# sitebridge-cloud-1\na: 1 # ${literal}\n"},
		{"CRLF kept", "a: ${POD_IP}\r\nb: 2\r\n", "a: 10.1.2.3\r\nb: 2\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ExpandEnv("f.yaml", []byte(tc.in), testLookup)
			if err != nil {
				t.Fatalf("ExpandEnv(%q): %v", tc.in, err)
			}
			if string(got) != tc.want {
				t.Errorf("ExpandEnv(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestExpandEnvErrors(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     []string // each error, formatted
	}{
		{"unset", "instance: ${NOPE}\n",
			[]string{"f.yaml:1:11: ${NOPE}: environment variable NOPE is not set (write ${NOPE:-default} to give a default)"}},
		{"unset on a later line", "a: 1\n\n  b: x-${NOPE}-y\n",
			[]string{"f.yaml:3:8: ${NOPE}: environment variable NOPE is not set (write ${NOPE:-default} to give a default)"}},
		{"column counts characters", "é: ${NOPE}",
			[]string{"f.yaml:1:4: ${NOPE}: environment variable NOPE is not set (write ${NOPE:-default} to give a default)"}},
		{"unterminated", "a: ${POD_NAME\nb: 1\n",
			[]string{"f.yaml:1:4: unterminated ${: a reference must close with '}' on the same line (write $${ for a literal ${)"}},
		{"unterminated at end", "a: ${",
			[]string{"f.yaml:1:4: unterminated ${: a reference must close with '}' on the same line (write $${ for a literal ${)"}},
		{"empty name", "a: ${}",
			[]string{"f.yaml:1:4: ${}: invalid reference: want ${NAME} or ${NAME:-default}, NAME made of letters, digits and '_', not starting with a digit"}},
		{"digit first", "a: ${1A}",
			[]string{"f.yaml:1:4: ${1A}: invalid reference: want ${NAME} or ${NAME:-default}, NAME made of letters, digits and '_', not starting with a digit"}},
		{"other operator", "a: ${A:=b}",
			[]string{"f.yaml:1:4: ${A:=b}: invalid reference: want ${NAME} or ${NAME:-default}, NAME made of letters, digits and '_', not starting with a digit"}},
		{"shell default without colon", "a: ${A-b}",
			[]string{"f.yaml:1:4: ${A-b}: invalid reference: want ${NAME} or ${NAME:-default}, NAME made of letters, digits and '_', not starting with a digit"}},
		{"value with a line break", "a: ${MULTILINE}",
			[]string{"f.yaml:1:4: ${MULTILINE}: the value of MULTILINE contains a line break; an expanded value must stay on one line"}},
		{"value with a carriage return", "a: ${CR:-x}",
			[]string{"f.yaml:1:4: ${CR:-x}: the value of CR contains a line break; an expanded value must stay on one line"}},
		{"every problem at once", "a: ${NOPE}\nb: ${POD_IP} ${ALSO_NOPE}\nc: ${bad name}\n",
			[]string{
				"f.yaml:1:4: ${NOPE}: environment variable NOPE is not set (write ${NOPE:-default} to give a default)",
				"f.yaml:2:14: ${ALSO_NOPE}: environment variable ALSO_NOPE is not set (write ${ALSO_NOPE:-default} to give a default)",
				"f.yaml:3:4: ${bad name}: invalid reference: want ${NAME} or ${NAME:-default}, NAME made of letters, digits and '_', not starting with a digit",
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := ExpandEnv("f.yaml", []byte(tc.in), testLookup)
			if err == nil {
				t.Fatalf("ExpandEnv(%q) = %q, want an error", tc.in, out)
			}
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("error is %T, want Errors: %v", err, err)
			}
			if len(errs) != len(tc.want) {
				t.Fatalf("got %d errors, want %d:\n%v", len(errs), len(tc.want), err)
			}
			for i, e := range errs {
				if e.Error() != tc.want[i] {
					t.Errorf("error %d:\n got %s\nwant %s", i, e, tc.want[i])
				}
			}
		})
	}
}

// TestExpandEnvKeepsLines checks that errors found after expansion point at
// the line of the file as written.
func TestExpandEnvKeepsLines(t *testing.T) {
	in := `instance: ${POD_NAME}
site: cloud
tls: {ca: /tls/ca.crt, cert: "/tls/${POD_NAME}.crt", key: "/tls/${POD_NAME}.key"}
tunnel:
  listen: 0.0.0.0:8443
  advertise: wss://${POD_NAME}.example.com:8443/sitebridge
peers: [{site: onprem}]
cluster:
  name: c
  advertise: ${POD_IP}:99999
  gossip-key: /tls/gossip.key
`
	data, err := ExpandEnv(testFile, []byte(in), testLookup)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Parse(testFile, data)
	var errs Errors
	if !errors.As(err, &errs) || len(errs) != 1 {
		t.Fatalf("want one error, got %v", err)
	}
	if e := errs[0]; e.Line != 10 || e.Path != "cluster.advertise" || !strings.Contains(e.Msg, "10.1.2.3:99999") {
		t.Errorf("error %q: want line 10, cluster.advertise, the expanded value", e)
	}
}

func TestLoadWithEnv(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sitebridge.yaml")
	const text = `instance: ${POD_NAME}
site: cloud
tls: {ca: tls/ca.crt, cert: "tls/${POD_NAME}.crt", key: "tls/${POD_NAME}.key"}
tunnel:
  listen: 0.0.0.0:8443
  advertise: wss://${POD_NAME}.example.com:8443/sitebridge
peers: [{site: onprem}]
admin: {listen: "0.0.0.0:9100", token: "${TOKEN:-dev-token}"}
cluster:
  name: c
  advertise: ${POD_IP}:7946
  relay-advertise: ${POD_IP}:7947
  gossip-key: tls/gossip.key
`
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := LoadWithEnv(path, testLookup)
	if err != nil {
		t.Fatal(err)
	}
	for _, chk := range []struct{ key, got, want string }{
		{"instance", c.Instance, "sitebridge-cloud-1"},
		{"tls.cert", c.TLS.Cert, filepath.Join(dir, "tls", "sitebridge-cloud-1.crt")},
		{"tunnel.advertise", c.Tunnel.Advertise, "wss://sitebridge-cloud-1.example.com:8443/sitebridge"},
		{"admin.token", c.Admin.Token, "dev-token"},
		{"cluster.advertise", c.Cluster.Advertise, "10.1.2.3:7946"},
		{"cluster.relay-advertise", c.Cluster.RelayAdvertise, "10.1.2.3:7947"},
	} {
		if chk.got != chk.want {
			t.Errorf("%s = %q, want %q", chk.key, chk.got, chk.want)
		}
	}

	// Without expansion the same file is not a valid config: the
	// reference is not a valid instance name.
	if _, err := Load(path); err == nil || !strings.Contains(err.Error(), "instance") {
		t.Errorf("Load without expansion: %v, want an instance error", err)
	}

	// An unset variable names the file and line.
	_, err = LoadWithEnv(path, func(string) (string, bool) { return "", false })
	if err == nil || !strings.HasPrefix(err.Error(), path+":1:11: ${POD_NAME}: environment variable POD_NAME is not set") {
		t.Errorf("LoadWithEnv with an empty environment: %v", err)
	}

	// A nil lookup is the process environment.
	t.Setenv("POD_NAME", "from-env")
	t.Setenv("POD_IP", "10.9.9.9")
	if c, err = LoadWithEnv(path, nil); err != nil {
		t.Fatal(err)
	} else if c.Instance != "from-env" || c.Cluster.Advertise != "10.9.9.9:7946" {
		t.Errorf("nil lookup: instance %q, advertise %q", c.Instance, c.Cluster.Advertise)
	}

	if _, err := LoadWithEnv(filepath.Join(dir, "missing.yaml"), testLookup); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v, want fs.ErrNotExist", err)
	}
}

// FuzzExpandEnv checks that ExpandEnv never panics, that a result keeps
// every line of the input at its number (line breaks only where the input
// has them), that text without '$' is returned unchanged, and that every
// error has a position.
func FuzzExpandEnv(f *testing.F) {
	for _, s := range []string{
		"", "$", "$$", "${", "${}", "${POD_NAME}", "${NOPE:-x}", "a: ${POD_IP}\nb: ${EMPTY:-y}\n",
		"${MULTILINE}", "$${A}", "${A:-${B}}", "${POD_NAME\n}", "é${UNICODE}\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		out, err := ExpandEnv("f.yaml", data, testLookup)
		if err != nil {
			if out != nil {
				t.Fatal("ExpandEnv returned both a result and an error")
			}
			var errs Errors
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("error is not a non-empty Errors: %#v", err)
			}
			lines := bytes.Count(data, []byte("\n")) + 1
			for _, e := range errs {
				if e.File != "f.yaml" || e.Line < 1 || e.Line > lines || e.Column < 1 {
					t.Errorf("error without a valid position: %q", e)
				}
			}
			return
		}
		if bytes.IndexByte(data, '$') < 0 && !bytes.Equal(out, data) {
			t.Fatalf("text without '$' changed: %q -> %q", data, out)
		}
		inLines, outLines := bytes.Split(data, []byte("\n")), bytes.Split(out, []byte("\n"))
		if len(inLines) != len(outLines) {
			t.Fatalf("line count changed: %d -> %d", len(inLines), len(outLines))
		}
		for i := range inLines {
			// A line without references comes out unchanged.
			if bytes.IndexByte(inLines[i], '$') < 0 && !bytes.Equal(inLines[i], outLines[i]) {
				t.Fatalf("line %d changed: %q -> %q", i+1, inLines[i], outLines[i])
			}
		}
		// Whatever it expands to, parsing it must not panic either.
		_, _ = Parse(testFile, out)
	})
}
