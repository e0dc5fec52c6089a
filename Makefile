# switchrepro: `make install` then `make test`. Everything lives in .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install test lint bench clean

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
	$(BIN)/python -m switchrepro.data.verify

test:
	$(BIN)/python -m pytest tests

lint:
	$(BIN)/ruff check switchrepro tests tools

bench:
	$(BIN)/switchrepro bench moe

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
