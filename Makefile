# vectorize-worker — the two commands: `make run` (a worker) and `make test` (the suite).
SHELL := /bin/bash
PYTHON ?= python3
CACHE ?= $(HOME)/.cache/vectorize-worker
# The virtualenv lives outside the clone, keyed on the lock file, so a fresh
# clone (and CI) reuses it; a changed lock file builds a new one.
LOCK_HASH := $(shell sha256sum requirements.lock | cut -c1-12)
VENV ?= $(CACHE)/venv-$(LOCK_HASH)
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)
export VENV
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help venv example-plugin up down status run worker demo bench bench-migration bench-peer test chaos test-unit test-integration test-containers lint format schemas lock doctor clean

help:
	@echo "make run    - install, start local Kafka, run a worker (Ctrl-C stops it)"
	@echo "make test   - install, start local services, run the whole test suite"
	@echo "make demo   - with a worker running: send example tasks, show results and a nearest-neighbour query"
	@echo "make up / make down - start / stop local services (Kafka)"
	@echo "make doctor - check configuration, Kafka, store and model"
	@echo "make bench  - throughput: bare model vs the worker (bench/README.md; BENCH_ARGS=\"--runs 3\")"
	@echo "make bench-migration - a migration's backfill vs worker_bulk (BENCH_ARGS=\"--runs 3\")"

venv: $(VENV)/.complete example-plugin

# No file prerequisite: the lock file's hash is already in the path, and a fresh
# clone's newer mtime must not force a rebuild.
$(VENV)/.complete:
	@echo "==> creating $(VENV) (first time: downloads torch and friends, a few minutes)"
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip "setuptools<82" wheel
	$(VENV)/bin/pip install -q -r requirements.lock
	touch $@

# The example plugin (examples/plugin: the `hashing` model family, the `qa_pair_vectorization` task type), editable,
# into the same virtualenv. The virtualenv is shared by every checkout of the same lock file (CI's clones too), so
# the install is redone whenever the last one came from another checkout or another plugin pyproject.toml (its
# entry points): the stamp holds both.
PLUGIN_STAMP = $(shell cat examples/plugin/pyproject.toml | sha256sum | cut -c1-16)@$(CURDIR)
example-plugin: $(VENV)/.complete
	@test "$$(cat $(VENV)/.example-plugin 2>/dev/null)" = "$(PLUGIN_STAMP)" || { \
		$(VENV)/bin/pip install -q --no-deps --no-build-isolation -e examples/plugin && \
		echo "$(PLUGIN_STAMP)" > $(VENV)/.example-plugin; }

up:
	scripts/services.sh up

down:
	scripts/services.sh down

status:
	scripts/services.sh status

# The worker's defaults (embedded Qdrant) need only Kafka and Redis.
# /search/ is on here (the port is on 127.0.0.1) so that `make demo` can query the store; off by default elsewhere.
run: venv
	scripts/services.sh up kafka redis
	VECTORIZE_WORKER_WEB_SEARCH_ENABLED=$${VECTORIZE_WORKER_WEB_SEARCH_ENABLED:-true} $(PY) -m app worker -l info

worker: venv
	$(PY) -m app worker -l info

doctor: venv
	$(PY) scripts/test_worker.py

demo: venv
	$(PY) scripts/demo.py

# The bare model, the per-task flow and a real worker on the same texts (bench/README.md).
bench: venv
	scripts/services.sh up kafka redis weaviate
	HF_HUB_OFFLINE=1 $(PY) -m bench.run --peer-python $(CACHE)/infvenv/bin/python $(BENCH_ARGS)

# A model migration's backfill throughput against worker_bulk, in the same worker (docs/migration.md).
bench-migration: venv
	scripts/services.sh up kafka redis weaviate
	HF_HUB_OFFLINE=1 $(PY) -m bench.migration $(BENCH_ARGS)

# The peer for `make bench`: Infinity in its own virtualenv (it pins its own torch stack).
bench-peer:
	test -x $(CACHE)/infvenv/bin/python || $(PYTHON) -m venv $(CACHE)/infvenv
	$(CACHE)/infvenv/bin/pip install -q "infinity-emb[torch]==0.0.78"

test: venv up
	HF_HUB_OFFLINE=1 $(PY) -m pytest tests --durations=12

# The chaos test alone (it is part of `make test` too).
chaos: venv up
	HF_HUB_OFFLINE=1 $(PY) -m pytest tests/chaos -s

# The image and docker-compose.yml under podman: 3 workers, tasks in, a worker killed (docs/containers.md).
# Root; installs podman, runc and debootstrap with apt-get when missing, skips only when it cannot.
test-containers: venv
	scripts/containers.sh

test-unit: venv
	HF_HUB_OFFLINE=1 $(PY) -m pytest tests/unit

test-integration: venv up
	HF_HUB_OFFLINE=1 $(PY) -m pytest tests/integration

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	cd $(CURDIR) && $(VENV)/bin/lint-imports

format: venv
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

schemas: venv
	$(PY) scripts/gen_schemas.py && $(PY) scripts/gen_docs.py

lock:
	$(PYTHON) -m venv $(CACHE)/lockvenv && $(CACHE)/lockvenv/bin/pip install -q -r requirements.txt && \
	  $(CACHE)/lockvenv/bin/pip freeze --exclude-editable > requirements.lock

clean:
	rm -rf .state .pytest_cache .ruff_cache
