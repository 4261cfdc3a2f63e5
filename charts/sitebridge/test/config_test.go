package charttest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"helm.sh/helm/v3/pkg/chart"
	corev1 "k8s.io/api/core/v1"

	"github.com/sitebridge/sitebridge/config"
	"github.com/sitebridge/sitebridge/gateway"
	"github.com/sitebridge/sitebridge/tlsgen"
)

// configFile is where the pods mount the config (the StatefulSet's args).
const configFile = "/etc/sitebridge/sitebridge.yaml"

// podEnv is the environment the StatefulSet gives pod ordinal i.
func podEnv(full string, i int) map[string]string {
	return map[string]string{
		"POD_NAME":               fmt.Sprintf("%s-%d", full, i),
		"POD_IP":                 fmt.Sprintf("10.0.0.%d", 10+i),
		"SITEBRIDGE_ADMIN_TOKEN": "c2l0ZWJyaWRnZSB0ZXN0IHRva2Vu+/=",
	}
}

// parsePodConfig expands the shared config for one pod, as 'sitebridge run
// --expand-env' does, and parses it with sitebridge's own validator.
func parsePodConfig(t *testing.T, text string, env map[string]string) *config.Config {
	t.Helper()
	data, err := config.ExpandEnv(configFile, []byte(text), func(k string) (string, bool) {
		v, ok := env[k]
		return v, ok
	})
	if err != nil {
		t.Fatalf("expand config for %s: %v", env["POD_NAME"], err)
	}
	cfg, err := config.Parse(configFile, data)
	if err != nil {
		t.Fatalf("config for %s is refused by sitebridge:\n%v\n--- config ---\n%s", env["POD_NAME"], err, data)
	}
	return cfg
}

// checkConfigs checks the rendered config for every pod, then renders
// again with the certificates mounted in a temporary directory, creates
// them from the names the chart gives, and runs the 'run --check' check
// for every ordinal that has a certificate.
func checkConfigs(t *testing.T, tc renderCase, c *chart.Chart, vals map[string]any, m *manifests, notes string) {
	t.Helper()
	sts := m.statefulSets[0]
	full := sts.Name
	site, _ := vals["site"].(string)
	hl := sts.Spec.ServiceName + "." + namespace + ".svc.cluster.local"
	ports := map[int32]bool{}
	for _, p := range sts.Spec.Template.Spec.Containers[0].Ports {
		if p.Protocol == corev1.ProtocolTCP {
			ports[p.ContainerPort] = true
		}
	}
	text := m.configMaps[0].Data["sitebridge.yaml"]
	for i := range tc.replicas {
		env := podEnv(full, i)
		cfg := parsePodConfig(t, text, env)
		if cfg.Instance != env["POD_NAME"] || cfg.Site != site {
			t.Errorf("pod %d: instance %q site %q, want %s and %s", i, cfg.Instance, cfg.Site, env["POD_NAME"], site)
		}
		if cfg.Admin.Token != env["SITEBRIDGE_ADMIN_TOKEN"] {
			t.Errorf("pod %d: admin token %q not taken from the environment", i, cfg.Admin.Token)
		}
		if !cfg.Cluster.Enabled() || len(cfg.Cluster.Join) != 1 || !strings.HasPrefix(cfg.Cluster.Join[0], hl+":") {
			t.Errorf("pod %d: cluster %+v: want a cluster joining %s", i, cfg.Cluster, hl)
		}
		if cfg.Cluster.Advertise != env["POD_IP"]+":7946" || !strings.HasPrefix(cfg.Cluster.RelayAdvertise, env["POD_IP"]+":") {
			t.Errorf("pod %d: advertise %q relay-advertise %q, want the pod IP", i, cfg.Cluster.Advertise, cfg.Cluster.RelayAdvertise)
		}
		// Deleting any one pod loses no acknowledged write only if every
		// partition has a backup on another pod.
		for _, sc := range cfg.Store.Schemes {
			if tc.replicas >= 2 && (sc.BackupCount == nil || *sc.BackupCount < 1) {
				t.Errorf("pod %d: scheme %s has no backup: losing a pod would lose writes", i, sc.Name)
			}
		}
		if cfg.Accepting() != tc.accepting {
			t.Errorf("pod %d: accepting %v, want %v", i, cfg.Accepting(), tc.accepting)
		}
		var listens []string
		if cfg.Accepting() {
			listens = append(listens, cfg.Tunnel.Listen)
			u, err := url.Parse(cfg.Tunnel.Advertise)
			if err != nil || u.Scheme != "wss" {
				t.Errorf("pod %d: tunnel.advertise %q", i, cfg.Tunnel.Advertise)
			}
			if tc.perPod && !strings.Contains(u.Hostname(), env["POD_NAME"]) {
				t.Errorf("pod %d: with per-pod services, tunnel.advertise %q should name the pod", i, cfg.Tunnel.Advertise)
			}
		}
		for _, s := range cfg.Services {
			if s.IsAccept() {
				listens = append(listens, s.Accept)
			}
		}
		listens = append(listens, cfg.Admin.Listen, cfg.Cluster.Bind, cfg.Cluster.Relay)
		for _, l := range listens {
			host, port, _ := net.SplitHostPort(l)
			p, _ := strconv.Atoi(port)
			if host != "0.0.0.0" || !ports[int32(p)] {
				t.Errorf("pod %d: %s is not bound on every pod address with a container port (ports %v)", i, l, ports)
			}
		}
	}
	checkWithCertificates(t, tc, c, vals, notes)
}

