package charttest

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"
)

// manifests are the rendered objects, decoded into their API types.
type manifests struct {
	configMaps   []*corev1.ConfigMap
	services     []*corev1.Service
	statefulSets []*appsv1.StatefulSet
	pdbs         []*policyv1.PodDisruptionBudget
	certificates []*cmapi.Certificate
	issuers      []*cmapi.Issuer
}

// decodeAll decodes every rendered document strictly into its API type and
// checks its metadata; a kind the chart is not expected to render fails.
func decodeAll(t *testing.T, out map[string]string) *manifests {
	t.Helper()
	m := &manifests{}
	for _, name := range sortedTemplates(out) {
		for i, doc := range splitDocs(out[name]) {
			where := fmt.Sprintf("%s (document %d)", name, i+1)
			var tm metav1.TypeMeta
			if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
				t.Errorf("%s: %v", where, err)
				continue
			}
			var obj metav1.Object
			var err error
			switch tm.APIVersion + " " + tm.Kind {
			case "v1 ConfigMap":
				o := &corev1.ConfigMap{}
				err, obj = strictJSON(doc, o), o
				m.configMaps = append(m.configMaps, o)
			case "v1 Service":
				o := &corev1.Service{}
				err, obj = strictJSON(doc, o), o
				m.services = append(m.services, o)
				checkServiceFields(t, where, o)
			case "apps/v1 StatefulSet":
				o := &appsv1.StatefulSet{}
				err, obj = strictJSON(doc, o), o
				m.statefulSets = append(m.statefulSets, o)
			case "policy/v1 PodDisruptionBudget":
				o := &policyv1.PodDisruptionBudget{}
				err, obj = strictJSON(doc, o), o
				m.pdbs = append(m.pdbs, o)
			case "cert-manager.io/v1 Certificate":
				o := &cmapi.Certificate{}
				err, obj = strictJSON(doc, o), o
				m.certificates = append(m.certificates, o)
			case "cert-manager.io/v1 Issuer":
				o := &cmapi.Issuer{}
				err, obj = strictJSON(doc, o), o
				m.issuers = append(m.issuers, o)
			default:
				t.Errorf("%s: unexpected object %s %s", where, tm.APIVersion, tm.Kind)
				continue
			}
			if err != nil {
				t.Errorf("%s: %s does not decode strictly: %v", where, tm.Kind, err)
				continue
			}
			checkMeta(t, where, tm.Kind, obj)
		}
	}
	return m
}

// checkMeta validates names, namespace and labels as the API server would.
func checkMeta(t *testing.T, where, kind string, o metav1.Object) {
	t.Helper()
	nameCheck := validation.IsDNS1123Subdomain
	if kind == "Service" {
		nameCheck = validation.IsDNS1035Label
	}
	if errs := nameCheck(o.GetName()); len(errs) > 0 {
		t.Errorf("%s: %s name %q: %s", where, kind, o.GetName(), strings.Join(errs, "; "))
	}
	if o.GetNamespace() != namespace {
		t.Errorf("%s: namespace %q, want %q", where, o.GetNamespace(), namespace)
	}
	checkLabels(t, where, o.GetLabels())
	if o.GetLabels()["app.kubernetes.io/instance"] != releaseName {
		t.Errorf("%s: no app.kubernetes.io/instance label", where)
	}
}

func checkLabels(t *testing.T, where string, l map[string]string) {
	t.Helper()
	for k, v := range l {
		if errs := validation.IsQualifiedName(k); len(errs) > 0 {
			t.Errorf("%s: label key %q: %s", where, k, strings.Join(errs, "; "))
		}
		if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
			t.Errorf("%s: label %s value %q: %s", where, k, v, strings.Join(errs, "; "))
		}
	}
}

func checkServiceFields(t *testing.T, where string, s *corev1.Service) {
	t.Helper()
	switch s.Spec.Type {
	case corev1.ServiceTypeClusterIP, corev1.ServiceTypeNodePort, corev1.ServiceTypeLoadBalancer:
	default:
		t.Errorf("%s: service type %q", where, s.Spec.Type)
	}
	seen := map[string]bool{}
	for _, p := range s.Spec.Ports {
		if errs := validation.IsValidPortName(p.Name); len(errs) > 0 {
			t.Errorf("%s: port name %q: %s", where, p.Name, strings.Join(errs, "; "))
		}
		if seen[p.Name] {
			t.Errorf("%s: duplicate port name %q", where, p.Name)
		}
		seen[p.Name] = true
		if errs := validation.IsValidPortNum(int(p.Port)); len(errs) > 0 {
			t.Errorf("%s: port %d: %s", where, p.Port, strings.Join(errs, "; "))
		}
		if p.NodePort != 0 && (s.Spec.Type == corev1.ServiceTypeClusterIP || p.NodePort < 30000 || p.NodePort > 32767) {
			t.Errorf("%s: nodePort %d on a %s service (default range 30000-32767)", where, p.NodePort, s.Spec.Type)
		}
	}
	if s.Spec.ClusterIP == corev1.ClusterIPNone && s.Spec.Type != corev1.ServiceTypeClusterIP {
		t.Errorf("%s: headless service of type %s", where, s.Spec.Type)
	}
	if s.Spec.ExternalTrafficPolicy != "" && s.Spec.Type == corev1.ServiceTypeClusterIP {
		t.Errorf("%s: externalTrafficPolicy on a ClusterIP service", where)
	}
}

