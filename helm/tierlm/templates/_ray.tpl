{{/* Ray pods of the RayService --------------------------------------------------------- */}}

{{/* The Ray image: the vLLM (CUDA) build when cloud.gpu.enabled, else the CPU image. Head and
workers use the same one: Serve imports the application on any node. */}}
{{- define "tierlm.ray.image" -}}
{{- $cloud := .Values.cloud -}}
{{- if $cloud.gpu.enabled -}}
{{- include "tierlm.image" (dict "root" . "image" $cloud.gpu.image "suffix" "-gpu") -}}
{{- else -}}
{{- include "tierlm.image" (dict "root" . "image" $cloud.image) -}}
{{- end -}}
{{- end -}}

{{/* Ray Serve's config (serveConfigV2). Serve reads it with PyYAML, hence tierlm.pyyaml. */}}
{{- define "tierlm.ray.serveConfig" -}}
{{- $serve := .Values.cloud.serve -}}
{{- $app := dict "name" $serve.applicationName "import_path" $serve.importPath "route_prefix" $serve.routePrefix "args" $serve.config -}}
{{- with $serve.deployments -}}
{{- $_ := set $app "deployments" . -}}
{{- end -}}
{{- $config := dict
      "proxy_location" "EveryNode"
      "http_options" (dict "host" "0.0.0.0" "port" $serve.httpPort)
      "grpc_options" (dict "port" $serve.grpcPort "grpc_servicer_functions" $serve.grpcServicerFunctions)
      "applications" (list $app) -}}
{{- include "tierlm.pyyaml" $config -}}
{{- end -}}


{{/* One Ray container. Call with (dict "root" $ "group" <head|worker values> "name" <name>
"ports" <extra ports list> "gpu" <bool>). KubeRay supplies the command (`ray start`) and the
probes (wget against the raylet, dashboard and Serve proxy), so the image needs bash and wget. */}}
{{- define "tierlm.ray.container" -}}
{{- $root := .root -}}
{{- $cloud := $root.Values.cloud -}}
{{- $resources := deepCopy .group.resources -}}
{{- if .gpu -}}
{{- $_ := set $resources.limits $cloud.gpu.resourceName $cloud.gpu.count -}}
{{- $_ := set $resources.requests $cloud.gpu.resourceName $cloud.gpu.count -}}
{{- end -}}
name: {{ .name }}
image: {{ include "tierlm.ray.image" $root }}
imagePullPolicy: {{ $root.Values.image.pullPolicy }}
env:
  {{- include "tierlm.baseEnv" $root | nindent 2 }}
  - name: RAY_USAGE_STATS_ENABLED
    value: "0"
  {{- with .group.env }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
ports:
  {{- with .ports }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
  - name: metrics
    containerPort: 8080
    protocol: TCP
resources:
  {{- toYaml $resources | nindent 2 }}
securityContext:
  {{- toYaml $root.Values.securityContext | nindent 2 }}
volumeMounts:
  - name: tmp
    mountPath: /tmp
{{- end -}}

{{/* Pod template of a Ray group. Call with (dict "root" $ "group" <values> "role" head|worker
"container" <container yaml>). */}}
{{- define "tierlm.ray.podTemplate" -}}
{{- $root := .root -}}
metadata:
  labels:
    {{- include "tierlm.labels" (dict "root" $root "component" "cloud") | nindent 4 }}
    tierlm.io/ray-node-type: {{ .role }}
    {{- with .group.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .group.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  {{- /* No serviceAccountName: KubeRay binds the autoscaler's RBAC to the head's account,
  which must not be the one the router and edge pods share. */}}
  {{- if eq .role "worker" }}
  automountServiceAccountToken: false
  {{- end }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with include "tierlm.scheduling" .group }}{{ . | nindent 2 }}{{ end }}
  containers:
    - {{ .container | indent 6 | trim }}
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: {{ $root.Values.cloud.tmpSizeLimit }}
{{- end -}}
