{{- define "switchyard.fullname" -}}
{{- if contains "switchyard" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-switchyard" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "switchyard.labels" -}}
app.kubernetes.io/name: switchyard
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "switchyard.selector" -}}
app.kubernetes.io/name: switchyard
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "switchyard.serviceAccountName" -}}
{{- default (include "switchyard.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* The namespaces where the operator may write: gatewayNamespaces, else the release's. */}}
{{- define "switchyard.gatewayNamespaces" -}}
{{- toJson (.Values.gatewayNamespaces | default (list .Release.Namespace) | uniq) -}}
{{- end -}}

{{/* What the operator reads, and the statuses and Events it writes, in the namespaces it
watches: cluster-wide without watchNamespaces, else in each of them. */}}
{{- define "switchyard.rules.watched" -}}
- apiGroups: ["switchyard.dev"]
  resources: ["modelclients", "modelendpoints", "modelgateways"]
  verbs: ["list", "watch"]
- apiGroups: ["switchyard.dev"]
  resources: ["modelclients/status", "modelendpoints/status", "modelgateways/status"]
  verbs: ["patch"]
# The Secrets endpoints reference, read where the endpoints are, and watched for rotation.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch"]
# The kinds a gateway owns, watched (by label) to repair what someone else changes.
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["list", "watch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["list", "watch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["list", "watch"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["list", "watch"]
# Warning and Normal Events on ModelEndpoints and ModelGateways.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}

{{/* What the operator writes for a gateway, only in the gateways' namespaces. */}}
{{- define "switchyard.rules.gateway" -}}
# The gateway's credentials Secret: written whole, never read back here (the watched
# namespaces' rules read Secrets).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create", "update"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "update"]
# Server-side applied from their first write: an apply that creates needs create too.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "create", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "create", "patch"]
{{- if .Values.networkPolicy.gateways }}
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create", "patch"]
{{- end }}
# Annotating a gateway's Envoy Pods after its credentials change makes their kubelet mount
# the new Secret at once instead of at its next periodic sync.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "patch"]
{{- if or .Values.workloadIdentity.aws .Values.workloadIdentity.gcp }}
# A gateway's workload identity (dataPlane.serviceAccountName): the IAM role or Google
# service account annotated on its ServiceAccount.
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get"]
{{- end }}
{{- if .Values.workloadIdentity.aws }}
# On AWS, a token for that ServiceAccount, to exchange at STS.
- apiGroups: [""]
  resources: ["serviceaccounts/token"]
  verbs: ["create"]
{{- end }}
# What the operator owns for a gateway blocks the gateway's deletion until it is gone
# (blockOwnerDeletion): clusters that enforce owner references ask for this to set it.
- apiGroups: ["switchyard.dev"]
  resources: ["modelgateways/finalizers"]
  verbs: ["update"]
{{- end -}}
