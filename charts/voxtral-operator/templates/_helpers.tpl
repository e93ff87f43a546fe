{{- define "voxtral-operator.name" -}}voxtral-operator{{- end -}}

{{- define "voxtral-operator.fullname" -}}
{{- if contains "voxtral-operator" .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else -}}{{ printf "%s-voxtral-operator" .Release.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "voxtral-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "voxtral-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "voxtral-operator.labels" -}}
{{ include "voxtral-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: voxtral-operator
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
