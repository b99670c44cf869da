{{- define "regnorm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "regnorm.fullname" -}}
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

{{- define "regnorm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "regnorm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* node-config's pods: a name of their own, so that no selector of the
server's (Service, PodDisruptionBudget, NetworkPolicy) picks them. */}}
{{- define "regnorm.nodeConfigSelectorLabels" -}}
app.kubernetes.io/name: {{ include "regnorm.name" . }}-node-config
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: node-config
{{- end }}

{{- define "regnorm.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "regnorm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "regnorm.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "regnorm.secretName" -}}
{{- .Values.credentials.existingSecret | default (printf "%s-credentials" (include "regnorm.fullname" .)) }}
{{- end }}

{{/* http, or https with tls.secretName. */}}
{{- define "regnorm.scheme" -}}
{{- if .Values.tls.secretName }}https{{ else }}http{{ end }}
{{- end }}

{{/* The URL the nodes' containerd reaches regnorm at. */}}
{{- define "regnorm.mirrorEndpoint" -}}
{{- $scheme := include "regnorm.scheme" . }}
{{- if .Values.nodeConfig.endpoint }}
{{- .Values.nodeConfig.endpoint }}
{{- else if and (eq .Values.service.type "NodePort") .Values.service.nodePort }}
{{- printf "%s://127.0.0.1:%v" $scheme .Values.service.nodePort }}
{{- else if .Values.service.clusterIP }}
{{- printf "%s://%s:%v" $scheme .Values.service.clusterIP .Values.service.port }}
{{- else }}
{{- fail "nodeConfig needs an address the nodes can reach: set nodeConfig.endpoint, service.clusterIP, or service.type=NodePort with service.nodePort" }}
{{- end }}
{{- end }}

{{/* The URL node-config reports to from its pod. */}}
{{- define "regnorm.reportTo" -}}
{{- .Values.nodeConfig.reportTo | default (printf "%s://%s.%s.svc:%v" (include "regnorm.scheme" .) (include "regnorm.fullname" .) .Release.Namespace .Values.service.port) }}
{{- end }}

{{/* Whether node-config reports to regnorm: then both hold the node report
token. */}}
{{- define "regnorm.nodeReports" -}}
{{- if and .Values.nodeConfig.enabled .Values.nodeConfig.report }}true{{ end }}
{{- end }}

{{/* The Secret holding the node report token: the operator's, or the one
the chart makes. */}}
{{- define "regnorm.reportTokenSecret" -}}
{{- .Values.nodeConfig.reportToken.secretName | default (printf "%s-node-report" (include "regnorm.fullname" .)) }}
{{- end }}

{{- define "regnorm.reportTokenKey" -}}
{{- if .Values.nodeConfig.reportToken.secretName }}{{ .Values.nodeConfig.reportToken.key }}{{ else }}token{{ end }}
{{- end }}

{{/* Whether the replicas share the cache's work (replicas.share; empty:
when several replicas serve one S3 cache). */}}
{{- define "regnorm.sharing" -}}
{{- $share := .Values.replicas.share }}
{{- if kindIs "bool" $share }}
{{- if $share }}
{{- if ne .Values.cache.driver "s3" }}
{{- fail "replicas.share: replicas share the work of one S3 cache; with the filesystem cache there is one replica" }}
{{- end }}
{{- true }}
{{- end }}
{{- else if not (eq (toString $share) "") }}
{{- fail "replicas.share must be true, false or empty (on with replicaCount > 1 and cache.driver s3)" }}
{{- else if and (gt (int .Values.replicaCount) 1) (eq .Values.cache.driver "s3") }}
{{- true }}
{{- end }}
{{- end }}

{{/* The headless Service whose addresses are the ready replicas. */}}
{{- define "regnorm.replicasService" -}}
{{- printf "%s-replicas" (include "regnorm.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{/* The Secret holding the replicas' shared secret: the operator's, or the
one the chart makes. */}}
{{- define "regnorm.replicasSecret" -}}
{{- .Values.replicas.secret.secretName | default (include "regnorm.replicasService" .) }}
{{- end }}

{{- define "regnorm.replicasSecretKey" -}}
{{- if .Values.replicas.secret.secretName }}{{ .Values.replicas.secret.key }}{{ else }}secret{{ end }}
{{- end }}

{{/* The Secret holding the webhook's serving certificate: the operator's,
or the one the chart (or cert-manager) makes. */}}
{{- define "regnorm.webhookSecret" -}}
{{- .Values.webhook.tls.secretName | default (printf "%s-webhook-tls" (include "regnorm.fullname" . | trunc 51 | trimSuffix "-")) }}
{{- end }}

{{/* The webhook's own Service: ClusterIP whatever service.type is, so that
no node port or load balancer carries the webhook's port. */}}
{{- define "regnorm.webhookService" -}}
{{- printf "%s-webhook" (include "regnorm.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/* The name the API server calls the webhook by: its Service's DNS name. */}}
{{- define "regnorm.webhookHost" -}}
{{- printf "%s.%s.svc" (include "regnorm.webhookService" .) .Release.Namespace }}
{{- end }}

{{/* The webhook's client CA (webhook.clientCA): the volume regnorm reads
webhook.clientCAFile from; empty when none is set. */}}
{{- define "regnorm.webhookClientCA" -}}
{{- $c := .Values.webhook.clientCA }}
{{- $n := 0 }}
{{- range (list $c.secretName $c.configMapName $c.pem) }}{{ if . }}{{ $n = add1 $n }}{{ end }}{{ end }}
{{- if gt $n 1 }}
{{- fail "webhook.clientCA: set one of secretName, configMapName and pem" }}
{{- end }}
{{- if $c.secretName }}secret{{ else if $c.configMapName }}configMap{{ else if $c.pem }}pem{{ end }}
{{- end }}

{{/* The ConfigMap the chart makes for webhook.clientCA.pem. */}}
{{- define "regnorm.webhookClientCAConfigMap" -}}
{{- printf "%s-webhook-client-ca" (include "regnorm.fullname" . | trunc 45 | trimSuffix "-") }}
{{- end }}
