# fedunlearn — `make demo` and `make test` set up .venv on first use and reuse it while pyproject.toml is unchanged.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stamp-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
export FLWR_TELEMETRY_ENABLED := 0
export RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO := 0

.PHONY: demo test test-full test-unit bench clean

$(STAMP): pyproject.toml
	rm -f $(VENV)/.stamp-*
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch/torchvision first, from the versions pinned for this machine's local wheels (see README)
	$(BIN)/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/fedunlearn run experiments/quickstart.toml

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-full: $(STAMP)
	FEDUNLEARN_FULL_TESTS=1 $(BIN)/python -m pytest -q

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

bench: $(STAMP)
	$(BIN)/python experiments/bench_unlearning.py

clean:
	rm -rf $(VENV) runs .pytest_cache
