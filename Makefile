# switchrepro: `make install` then `make test`. Everything lives in .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install test lint bench smoke reproduce clean

install:
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# t5 first, with repaired metadata (README "Install recipe"), so the pin in pyproject.toml is met
	# without pulling seqio-nightly/tfds-nightly/mesh-tensorflow/transformers.
	$(BIN)/python -m pip install -q -c constraints.txt absl-py babel editdistance gin-config immutabledict \
		nltk numpy pandas rouge-score sacrebleu scikit-learn scipy sentencepiece seqio six tensorflow-datasets
	$(BIN)/python tools/install_t5.py
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	$(BIN)/python -m pip check
	# the CPU helpers (switchrepro/backends/cpu/native: uninitialised buffers, expert matmuls); without a C++ compiler it says so and goes on
	$(BIN)/python -m switchrepro.backends.cpu.native
	$(BIN)/python -m switchrepro.data.verify

# Tests run in one pytest-xdist process per core (up to 2, as WORKERS below): most tests compile and run
# tiny programs on one thread, so two processes halve the wall time on 2 cores.
test:
	$(BIN)/python -m pytest -n $(WORKERS) --durations=15 tests

# Style (ruff), the layer contracts in pyproject.toml (import-linter), and what import-linter cannot say
# (tools/check_imports.py: no import cycle, no import inside a function but the allowed ones, no private name
# across modules). All three run, so one pass lists every finding; any finding fails.
lint:
	@status=0; \
	$(BIN)/ruff check switchrepro tests tools || status=1; \
	$(BIN)/lint-imports --no-cache || status=1; \
	$(BIN)/python tools/check_imports.py switchrepro || status=1; \
	exit $$status

bench:
	$(BIN)/switchrepro bench moe

# The tables, in run order, from the registry (switchrepro/experiments/tables/__init__.py); empty before
# `make install`.
TABLES := $(shell test -x $(BIN)/python && $(BIN)/python -c \
	'from switchrepro.experiments.tables import NAMES; print(*NAMES)' 2>/dev/null)
.PHONY: $(TABLES)

# Every table at smoke scale (seconds per row): the whole run -> collect -> plot -> report path.
smoke:
	for t in $(TABLES); do $(BIN)/switchrepro run $$t --scale smoke || exit 1; done
	$(BIN)/switchrepro report --scale smoke

# Mini-scale tables train with one process per core, one XLA thread each (`run --workers`): on 2 cores
# that trains about a fifth more examples per second than one 2-thread process. `make table1 WORKERS=1`
# uses one process.
WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -ge 2 ] && echo 2 || echo 1)

# One table at mini scale (the CPU reproduction); resumable: rerun after an interruption.
$(TABLES):
	$(BIN)/switchrepro run $@ --scale mini --workers $(WORKERS)
	$(BIN)/switchrepro plot $@ --scale mini

# Every table at mini scale, then the report. Hours on 2 cores; stopping and rerunning is safe.
reproduce:
	for t in $(TABLES); do $(BIN)/switchrepro run $$t --scale mini --workers $(WORKERS) || exit 1; done
	$(BIN)/switchrepro report --scale mini

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
