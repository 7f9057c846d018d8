{{/*
Named templates. "kafka-trace-proxy.container" and "kafka-trace-proxy.volumes" are the public
ones: include them, with this chart's context, in any pod spec (README.md, "Your own pod spec").
*/}}

{{- define "kafka-trace-proxy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Name of the ConfigMap and Secret: <release>-kafka-trace-proxy unless overridden. */}}
{{- define "kafka-trace-proxy.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "kafka-trace-proxy.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* OTEL_SERVICE_NAME: serviceName, else the release name. */}}
{{- define "kafka-trace-proxy.serviceName" -}}
{{- default .Release.Name .Values.serviceName -}}
{{- end -}}

{{/* Name of the example Deployment and its app container: app.name, else the release name. */}}
{{- define "kafka-trace-proxy.appName" -}}
{{- default .Release.Name .Values.app.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kafka-trace-proxy.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "kafka-trace-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Pod labels (and selector) of the example Deployment: those of the app. */}}
{{- define "kafka-trace-proxy.appSelectorLabels" -}}
app.kubernetes.io/name: {{ include "kafka-trace-proxy.appName" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Keys of the ConfigMap that have their own values and so may not appear in env. */}}
{{- define "kafka-trace-proxy.managedKeys" -}}
KTP_UPSTREAM_BOOTSTRAP_SERVERS KTP_LISTEN_ADDRESS KTP_ADMIN_ADDRESS OTEL_SERVICE_NAME OTEL_EXPORTER_OTLP_ENDPOINT
{{- end -}}

{{/* The bootstrap servers as one "host:port,host:port" string (values accept a list too). */}}
{{- define "kafka-trace-proxy.bootstrapServers" -}}
{{- $servers := required "upstream.bootstrapServers is required (host:port of your Kafka cluster)" .Values.upstream.bootstrapServers -}}
{{- if kindIs "slice" $servers -}}
{{- join "," $servers -}}
{{- else -}}
{{- $servers -}}
{{- end -}}
{{- end -}}

{{/*
The sidecar container, as one item of a containers (or, with nativeSidecar, initContainers) list.
Context: this chart's (in a parent chart: index .Subcharts "kafka-trace-proxy").
*/}}
{{- define "kafka-trace-proxy.container" -}}
- name: {{ .Values.containerName }}
  image: "{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}"
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if .Values.nativeSidecar }}
  restartPolicy: Always
  {{- end }}
  ports:
    - name: ktp-admin
      containerPort: {{ .Values.adminPort }}
      protocol: TCP
  envFrom:
    - configMapRef:
        name: {{ include "kafka-trace-proxy.fullname" . }}
    {{- if .Values.secretEnv }}
    - secretRef:
        name: {{ include "kafka-trace-proxy.fullname" . }}
    {{- end }}
    {{- with .Values.existingSecretEnv }}
    - secretRef:
        name: {{ . }}
    {{- end }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: ktp-admin
    {{- with .Values.probes.liveness }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: ktp-admin
    {{- with .Values.probes.readiness }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if .Values.secretFiles.secretName }}
  volumeMounts:
    - name: {{ .Values.containerName }}-secret-files
      mountPath: {{ .Values.secretFiles.mountPath }}
      readOnly: true
  {{- end }}
{{- end -}}

{{/*
The volumes the sidecar needs, as items of a volumes list (empty when it needs none).
Context: as for "kafka-trace-proxy.container".
*/}}
{{- define "kafka-trace-proxy.volumes" -}}
{{- if .Values.secretFiles.secretName -}}
- name: {{ .Values.containerName }}-secret-files
  secret:
    secretName: {{ .Values.secretFiles.secretName }}
{{- end -}}
{{- end -}}
