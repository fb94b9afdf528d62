{{/* Labels every object of the chart carries. */}}
{{- define "influence-job.labels" -}}
app.kubernetes.io/name: influence-job
app.kubernetes.io/part-of: influence-job
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
{{- end -}}
