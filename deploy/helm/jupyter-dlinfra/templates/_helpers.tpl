{{- define "jupyter-dlinfra.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "jupyter-dlinfra.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* the gateway's pods; kernel and job pods are app.kubernetes.io/managed-by=jupyter-dlinfra */}}
{{- define "jupyter-dlinfra.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "jupyter-dlinfra.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "jupyter-dlinfra.jobsClaim" -}}
{{- .Values.storage.existingClaim | default (printf "%s-jobs" (include "jupyter-dlinfra.fullname" .)) -}}
{{- end -}}

{{- define "jupyter-dlinfra.workloadServiceAccount" -}}
{{- printf "%s-workload" (include "jupyter-dlinfra.fullname" .) -}}
{{- end -}}
