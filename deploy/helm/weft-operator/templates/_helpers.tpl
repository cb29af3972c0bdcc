{{- define "weft.labels" -}}
app.kubernetes.io/name: weft-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}
{{- define "weft.selector" -}}
app.kubernetes.io/name: weft-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
