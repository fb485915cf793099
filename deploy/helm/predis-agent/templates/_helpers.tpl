{{/* SPDX-License-Identifier: Apache-2.0 */}}
{{/* Shared names, labels and the paths the container image defines. */}}

{{- define "predis-agent.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "predis-agent.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "predis-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "predis-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "predis-agent.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "predis-agent.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "predis-agent.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default (printf "%s-cuda12" .Chart.AppVersion)) -}}
{{- end -}}

{{- define "predis-agent.secretName" -}}
{{- .Values.existingSecret | default (printf "%s-secrets" (include "predis-agent.fullname" .)) -}}
{{- end -}}

{{- define "predis-agent.configDir" -}}/etc/predis-agent{{- end -}}
{{- define "predis-agent.secretsDir" -}}/run/secrets/predis-agent{{- end -}}
{{- define "predis-agent.stateDir" -}}/var/lib/predis-agent{{- end -}}

{{- define "predis-agent.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
{{- end -}}