func (m *manifests) service(name string) *corev1.Service {
	for _, s := range m.services {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// checkInvariants asserts what the chart promises whatever the values.
func checkInvariants(t *testing.T, tc renderCase, m *manifests) {
	t.Helper()
	if len(m.statefulSets) != 1 || len(m.configMaps) != 1 {
		t.Fatalf("%d StatefulSets and %d ConfigMaps, want one each", len(m.statefulSets), len(m.configMaps))
	}
	sts := m.statefulSets[0]
	full := sts.Name
	spec := sts.Spec
	pod := spec.Template.Spec

	// Scaling: one member at a time, in order.
	if spec.PodManagementPolicy != appsv1.OrderedReadyPodManagement {
		t.Errorf("podManagementPolicy %q, want OrderedReady (one member at a time on scale-down)", spec.PodManagementPolicy)
	}
	if spec.UpdateStrategy.Type != appsv1.RollingUpdateStatefulSetStrategyType {
		t.Errorf("updateStrategy %q, want RollingUpdate", spec.UpdateStrategy.Type)
	}
	if spec.MinReadySeconds <= 0 {
		t.Errorf("minReadySeconds %d: a restarted member needs time to be synced before the next one goes", spec.MinReadySeconds)
	}
	if spec.Replicas == nil || int(*spec.Replicas) != tc.replicas {
		t.Errorf("replicas %v, want %d", spec.Replicas, tc.replicas)
	}
	podLabels := labels.Set(spec.Template.Labels)
	sel, err := metav1.LabelSelectorAsSelector(spec.Selector)
	if err != nil || !sel.Matches(podLabels) {
		t.Errorf("StatefulSet selector %v does not match its pod labels %v (%v)", spec.Selector, podLabels, err)
	}

	// The headless service: the governing service and the join address.
	hl := m.service(spec.ServiceName)
	if hl == nil {
		t.Fatalf("serviceName %q is not rendered", spec.ServiceName)
	}
	if hl.Spec.ClusterIP != corev1.ClusterIPNone || !hl.Spec.PublishNotReadyAddresses {
		t.Errorf("headless service %s: clusterIP %q, publishNotReadyAddresses %v; want None and true (pods must find each other before they are ready)",
			hl.Name, hl.Spec.ClusterIP, hl.Spec.PublishNotReadyAddresses)
	}

	// The disruption budget: at most one instance down.
	if len(m.pdbs) != 1 {
		t.Fatalf("%d PodDisruptionBudgets, want 1", len(m.pdbs))
	}
	pdb := m.pdbs[0].Spec
	if pdb.MaxUnavailable == nil || *pdb.MaxUnavailable != intstr.FromInt32(1) || pdb.MinAvailable != nil {
		t.Errorf("PDB maxUnavailable %v minAvailable %v, want maxUnavailable 1 only", pdb.MaxUnavailable, pdb.MinAvailable)
	}
	if s, err := metav1.LabelSelectorAsSelector(pdb.Selector); err != nil || !s.Matches(podLabels) || s.Empty() {
		t.Errorf("PDB selector %v does not select the pods (%v)", pdb.Selector, err)
	}

	// Pod security.
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Error("the service account token is mounted; the pods need no API access")
	}
	psc := pod.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
		t.Errorf("pod securityContext %+v: want runAsNonRoot and a non-zero runAsUser", psc)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	sc := c.SecurityContext
	if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("container securityContext %+v: want non-root, no privilege escalation, read-only root, every capability dropped", sc)
	}

	// Anti-affinity across nodes and zones.
	checkAntiAffinity(t, tc.antiAffinity, pod.Affinity, podLabels)

	// Probes, preStop, resources.
	ports := map[string]int32{}
	for _, p := range c.Ports {
		if errs := validation.IsValidPortName(p.Name); len(errs) > 0 {
			t.Errorf("container port name %q: %s", p.Name, strings.Join(errs, "; "))
		}
		if _, dup := ports[p.Name]; dup {
			t.Errorf("duplicate container port name %q", p.Name)
		}
		ports[p.Name] = p.ContainerPort
	}
	for _, pr := range []struct {
		what  string
		probe *corev1.Probe
		path  string
	}{{"readiness", c.ReadinessProbe, "/readyz"}, {"liveness", c.LivenessProbe, "/healthz"}, {"startup", c.StartupProbe, "/healthz"}} {
		if pr.probe == nil || pr.probe.HTTPGet == nil || pr.probe.HTTPGet.Path != pr.path || pr.probe.HTTPGet.Port != intstr.FromString("admin") {
			t.Errorf("%s probe %+v: want GET %s on the admin port", pr.what, pr.probe, pr.path)
		}
	}
	if _, ok := ports["admin"]; !ok {
		t.Error("no container port named admin for the probes")
	}
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Sleep == nil || c.Lifecycle.PreStop.Sleep.Seconds <= 0 {
		t.Errorf("lifecycle %+v: want a preStop sleep (the image has no shell)", c.Lifecycle)
	} else if g := pod.TerminationGracePeriodSeconds; g == nil || *g <= c.Lifecycle.PreStop.Sleep.Seconds {
		t.Errorf("terminationGracePeriodSeconds %v must exceed the preStop sleep (%d s) to leave time for the shutdown", g, c.Lifecycle.PreStop.Sleep.Seconds)
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("resources %+v: want cpu and memory requests and a memory limit", c.Resources)
	}

	// How the binary is started and fed.
	if !slices.Contains(c.Args, "--expand-env") || !slices.Contains(c.Args, "--config=/etc/sitebridge/sitebridge.yaml") || c.Args[0] != "run" {
		t.Errorf("args %q: want run --config=/etc/sitebridge/sitebridge.yaml --expand-env", c.Args)
	}
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
	}
	for name, field := range map[string]string{"POD_NAME": "metadata.name", "POD_IP": "status.podIP"} {
		if e := env[name]; e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != field {
			t.Errorf("env %s: %+v, want the downward API's %s", name, e, field)
		}
	}
	if e := env["SITEBRIDGE_ADMIN_TOKEN"]; e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
		t.Errorf("env SITEBRIDGE_ADMIN_TOKEN: %+v, want a secret key", e)
	}
	vols := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		vols[v.Name] = v
	}
	mounts := map[string]string{}
	for _, vm := range c.VolumeMounts {
		if !vm.ReadOnly {
			t.Errorf("volume %s is mounted writable", vm.Name)
		}
		mounts[vm.MountPath] = vm.Name
	}
	if v := vols[mounts["/etc/sitebridge"]]; v.ConfigMap == nil || v.ConfigMap.Name != m.configMaps[0].Name || m.configMaps[0].Data["sitebridge.yaml"] == "" {
		t.Errorf("/etc/sitebridge is not the ConfigMap holding sitebridge.yaml: %+v", v)
	}
	if spec.Template.Annotations["checksum/config"] == "" {
		t.Error("no checksum/config annotation: a config change would not roll the pods")
	}
	checkTLSVolume(t, tc, m, full, vols["tls"])

	// Services: each selects the pods and reaches a container port.
	for _, s := range m.services {
		want := labels.Set{}
		for k, v := range s.Spec.Selector {
			if k != "statefulset.kubernetes.io/pod-name" {
				want[k] = v
			}
		}
		if len(want) == 0 || !labels.SelectorFromSet(want).Matches(podLabels) {
			t.Errorf("service %s selector %v does not select the pods %v", s.Name, s.Spec.Selector, podLabels)
		}
		for _, p := range s.Spec.Ports {
			tp := p.TargetPort
			if tp.Type == intstr.String {
				if _, ok := ports[tp.StrVal]; !ok {
					t.Errorf("service %s port %s: target %q is no container port", s.Name, p.Name, tp.StrVal)
				}
			} else if !slices.Contains(mapsValues(ports), tp.IntVal) {
				t.Errorf("service %s port %s: target %d is no container port", s.Name, p.Name, tp.IntVal)
			}
		}
	}

	// Tunnels.
	tunnelSvc := m.service(full + "-tunnel")
	_, tunnelPort := ports["tunnel"]
	var perPod []*corev1.Service
	for _, s := range m.services {
		if pn := s.Spec.Selector["statefulset.kubernetes.io/pod-name"]; pn != "" {
			perPod = append(perPod, s)
			if s.Name != pn+"-tunnel" || !s.Spec.PublishNotReadyAddresses {
				t.Errorf("per-pod service %s for %s: want name %s-tunnel and publishNotReadyAddresses", s.Name, pn, pn)
			}
		}
	}
	switch {
	case tc.accepting:
		if !tunnelPort {
			t.Error("accepting site without a tunnel container port")
		}
		if tunnelSvc != nil && !tunnelSvc.Spec.PublishNotReadyAddresses {
			t.Error("the tunnel service hides unready pods: an accepting pod is ready only once the other site has dialled it")
		}
		if tc.perPod && len(perPod) != tc.replicas {
			t.Errorf("%d per-pod tunnel services, want %d", len(perPod), tc.replicas)
		}
		for i, s := range perPod {
			if want := fmt.Sprintf("%s-%d", full, i); s.Spec.Selector["statefulset.kubernetes.io/pod-name"] != want {
				t.Errorf("per-pod service %d selects %q, want %s", i, s.Spec.Selector["statefulset.kubernetes.io/pod-name"], want)
			}
		}
	default:
		if tunnelPort || tunnelSvc != nil || len(perPod) > 0 {
			t.Error("a connecting site renders a tunnel listener or service")
		}
	}
	if !tc.perPod && len(perPod) > 0 {
		t.Errorf("%d per-pod services without perPodServices", len(perPod))
	}

	// The accept service publishes ready pods only.
	if s := m.service(full); s != nil && s.Spec.PublishNotReadyAddresses {
		t.Error("the accept service publishes unready pods (which have no tunnel yet)")
	}
}

