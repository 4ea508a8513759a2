{{- define "trio-sfu.name" -}}
{{- .Chart.Name -}}
{{- end -}}

{{- define "trio-sfu.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "trio-sfu.labels" -}}
app.kubernetes.io/name: {{ include "trio-sfu.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "trio-sfu.selector" -}}
app.kubernetes.io/name: {{ include "trio-sfu.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "trio-sfu.redisUrl" -}}
{{- if .Values.redis.bundled -}}
redis://{{ include "trio-sfu.fullname" . }}-redis:6379/0
{{- else -}}
{{- required "redis.url is required when redis.bundled is false" .Values.redis.url -}}
{{- end -}}
{{- end -}}

{{- define "trio-sfu.natsUrl" -}}
{{- if .Values.nats.bundled -}}
nats://{{ include "trio-sfu.fullname" . }}-nats:4222
{{- else -}}
{{- required "nats.url is required when nats.bundled is false" .Values.nats.url -}}
{{- end -}}
{{- end -}}

{{- define "trio-sfu.authSecret" -}}
{{- if .Values.auth.existingSecret -}}
{{- .Values.auth.existingSecret -}}
{{- else -}}
{{- include "trio-sfu.fullname" . }}-auth
{{- end -}}
{{- end -}}
