{{/* The chart's name, and the release's full name (truncated to 63 characters). */}}
{{- define "shazamq-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "shazamq-operator.fullname" -}}
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

{{- define "shazamq-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "shazamq-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "shazamq-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shazamq-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "shazamq-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "shazamq-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: shazamq
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "shazamq-operator.namespaces" -}}
{{- $namespaces := list }}
{{- range splitList "," .Values.watchNamespace }}
{{- if trim . }}{{ $namespaces = append $namespaces (trim .) }}{{ end }}
{{- end }}
{{- join "," $namespaces }}
{{- end }}

{{/*
RBAC rules on the watched namespaces: the ShazamqClusters, every kind the operator creates
for them, the pods (broker readiness; deleted one at a time by the rolling restart), events,
and Kopf's namespaced peering objects.
Secrets: create only. The operator creates each cluster's quorum secret once and, when it
exists already (409), leaves it alone; it never reads, lists or changes a Secret.
*/}}
{{- define "shazamq-operator.namespacedRules" -}}
- apiGroups: ["shazamq.io"]
  resources: ["shazamqclusters"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["shazamq.io"]
  resources: ["shazamqclusters/status"]
  verbs: ["get", "update", "patch"]
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "delete"]
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors", "prometheusrules"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list"]
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}

{{/* RBAC rules that are cluster-wide in any case: Kopf discovers and watches CRDs. */}}
{{- define "shazamq-operator.clusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- end }}

{{/* Extra cluster-wide rules when watching every namespace: namespaces and Kopf's peering. */}}
{{- define "shazamq-operator.clusterwideRules" -}}
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
