{{/* The name of every object: the release name (63 characters at most). */}}
{{- define "jitgate.name" -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The headless Service (63 characters at most, like every Service name). */}}
{{- define "jitgate.headless" -}}
{{- include "jitgate.name" . | trunc 54 | trimSuffix "-" -}}-headless
{{- end -}}

{{/* What selects the pods (never changes across upgrades). */}}
{{- define "jitgate.selectorLabels" -}}
app.kubernetes.io/name: jitgate
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "jitgate.labels" -}}
{{ include "jitgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "jitgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "jitgate.name" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Refuse values that would render a gateway that cannot work, saying what to change. */}}
{{- define "jitgate.validate" -}}
{{- $c := .Values.config -}}
{{- if and .Values.tls.secretName (not (contains "/etc/jitgate/tls/tls.crt" $c)) -}}
{{- fail "tls.secretName is set but the config does not use it: add cert_file = \"/etc/jitgate/tls/tls.crt\" and key_file = \"/etc/jitgate/tls/tls.key\" under [tls] in config" -}}
{{- end -}}
{{- if and .Values.sharedKeys.secretName (not (contains "/etc/jitgate/keys" $c)) -}}
{{- fail "sharedKeys.secretName is set but the config does not use it: add shared_keys_dir = \"/etc/jitgate/keys\" under [gateway] in config" -}}
{{- end -}}
{{- if gt (int .Values.replicaCount) 1 -}}
{{- if not (contains "[store]" $c) -}}
{{- fail "replicaCount > 1 needs a shared PostgreSQL store: add a [store] section with url_env (see \"Several replicas\" in docs/operator-guide.md)" -}}
{{- end -}}
{{- if not .Values.sharedKeys.secretName -}}
{{- fail "replicaCount > 1 needs the replicas' shared keys: set sharedKeys.secretName (see \"Kubernetes\" in docs/operator-guide.md)" -}}
{{- end -}}
{{- end -}}
{{- if not (contains "/var/lib/jitgate" $c) -}}
{{- fail "the config must keep data_dir = \"/var/lib/jitgate\" (the persistent volume)" -}}
{{- end -}}
{{- end -}}
