{{- define "aha.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "aha.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "aha.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ include "aha.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "aha.selector" -}}
app.kubernetes.io/name: {{ include "aha.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "aha.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}
{{- end -}}

{{- define "aha.serviceAccountName" -}}
{{- $sa := index .root.Values .component "serviceAccount" -}}
{{- if $sa.create -}}
{{- default (printf "%s-%s" (include "aha.fullname" .root) .component) $sa.name -}}
{{- else -}}
{{- default "default" $sa.name -}}
{{- end -}}
{{- end -}}

{{/* The scheduler connection, as the services read it: ENDPOINT/TASKHUB for the local
scheduler, a DTS connection string otherwise (from an existing Secret, or built from values:
it holds no secret, only the endpoint, hub, authentication mode and client id). */}}
{{- define "aha.dtsEnv" -}}
{{- if .Values.localScheduler.enabled }}
- name: ENDPOINT
  value: {{ printf "http://%s-local-scheduler:8080" (include "aha.fullname" .) | quote }}
- name: TASKHUB
  value: {{ first .Values.localScheduler.taskHubs | quote }}
{{- else if .Values.dts.existingSecret.name }}
- name: DURABLE_TASK_SCHEDULER_CONNECTION_STRING
  valueFrom:
    secretKeyRef:
      name: {{ .Values.dts.existingSecret.name }}
      key: {{ .Values.dts.existingSecret.key }}
{{- else }}
{{- if not .Values.dts.endpoint }}
{{- fail "dts.endpoint is required (or set dts.existingSecret.name, or localScheduler.enabled=true)" }}
{{- end }}
- name: DURABLE_TASK_SCHEDULER_CONNECTION_STRING
  value: {{ printf "Endpoint=%s;Authentication=%s;TaskHub=%s%s" .Values.dts.endpoint .Values.dts.authentication .Values.dts.taskHub (ternary (printf ";ClientID=%s" .Values.dts.clientId) "" (ne .Values.dts.clientId "")) | quote }}
{{- end }}
{{- end -}}

{{/* Large payloads (the claim check), for the service whose variables start with the given
prefix: the connection string from its Secret, when one is named. */}}
{{- define "aha.payloadEnv" -}}
{{- $v := .root.Values.payloads -}}
{{- if $v.secret.name }}
- name: {{ .prefix }}__PAYLOAD_CONNECTION_STRING
  valueFrom:
    secretKeyRef:
      name: {{ $v.secret.name }}
      key: {{ $v.secret.key }}
- name: {{ .prefix }}__PAYLOAD_CONTAINER
  value: {{ $v.container | quote }}
- name: {{ .prefix }}__PAYLOAD_THRESHOLD_BYTES
  value: {{ $v.thresholdBytes | int64 | quote }}
- name: {{ .prefix }}__PAYLOAD_MAX_BYTES
  value: {{ $v.maxBytes | int64 | quote }}
{{- end }}
{{- end -}}

{{- define "aha.commonEnv" -}}
- name: RUST_LOG
  value: {{ .Values.logging.filter | quote }}
{{- if .Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.otel.endpoint | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ .Values.otel.sampler | quote }}
{{- end }}
{{- end -}}

{{- /* Completion callbacks: where they may go (gateway and worker alike), only what differs
from the binaries' defaults. `prefix` is GATEWAY or WORKER. */}}
{{- define "aha.callbackEnv" -}}
{{- $c := .root.Values.callbacks }}
{{- if ne (join "," $c.hosts) "*" }}
- name: {{ .prefix }}__CALLBACK_HOSTS
  value: {{ join "," $c.hosts | quote }}
{{- end }}
{{- with $c.allowedNetworks }}
- name: {{ $.prefix }}__CALLBACK_ALLOWED_NETWORKS
  value: {{ join "," . | quote }}
{{- end }}
{{- if $c.allowHttp }}
- name: {{ .prefix }}__CALLBACK_ALLOW_HTTP
  value: "true"
{{- end }}
{{- end -}}

{{- define "aha.podExtras" -}}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .root.Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .root.Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if .root.Values.topologySpread }}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "aha.selector" . | nindent 8 }}
{{- end }}
{{- end -}}

{{/*
Pod annotations of the gateway and worker. Their configuration is env in the pod template, so a
values change rolls the pods by itself; a connection string in an existing Secret is not, so its
checksum (read from the cluster at install/upgrade; empty under `helm template`) makes a rotated
Secret roll the pods on the next `helm upgrade`.
*/}}
{{- define "aha.podAnnotations" -}}
{{- if and (not .Values.localScheduler.enabled) .Values.dts.existingSecret.name -}}
checksum/dts-secret: {{ (lookup "v1" "Secret" .Release.Namespace .Values.dts.existingSecret.name).data | toJson | sha256sum }}
{{- end -}}
{{- end }}

