// Package charttest lints and renders the sitebridge Helm chart without a
// cluster, for several values files, and checks what comes out:
//
//   - helm lint (the Helm SDK's own rules, values.schema.json included)
//     reports nothing at warning level or above;
//   - every rendered manifest decodes strictly (unknown or mistyped fields
//     refused) into its Kubernetes API type from k8s.io/api, or into
//     cert-manager's v1 types for Certificates and Issuers, and its names
//     and ports pass the apimachinery validators; this stands in for the
//     API server's schema check, since no schema can be downloaded here;
//   - the chart's invariants hold (OrderedReady, a PodDisruptionBudget of
//     maxUnavailable 1, anti-affinity, probes, non-root, preStop, ...);
//   - the rendered config, expanded for each pod as 'sitebridge run
//     --expand-env' does, is accepted by sitebridge's own config validator,
//     and, with certificates made from the names the chart gives (the
//     tlsgen spec in NOTES.txt, or the cert-manager Certificates) and
//     mounted as the StatefulSet's volume lays them out, by the same
//     check as 'sitebridge run --check';
//   - golden files under testdata/golden catch unintended changes
//     (go test -update rewrites them).
//
// It is a module of its own so that the Helm SDK, k8s.io/api and
// cert-manager stay out of the main module's go.mod.
package charttest

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

const (
	chartDir    = ".."
	releaseName = "sb"
	namespace   = "sitebridge"
	// kubeVersion is the oldest Kubernetes the chart supports (Chart.yaml
	// kubeVersion); rendering for it keeps the golden files independent of
	// the Helm SDK's default.
	kubeVersion = "v1.30.0"
)

// renderCase is one values file to lint, render and check.
type renderCase struct {
	name   string // golden file testdata/golden/<name>.yaml
	values string // values file, relative to this directory
	// replicas and maxReplicas the values ask for, checked against the
	// StatefulSet, the Secret items and the Certificates.
	replicas, maxReplicas int
	accepting             bool
	certManager           bool
	perPod                bool
	antiAffinity          string // soft, hard or none
}

var renderCases = []renderCase{
	{name: "example-cloud", values: "../examples/cloud.yaml", replicas: 2, maxReplicas: 5, accepting: true, perPod: true, antiAffinity: "soft"},
	{name: "example-onprem", values: "../examples/onprem.yaml", replicas: 2, maxReplicas: 5, antiAffinity: "soft"},
	{name: "nodeport", values: "testdata/values/nodeport.yaml", replicas: 2, maxReplicas: 3, accepting: true, antiAffinity: "soft"},
	{name: "loadbalancer", values: "testdata/values/loadbalancer.yaml", replicas: 2, maxReplicas: 4, accepting: true, antiAffinity: "soft"},
	{name: "cert-manager", values: "testdata/values/cert-manager.yaml", replicas: 2, maxReplicas: 4, accepting: true, certManager: true, perPod: true, antiAffinity: "soft"},
	{name: "cert-manager-issuer", values: "testdata/values/cert-manager-issuer.yaml", replicas: 1, maxReplicas: 2, certManager: true, antiAffinity: "none"},
	{name: "replicas-3", values: "testdata/values/replicas-3.yaml", replicas: 3, maxReplicas: 5, antiAffinity: "hard"},
}

// loadChart loads the chart as 'helm' does, .helmignore applied.
func loadChart(t *testing.T) *chart.Chart {
	t.Helper()
	c, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	for _, f := range c.Files {
		if strings.HasPrefix(f.Name, "test/") {
			t.Fatalf("the packaged chart holds %s: .helmignore must leave out test/", f.Name)
		}
	}
	return c
}

func readValues(t *testing.T, path string) map[string]any {
	t.Helper()
	v, err := chartutil.ReadValuesFile(path)
	if err != nil {
		t.Fatalf("read values: %v", err)
	}
	return v.AsMap()
}

