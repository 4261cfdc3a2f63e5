{{/*
The chart's name.
*/}}
{{- define "sitebridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The full name: the StatefulSet's name and the prefix of every pod, and so of
every instance name (<fullname>-<ordinal>). Not truncated: a name that is too
long is refused by sitebridge.validate instead of silently shortened.
*/}}
{{- define "sitebridge.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "sitebridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sitebridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sitebridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sitebridge.labels" -}}
helm.sh/chart: {{ include "sitebridge.chart" . }}
{{ include "sitebridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sitebridge
sitebridge.io/site: {{ .Values.site | quote }}
{{- end -}}

{{/* The headless Service: the StatefulSet's governing service and the cluster's join address. */}}
{{- define "sitebridge.headless" -}}
{{- printf "%s-headless" (include "sitebridge.fullname" .) -}}
{{- end -}}

{{- define "sitebridge.headlessFQDN" -}}
{{- printf "%s.%s.svc.%s" (include "sitebridge.headless" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{- define "sitebridge.secretName" -}}
{{- default (printf "%s-tls" (include "sitebridge.fullname" .)) .Values.tls.secretName -}}
{{- end -}}

{{- define "sitebridge.adminTokenSecret" -}}
{{- default (include "sitebridge.secretName" .) .Values.admin.tokenSecret.name -}}
{{- end -}}

{{- define "sitebridge.clusterName" -}}
{{- default (include "sitebridge.fullname" .) .Values.cluster.name -}}
{{- end -}}

{{- define "sitebridge.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (toString .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
The tunnel URL each pod advertises, with ${POD_NAME} left for the pod to
fill in.
*/}}
{{- define "sitebridge.advertise" -}}
{{- if .Values.tunnel.advertise -}}
{{- .Values.tunnel.advertise -}}
{{- else -}}
{{- printf "wss://${POD_NAME}.%s:%d%s" (include "sitebridge.headlessFQDN" .) (int .Values.tunnel.port) .Values.tunnel.path -}}
{{- end -}}
{{- end -}}

{{/*
The issuer cert-manager uses: issuerRef, or the CA Issuer the chart creates.
*/}}
{{- define "sitebridge.issuerRef" -}}
{{- $cm := .Values.certManager -}}
{{- if $cm.issuerRef.name -}}
name: {{ $cm.issuerRef.name }}
kind: {{ $cm.issuerRef.kind }}
group: {{ $cm.issuerRef.group }}
{{- else -}}
name: {{ include "sitebridge.fullname" . }}-ca
kind: Issuer
group: cert-manager.io
{{- end -}}
{{- end -}}

{{/*
The SANs of one pod's certificate, as YAML {uri, dns: [...], ips: [...]}.
Called with (dict "root" $ "pod" NAME). The same names go into the
cert-manager Certificates and into the tlsgen spec that NOTES.txt prints.
*/}}
{{- define "sitebridge.podSANs" -}}
{{- $root := .root -}}
{{- $pod := .pod -}}
{{- $v := $root.Values -}}
{{- $path := printf "/site/%s/instance/%s" $v.site $pod -}}
{{- if $v.tenant }}{{ $path = printf "/tenant/%s%s" $v.tenant $path }}{{ end -}}
{{- $dns := list (printf "%s.%s" $pod (include "sitebridge.headlessFQDN" $root)) -}}
{{- $ips := list -}}
{{- if $v.tunnel.accept -}}
{{- $host := (urlParse (include "sitebridge.advertise" $root | replace "${POD_NAME}" $pod)).hostname -}}
{{- if regexMatch "^[0-9.]+$|:" $host -}}
{{- $ips = append $ips $host -}}
{{- else -}}
{{- $dns = append $dns $host -}}
{{- end -}}
{{- end -}}
{{- if $v.certManager.enabled -}}
{{- range $v.certManager.dnsNames }}{{ $dns = append $dns (replace "${POD_NAME}" $pod .) }}{{ end -}}
{{- range $v.certManager.ipAddresses }}{{ $ips = append $ips . }}{{ end -}}
{{- end -}}
{{- toYaml (dict "uri" (printf "spiffe://%s%s" $v.trustDomain $path) "dns" ($dns | uniq) "ips" ($ips | uniq)) -}}
{{- end -}}

{{/*
Accept services as a list of {name, port, portName, addr}: the port of each
accept address, the address the config binds ("0.0.0.0:PORT" for a bare
port) and a valid Kubernetes port name.
*/}}
{{- define "sitebridge.acceptPorts" -}}
{{- $out := list -}}
{{- range $i, $s := .Values.services -}}
{{- if hasKey $s "accept" -}}
{{- $a := toString $s.accept -}}
{{- if kindIs "float64" $s.accept }}{{ $a = printf "%d" (int64 $s.accept) }}{{ end -}}
{{- $addr := $a -}}
{{- if not (contains ":" $a) }}{{ $addr = printf "0.0.0.0:%s" $a }}{{ end -}}
{{- $port := regexFind "[0-9]+$" $addr -}}
{{- if not $port }}{{ fail (printf "services[%d].accept: %q has no port" $i $a) }}{{ end -}}
{{- $pn := $s.name | lower -}}
{{- if not (regexMatch "^[a-z0-9]([a-z0-9]|-[a-z0-9])*$" $pn) }}{{ $pn = "" }}{{ end -}}
{{- if or (gt (len $pn) 15) (not (regexMatch "[a-z]" $pn)) }}{{ $pn = printf "accept-%d" $i }}{{ end -}}
{{- $out = append $out (dict "name" $s.name "port" (atoi $port) "portName" $pn "addr" $addr) -}}
{{- end -}}
{{- end -}}
{{- toYaml (dict "ports" $out) -}}
{{- end -}}

{{/*
Checks the values and fails the render with a clear message.
*/}}
{{- define "sitebridge.validate" -}}
{{- $v := .Values -}}
{{- $full := include "sitebridge.fullname" . -}}
{{- if not (regexMatch "^[a-z]([a-z0-9-]*[a-z0-9])?$" $full) -}}
{{- fail (printf "the release's full name %q must be a-z, 0-9 and '-', starting with a letter (set fullnameOverride)" $full) -}}
{{- end -}}
{{- if gt (len $full) 52 -}}
{{- fail (printf "the release's full name %q is longer than 52 characters: pod names (and so instance names) would not fit (set fullnameOverride)" $full) -}}
{{- end -}}
{{- if not $v.site -}}
{{- fail "site is required: the name of the site this release runs (it must match the certificates)" -}}
{{- end -}}
{{- if not $v.peers -}}
{{- fail "peers is required: list the sites this one talks to (an accepting site without urls, a connecting site with them)" -}}
{{- end -}}
{{- if or (lt (int $v.replicaCount) 1) (gt (int $v.replicaCount) (int $v.maxReplicas)) -}}
{{- fail (printf "replicaCount (%d) must be from 1 to maxReplicas (%d): only ordinals below maxReplicas have certificates" (int $v.replicaCount) (int $v.maxReplicas)) -}}
{{- end -}}
{{- if and $v.tunnel.perPodServices.enabled (not $v.tunnel.accept) -}}
{{- fail "tunnel.perPodServices.enabled needs tunnel.accept: true (only an accepting site has tunnel listeners)" -}}
{{- end -}}
{{- if and $v.tunnel.advertise (not $v.tunnel.accept) -}}
{{- fail "tunnel.advertise is set but tunnel.accept is false" -}}
{{- end -}}
{{- if and $v.tunnel.accept $v.tunnel.perPodServices.enabled (not (contains "${POD_NAME}" (toString $v.tunnel.advertise))) -}}
{{- fail "tunnel.perPodServices.enabled: tunnel.advertise must name each pod with ${POD_NAME}, such as wss://${POD_NAME}.cloud.example.com:8443/sitebridge, resolving to the pod's own Service" -}}
{{- end -}}
{{- if not (has $v.podAntiAffinity (list "soft" "hard" "none")) -}}
{{- fail (printf "podAntiAffinity must be soft, hard or none, got %q" $v.podAntiAffinity) -}}
{{- end -}}
{{- if and $v.certManager.enabled (not $v.certManager.issuerRef.name) (not $v.certManager.createCAIssuer.enabled) -}}
{{- fail "certManager.enabled: set certManager.issuerRef.name, or certManager.createCAIssuer.enabled with its secretName" -}}
{{- end -}}
{{- if and $v.certManager.createCAIssuer.enabled (not $v.certManager.createCAIssuer.secretName) -}}
{{- fail "certManager.createCAIssuer.secretName is required: the Secret holding your CA's tls.crt and tls.key" -}}
{{- end -}}
{{- if not (has $v.certManager.caFrom (list "issuer" "secret")) -}}
{{- fail (printf "certManager.caFrom must be issuer or secret, got %q" $v.certManager.caFrom) -}}
{{- end -}}
{{- $reserved := dict (toString (int $v.admin.port)) "admin.port" (toString (int $v.cluster.gossipPort)) "cluster.gossipPort" (toString (int $v.cluster.relayPort)) "cluster.relayPort" -}}
{{- if $v.tunnel.accept }}{{ $_ := set $reserved (toString (int $v.tunnel.port)) "tunnel.port" }}{{ end -}}
{{- if ne (len $reserved) (ternary 4 3 $v.tunnel.accept) -}}
{{- fail "admin.port, cluster.gossipPort, cluster.relayPort and tunnel.port must all differ" -}}
{{- end -}}
{{- range (include "sitebridge.acceptPorts" . | fromYaml).ports -}}
{{- $host := regexReplaceAll ":[0-9]+$" .addr "" -}}
{{- if not (has $host (list "" "0.0.0.0" "[::]" "${POD_IP}")) -}}
{{- fail (printf "service %s accepts on %s: bind 0.0.0.0 (or give just the port) so that the Service reaches it" .name .addr) -}}
{{- end -}}
{{- $k := toString .port -}}
{{- if hasKey $reserved $k -}}
{{- fail (printf "service %s accepts on port %s, which is %s" .name $k (get $reserved $k)) -}}
{{- end -}}
{{- $_ := set $reserved $k (printf "service %s" .name) -}}
{{- end -}}
{{- end -}}

{{/*
The instance config shared by every pod. ${POD_NAME}, ${POD_IP} and
${SITEBRIDGE_ADMIN_TOKEN} are filled in by each pod at start
('sitebridge run --expand-env').
*/}}
{{- define "sitebridge.config" -}}
{{- $v := .Values -}}
{{- $mp := trimSuffix "/" $v.tls.mountPath -}}
{{- $cfg := dict "instance" "${POD_NAME}" "site" $v.site "trust-domain" $v.trustDomain "mode" $v.mode -}}
{{- if $v.tenant }}{{ $_ := set $cfg "tenant" $v.tenant }}{{ end -}}
{{- $_ := set $cfg "tls" (dict "ca" (printf "%s/ca.crt" $mp) "cert" (printf "%s/${POD_NAME}.crt" $mp) "key" (printf "%s/${POD_NAME}.key" $mp)) -}}
{{- $tunnel := deepCopy ($v.config.tunnel | default dict) -}}
{{- if $v.tunnel.accept -}}
{{- $_ := set $tunnel "listen" (printf "0.0.0.0:%d" (int $v.tunnel.port)) -}}
{{- $_ := set $tunnel "path" $v.tunnel.path -}}
{{- $_ := set $tunnel "advertise" (include "sitebridge.advertise" .) -}}
{{- end -}}
{{- if $tunnel }}{{ $_ := set $cfg "tunnel" $tunnel }}{{ end -}}
{{- $_ := set $cfg "peers" $v.peers -}}
{{- $services := list -}}
{{- $acc := (include "sitebridge.acceptPorts" . | fromYaml).ports -}}
{{- $ai := 0 -}}
{{- range $v.services -}}
{{- $s := deepCopy . -}}
{{- if hasKey $s "accept" -}}
{{- $_ := set $s "accept" (index $acc $ai).addr -}}
{{- $ai = add1 $ai -}}
{{- end -}}
{{- $services = append $services $s -}}
{{- end -}}
{{- if $services }}{{ $_ := set $cfg "services" $services }}{{ end -}}
{{- $_ := set $cfg "admin" (dict "listen" (printf "0.0.0.0:%d" (int $v.admin.port))) -}}
{{- with $v.config.log }}{{ $_ := set $cfg "log" . }}{{ end -}}
{{- $_ := set $cfg "cluster" (dict
    "name" (include "sitebridge.clusterName" .)
    "bind" (printf "0.0.0.0:%d" (int $v.cluster.gossipPort))
    "advertise" (printf "${POD_IP}:%d" (int $v.cluster.gossipPort))
    "join" (list (printf "%s:%d" (include "sitebridge.headlessFQDN" .) (int $v.cluster.gossipPort)))
    "gossip-key" (printf "%s/gossip.key" $mp)
    "relay" (printf "0.0.0.0:%d" (int $v.cluster.relayPort))
    "relay-advertise" (printf "${POD_IP}:%d" (int $v.cluster.relayPort))) -}}
{{- range $k := list "limits" "store" "federation" -}}
{{- with index $v.config $k }}{{ $_ := set $cfg $k . }}{{ end -}}
{{- end -}}
{{- range $k := list "instance" "site" "tenant" "trust-domain" "mode" "tls" "tunnel" "peers" "services" "admin" "log" "cluster" "limits" "store" "federation" -}}
{{- if hasKey $cfg $k }}
{{ toYaml (dict $k (get $cfg $k)) }}
{{- if eq $k "admin" }}
  # Quoted: the token may hold characters that mean something in YAML.
  token: "${SITEBRIDGE_ADMIN_TOKEN}"
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The external-traffic fields of a Service, from a values block with type,
loadBalancerClass, loadBalancerSourceRanges and externalTrafficPolicy.
*/}}
{{- define "sitebridge.serviceExternal" -}}
{{- if eq .type "LoadBalancer" -}}
{{- with .loadBalancerClass }}
loadBalancerClass: {{ . }}
{{- end }}
{{- with .loadBalancerSourceRanges }}
loadBalancerSourceRanges:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
{{- if and (has .type (list "LoadBalancer" "NodePort")) .externalTrafficPolicy }}
externalTrafficPolicy: {{ .externalTrafficPolicy }}
{{- end -}}
{{- end -}}
