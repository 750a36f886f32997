# Two commands: `make demo` (set-up plus the main job) and `make test`.
# Both create .venv and install the pinned stack from constraints.txt on a fresh machine.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-fast lint format bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/leveranse demo

# The whole suite, slow end-to-end tests included (CI runs this).
test: $(STAMP)
	$(BIN)/ruff check etl dags tests benchmarks
	$(BIN)/ruff format --check etl dags tests benchmarks
	$(BIN)/pytest -n 2 --dist loadgroup

# Everything but the tests marked slow, for the edit-test loop.
test-fast: $(STAMP)
	$(BIN)/pytest -n 2 --dist loadgroup -m "not slow"

# The PHV delivery against a raw export and a naive pandas version, at 1M and 10M episodes
# on PostgreSQL and SQLite; writes benchmarks/RESULTS.md. Not a test. Subsets and options:
# make bench BENCH_ARGS="--sizes 1000000 --dialects postgresql" (python -m benchmarks --help).
bench: $(STAMP)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check etl dags tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format etl dags tests benchmarks
	$(BIN)/ruff check --fix etl dags tests benchmarks

clean:
	rm -rf var .pytest_cache .ruff_cache