func capabilities(t *testing.T) *chartutil.Capabilities {
	t.Helper()
	kv, err := chartutil.ParseKubeVersion(kubeVersion)
	if err != nil {
		t.Fatal(err)
	}
	caps := chartutil.DefaultCapabilities.Copy()
	caps.KubeVersion = *kv
	return caps
}

// render renders the chart with vals as 'helm template' would (schema
// validation, the Chart's kubeVersion constraint, strict template
// rendering), and returns the non-empty outputs by template name.
func render(t *testing.T, c *chart.Chart, vals map[string]any) (map[string]string, error) {
	t.Helper()
	caps := capabilities(t)
	if !chartutil.IsCompatibleRange(c.Metadata.KubeVersion, caps.KubeVersion.String()) {
		t.Fatalf("chart kubeVersion %q excludes %s", c.Metadata.KubeVersion, caps.KubeVersion.String())
	}
	rv, err := chartutil.ToRenderValues(c, vals, chartutil.ReleaseOptions{Name: releaseName, Namespace: namespace, Revision: 1, IsInstall: true}, caps)
	if err != nil {
		return nil, err
	}
	out, err := engine.Engine{Strict: true}.Render(c, rv)
	if err != nil {
		return nil, err
	}
	for name, s := range out {
		if strings.TrimSpace(s) == "" {
			delete(out, name)
		}
	}
	return out, nil
}

// lintChart runs helm lint with vals and fails on anything at warning
// level or above.
func lintChart(t *testing.T, vals map[string]any) {
	t.Helper()
	kv, err := chartutil.ParseKubeVersion(kubeVersion)
	if err != nil {
		t.Fatal(err)
	}
	l := lint.AllWithKubeVersion(chartDir, vals, namespace, kv)
	for _, m := range l.Messages {
		if m.Severity >= support.WarningSev {
			t.Errorf("helm lint: %s", m)
		}
	}
}

func TestRender(t *testing.T) {
	c := loadChart(t)
	for _, tc := range renderCases {
		t.Run(tc.name, func(t *testing.T) {
			vals := readValues(t, tc.values)
			lintChart(t, vals)
			out, err := render(t, c, vals)
			if err != nil {
				t.Fatalf("render: %v", err)
			}
			golden(t, tc.name, out)
			objs := decodeAll(t, out)
			checkInvariants(t, tc, objs)
			checkConfigs(t, tc, c, vals, objs, out["sitebridge/templates/NOTES.txt"])
		})
	}
}

// TestRenderRefuses checks that values the chart cannot honour fail the
// render with a message that says what to fix.
func TestRenderRefuses(t *testing.T) {
	c := loadChart(t)
	cloud := readValues(t, "../examples/cloud.yaml")
	for _, tc := range []struct {
		name string
		vals map[string]any
		want string
	}{
		{"no values", map[string]any{}, "site is required"},
		{"no peers", map[string]any{"site": "cloud"}, "peers is required"},
		{"more replicas than certificates", with(cloud, "replicaCount", 6), "replicaCount (6) must be from 1 to maxReplicas (5)"},
		{"zero replicas", with(cloud, "replicaCount", 0), "replicaCount (0) must be from 1"},
		{"per-pod services without a per-pod URL", with(cloud, "tunnel", map[string]any{"advertise": "wss://lb.example.com:8443/sitebridge"}),
			"tunnel.advertise must name each pod with ${POD_NAME}"},
		{"per-pod services on a connecting site", with(readValues(t, "../examples/onprem.yaml"), "tunnel", map[string]any{"perPodServices": map[string]any{"enabled": true}}),
			"tunnel.perPodServices.enabled needs tunnel.accept: true"},
		{"accept port taken", with(cloud, "services", []any{map[string]any{"name": "x", "accept": 7946}}), "service x accepts on port 7946, which is cluster.gossipPort"},
		{"two services on one port", with(cloud, "services", []any{map[string]any{"name": "x", "accept": 5551}, map[string]any{"name": "y", "accept": "0.0.0.0:5551"}}),
			"service y accepts on port 5551, which is service x"},
		{"accept on loopback", with(cloud, "services", []any{map[string]any{"name": "x", "accept": "127.0.0.1:5551"}}), "service x accepts on 127.0.0.1:5551: bind 0.0.0.0"},
		{"full name too long", with(cloud, "fullnameOverride", strings.Repeat("a", 53)), "longer than 52 characters"},
		{"full name not a DNS label", with(cloud, "fullnameOverride", "Site_A"), "must be a-z, 0-9 and '-'"},
		{"cert-manager without an issuer", with(cloud, "certManager", map[string]any{"enabled": true}), "set certManager.issuerRef.name"},
		{"unknown value (schema)", with(cloud, "replicas", 3), "additional properties 'replicas' not allowed"},
		{"unknown service type (schema)", with(cloud, "acceptService", map[string]any{"type": "External"}), "/acceptService/type"},
		{"bad anti-affinity (schema)", with(cloud, "podAntiAffinity", "always"), "podAntiAffinity"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := render(t, c, tc.vals)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("render: %v\nwant an error containing %q", err, tc.want)
			}
		})
	}
}

