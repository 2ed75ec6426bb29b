{{/*
Standard helpers (prometheus-community naming). Selectors use only name, instance and component:
they never change with the chart version or the image tag, so upgrades never orphan pods.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "earshot.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The prefix of every resource name: fullnameOverride, or <release>-<chart> (the release alone when it already contains the chart name). */}}
{{- define "earshot.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* chart-version label value */}}
{{- define "earshot.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of a component: call with (dict "ctx" $ "component" "operator"). */}}
{{- define "earshot.selectorLabels" -}}
app.kubernetes.io/name: {{ include "earshot.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* All labels of a component's resources: selector labels plus the ones that may change. */}}
{{- define "earshot.labels" -}}
{{ include "earshot.selectorLabels" . }}
helm.sh/chart: {{ include "earshot.chart" .ctx }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: earshot
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* A component's resource name: (dict "ctx" $ "component" "operator") -> <fullname>-operator. */}}
{{- define "earshot.componentName" -}}
{{- printf "%s-%s" (include "earshot.fullname" .ctx) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* An image reference from {repository, tag}; the tag defaults to the chart's appVersion. */}}
{{- define "earshot.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{- define "earshot.operatorServiceAccount" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "earshot.componentName" (dict "ctx" . "component" "operator")) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- required "operator.serviceAccount.name is required when create is false" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Name of the Secret holding redis-url and mysql-url. */}}
{{- define "earshot.storageSecret" -}}
{{- default (include "earshot.componentName" (dict "ctx" . "component" "storage")) .Values.storage.existingSecret -}}
{{- end -}}

{{/* Name of the Secret holding the Talk ExApp's app-secret and internal-secret. */}}
{{- define "earshot.talkSecret" -}}
{{- default (include "earshot.componentName" (dict "ctx" . "component" "talk")) .Values.talk.existingSecret -}}
{{- end -}}

{{/* The gRPC endpoint of a Triton pool: (dict "ctx" $ "pool" "cpu"). */}}
{{- define "earshot.tritonUrl" -}}
{{- printf "%s.%s.svc:8001" (include "earshot.componentName" (dict "ctx" .ctx "component" (printf "triton-%s" .pool))) .ctx.Release.Namespace -}}
{{- end -}}

{{/* API version of PodDisruptionBudget: policy/v1 from Kubernetes 1.21, else policy/v1beta1. */}}
{{- define "earshot.pdbApiVersion" -}}
{{- if .Capabilities.APIVersions.Has "policy/v1" -}}
policy/v1
{{- else -}}
policy/v1beta1
{{- end -}}
{{- end -}}

{{/* API version of HorizontalPodAutoscaler: autoscaling/v2 from Kubernetes 1.23, else v2beta2. */}}
{{- define "earshot.hpaApiVersion" -}}
{{- if .Capabilities.APIVersions.Has "autoscaling/v2" -}}
autoscaling/v2
{{- else -}}
autoscaling/v2beta2
{{- end -}}
{{- end -}}

{{/* Whether the Prometheus Operator's API is served. */}}
{{- define "earshot.hasMonitoringApi" -}}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" -}}true{{- end -}}
{{- end -}}

{{/* Pod security context shared by earshot's own pods (non-root, RuntimeDefault seccomp). */}}
{{- define "earshot.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
fsGroup: {{ .uid }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container security context: read-only root, no privilege escalation, no capabilities. */}}
{{- define "earshot.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/*
Relabelings of every scrape of the chart's monitors: a `release` label on every series (the
dashboards' Release variable) and, when monitoring.serviceMonitor.cluster is set, a `cluster` label
(for a Prometheus without that external label).
*/}}
{{- define "earshot.scrapeRelabelings" -}}
- action: replace
  targetLabel: release
  replacement: {{ .Release.Name | quote }}
{{- with .Values.monitoring.serviceMonitor.cluster }}
- action: replace
  targetLabel: cluster
  replacement: {{ . | quote }}
{{- end }}
{{- end }}

{{/*
The startup and liveness probes of every long-running container the chart makes, the same as the
operator gives its gateway pods (operator/earshot_operator/manifests.py, _startup and _liveness).
Argument: a dict with "path" and "port".

Startup: up to 5 min to start before the liveness probe counts: on a busy node a start can be
slow, and a liveness probe that restarts it only makes it start again (30 sessions on 2 cores: 6
to 12 restarts each without one, none with it; bench/reports/cluster_sessions.md). So the liveness
probe has no initialDelaySeconds.
*/}}
{{- define "earshot.startupProbe" -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
periodSeconds: 5
failureThreshold: 60
{{- end -}}

{{/*
Liveness, once started: three missed answers in a row (30 s) restart the container, a wedged
process, not one slow moment. Each answer may take 5 s (Kubernetes' default is 1 s), which a
process on a busy 2-core node can need.
*/}}
{{- define "earshot.livenessProbe" -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
periodSeconds: 10
timeoutSeconds: 5
failureThreshold: 3
{{- end -}}
