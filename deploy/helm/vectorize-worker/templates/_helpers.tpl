{{/* Names and labels. */}}
{{- define "vw.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "vw.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "vw.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vw.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "vw.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "vw.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: worker
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "vw.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "vw.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret whose keys are mounted as files (the chart's or secrets.existingSecret). */}}
{{- define "vw.secretName" -}}
{{- default (printf "%s-secrets" (include "vw.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "vw.hasSecrets" -}}
{{- if or .Values.secrets.existingSecret .Values.secrets.values }}true{{ end -}}
{{- end -}}

{{/* The secret settings of core/settings.py SECRET_FIELDS: the file names secrets_dir reads. */}}
{{- define "vw.secretKeys" -}}
kafka_sasl_password kafka_ssl_key_password redis_password web_auth_token weaviate__api_key qdrant__api_key chroma__token milvus__token
{{- end -}}

{{/* Settings the chart sets itself: refused in .Values.config. */}}
{{- define "vw.managedKeys" -}}
WORKER_ID WEB_HOST WEB_PORT WEB_ADVERTISED_HOST METRICS_HOST METRICS_PORT DATA_DIR MODELS_CACHE_DIR KAFKA_BOOTSTRAP_SERVERS KAFKA_GROUP_ID KAFKA_SECURITY_PROTOCOL KAFKA_SASL_MECHANISM KAFKA_SASL_USERNAME TASKS_TOPIC TOPIC_PARTITIONS SHUTDOWN_TIMEOUT SECRETS_DIR
{{- end -}}

{{- define "vw.preStopSeconds" -}}
{{- int (default 0 .Values.preStopSleepSeconds) -}}
{{- end -}}

{{/* SIGTERM to SIGKILL: preStop + the drain + 30 s to commit and leave the group, unless set. */}}
{{- define "vw.gracePeriod" -}}
{{- $drain := add (int (ceil (float64 .Values.shutdownTimeoutSeconds))) (int (include "vw.preStopSeconds" .)) -}}
{{- if or (kindIs "invalid" .Values.terminationGracePeriodSeconds) (eq (toString .Values.terminationGracePeriodSeconds) "") -}}
{{- add $drain 30 -}}
{{- else -}}
{{- int .Values.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{/* Every check of the values, run by the Deployment: a value that cannot work stops the render. */}}
{{- define "vw.validate" -}}
{{- $partitions := int .Values.topicPartitions -}}
{{- if lt $partitions 1 -}}
{{- fail (printf "topicPartitions is %v: set it to the partition count of the tasks topic %s (at least 1)" .Values.topicPartitions .Values.kafka.tasksTopic) -}}
{{- end -}}
{{- if .Values.keda.enabled -}}
{{- if gt (int .Values.keda.maxReplicaCount) $partitions -}}
{{- fail (printf "keda.maxReplicaCount (%v) is above topicPartitions (%v): Kafka gives each partition of %s to one worker, so workers past %v would sit idle; lower keda.maxReplicaCount or add partitions to the topic and raise topicPartitions" .Values.keda.maxReplicaCount .Values.topicPartitions .Values.kafka.tasksTopic .Values.topicPartitions) -}}
{{- end -}}
{{- if gt (int .Values.keda.minReplicaCount) (int .Values.keda.maxReplicaCount) -}}
{{- fail (printf "keda.minReplicaCount (%v) is above keda.maxReplicaCount (%v): lower keda.minReplicaCount" .Values.keda.minReplicaCount .Values.keda.maxReplicaCount) -}}
{{- end -}}
{{- if lt (int .Values.keda.lagThreshold) 1 -}}
{{- fail (printf "keda.lagThreshold is %v: set the records of lag per worker KEDA aims for (at least 1)" .Values.keda.lagThreshold) -}}
{{- end -}}
{{- else if gt (int .Values.replicaCount) $partitions -}}
{{- fail (printf "replicaCount (%v) is above topicPartitions (%v): Kafka gives each partition of %s to one worker, so workers past %v would sit idle; lower replicaCount or add partitions and raise topicPartitions" .Values.replicaCount .Values.topicPartitions .Values.kafka.tasksTopic .Values.topicPartitions) -}}
{{- end -}}
{{- $needed := add (int (ceil (float64 .Values.shutdownTimeoutSeconds))) (int (include "vw.preStopSeconds" .)) -}}
{{- if le (int (include "vw.gracePeriod" .)) $needed -}}
{{- fail (printf "terminationGracePeriodSeconds (%v) is not above preStopSleepSeconds + shutdownTimeoutSeconds (%v): Kubernetes would kill the worker in the middle of its SIGTERM drain; leave it empty (computed) or raise it" .Values.terminationGracePeriodSeconds $needed) -}}
{{- end -}}
{{- $secretKeys := splitList " " (include "vw.secretKeys" .) -}}
{{- $managed := splitList " " (include "vw.managedKeys" .) -}}
{{- range $key, $value := .Values.config -}}
{{- $upper := upper $key -}}
{{- if or (has (lower $key) $secretKeys) (has (trimSuffix "_FILE" $upper | lower) $secretKeys) -}}
{{- fail (printf "config.%s is a secret setting: put it under secrets.values.%s (or in secrets.existingSecret), which the pod gets as a file, not in the ConfigMap" $key (trimSuffix "_file" (lower $key))) -}}
{{- end -}}
{{- if has $upper $managed -}}
{{- fail (printf "config.%s is set by the chart: use its own value instead (see values.yaml: kafka.*, shutdownTimeoutSeconds, topicPartitions, web.port, metrics.port, modelCache, dataDir)" $key) -}}
{{- end -}}
{{- if hasPrefix "VECTORIZE_WORKER_" $upper -}}
{{- fail (printf "config.%s: write the key without the VECTORIZE_WORKER_ prefix (config.%s)" $key (trimPrefix "VECTORIZE_WORKER_" $upper)) -}}
{{- end -}}
{{- end -}}
{{- range $key, $value := .Values.secrets.values -}}
{{- if not (has $key $secretKeys) -}}
{{- fail (printf "secrets.values.%s is not a secret setting of the worker; the keys are: %s" $key (join ", " $secretKeys)) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.secrets.existingSecret .Values.secrets.values -}}
{{- fail "secrets.existingSecret and secrets.values are both set: keep the secrets in one place (the existing Secret, or values for the chart's Secret)" -}}
{{- end -}}
{{- if and (hasPrefix "SASL" .Values.kafka.securityProtocol) (not .Values.kafka.saslUsername) -}}
{{- fail (printf "kafka.securityProtocol is %s but kafka.saslUsername is empty: set the SASL user (its password goes in secrets.values.kafka_sasl_password)" .Values.kafka.securityProtocol) -}}
{{- end -}}
{{- end -}}
