{{/*
Names, labels and the pieces shared by several templates.
*/}}

{{/* The chart name (nameOverride wins), at most 63 characters. */}}
{{- define "synthpref.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the resources: fullnameOverride, else the release name when it already
contains the chart name, else "<release>-<chart>"; at most 63 characters (a DNS label).
It also names the leader-election Lease.
*/}}
{{- define "synthpref.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "<chart>-<version>" for the helm.sh/chart label. */}}
{{- define "synthpref.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator pods (never change them on upgrade). */}}
{{- define "synthpref.selectorLabels" -}}
app.kubernetes.io/name: {{ include "synthpref.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The standard labels of every resource. */}}
{{- define "synthpref.labels" -}}
helm.sh/chart: {{ include "synthpref.chart" . }}
{{ include "synthpref.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: synthpref
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The operator's ServiceAccount name. */}}
{{- define "synthpref.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "synthpref.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image reference. */}}
{{- define "synthpref.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
The watched namespaces as a JSON list (use with fromJsonArray): watchNamespaces, or the
release namespace when empty. Meaningless with clusterWide (checked in "synthpref.validate").
*/}}
{{- define "synthpref.watchNamespaces" -}}
{{- $namespaces := .Values.watchNamespaces | default (list .Release.Namespace) | uniq }}
{{- toJson $namespaces }}
{{- end }}

{{/*
The operator settings as the JSON of SYNTHPREF_OPERATOR_SETTINGS (camelCase keys, see
`synthpref operator run --settings-json`): the worker defaults and what runs may use
(security.limits flattened to maxModels, maxReplicas, ... at the top level).
*/}}
{{- define "synthpref.workerSettings" -}}
{{- $w := .Values.workers }}
{{- $s := .Values.security }}
{{- $l := $s.limits | default (dict) }}
{{- $settings := dict
  "image" $w.image
  "cpuImage" $w.cpuImage
  "imagePullPolicy" $w.imagePullPolicy
  "gpuResource" $w.gpuResource
  "gpuNodeSelector" ($w.gpuNodeSelector | default (dict))
  "gpuTolerations" ($w.gpuTolerations | default (list))
  "extraEnv" ($w.env | default (dict))
  "workerUserId" $w.runAsUser
  "allowedEndpoints" ($s.allowedEndpoints | default (list))
  "allowedImagePrefixes" ($s.allowedImagePrefixes | default (list))
  "allowedServiceAccounts" ($s.allowedServiceAccounts | default (list))
  "operatorApiKeyNamespaces" ($s.operatorApiKeyNamespaces | default (list))
  "operatorStorage" ($s.operatorStorage | default (dict))
  "allowLocalPaths" ($s.allowLocalPaths | default false)
  "allowedPriorityClasses" ($s.allowedPriorityClasses | default (list))
  "allowedTolerations" ($s.allowedTolerations | default (list))
  "allowedNodeLabels" ($s.allowedNodeLabels | default (list))
  "maxModels" $l.maxModels
  "maxReplicas" $l.maxReplicas
  "maxShards" $l.maxShards
  "maxStorageObjectBytes" $l.maxStorageObjectBytes
  "maxListedKeys" $l.maxListedKeys
  "secretNames" (.Values.rbac.secretNames | default (list))
  "deletionTimeoutSeconds" .Values.operator.deletionTimeoutSeconds
}}
{{- toJson $settings }}
{{- end }}

{{/*
The rules of the operator in a watched namespace: exactly the API calls it makes (see the
chart README / INTERFACE): no delete verbs, no list or watch of Secrets.
*/}}
{{- define "synthpref.rules" -}}
- apiGroups: ["synthpref.dev"]
  resources: ["preferenceruns"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["synthpref.dev"]
  resources: ["preferenceruns/status"]
  verbs: ["get", "update", "patch"]
- apiGroups: ["synthpref.dev"]
  resources: ["modelcatalogs"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
  {{- with .Values.rbac.secretNames }}
  resourceNames:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* Fail early on values the schema cannot express. */}}
{{- define "synthpref.validate" -}}
{{- if and .Values.clusterWide .Values.watchNamespaces }}
{{- fail "clusterWide: true watches every namespace: leave watchNamespaces empty" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not (and .Values.metrics.enabled .Values.metrics.service.enabled)) }}
{{- fail "serviceMonitor.enabled scrapes the metrics Service: it needs metrics.enabled and metrics.service.enabled" }}
{{- end }}
{{- if and .Values.prometheusRule.enabled (not .Values.metrics.enabled) }}
{{- fail "prometheusRule.enabled alerts on the operator's metrics: it needs metrics.enabled" }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicaCount > 1 needs leaderElection.enabled: true (otherwise every replica acts)" }}
{{- end }}
{{- with .Values.leaderElection }}
{{- if .enabled }}
{{- if le (int .leaseDurationSeconds) (int .renewDeadlineSeconds) }}
{{- fail "leaderElection.leaseDurationSeconds must be more than leaderElection.renewDeadlineSeconds" }}
{{- end }}
{{- if le (mulf (int .renewDeadlineSeconds) 1.0) (mulf (int .retryPeriodSeconds) 1.2) }}
{{- fail "leaderElection.renewDeadlineSeconds must be more than 1.2 x leaderElection.retryPeriodSeconds" }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
