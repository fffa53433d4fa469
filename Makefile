# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Python packages come from PyPI into .venv; the local Kubernetes cluster (control plane and
# node) is built with Go once and cached in $(SWITCHYARD_CACHE) (default ~/.cache/switchyard),
# outside the repo, like the images the node runs.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: all venv controlplane tools images bench-tools lint test unit integration pods chaos fuzz bench demo demo-down crds cluster-up cluster-down kind-e2e clean

all: test

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

controlplane: venv
	$(BIN)/python hack/localcluster.py build

# The operator image from the Dockerfile (buildah, on a bookworm base made with debootstrap),
# the Envoy and Pod-sandbox images; cached, rebuilt when their inputs change.
images: venv tools
	$(BIN)/python hack/images.py build

# From Debian (installing needs root): promtool and Prometheus; the local node's container
# runtime, runc, CNI plugins, iptables and conntrack; buildah and debootstrap for the images;
# Redis, behind the rate limit service that holds clients' limits.
DEBIAN_TOOLS := prometheus containerd runc containernetworking-plugins iptables conntrack \
	buildah debootstrap redis-server
tools:
	@dpkg-query -W $(DEBIAN_TOOLS) >/dev/null 2>&1 || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEBIAN_TOOLS); }

# wrk, the load generator of the benchmarks, from Debian's package.
bench-tools:
	@command -v wrk >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk; }

crds: venv
	$(BIN)/switchyard crds

lint: venv
	$(BIN)/ruff check operator tests hack bench
	$(BIN)/ruff format --check operator tests hack bench
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile

unit: venv
	$(BIN)/pytest tests/unit

integration: controlplane tools
	$(BIN)/pytest tests/integration tests/e2e

# The Pod tier alone: the operator and its gateways as Pods on the local node (root).
pods: controlplane tools
	$(BIN)/pytest tests/pods

# The chaos suite at full length (`make test` runs it with 3 kills): the leader killed 50
# times while endpoints churn, then the API server and etcd restarted, the leader cut off for
# 60 s and the watches expired by a compaction. On a control plane of its own.
chaos: controlplane
	CHAOS_KILLS=$(or $(KILLS),50) $(BIN)/pytest tests/chaos

# 10,000 generated ModelEndpoint and ModelGateway specs through the API server and operator
# (`make test` runs 300).
fuzz: controlplane tools
	FUZZ_EXAMPLES=$(or $(EXAMPLES),10000) $(BIN)/pytest tests/fuzz

# The whole suite: lint, layering contracts, unit, integration and end-to-end tests on a real
# API server, and the Pod tier on the local cluster's node (or the cluster KUBECONFIG names).
test: lint controlplane tools
	$(BIN)/pytest tests

# Benchmarks of the control plane, the data plane and failover, against LiteLLM's proxy in the
# same run (installed into its own venv, cached): rewrites BENCHMARKS.md and bench/plots.
# QUICK=1 for small scales and short runs; ONLY=dataplane (or controlplane, failover) for one part.
bench: controlplane bench-tools
	$(BIN)/python bench/run.py $(if $(QUICK),--quick) $(if $(ONLY),--only $(ONLY))

demo: controlplane tools
	$(BIN)/python hack/demo.py $(if $(KEEP),--keep)

demo-down: venv
	$(BIN)/python hack/demo.py --down

# A cluster to use by hand, with its node: `make cluster-up`, then export the KUBECONFIG it
# prints. `make cluster-down` stops it and puts the machine back as it was.
cluster-up: controlplane tools
	$(BIN)/python hack/localcluster.py start --node --dir $(or $(DIR),.state/cluster)

cluster-down: venv
	$(BIN)/python hack/localcluster.py stop --dir $(or $(DIR),.state/cluster)

# For users with Docker: the image on a kind cluster, end to end. Not part of `make test`.
kind-e2e: venv
	hack/kind-e2e.sh

clean:
	rm -rf $(VENV) .state .pytest_cache .mypy_cache .ruff_cache
