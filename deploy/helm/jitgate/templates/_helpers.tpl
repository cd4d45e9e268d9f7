{{- define "jitgate.name" -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- define "jitgate.labels" -}}
app.kubernetes.io/name: jitgate
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
