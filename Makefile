# cytostore: `make demo` and `make test` do all the set-up on a fresh machine.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DEMO    ?= demo-out
export OMP_NUM_THREADS ?= 2

.PHONY: demo test test-all lint format bench docs clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	DEMO=$(DEMO) BIN=$(BIN) bash scripts/demo.sh

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q --runslow

lint: $(STAMP)
	$(BIN)/ruff format --check cytostore tests bench
	$(BIN)/ruff check cytostore tests bench
	$(BIN)/mypy cytostore
	$(BIN)/cog --check docs/cli.md

format: $(STAMP)
	$(BIN)/ruff format cytostore tests bench
	$(BIN)/ruff check --fix cytostore tests bench

docs: $(STAMP)
	$(BIN)/cog -r docs/cli.md

bench: $(STAMP)
	$(BIN)/python bench/run_all.py --out BENCHMARKS.md

clean:
	rm -rf $(DEMO) build *.egg-info