// checkWithCertificates renders the chart with the certificates mounted in
// a temporary directory, fills that directory as the kubelet would (from
// the Secret made with the documented tlsgen commands, or from the
// Secrets cert-manager would write for the rendered Certificates), and runs
// the same check as 'sitebridge run --check' for every ordinal below
// maxReplicas.
func checkWithCertificates(t *testing.T, tc renderCase, c *chart.Chart, vals map[string]any, notes string) {
	t.Helper()
	mount := t.TempDir()
	out, err := render(t, c, with(vals, "tls", map[string]any{"mountPath": mount}))
	if err != nil {
		t.Fatalf("render with tls.mountPath %s: %v", mount, err)
	}
	m := decodeAll(t, out)
	sts := m.statefulSets[0]
	full := sts.Name
	var tlsVol corev1.Volume
	for _, v := range sts.Spec.Template.Spec.Volumes {
		if v.Name == "tls" {
			tlsVol = v
		}
	}

	gen := t.TempDir()
	secrets := map[string]map[string][]byte{} // Secret name -> key -> data
	siteSecret := full + "-tls"
	if tv, ok := vals["tls"].(map[string]any); ok && tv["secretName"] != nil && tv["secretName"] != "" {
		siteSecret = tv["secretName"].(string)
	}
	var certs map[string]*x509.Certificate // pod -> its leaf
	if tc.certManager {
		// The CA behind the Issuer; gossip.key from the site Secret.
		if _, err := tlsgen.Generate(tlsgen.Spec{Instances: []tlsgen.InstanceSpec{{Name: "unused", Site: "x"}}}, gen, false); err != nil {
			t.Fatal(err)
		}
		// ca.crt too, for certManager.caFrom: secret.
		secrets[siteSecret] = map[string][]byte{"gossip.key": readFile(t, gen, "gossip.key"), "ca.crt": readFile(t, gen, "ca.crt"), "admin-token": []byte("t")}
		certs = issueLikeCertManager(t, gen, m.certificates, secrets)
	} else {
		// The documented procedure: the tlsgen spec that NOTES.txt prints,
		// then a Secret of every file but ca.key.
		spec := notesSpec(t, notes)
		specFile := filepath.Join(gen, "spec.yaml")
		if err := os.WriteFile(specFile, []byte(spec), 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := tlsgen.LoadSpec(specFile)
		if err != nil {
			t.Fatalf("the tlsgen spec in NOTES.txt is refused: %v\n%s", err, spec)
		}
		if len(s.Instances) != tc.maxReplicas {
			t.Errorf("NOTES.txt spec names %d instances, want maxReplicas (%d)", len(s.Instances), tc.maxReplicas)
		}
		res, err := tlsgen.Generate(*s, gen, false)
		if err != nil {
			t.Fatal(err)
		}
		data := map[string][]byte{"ca.crt": readFile(t, gen, "ca.crt"), "gossip.key": readFile(t, gen, "gossip.key"), "admin-token": []byte("t")}
		certs = map[string]*x509.Certificate{}
		for _, r := range res.Certs {
			data[filepath.Base(r.CertFile)] = readFile(t, r.CertFile)
			data[filepath.Base(r.KeyFile)] = readFile(t, r.KeyFile)
			certs[r.Name] = leaf(t, data[filepath.Base(r.CertFile)])
		}
		secrets[siteSecret] = data
	}
	mountVolume(t, tlsVol, secrets, mount)

	text := m.configMaps[0].Data["sitebridge.yaml"]
	for i := range tc.maxReplicas {
		env := podEnv(full, i)
		cfg := parsePodConfig(t, text, env)
		if _, err := gateway.New(cfg, nil); err != nil {
			t.Errorf("pod %d: 'run --check' would fail: %v", i, err)
		}
		if _, err := tlsgen.LoadGossipKey(cfg.Cluster.GossipKey); err != nil {
			t.Errorf("pod %d: gossip key: %v", i, err)
		}
		if cfg.Accepting() {
			// The other site dials the advertised URL and checks the host
			// name against this pod's certificate.
			u, _ := url.Parse(cfg.Tunnel.Advertise)
			if err := certs[env["POD_NAME"]].VerifyHostname(u.Hostname()); err != nil {
				t.Errorf("pod %d: a peer dialling %s would refuse its certificate: %v", i, cfg.Tunnel.Advertise, err)
			}
		}
	}
}

func readFile(t *testing.T, path ...string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(path...))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func leaf(t *testing.T, certPEM []byte) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode(certPEM)
	if b == nil {
		t.Fatal("no PEM certificate")
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// notesSpec returns the tlsgen spec that NOTES.txt prints.
func notesSpec(t *testing.T, notes string) string {
	t.Helper()
	_, rest, ok := strings.Cut(notes, "# --- tlsgen spec ---\n")
	spec, _, ok2 := strings.Cut(rest, "# --- end ---")
	if !ok || !ok2 {
		t.Fatalf("NOTES.txt has no tlsgen spec:\n%s", notes)
	}
	return spec
}

// mountVolume writes the files of a secret or projected volume into dir,
// as the kubelet would; a missing Secret or key fails, as the pod would not
// start.
func mountVolume(t *testing.T, v corev1.Volume, secrets map[string]map[string][]byte, dir string) {
	t.Helper()
	type source struct {
		name  string
		items []corev1.KeyToPath
	}
	var srcs []source
	switch {
	case v.Secret != nil:
		srcs = append(srcs, source{v.Secret.SecretName, v.Secret.Items})
	case v.Projected != nil:
		for _, s := range v.Projected.Sources {
			if s.Secret != nil {
				srcs = append(srcs, source{s.Secret.Name, s.Secret.Items})
			}
		}
	default:
		t.Fatalf("tls volume %+v is neither a Secret nor projected", v)
	}
	for _, s := range srcs {
		data, ok := secrets[s.name]
		if !ok {
			t.Errorf("the pods mount Secret %s, which nothing creates", s.name)
			continue
		}
		for _, it := range s.items {
			b, ok := data[it.Key]
			if !ok {
				t.Errorf("Secret %s has no key %s", s.name, it.Key)
				continue
			}
			p := filepath.Join(dir, it.Path)
			if _, err := os.Stat(p); err == nil {
				t.Errorf("two volume items write %s", it.Path)
			}
			if err := os.WriteFile(p, b, 0o440); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// issueLikeCertManager signs each Certificate's request with the CA in
// caDir the way cert-manager's CA issuer does (the subject, SANs, usages
// and key of the spec, nothing added) and stores tls.crt, tls.key and
// ca.crt in the Secret it names. It returns the leaves by common name.
func issueLikeCertManager(t *testing.T, caDir string, certs []*cmapi.Certificate, secrets map[string]map[string][]byte) map[string]*x509.Certificate {
	t.Helper()
	caCert, caKey, err := tlsgen.LoadCA(caDir)
	if err != nil {
		t.Fatal(err)
	}
	caPEM := readFile(t, caDir, "ca.crt")
	leaves := map[string]*x509.Certificate{}
	for n, c := range certs {
		s := c.Spec
		var key crypto.Signer
		var keyPEM []byte
		switch {
		case s.PrivateKey == nil:
			t.Fatalf("Certificate %s: no privateKey", c.Name)
		case s.PrivateKey.Algorithm == cmapi.ECDSAKeyAlgorithm && s.PrivateKey.Size == 256:
			k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			der, err := x509.MarshalECPrivateKey(k)
			if err != nil {
				t.Fatal(err)
			}
			key, keyPEM = k, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
		case s.PrivateKey.Algorithm == cmapi.RSAKeyAlgorithm && s.PrivateKey.Size >= 2048:
			k, err := rsa.GenerateKey(rand.Reader, s.PrivateKey.Size)
			if err != nil {
				t.Fatal(err)
			}
			key, keyPEM = k, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)})
		default:
			t.Fatalf("Certificate %s: private key %+v; this test issues ECDSA P-256 and RSA keys only", c.Name, s.PrivateKey)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(int64(n) + 100),
			Subject:      pkix.Name{CommonName: s.CommonName},
			DNSNames:     s.DNSNames,
			NotBefore:    time.Now().Add(-time.Minute),
			NotAfter:     time.Now().Add(s.Duration.Duration),
		}
		for _, u := range s.URIs {
			pu, err := url.Parse(u)
			if err != nil {
				t.Fatalf("Certificate %s: uri %q: %v", c.Name, u, err)
			}
			tmpl.URIs = append(tmpl.URIs, pu)
		}
		for _, ip := range s.IPAddresses {
			tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(ip))
		}
		for _, u := range s.Usages {
			switch u {
			case cmapi.UsageDigitalSignature:
				tmpl.KeyUsage |= x509.KeyUsageDigitalSignature
			case cmapi.UsageKeyEncipherment:
				tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
			case cmapi.UsageServerAuth:
				tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
			case cmapi.UsageClientAuth:
				tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
			default:
				t.Fatalf("Certificate %s: usage %q not handled by this test", c.Name, u)
			}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
		if err != nil {
			t.Fatal(err)
		}
		certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
		secrets[s.SecretName] = map[string][]byte{
			"tls.crt": certPEM,
			"tls.key": keyPEM,
			"ca.crt":  caPEM,
		}
		leaves[s.CommonName] = leaf(t, certPEM)
	}
	return leaves
}
