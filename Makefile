# batchscore: every target installs what it needs on a machine with only Python and pip.
PYTHON ?= python3
UV := $(PYTHON) -m uv
VENV := .venv
CONFIG ?= batchscore.toml
export GX_ANALYTICS_ENABLED := false
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: demo test install lint format sample clean bench

## demo: install, train on the sample if there is no champion, score every pending partition
demo: install
	$(VENV)/bin/batchscore demo --config $(CONFIG)

## test: install and run the whole test suite
test: install
	$(VENV)/bin/pytest -q

## bench: generate a 5M-row partition and a 200-tree model in a temporary folder, then compare
## `batchscore score` with the naive pandas + GX + predict pipeline and bare Booster.predict
## (README, Performance). BENCH_ARGS="--rows 1000000" for a shorter run.
bench: install
	$(VENV)/bin/python bench/bench.py $(BENCH_ARGS)

## install: uv (via pip) and the locked environment in .venv
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet 'uv>=0.9,<0.14'
	$(UV) sync --locked
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
