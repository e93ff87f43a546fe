# Every target creates or reuses the local virtualenv itself: a fresh machine needs only python3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help demo test fuzz lint crds bench e2e chaos cluster cluster-bare cluster-down images clean

help:
	@echo "make demo   - run the operator against a local API emulator and reconcile the examples"
	@echo "make test   - unit and integration tests (installs into $(VENV) first)"
	@echo "make fuzz   - every property-based fuzz case (make test runs a third)"
	@echo "make lint   - ruff and mypy"
	@echo "make crds   - regenerate crds/ and the chart's CRD from the API models"
	@echo "make bench  - benchmarks (print figures)"
	@echo "make images - print the docker commands that build and push the images"
	@echo "make cluster      - build (once) and start the local control plane, install the chart, run the operator"
	@echo "make cluster-bare - the local control plane with nothing installed: follow the README's install section"
	@echo "make cluster-down - stop everything make cluster started"
	@echo "make e2e    - e2e suite against KUBECONFIG, or (unset) against the local control plane"
	@echo "make chaos  - faults on the local control plane (API server, etcd, operator, node, watch, 429s)"

HELM := .tools/helm

$(HELM): | $(STAMP)
	$(BIN)/python scripts/fetch_helm.py .tools

$(STAMP): pyproject.toml testbed/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,lint]' -e ./testbed
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/voxtral-testbed demo --examples examples

# The unit tests on two workers (in-process and CPU-bound: 6.3 min on one, 3.9 on two, beside a chaos run on 2 cores);
# the integration tests, which run the operator, gateways and simulators as processes, one at a time.
test: $(STAMP) $(HELM)
	PATH="$(CURDIR)/$(BIN):$$PATH" HELM=$(CURDIR)/$(HELM) $(BIN)/python -m pytest tests/unit -n 2
	PATH="$(CURDIR)/$(BIN):$$PATH" HELM=$(CURDIR)/$(HELM) $(BIN)/python -m pytest tests/integration

# Every fuzz case (make test runs a third of them).
fuzz: $(STAMP)
	VOXTRAL_FUZZ_SCALE=1 $(BIN)/python -m pytest tests/unit/test_fuzz.py

lint: $(STAMP)
	$(BIN)/ruff check operator testbed tests bench e2e scripts
	$(BIN)/ruff format --check operator testbed tests bench e2e scripts
	$(BIN)/mypy
	$(BIN)/hadolint images/*/Dockerfile


crds: $(STAMP)
	$(BIN)/voxtral-operator crd > crds/voxtralendpoints.voxtral.dev.yaml
	mkdir -p charts/voxtral-operator/crds
	cp crds/voxtralendpoints.voxtral.dev.yaml charts/voxtral-operator/crds/
	$(BIN)/voxtral-operator rbac > charts/voxtral-operator/templates/clusterrole.yaml

bench: $(STAMP) $(HELM)
	$(BIN)/python bench/reconcile.py
	e2e/cluster/up
	e2e/cluster/exec $(CURDIR)/$(BIN)/python bench/reconcile_cluster.py
	$(BIN)/python bench/autoscale.py
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/gateway_hostile.py
	$(BIN)/python bench/gateway_queues.py
	$(BIN)/python bench/realtime.py
	$(BIN)/python bench/policy_sim.py --first-seed 10 --seeds 6
	$(BIN)/python bench/policy_sim.py --first-seed 10 --seeds 6 --at new=3,4,5 --at kubeai=2,3 --at hpa-active=4,5
	$(BIN)/python bench/policy_sim.py --foresight --first-seed 10 --seeds 6
	$(BIN)/python bench/policy_sim.py --foresight --no-bursts --first-seed 10 --seeds 6
	$(BIN)/python bench/policy_sim.py --foresight --first-seed 28 --seeds 6
	$(BIN)/python bench/policy_sim.py --foresight --no-bursts --first-seed 28 --seeds 6
	$(BIN)/python bench/policy_sim.py --first-seed 16 --seeds 6
	$(BIN)/python bench/policy_sim.py --weights cache --constants bench/policy_constants-cache.json --first-seed 16 --seeds 6
	$(BIN)/python bench/policy_sim.py --first-seed 22 --seeds 6
	$(BIN)/python bench/policy_sim.py --weights cache --constants bench/policy_constants-cache.json --first-seed 22 --seeds 6
	$(BIN)/python bench/policy_sim.py --first-seed 28 --seeds 6
	$(BIN)/python bench/policy_sim.py --weights cache --constants bench/policy_constants-cache.json --first-seed 28 --seeds 6
	$(BIN)/python bench/policy_sim.py
	$(BIN)/python bench/policy_sim.py --first-seed 4 --seeds 6
	$(BIN)/python bench/policy_sim.py --reserved-target --first-seed 10 --seeds 3
	$(BIN)/python bench/policy_sim.py --reserved-target --seeds 1 --draws 1 --lane-slots-only --plot bench/reserved-pool-slots.svg
	$(BIN)/python bench/policy_sim.py --reserved-target --seeds 1 --plot bench/reserved-pool.svg
	$(BIN)/python bench/policy_sim.py --reserved-target --seeds 1 --keep-pool-up --plot bench/reserved-pool-kept.svg

# The image builds, printed rather than run (no Docker engine is assumed): `make images REGISTRY=...`.
REGISTRY ?= ghcr.io/voxtral-dev
images:
	@echo 'To build and push the images (needs a Docker engine; REGISTRY=$(REGISTRY)):'
	@echo 'docker build -f images/operator/Dockerfile -t $(REGISTRY)/voxtral-operator:0.1.0 .'
	@echo 'docker build -t $(REGISTRY)/vllm-voxtral:0.33.0 images/vllm-voxtral'
	@echo 'docker push $(REGISTRY)/voxtral-operator:0.1.0 && docker push $(REGISTRY)/vllm-voxtral:0.33.0'
	@echo 'The vLLM simulator, for the e2e suite on another cluster (e2e/README.md):'
	@echo 'docker build -f images/vllm-sim/Dockerfile -t $(REGISTRY)/vllm-sim:0.1.0 .'

cluster: $(STAMP) $(HELM)
	e2e/cluster/up

cluster-bare: $(STAMP) $(HELM)
	e2e/cluster/up --bare

cluster-down:
	e2e/cluster/down

# With KUBECONFIG set, against that cluster; without, against the local control plane, from inside
# its network namespace (where pod and Service addresses are reachable).
e2e: $(STAMP) $(HELM)
ifeq ($(KUBECONFIG),)
	e2e/cluster/up
	e2e/cluster/exec $(CURDIR)/$(BIN)/python -m pytest e2e --ignore=e2e/chaos --durations=15
else
	$(BIN)/python -m pytest e2e --ignore=e2e/chaos --durations=15
endif

# Every scenario (each passed three runs in a row on a busy 2-core machine; all eight take ~15 min).
# `make chaos CHAOS_SELECT=apiserver_restarted` runs one.
CHAOS_SELECT ?=
# Faults need the local control plane (its audit log, processes and node agent): never KUBECONFIG's.
chaos: $(STAMP) $(HELM)
	env -u KUBECONFIG e2e/cluster/up
	env -u KUBECONFIG e2e/cluster/exec $(CURDIR)/$(BIN)/python -m pytest e2e/chaos -s -k "$(CHAOS_SELECT)"

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache
