{{/* Names: the release's fullname, truncated to fit a DNS label. */}}
{{- define "lora-router.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lora-router.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "lora-router.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: lora-router
{{- end }}

{{/* Selector labels of one component; call with (dict "ctx" $ "component" "router"). */}}
{{- define "lora-router.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lora-router.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "lora-router.componentLabels" -}}
{{ include "lora-router.labels" .ctx }}
{{ include "lora-router.selectorLabels" . }}
{{- end }}

{{- define "lora-router.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lora-router.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "lora-router.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* etcd */}}
{{- define "lora-router.etcd.fullname" -}}
{{- printf "%s-etcd" (include "lora-router.fullname" .) }}
{{- end }}

{{- define "lora-router.etcd.headless" -}}
{{- printf "%s-etcd-headless" (include "lora-router.fullname" .) }}
{{- end }}

{{/* A member's DNS name: call with (dict "ctx" $ "member" "NAME"). */}}
{{- define "lora-router.etcd.memberHost" -}}
{{- printf "%s.%s.%s.svc.%s" .member (include "lora-router.etcd.headless" .ctx) .ctx.Release.Namespace .ctx.Values.clusterDomain }}
{{- end }}

{{/* NAME-0=http://NAME-0.HEADLESS...:2380,... for every member of the StatefulSet. */}}
{{- define "lora-router.etcd.initialCluster" -}}
{{- $peers := list }}
{{- $base := include "lora-router.etcd.fullname" . }}
{{- range $i := until (int .Values.etcd.replicas) }}
{{- $member := printf "%s-%d" $base $i }}
{{- $host := include "lora-router.etcd.memberHost" (dict "ctx" $ "member" $member) }}
{{- $peers = append $peers (printf "%s=%s://%s:%d" $member (include "lora-router.etcd.scheme" $) $host (int $.Values.etcd.peerPort)) }}
{{- end }}
{{- join "," $peers }}
{{- end }}

{{/* The --etcd value of routers and registrars: the external list or every member. */}}
{{- define "lora-router.etcd.endpoints" -}}
{{- if .Values.etcd.external.endpoints }}
{{- join "," .Values.etcd.external.endpoints }}
{{- else }}
{{- $urls := list }}
{{- $base := include "lora-router.etcd.fullname" . }}
{{- range $i := until (int .Values.etcd.replicas) }}
{{- $host := include "lora-router.etcd.memberHost" (dict "ctx" $ "member" (printf "%s-%d" $base $i)) }}
{{- $urls = append $urls (printf "%s://%s:%d" (include "lora-router.etcd.scheme" $) $host (int $.Values.etcd.clientPort)) }}
{{- end }}
{{- join "," $urls }}
{{- end }}
{{- end }}

{{/* The chart's own etcd: https for clients and peers with etcd.tls.enabled. */}}
{{- define "lora-router.etcd.scheme" -}}
{{- if and .Values.etcd.tls.enabled (not .Values.etcd.external.endpoints) }}https{{ else }}http{{ end }}
{{- end }}

{{/* etcd client credentials: files under one directory, and the flags naming them. */}}
{{- define "lora-router.etcd.clientDir" -}}/etc/lora-router/etcd{{- end }}

{{/*
The client side of etcd's TLS and auth, as YAML {tls: {...}, auth: {...}} shaped like etcd.external's:
etcd.external's own for an external etcd, else the client certificate Secret of the chart's etcd.
*/}}
{{- define "lora-router.etcd.client" -}}
{{- if .Values.etcd.external.endpoints }}
{{- toYaml (dict "tls" .Values.etcd.external.tls "auth" .Values.etcd.external.auth) }}
{{- else if .Values.etcd.tls.enabled }}
{{- $tls := dict "existingSecret" .Values.etcd.tls.clientSecret "caKey" "ca.crt" "certKey" "tls.crt" "keyKey" "tls.key" }}
{{- toYaml (dict "tls" $tls "auth" (dict "user" "")) }}
{{- else }}
{{- toYaml (dict "tls" (dict "existingSecret" "") "auth" (dict "user" "")) }}
{{- end }}
{{- end }}

{{/* The --etcd-* credential flags of routers and registrars, as YAML (read with fromYamlArray). */}}
{{- define "lora-router.etcd.clientArgs" -}}
{{- $e := include "lora-router.etcd.client" . | fromYaml }}
{{- $dir := include "lora-router.etcd.clientDir" . }}
{{- $args := list }}
{{- if $e.tls.existingSecret }}
{{- if $e.tls.caKey }}{{ $args = concat $args (list "--etcd-ca" (printf "%s/ca.crt" $dir)) }}{{ end }}
{{- if $e.tls.certKey }}{{ $args = concat $args (list "--etcd-cert" (printf "%s/tls.crt" $dir)) }}{{ end }}
{{- if $e.tls.keyKey }}{{ $args = concat $args (list "--etcd-key" (printf "%s/tls.key" $dir)) }}{{ end }}
{{- end }}
{{- if $e.auth.user }}
{{- if not $e.auth.existingSecret }}
{{- fail "etcd.external.auth.user needs etcd.external.auth.existingSecret (the Secret with the password)" }}
{{- end }}
{{- $args = concat $args (list "--etcd-user" $e.auth.user "--etcd-password-file" (printf "%s/password" $dir)) }}
{{- end }}
{{- toYaml $args }}
{{- end }}

{{/* The volume of etcd client files, or nothing when etcd needs none. */}}
{{- define "lora-router.etcd.clientVolume" -}}
{{- $e := include "lora-router.etcd.client" . | fromYaml }}
{{- if or $e.tls.existingSecret $e.auth.user }}
- name: etcd-client
  projected:
    defaultMode: 0440
    sources:
      {{- with $e.tls.existingSecret }}
      - secret:
          name: {{ . }}
          items:
            {{- range $key, $path := dict "caKey" "ca.crt" "certKey" "tls.crt" "keyKey" "tls.key" }}
            {{- with get $e.tls $key }}
            - key: {{ . }}
              path: {{ $path }}
            {{- end }}
            {{- end }}
      {{- end }}
      {{- if $e.auth.user }}
      - secret:
          name: {{ $e.auth.existingSecret }}
          items:
            - key: {{ $e.auth.passwordKey }}
              path: password
      {{- end }}
{{- end }}
{{- end }}

{{/* Secrets: key files mounted under one directory from one projected volume. */}}
{{- define "lora-router.secretsDir" -}}/etc/lora-router/secrets{{- end }}

{{- define "lora-router.keysSecretName" -}}
{{- printf "%s-keys" (include "lora-router.fullname" .) }}
{{- end }}

{{/*
The key files this release mounts, as a list of {file, secret, key, inline}:
`inline` is the content the chart's own Secret holds (empty for an existing Secret).
Returned as YAML; read with fromYamlArray.
*/}}
{{- define "lora-router.keyFiles" -}}
{{- $own := include "lora-router.keysSecretName" . }}
{{- $files := list }}
{{- with .Values.secrets.admin }}
{{- if .existingSecret }}
{{- $files = append $files (dict "file" "admin-keys" "secret" .existingSecret "key" .existingSecretKey "inline" "") }}
{{- else if .keys }}
{{- $files = append $files (dict "file" "admin-keys" "secret" $own "key" "admin-keys" "inline" (join "\n" .keys)) }}
{{- end }}
{{- end }}
{{- range $tenant, $spec := .Values.secrets.tenants }}
{{- $file := printf "tenant-%s-keys" $tenant }}
{{- if $spec.existingSecret }}
{{- $files = append $files (dict "file" $file "secret" $spec.existingSecret "key" (default "keys" $spec.existingSecretKey) "inline" "") }}
{{- else if $spec.keys }}
{{- $files = append $files (dict "file" $file "secret" $own "key" $file "inline" (join "\n" $spec.keys)) }}
{{- end }}
{{- end }}
{{- with (include "lora-router.workerKeyRef" . | fromYaml) }}
{{- $files = append $files (dict "file" "worker-api-key" "secret" .secret "key" .key "inline" .inline) }}
{{- end }}
{{- toYaml $files }}
{{- end }}

{{/* The worker API key's Secret as {secret, key, inline}, or nothing when none is set. */}}
{{- define "lora-router.workerKeyRef" -}}
{{- with .Values.secrets.workerApiKey }}
{{- if .existingSecret }}
{{- toYaml (dict "secret" .existingSecret "key" .existingSecretKey "inline" "") }}
{{- else if .value }}
{{- toYaml (dict "secret" (include "lora-router.keysSecretName" $) "key" "worker-api-key" "inline" .value) }}
{{- end }}
{{- end }}
{{- end }}

{{/* A projected volume of the key files, or nothing when there are none. */}}
{{- define "lora-router.keysVolume" -}}
{{- $files := include "lora-router.keyFiles" . | fromYamlArray }}
{{- if $files }}
- name: keys
  projected:
    defaultMode: 0440
    sources:
      {{- range $files }}
      - secret:
          name: {{ .secret }}
          items:
            - key: {{ .key }}
              path: {{ .file }}
      {{- end }}
{{- end }}
{{- end }}

{{/* The router config: .Values.config with the key-file references filled in. */}}
{{- define "lora-router.config" -}}
{{- $cfg := deepCopy .Values.config }}
{{- $dir := include "lora-router.secretsDir" . }}
{{- $files := include "lora-router.keyFiles" . | fromYamlArray }}
{{- range $files }}
{{- $path := printf "%s/%s" $dir .file }}
{{- if eq .file "admin-keys" }}
{{- $auth := default dict $cfg.auth }}
{{- $_ := set $auth "admin_keys_file" $path }}
{{- $_ := set $cfg "auth" $auth }}
{{- else if eq .file "worker-api-key" }}
{{- $_ := set $cfg "worker_api_key_file" $path }}
{{- end }}
{{- end }}
{{- range $tenant, $spec := .Values.secrets.tenants }}
{{- if or $spec.existingSecret $spec.keys }}
{{- $tenants := default dict $cfg.tenants }}
{{- $entry := default dict (get $tenants $tenant) }}
{{- $_ := set $entry "keys_file" (printf "%s/tenant-%s-keys" $dir $tenant) }}
{{- $_ := set $tenants $tenant $entry }}
{{- $_ := set $cfg "tenants" $tenants }}
{{- end }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}
