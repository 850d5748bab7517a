{{/* Labels every object carries. */}}
{{- define "sovereign.labels" -}}
app.kubernetes.io/name: sovereign
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component. */}}
{{- define "sovereign.selector" -}}
app.kubernetes.io/name: sovereign
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "sovereign.tag" -}}
{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The ServiceAccount username the operator authorises, e.g. for the collector. */}}
{{- define "sovereign.saUser" -}}
system:serviceaccount:{{ .root.Release.Namespace }}:{{ .name }}
{{- end -}}

{{/* The operator's telemetry URL agents stream to. */}}
{{- define "sovereign.operatorUrl" -}}
{{ if .Values.tls.plaintext }}http{{ else }}https{{ end }}://sovereign-operator.{{ .Release.Namespace }}.svc:{{ .Values.operator.telemetryPort }}
{{- end -}}

{{/* Hardened container security context. */}}
{{- define "sovereign.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Projected token for the operator's audience (not the API server's), rotated hourly. */}}
{{- define "sovereign.telemetryTokenVolume" -}}
- name: telemetry-token
  projected:
    sources:
      - serviceAccountToken:
          audience: sovereign-telemetry
          expirationSeconds: 3600
          path: token
{{- if not .Values.tls.plaintext }}
- name: operator-ca
  configMap:
    name: {{ .Values.tls.caConfigMap }}
    items:
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- end -}}

{{- define "sovereign.telemetryTokenMounts" -}}
- name: telemetry-token
  mountPath: /var/run/secrets/sovereign
  readOnly: true
{{- if not .Values.tls.plaintext }}
- name: operator-ca
  mountPath: /etc/sovereign/operator-ca
  readOnly: true
{{- end }}
{{- end -}}

{{- define "sovereign.streamArgs" -}}
- --operator={{ include "sovereign.operatorUrl" . }}
- --token-file=/var/run/secrets/sovereign/token
{{- if not .Values.tls.plaintext }}
- --operator-ca-file=/etc/sovereign/operator-ca/ca.crt
{{- end }}
{{- end -}}


{{/* Non-empty when the chart makes the operator's CA and certificate itself. */}}
{{- define "sovereign.tlsGenerated" -}}
{{- $tls := .Values.tls -}}
{{- if and (not $tls.plaintext) (not $tls.certManager.enabled) (not $tls.caBundle) $tls.generate -}}
true
{{- end -}}
{{- end }}

{{/* Non-empty when the operator publishes cert-manager's ca.crt as the agents' CA ConfigMap. */}}
{{- define "sovereign.publishCA" -}}
{{- $tls := .Values.tls -}}
{{- if and (not $tls.plaintext) $tls.certManager.enabled $tls.certManager.publishCA (not $tls.caBundle) -}}
true
{{- end -}}
{{- end }}
