#!/usr/bin/env bash
# `make kind-e2e`: the operator image on a kind cluster, for users who have Docker.
# Builds the image, creates a cluster, loads the image, installs the chart and the examples
# plus a fake provider in the cluster, and calls the gateway with curl. Needs docker, go and
# curl; kind and helm are built from their Go modules at pinned releases.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${CLUSTER:-switchyard-e2e}
IMAGE=switchyard:e2e
CACHE=${SWITCHYARD_CACHE:-$HOME/.cache/switchyard}
KIND_VERSION=v0.33.0
export GOBIN="$CACHE/kind-$KIND_VERSION"
[ -x "$GOBIN/kind" ] || go install "sigs.k8s.io/kind@$KIND_VERSION"
KIND="$GOBIN/kind"
HELM=$(.venv/bin/python hack/localcluster.py build | tail -n 1)

docker build -t "$IMAGE" .
"$KIND" get clusters | grep -qx "$CLUSTER" || "$KIND" create cluster --name "$CLUSTER" --wait 120s
"$KIND" load docker-image "$IMAGE" --name "$CLUSTER"
export KUBECONFIG
KUBECONFIG=$(mktemp)
"$KIND" get kubeconfig --name "$CLUSTER" > "$KUBECONFIG"

# The examples' gateway lives in ai-gateway: the operator may write there (gatewayNamespaces),
# and the chart's Role for that needs the namespace to exist first.
kubectl create namespace ai-gateway --dry-run=client -o yaml | kubectl apply -f -
"$HELM" upgrade --install switchyard charts/switchyard -n switchyard-system --create-namespace \
  --set image.repository=switchyard --set image.tag=e2e --set 'gatewayNamespaces={ai-gateway}' \
  --wait --timeout 180s
kubectl apply -f examples/

# A fake OpenAI-compatible provider in the cluster, from the same image, behind a demo endpoint.
kubectl apply -f - <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata: {name: fake-openai, namespace: team-a}
spec:
  selector: {matchLabels: {app: fake-openai}}
  template:
    metadata: {labels: {app: fake-openai}}
    spec:
      containers:
      - name: fake
        image: switchyard:e2e
        args: [fake-provider, --provider, OpenAICompatible, --host, 0.0.0.0, --port, "8000",
               --api-key, kind-e2e-key, --model, llama]
        ports: [{containerPort: 8000}]
---
apiVersion: v1
kind: Service
metadata: {name: fake-openai, namespace: team-a}
spec: {selector: {app: fake-openai}, ports: [{port: 8000}]}
---
apiVersion: v1
kind: Secret
metadata: {name: fake-openai, namespace: team-a}
stringData: {api-key: kind-e2e-key}
---
apiVersion: switchyard.dev/v1alpha1
kind: ModelEndpoint
metadata: {name: local-llama, namespace: team-a}
spec:
  gatewayRef: {name: shared, namespace: ai-gateway}
  model: local-llama
  backends:
  - name: fake
    provider: OpenAICompatible
    url: http://fake-openai.team-a.svc:8000
    model: llama
    credentialsRef: {name: fake-openai, key: api-key}
YAML
kubectl -n team-a rollout status deployment/fake-openai --timeout=120s
kubectl -n ai-gateway rollout status deployment/shared-switchyard-envoy --timeout=180s
kubectl get modelgateways,modelendpoints -A

kubectl -n ai-gateway port-forward service/shared-switchyard 18080:8080 >/dev/null &
forward=$!
trap 'kill $forward' EXIT
sleep 3
curl -fsS http://127.0.0.1:18080/v1/chat/completions -H 'content-type: application/json' \
  -d '{"model": "local-llama", "messages": [{"role": "user", "content": "hello"}]}'
echo
echo "kind-e2e passed; delete the cluster with: $KIND delete cluster --name $CLUSTER"
