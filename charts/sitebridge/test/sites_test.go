package charttest

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/sitebridge/sitebridge/tlsgen"
)

// TestExamplesFitTogether checks that the two example sites of the README
// walk-through agree: each lists the other as its peer, every URL the
// connecting site dials is one the accepting site's pods advertise, each
// service is accepted on one side and connected on the other, and both
// federate the same caches.
func TestExamplesFitTogether(t *testing.T) {
	c := loadChart(t)
	site := func(file string) (*manifests, int) {
		vals := readValues(t, file)
		out, err := render(t, c, vals)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		return decodeAll(t, out), int(vals["maxReplicas"].(float64))
	}
	cloud, cloudMax := site("../examples/cloud.yaml")
	onprem, _ := site("../examples/onprem.yaml")
	cloudName, onpremName := cloud.statefulSets[0].Name, onprem.statefulSets[0].Name
	cc := parsePodConfig(t, cloud.configMaps[0].Data["sitebridge.yaml"], podEnv(cloudName, 0))
	oc := parsePodConfig(t, onprem.configMaps[0].Data["sitebridge.yaml"], podEnv(onpremName, 0))

	if !slices.Equal(cc.PeerSites(), []string{oc.Site}) || !slices.Equal(oc.PeerSites(), []string{cc.Site}) {
		t.Errorf("peers: cloud %v, onprem %v", cc.PeerSites(), oc.PeerSites())
	}
	if cc.TrustDomain != oc.TrustDomain {
		t.Errorf("trust domains %q and %q", cc.TrustDomain, oc.TrustDomain)
	}
	advertised := map[string]bool{}
	for i := range cloudMax {
		pc := parsePodConfig(t, cloud.configMaps[0].Data["sitebridge.yaml"], podEnv(cloudName, i))
		advertised[pc.Tunnel.Advertise] = true
	}
	for _, u := range oc.Peers[0].URLs {
		if !advertised[u] {
			t.Errorf("onprem dials %s, which no cloud pod advertises (%v)", u, advertised)
		}
	}
	roles := map[string]string{}
	for _, s := range cc.Services {
		roles[s.Name] = fmt.Sprintf("cloud accept=%v", s.IsAccept())
	}
	for _, s := range oc.Services {
		if want := fmt.Sprintf("cloud accept=%v", !s.IsAccept()); roles[s.Name] != want {
			t.Errorf("service %s: onprem accept=%v but %q", s.Name, s.IsAccept(), roles[s.Name])
		}
		delete(roles, s.Name)
	}
	if len(roles) > 0 {
		t.Errorf("services only on the cloud site: %v", roles)
	}
	if cc.Store.Partitions != oc.Store.Partitions {
		t.Errorf("store.partitions %d and %d: the hello refuses a mismatch", cc.Store.Partitions, oc.Store.Partitions)
	}
	if len(cc.Federation.Topologies) != 1 || len(oc.Federation.Topologies) != 1 ||
		!slices.Equal(cc.Federation.Topologies[0].Sites, oc.Federation.Topologies[0].Sites) {
		t.Errorf("federation topologies differ: %+v and %+v", cc.Federation.Topologies, oc.Federation.Topologies)
	}
}

// TestScaleKeepsConfig checks what 'helm upgrade --set replicaCount=N'
// changes: the StatefulSet's replicas and the per-pod Services, and nothing
// that would restart the running pods (the config and its checksum stay).
func TestScaleKeepsConfig(t *testing.T) {
	c := loadChart(t)
	cloud := readValues(t, "../examples/cloud.yaml")
	var prev *manifests
	for _, n := range []int{2, 3, 2} {
		out, err := render(t, c, with(cloud, "replicaCount", n))
		if err != nil {
			t.Fatal(err)
		}
		m := decodeAll(t, out)
		sts := m.statefulSets[0]
		if int(*sts.Spec.Replicas) != n {
			t.Errorf("replicaCount %d: StatefulSet replicas %d", n, *sts.Spec.Replicas)
		}
		perPod := 0
		for _, s := range m.services {
			if s.Spec.Selector["statefulset.kubernetes.io/pod-name"] != "" {
				perPod++
			}
		}
		if perPod != n {
			t.Errorf("replicaCount %d: %d per-pod tunnel services", n, perPod)
		}
		if prev != nil {
			if m.configMaps[0].Data["sitebridge.yaml"] != prev.configMaps[0].Data["sitebridge.yaml"] ||
				sts.Spec.Template.Annotations["checksum/config"] != prev.statefulSets[0].Spec.Template.Annotations["checksum/config"] {
				t.Errorf("replicaCount %d changes the config: every pod would restart", n)
			}
			if len(sts.Spec.Template.Spec.Volumes) != len(prev.statefulSets[0].Spec.Template.Spec.Volumes) {
				t.Errorf("replicaCount %d changes the pod's volumes", n)
			}
		}
		prev = m
	}
}

// TestReadmeSpecs checks that the tlsgen specs in the chart's README are
// the ones the notes print for the examples (as tlsgen reads them).
func TestReadmeSpecs(t *testing.T) {
	c := loadChart(t)
	readme := string(readFile(t, "..", "README.md"))
	for _, name := range []string{"example-cloud", "example-onprem"} {
		t.Run(name, func(t *testing.T) {
			_, rest, ok := strings.Cut(readme, "<!-- tlsgen-spec: "+name+" -->\n```yaml\n")
			block, _, ok2 := strings.Cut(rest, "```")
			if !ok || !ok2 {
				t.Fatalf("README.md has no tlsgen spec block for %s", name)
			}
			vals := readValues(t, "../examples/"+strings.TrimPrefix(name, "example-")+".yaml")
			out, err := render(t, c, vals)
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			load := func(file, spec string) *tlsgen.Spec {
				p := filepath.Join(dir, file)
				if err := os.WriteFile(p, []byte(spec), 0o600); err != nil {
					t.Fatal(err)
				}
				s, err := tlsgen.LoadSpec(p)
				if err != nil {
					t.Fatalf("%s: %v", file, err)
				}
				return s
			}
			readmeSpec := load("readme.yaml", block)
			notesSpec := load("notes.yaml", notesSpec(t, out["sitebridge/templates/NOTES.txt"]))
			if !reflect.DeepEqual(readmeSpec, notesSpec) {
				t.Errorf("README spec for %s differs from the notes':\n%+v\n%+v", name, readmeSpec, notesSpec)
			}
		})
	}
}
