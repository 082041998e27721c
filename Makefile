# batchscore: every target installs what it needs on a machine with only Python and pip.
PYTHON ?= python3
UV := $(PYTHON) -m uv
VENV := .venv
CONFIG ?= batchscore.toml
export GX_ANALYTICS_ENABLED := false
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: demo test install lint format sample clean bench up down browser

## demo: install, train on the sample if there is no champion, score every pending partition
demo: install
	$(VENV)/bin/batchscore demo --config $(CONFIG)

## test: install (Chromium included, for the end-to-end UI check) and run the whole test suite
test: install browser
	$(VENV)/bin/pytest -q

## bench: generate a 5M-row partition and a 200-tree model in a temporary folder, then compare
## `batchscore score` with the naive pandas + GX + predict pipeline and bare Booster.predict
## (README, Performance). BENCH_ARGS="--rows 1000000" for a shorter run.
bench: install
	$(VENV)/bin/python bench/bench.py $(BENCH_ARGS)

## up: Prefect server on 127.0.0.1:4200 (state in .prefect/), work pool `batchscore`, the
## deployments of prefect.yaml and a worker, in the background; running twice starts nothing twice
up: install
	@scripts/stack.sh up

## down: stop the server and worker `make up` started (and the flow runs they started)
down:
	@scripts/stack.sh down

## browser: Debian's Chromium for the end-to-end UI check (tests/e2e); installed with apt only
## when $(CHROMIUM) is missing. Elsewhere install Chromium yourself and set CHROMIUM=/its/path.
CHROMIUM ?= /usr/bin/chromium
export CHROMIUM
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@if [ -x "$(CHROMIUM)" ]; then \
		echo "chromium: $(CHROMIUM)"; \
	elif command -v apt-get >/dev/null 2>&1; then \
		$(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver; \
	else \
		echo "make browser: $(CHROMIUM) is missing and there is no apt-get here;" \
			"install Chromium and run again with CHROMIUM=/path/to/chromium" >&2; \
		exit 1; \
	fi

## install: uv (via pip) and the locked environment in .venv, its bytecode compiled once here
## (uv does not by default; without it, and with PYTHONDONTWRITEBYTECODE set, every process
## compiles Prefect, GX and LightGBM from source at import: seconds per process). Then this
## project's own modules, which uv installs from this folder and does not compile, each
## time they changed: with PYTHONDONTWRITEBYTECODE set, each process that imports them
## compiled them from source (importing the product: 1.57 -> 1.36 s of CPU). And Prefect's
## server imported once with bytecode written: py-key-value, which its server imports,
## compiles its modules through beartype's import hook into bytecode files of its own, which
## uv does not make (the temporary server's import: ~0.2 s of CPU less).
install: $(VENV)/.installed
	@$(VENV)/bin/python -m compileall -q batchscore drift flows tasks

$(VENV)/.installed: pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet 'uv>=0.9,<0.14'
	$(UV) sync --locked --compile-bytecode
	PYTHONDONTWRITEBYTECODE= $(VENV)/bin/python -c "import prefect.server.api.server"
	@touch $@

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

## sample: regenerate data/sample (deterministic: the committed files come out byte-identical)
sample: install
	$(VENV)/bin/python data/sample/generate.py

## clean: remove the demo's store (models, scores, quarantine) but not the environment
clean:
	rm -rf .batchscore