func mapsValues(m map[string]int32) []int32 {
	var out []int32
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

// checkAntiAffinity checks the default spreading: soft prefers other
// nodes and zones; hard requires another node and prefers another zone.
func checkAntiAffinity(t *testing.T, mode string, a *corev1.Affinity, podLabels labels.Set) {
	t.Helper()
	if mode == "none" {
		return
	}
	if a == nil || a.PodAntiAffinity == nil {
		t.Fatalf("no pod anti-affinity (mode %s)", mode)
	}
	pa := a.PodAntiAffinity
	selects := func(ls *metav1.LabelSelector) bool {
		s, err := metav1.LabelSelectorAsSelector(ls)
		return err == nil && !s.Empty() && s.Matches(podLabels)
	}
	preferred := map[string]bool{}
	for _, w := range pa.PreferredDuringSchedulingIgnoredDuringExecution {
		if selects(w.PodAffinityTerm.LabelSelector) && w.Weight > 0 {
			preferred[w.PodAffinityTerm.TopologyKey] = true
		}
	}
	required := map[string]bool{}
	for _, r := range pa.RequiredDuringSchedulingIgnoredDuringExecution {
		if selects(r.LabelSelector) {
			required[r.TopologyKey] = true
		}
	}
	if !preferred["topology.kubernetes.io/zone"] {
		t.Errorf("anti-affinity (%s) does not spread across zones: %+v", mode, pa)
	}
	node := "kubernetes.io/hostname"
	if mode == "hard" && !required[node] || mode == "soft" && (!preferred[node] || required[node]) {
		t.Errorf("anti-affinity (%s) across nodes: preferred %v required %v", mode, preferred, required)
	}
}

// checkTLSVolume checks that the certificate volume holds a pair per
// ordinal below maxReplicas, named as the config expects.
func checkTLSVolume(t *testing.T, tc renderCase, m *manifests, full string, v corev1.Volume) {
	t.Helper()
	paths := map[string]bool{}
	switch {
	case tc.certManager:
		if v.Projected == nil {
			t.Fatalf("tls volume %+v: want a projected volume of the cert-manager Secrets", v)
		}
		var secrets []string
		for _, src := range v.Projected.Sources {
			if src.Secret == nil {
				t.Errorf("tls volume source %+v is not a Secret", src)
				continue
			}
			secrets = append(secrets, src.Secret.Name)
			for _, it := range src.Secret.Items {
				paths[it.Path] = true
			}
		}
		if len(m.certificates) != tc.maxReplicas {
			t.Errorf("%d Certificates, want one per ordinal below maxReplicas (%d)", len(m.certificates), tc.maxReplicas)
		}
		for _, c := range m.certificates {
			if !slices.Contains(secrets, c.Spec.SecretName) {
				t.Errorf("Certificate %s writes Secret %s, which the pods do not mount", c.Name, c.Spec.SecretName)
			}
		}
	default:
		if v.Secret == nil {
			t.Fatalf("tls volume %+v: want the site Secret", v)
		}
		for _, it := range v.Secret.Items {
			paths[it.Path] = true
		}
		if len(m.certificates)+len(m.issuers) > 0 {
			t.Error("cert-manager resources without certManager.enabled")
		}
	}
	want := []string{"ca.crt", "gossip.key"}
	for i := range tc.maxReplicas {
		want = append(want, fmt.Sprintf("%s-%d.crt", full, i), fmt.Sprintf("%s-%d.key", full, i))
	}
	for _, p := range want {
		if !paths[p] {
			t.Errorf("tls volume has no %s", p)
		}
	}
	if len(paths) != len(want) {
		t.Errorf("tls volume holds %d files, want %d: %v", len(paths), len(want), paths)
	}
}
