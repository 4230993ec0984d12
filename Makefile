# bgsvc: every command a user or CI needs. `make run` and `make test` start from nothing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install system-deps system-deps-cluster model clients run cluster lint format test test-fast bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[cpu,dev]'
	@# pymatting (rembg's matting) compiles its numba kernels on first import; do it once
	@# here, into the venv's cache, rather than in the first service start.
	$(BIN)/python -c "import rembg.bg"
	touch $(STAMP)

install: $(STAMP)

## Debian packages the whole test suite needs, apt-get installed (via sudo -n when not root)
## only when their commands are missing: nginx, promtool/prometheus, amtool, chromium, npm,
## redis-server.
system-deps:
	@bash scripts/system-deps.sh nginx promtool prometheus amtool chromium npm redis-server

## The cluster's balancer and its Redis (job queue and records, shared cache).
system-deps-cluster:
	@bash scripts/system-deps.sh nginx redis-server

## Fetch (once) and verify the allow-listed models into BGSVC_MODEL_DIR.
model: install
	$(BIN)/bgsvc models fetch

## remove.bg's own Node.js client, pinned by its lock file, for the tests that drive it;
## and the API reference pages' CDN files, from the npm packages at the versions the pages
## pin (src/bgsvc/routes/docs.py), for the browser test that serves them in the CDN's place.
CLIENTS := tests/clients/removebg
APIDOCS := tests/clients/apidocs
clients: $(CLIENTS)/node_modules/.installed-stamp $(APIDOCS)/node_modules/.fetched-stamp

$(CLIENTS)/node_modules/.installed-stamp: $(CLIENTS)/package.json $(CLIENTS)/package-lock.json
	npm ci --prefix $(CLIENTS) --no-audit --no-fund --loglevel=error
	touch $@

$(APIDOCS)/node_modules/.fetched-stamp: src/bgsvc/routes/docs.py tests/clients/apidocs.py | install
	$(BIN)/python -m tests.clients.apidocs
	touch $@

## Start the service in the foreground on BGSVC_HOST:BGSVC_PORT (127.0.0.1:8000).
run: model
	$(BIN)/bgsvc serve

## Three nodes + nginx on 127.0.0.1:8080 + redis-server (job queue; logs in .cluster/logs); Ctrl-C stops all.
cluster: system-deps-cluster model
	$(BIN)/bgsvc cluster up

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

format: install
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

## Lint, then every test (real-model, cluster, browser and remove.bg client tests included).
test: system-deps lint model clients
	$(BIN)/pytest $(PYTEST_ARGS)

## The fast suite only: the tiny generated model, seconds.
test-fast: install
	$(BIN)/pytest -m "not real_model and not cluster and not browser and not prometheus and not redis and not clients" $(PYTEST_ARGS)

## Bare-session limit vs the service (c=1/2/4/8), layouts, overload, jobs vs sync (a
## 200-image batch, embedded and with Redis), memory (short, and per worker over 20,000
## requests), cluster, chaos (kill -9 of a node every 30 s for 5 min); writes
## benchmarks/out/ (~57 min here; BENCH_ARGS=--quick ~8 min, no chaos;
## BENCH_ARGS="--only soak,chaos" just the two long ones, ~21 min; "--only jobs" ~12 min).
bench: model
	@bash scripts/system-deps.sh nginx redis-server
	$(BIN)/python -m benchmarks.bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache $(CLIENTS)/node_modules $(APIDOCS)/node_modules