{{/* The gateway's authentication: env, checked values. */}}
{{- define "aha.gatewayAuthEnv" -}}
{{- $a := .Values.gateway.auth -}}
{{- if not $a.mode }}
{{- fail "gateway.auth.mode is required: jwt, api_key, \"jwt,api_key\", or none (anyone who reaches the gateway may do anything)" }}
{{- end -}}
- name: GATEWAY__AUTH
  value: {{ $a.mode | quote }}
{{- if ne $a.mode "none" }}
{{- if not $a.idSecret.name }}
{{- fail "gateway.auth.idSecret.name is required unless gateway.auth.mode is none: a Secret with the key of the operation ids" }}
{{- end }}
- name: GATEWAY__ID_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $a.idSecret.name }}
      key: {{ $a.idSecret.key }}
{{- end }}
{{- if has "jwt" (splitList "," $a.mode) }}
{{- if or (not $a.jwt.issuer) (not $a.jwt.audiences) }}
{{- fail "gateway.auth.jwt.issuer and gateway.auth.jwt.audiences are required when gateway.auth.mode includes jwt" }}
{{- end }}
- name: GATEWAY__JWT_ISSUER
  value: {{ $a.jwt.issuer | quote }}
- name: GATEWAY__JWT_AUDIENCES
  value: {{ join "," $a.jwt.audiences | quote }}
- name: GATEWAY__JWT_IDENTITY_CLAIMS
  value: {{ join "," $a.jwt.identityClaims | quote }}
- name: GATEWAY__JWT_ADMIN_ROLE
  value: {{ $a.jwt.adminRole | quote }}
{{- with $a.jwt.jwksUrl }}
- name: GATEWAY__JWT_JWKS_URL
  value: {{ . | quote }}
{{- end }}
{{- with $a.jwt.requiredRole }}
- name: GATEWAY__JWT_REQUIRED_ROLE
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- if has "api_key" (splitList "," $a.mode) }}
{{- if not $a.apiKeys.secretName }}
{{- fail "gateway.auth.apiKeys.secretName is required when gateway.auth.mode includes api_key: a Secret with the keys file" }}
{{- end }}
- name: GATEWAY__API_KEYS_FILE
  value: {{ printf "/etc/gateway/api-keys/%s" $a.apiKeys.key | quote }}
{{- end }}
{{- end -}}

{{- /* The worker's drain: long enough for the longest activity the gateway accepts
(`delay_seconds` up to gateway.maxDelaySeconds, the binary's 3600 when unset) plus 30 s for its
completion, unless set; a drain shorter than that is refused, because a SIGTERMed worker would
abandon activities still allowed to run and another worker would run them again. */}}
{{- define "aha.workerDrainSeconds" -}}
{{- $maxDelay := ternary 3600 .Values.gateway.maxDelaySeconds (kindIs "invalid" .Values.gateway.maxDelaySeconds) | int -}}
{{- if kindIs "invalid" .Values.worker.drainTimeoutSeconds -}}
{{- add $maxDelay 30 -}}
{{- else -}}
{{- if lt (int .Values.worker.drainTimeoutSeconds) $maxDelay -}}
{{- fail (printf "worker.drainTimeoutSeconds (%d) is shorter than gateway.maxDelaySeconds (%d): a worker scaled in would abandon activities still allowed to run, and another worker would run them again; raise it, lower gateway.maxDelaySeconds, or leave it unset" (int .Values.worker.drainTimeoutSeconds) $maxDelay) -}}
{{- end -}}
{{- .Values.worker.drainTimeoutSeconds -}}
{{- end -}}
{{- end -}}

{{- /* The demand on the workers, in activity slots: activities running on the current code's
workers plus (with the local scheduler) activities waiting. One PromQL selector over both
metrics, so it needs no scheduler metric: against Azure DTS, which exports no backlog, it is the
workers' own load, and a saturated fleet still asks for more. `matchers` are extra label
matchers (the namespace here; prometheus-adapter's <<.LabelMatchers>> there). */}}
{{- define "aha.workerDemandSelector" -}}
{__name__=~"worker_work_items_in_flight|dts_local_backlog_work_items",kind="activity",job=~"worker|local-scheduler",{{ .matchers }}}
{{- end -}}

{{- /* The target demand per worker replica: the worker's activity slots times the target
utilization, unless set. */}}
{{- define "aha.workerDemandThreshold" -}}
{{- $k := .Values.worker.keda -}}
{{- if not (kindIs "invalid" $k.threshold) -}}
{{- $k.threshold -}}
{{- else -}}
{{- $slots := ternary 100 .Values.worker.maxConcurrentActivities (kindIs "invalid" .Values.worker.maxConcurrentActivities) | int -}}
{{- max 1 (div (mul $slots (int $k.targetUtilizationPercent)) 100) -}}
{{- end -}}
{{- end -}}
