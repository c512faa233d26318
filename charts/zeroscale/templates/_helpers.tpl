{{/* The chart name, or nameOverride. */}}
{{- define "zeroscale.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object name: fullnameOverride, else the release name when it
already contains the chart name, else "<release>-<chart>". Kept short enough for the
"-activator-public" suffix within 63 characters.
*/}}
{{- define "zeroscale.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 45 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "zeroscale.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "zeroscale.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: zeroscale
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: call with (dict "root" $ "component" "operator"). */}}
{{- define "zeroscale.selectorLabels" -}}
app.kubernetes.io/name: {{ include "zeroscale.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* All labels of one component's objects. */}}
{{- define "zeroscale.componentLabels" -}}
{{ include "zeroscale.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "zeroscale.operator.fullname" -}}
{{ include "zeroscale.fullname" . }}-operator
{{- end }}

{{- define "zeroscale.activator.fullname" -}}
{{ include "zeroscale.fullname" . }}-activator
{{- end }}

{{- define "zeroscale.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "zeroscale.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "zeroscale.activator.serviceAccountName" -}}
{{- if .Values.activator.serviceAccount.create }}
{{- default (include "zeroscale.activator.fullname" .) .Values.activator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.activator.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference: call with (dict "image" .Values.operator.image "root" $). */}}
{{- define "zeroscale.image" -}}
{{ .image.repository }}:{{ default .root.Chart.AppVersion .image.tag }}
{{- end }}

{{/*
Pod and container security settings shared by both components: a non-root user by
number (so runAsNonRoot can check it), no privilege escalation, a read-only root file
system, no capabilities, the runtime's default seccomp profile. The images are
distroless and need no shell.
*/}}
{{- define "zeroscale.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "zeroscale.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Spread replicas of a component over nodes when the user set no affinity. */}}
{{- define "zeroscale.defaultAffinity" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "zeroscale.selectorLabels" . | nindent 12 }}
{{- end }}

{{/* Environment shared by both binaries. */}}
{{- define "zeroscale.sharedEnv" -}}
- name: ZEROSCALE_CLUSTER_DOMAIN
  value: {{ .Values.clusterDomain | quote }}
{{- with .Values.publicDomain }}
- name: ZEROSCALE_PUBLIC_DOMAIN
  value: {{ . | quote }}
{{- end }}
{{- with .Values.watchNamespaces }}
- name: ZEROSCALE_NAMESPACES
  value: {{ join "," . | quote }}
{{- end }}
- name: ZEROSCALE_ADMIN_ADDR
  value: "0.0.0.0:9090"
{{- end }}

{{/* The NATS server's in-cluster Service name (when nats.enabled). */}}
{{- define "zeroscale.nats.fullname" -}}
{{ include "zeroscale.fullname" . }}-nats
{{- end }}

{{/* The NATS URL the operator and activator use: the chart's own server or nats.url. */}}
{{- define "zeroscale.nats.url" -}}
{{- if .Values.nats.enabled -}}
nats://{{ include "zeroscale.nats.fullname" . }}.{{ .Release.Namespace }}.svc.{{ .Values.clusterDomain }}:4222
{{- else -}}
{{ .Values.nats.url }}
{{- end }}
{{- end }}

{{/* Where the NATS credentials file of nats.credentialsSecret is mounted. */}}
{{- define "zeroscale.nats.credentialsDir" -}}
/etc/zeroscale/nats
{{- end }}

{{/* NATS settings of the operator and the activator (same flags in both). */}}
{{- define "zeroscale.nats.env" -}}
{{- with include "zeroscale.nats.url" . }}
- name: ZEROSCALE_NATS_URL
  value: {{ . | quote }}
{{- end }}
{{- if .Values.nats.credentialsSecret }}
- name: ZEROSCALE_NATS_CREDS
  value: "{{ include "zeroscale.nats.credentialsDir" . }}/nats.creds"
{{- end }}
{{- end }}

{{/* The container's volumeMounts for the NATS credentials, if any. */}}
{{- define "zeroscale.nats.volumeMounts" -}}
{{- if .Values.nats.credentialsSecret }}
volumeMounts:
  - name: nats-credentials
    mountPath: {{ include "zeroscale.nats.credentialsDir" . }}
    readOnly: true
{{- end }}
{{- end }}

{{/* The pod's volumes for the NATS credentials, if any. */}}
{{- define "zeroscale.nats.volumes" -}}
{{- with .Values.nats.credentialsSecret }}
volumes:
  - name: nats-credentials
    secret:
      secretName: {{ . }}
      items:
        - key: nats.creds
          path: nats.creds
{{- end }}
{{- end }}