// with returns a deep copy of vals with key set to v; maps are merged the
// way Helm merges -f files and --set (v's keys win).
func with(vals map[string]any, key string, v any) map[string]any {
	out := deepCopy(vals).(map[string]any)
	if m, ok := v.(map[string]any); ok {
		if old, ok := out[key].(map[string]any); ok {
			out[key] = chartutil.CoalesceTables(deepCopy(m).(map[string]any), old)
			return out
		}
	}
	out[key] = v
	return out
}

func deepCopy(v any) any {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	var out any
	if err := json.Unmarshal(b, &out); err != nil {
		panic(err)
	}
	return out
}

// golden compares the rendered templates, in name order, with
// testdata/golden/<name>.yaml.
func golden(t *testing.T, name string, out map[string]string) {
	t.Helper()
	var b bytes.Buffer
	for _, k := range slices.Sorted(mapsKeys(out)) {
		fmt.Fprintf(&b, "# ---- %s ----\n%s\n", k, strings.TrimSpace(out[k]))
	}
	path := filepath.Join("testdata", "golden", name+".yaml")
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Errorf("%v (go test -update writes it)", err)
		return
	}
	if !bytes.Equal(b.Bytes(), want) {
		t.Errorf("rendered chart differs from %s (go test -update rewrites it after review):\n%s", path, diffLines(string(want), b.String()))
	}
}

func mapsKeys[M ~map[K]V, K comparable, V any](m M) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// diffLines shows the first lines that differ, with a little context.
func diffLines(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < max(len(w), len(g)); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			return fmt.Sprintf("line %d:\n  golden:   %q\n  rendered: %q", i+1, wl, gl)
		}
	}
	return "(equal lines; trailing difference)"
}

// splitDocs splits a rendered template into its YAML documents, dropping
// empty ones.
func splitDocs(s string) []string {
	var docs []string
	for _, d := range strings.Split("\n"+s, "\n---") {
		d = strings.TrimSpace(d)
		var probe map[string]any
		if d == "" || yaml.Unmarshal([]byte(d), &probe) == nil && len(probe) == 0 {
			continue
		}
		docs = append(docs, d)
	}
	return docs
}

// sortedTemplates returns the rendered manifest templates (NOTES.txt
// left out) in name order.
func sortedTemplates(out map[string]string) []string {
	var names []string
	for k := range out {
		if !strings.HasSuffix(k, "NOTES.txt") {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	return names
}

// strictJSON converts a YAML document to JSON, refusing duplicate keys,
// and decodes it into v, refusing unknown fields.
func strictJSON(doc string, v any) error {
	j, err := yaml.YAMLToJSONStrict([]byte(doc))
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data")
	}
	return nil
}
