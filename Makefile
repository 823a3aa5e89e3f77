# Two commands on a fresh machine: `make setup`, then `make ci`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# flashinfer-bench declares flashinfer-python (CUDA-only, several GB) as a dependency; nothing we
# run imports it, so flashinfer-bench goes in with --no-deps after everything else.
TORCH := torch==2.13.0

.PHONY: setup ci lint test workloads wheels

setup:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q triton==3.6.0 "pydantic>=2.7,<3" "safetensors>=0.5" "typer>=0.12" "rich>=13" numpy \
		"modal>=1.0" "apache-tvm-ffi>=0.1.2" "docstring-parser>=0.16" "pytest>=8" "ruff>=0.6"
	$(BIN)/pip install -q --no-deps flashinfer-bench==0.1.2
	$(BIN)/pip install -q --no-deps -e .

ci: lint test

lint:
	$(BIN)/ruff check fibmoe variants tests examples scripts

test:
	$(BIN)/python -m pytest -q

workloads:
	$(BIN)/python -m fibmoe.dataset

wheels:
	scripts/fetch_wheels.sh
