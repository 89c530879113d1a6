{{/* Names ------------------------------------------------------------------------------ */}}

{{- define "tierlm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release-derived base name; 40 characters leave room for every suffix below. */}}
{{- define "tierlm.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "tierlm.router.fullname" -}}{{ include "tierlm.fullname" . }}-router{{- end -}}
{{- define "tierlm.edge.fullname" -}}{{ include "tierlm.fullname" . }}-edge{{- end -}}
{{/* KubeRay caps RayService names at 47 characters; its serve Service is "<name>-serve-svc". */}}
{{- define "tierlm.cloud.fullname" -}}{{ include "tierlm.fullname" . }}-cloud{{- end -}}
{{- define "tierlm.cloud.serveService" -}}{{ include "tierlm.cloud.fullname" . }}-serve-svc{{- end -}}

{{- define "tierlm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tierlm.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels -------------------------------------------------------------------------------
Call with (dict "root" $ "component" "router"). */}}

{{- define "tierlm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tierlm.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "tierlm.labels" -}}
{{ include "tierlm.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: tierlm
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Images -------------------------------------------------------------------------------
Call with (dict "root" $ "image" <component image values> "suffix" "<tag suffix>"):
empty component fields fall back to the global image; the tag defaults to appVersion. */}}

{{- define "tierlm.image" -}}
{{- $global := .root.Values.image -}}
{{- $repository := default $global.repository .image.repository -}}
{{- $tag := .image.tag -}}
{{- if not $tag -}}
{{- $tag = printf "%s%s" (default .root.Chart.AppVersion $global.tag) (default "" .suffix) -}}
{{- end -}}
{{- printf "%s:%s" $repository $tag -}}
{{- end -}}

{{/* Pod and container plumbing ------------------------------------------------------------ */}}

{{- define "tierlm.podSpecCommon" -}}
serviceAccountName: {{ include "tierlm.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.serviceAccount.automountServiceAccountToken }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Pod scheduling fields that are set; call with the component's values. */}}
{{- define "tierlm.scheduling" -}}
{{- $scheduling := dict -}}
{{- range $field := list "nodeSelector" "tolerations" "affinity" "topologySpreadConstraints" -}}
{{- with index $ $field -}}
{{- $_ := set $scheduling $field . -}}
{{- end -}}
{{- end -}}
{{- with $scheduling -}}
{{- toYaml . -}}
{{- end -}}
{{- end -}}

{{/* Environment every tierlm container gets: a writable HOME on the /tmp emptyDir (the root
filesystem is read-only), the model cache baked into the image, and no hub downloads at run
time (weights come with the image or a volume). */}}
{{- define "tierlm.baseEnv" -}}
- name: HOME
  value: /tmp
- name: TIERLM_CACHE
  value: /models
- name: HF_HUB_OFFLINE
  value: "1"
- name: TRANSFORMERS_OFFLINE
  value: "1"
{{- end -}}

{{/* A probe on a gRPC port: the standard grpc.health.v1 service through the kubelet's native
gRPC probe, or TCP when the port serves TLS (the kubelet's gRPC probe cannot do TLS).
Call with (dict "root" $ "port" <port> "periodSeconds" <s> "failureThreshold" <n>). */}}
{{- define "tierlm.grpcProbe" -}}
{{- if .root.Values.tls.enabled -}}
tcpSocket:
  port: {{ .port }}
{{- else -}}
grpc:
  port: {{ .port }}
{{- end }}
periodSeconds: {{ .periodSeconds }}
timeoutSeconds: 5
failureThreshold: {{ .failureThreshold }}
{{- end -}}

{{/* Probes for a tierlm gRPC server: startup gives the model time to load, readiness takes a
pod out of its Service quickly, liveness restarts a wedged one. Call with
(dict "root" $ "port" <port> "probes" <component probes values>). */}}
{{- define "tierlm.serverProbes" -}}
startupProbe:
  {{- include "tierlm.grpcProbe" (dict "root" .root "port" .port "periodSeconds" .probes.periodSeconds "failureThreshold" .probes.startupFailureThreshold) | nindent 2 }}
readinessProbe:
  {{- include "tierlm.grpcProbe" (dict "root" .root "port" .port "periodSeconds" .probes.periodSeconds "failureThreshold" 2) | nindent 2 }}
livenessProbe:
  {{- include "tierlm.grpcProbe" (dict "root" .root "port" .port "periodSeconds" .probes.periodSeconds "failureThreshold" 3) | nindent 2 }}
{{- end -}}

{{/* Extra environment, volumes and mounts a component's values add (env, envFrom,
extraVolumes, extraVolumeMounts). Call with the component's values. */}}
{{- define "tierlm.envFrom" -}}
{{- with .envFrom }}
envFrom:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The server-side TLS flags of `tierlm ... serve`, as container args. */}}
{{- define "tierlm.tlsArgs" -}}
{{- if .Values.tls.enabled -}}
- --tls-cert
- /etc/tierlm/tls/tls.crt
- --tls-key
- /etc/tierlm/tls/tls.key
{{- end -}}
{{- end -}}

{{- define "tierlm.pdbSpec" -}}
{{- if not (kindIs "invalid" .minAvailable) -}}
minAvailable: {{ .minAvailable }}
{{- else -}}
maxUnavailable: {{ .maxUnavailable | default 1 }}
{{- end -}}
{{- end -}}

{{/* YAML for Python readers. Helm writes small floats as 1e-07, which PyYAML (YAML 1.1) reads
as a string; 1.0e-07 is a float to every YAML reader. */}}
{{- define "tierlm.pyyaml" -}}
{{- regexReplaceAll "(?m)(: |- )(-?[0-9]+)(e[-+][0-9]+)$" (toYaml .) "${1}${2}.0${3}" -}}
{{- end -}}

{{/* The router's policy ------------------------------------------------------------------
router.policy with every tier's address resolved: a tier without an address named "edge" or
"cloud" points at the chart's own Service; an in_router tier runs inside the router and has
none; anything else must say where it is. Checks what
would otherwise only fail inside the router, after the rollout: duplicate tier names, a
cascade naming an unknown tier, a default address for a component that is switched off. */}}
{{- define "tierlm.policy" -}}
{{- $root := . -}}
{{- $ns := .Release.Namespace -}}
{{- $tiers := list -}}
{{- $names := list -}}
{{- range $i, $tier := .Values.router.policy.tiers -}}
{{- if has $tier.name $names -}}
{{- fail (printf "router.policy.tiers[%d]: tier name %q is used twice" $i $tier.name) -}}
{{- end -}}
{{- $names = append $names $tier.name -}}
{{- $resolved := deepCopy $tier -}}
{{- if not (or $tier.address $tier.in_router) -}}
{{- if eq $tier.name "edge" -}}
{{- if not $root.Values.edge.enabled -}}
{{- fail (printf "router.policy.tiers[%d] (edge) has no address and edge.enabled is false: set its address or remove the tier" $i) -}}
{{- end -}}
{{- /* The edge Service is headless: this name resolves to every ready edge pod, and the router's
round-robin channel spreads calls over them. */ -}}
{{- $edgeHost := printf "%s.%s.svc" (include "tierlm.edge.fullname" $root) $ns -}}
{{- $_ := set $resolved "address" (printf "dns:///%s:%v" $edgeHost $root.Values.edge.ports.grpc) -}}
{{- if and $root.Values.tls.enabled (not $tier.tls) -}}
{{- $_ := set $resolved "tls" (dict "ca_file" "/etc/tierlm/tls/ca.crt" "server_name" $edgeHost) -}}
{{- end -}}
{{- else if eq $tier.name "cloud" -}}
{{- if not $root.Values.cloud.enabled -}}
{{- fail (printf "router.policy.tiers[%d] (cloud) has no address and cloud.enabled is false: set its address or remove the tier" $i) -}}
{{- end -}}
{{- $_ := set $resolved "address" (printf "%s.%s.svc:%v" (include "tierlm.cloud.serveService" $root) $ns $root.Values.cloud.serve.grpcPort) -}}
{{- else -}}
{{- fail (printf "router.policy.tiers[%d] (%s): set address; only the tiers named edge and cloud default to the chart's Services" $i $tier.name) -}}
{{- end -}}
{{- end -}}
{{- $tiers = append $tiers $resolved -}}
{{- end -}}
{{- range $name := .Values.router.policy.cascade.order -}}
{{- if not (has $name $names) -}}
{{- fail (printf "router.policy.cascade.order names %q, which is not in router.policy.tiers (%s)" $name (join ", " $names)) -}}
{{- end -}}
{{- end -}}
{{- $policy := deepCopy .Values.router.policy -}}
{{- $_ := set $policy "tiers" $tiers -}}
{{- include "tierlm.pyyaml" $policy -}}
{{- end -}}

{{- define "tierlm.tenantsSecretName" -}}
{{- default (printf "%s-tenants" (include "tierlm.router.fullname" .)) .Values.router.tenants.existingSecret -}}
{{- end -}}

{{- define "tierlm.tenantsSecretKey" -}}
{{- if .Values.router.tenants.existingSecret -}}
{{- .Values.router.tenants.existingSecretKey -}}
{{- else -}}
tenants.yaml
{{- end -}}
{{- end -}}
