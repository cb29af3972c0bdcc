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
{{- /*
The operator's image. With global.imageRegistry set, the repository's registry is replaced by
the mirror and its path kept, the rule `weft --image-registry` applies to every mesh image:
the first segment names a registry when it has a "." or ":" or is "localhost".
*/ -}}
{{- define "weft.image" -}}
{{- $repo := .Values.image.repository -}}
{{- with .Values.global.imageRegistry -}}
{{- $first := first (splitList "/" $repo) -}}
{{- if and (contains "/" $repo) (or (contains "." $first) (contains ":" $first) (eq $first "localhost")) -}}
{{- $repo = trimPrefix (printf "%s/" $first) $repo -}}
{{- else if not (contains "/" $repo) -}}
{{- $repo = printf "library/%s" $repo -}}
{{- end -}}
{{- $repo = printf "%s/%s" (trimSuffix "/" .) $repo -}}
{{- end -}}
{{- printf "%s:%s" $repo (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end }}
