# Two commands on a fresh machine: `make setup`, then `make ci`. Then run the CLI as `.venv/bin/fibmoe`
# (or `source .venv/bin/activate` once, then `fibmoe`).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# Which torch: TORCH_INDEX=cpu (the default) or TORCH_INDEX=cuda.
#   cpu:  torch 2.13.0+cpu from PyTorch's CPU index (~190 MB, no CUDA libraries; it requires no triton).
#         Triton kernels run in Triton's CPU interpreter. (This workplace's pip also finds the wheel locally.)
#   cuda: torch 2.11.0 from PyPI with its CUDA 13 libraries (~2.5 GB); it requires triton 3.6.0, the
#         contest's Triton, so the two agree (torch 2.12 and 2.13 CUDA builds require triton 3.7).
TORCH_INDEX ?= cpu
ifeq ($(TORCH_INDEX),cpu)
TORCH := torch==2.13.0+cpu
TORCH_FROM := --extra-index-url https://download.pytorch.org/whl/cpu
else ifeq ($(TORCH_INDEX),cuda)
TORCH := torch==2.11.0
TORCH_FROM :=
else
$(error TORCH_INDEX is cpu or cuda, not '$(TORCH_INDEX)')
endif

# flashinfer-bench declares flashinfer-python (CUDA-only, ~100 MB plus CUDA packages) as a dependency;
# nothing we run imports it, so flashinfer-bench goes in with --no-deps after everything else, and
# `deps-check` is `pip check` less that one requirement, left out on purpose.
MISSING_ON_PURPOSE := flashinfer-bench 0.1.2 requires flashinfer-python, which is not installed.

.PHONY: setup deps-check ci lint test test-slow workloads wheels

setup:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --no-deps $(TORCH) $(TORCH_FROM)  # torch alone from its index; its dependencies next
	$(BIN)/pip install -q $(TORCH) triton==3.6.0 "pydantic>=2.7,<3" "safetensors>=0.5" "typer>=0.12" "rich>=13" numpy \
		"modal>=1.0" "apache-tvm-ffi>=0.1.2" "docstring-parser>=0.16" "pytest>=8" "pytest-xdist>=3.5" "ruff>=0.6" \
		"openai>=1.40" "anthropic>=0.40" openevolve==0.4.0
	$(BIN)/pip install -q --no-deps flashinfer-bench==0.1.2
	$(BIN)/pip install -q --no-deps -e .
	$(MAKE) --no-print-directory deps-check
	@echo "ready: run the CLI as $(BIN)/fibmoe (or 'source $(BIN)/activate', then 'fibmoe')"

deps-check:
	@conflicts="$$($(BIN)/pip check | grep -vxF -e "$(MISSING_ON_PURPOSE)" -e "No broken requirements found.")"; \
	if [ -n "$$conflicts" ]; then echo "$$conflicts"; echo "pip check: dependency conflicts (above)"; exit 1; fi

ci: lint test test-slow

lint:
	$(BIN)/ruff check fibmoe variants tests examples scripts

# Every change: everything but the Triton-interpreter tier (under 2 minutes on 2 cores).
test:
	$(BIN)/python -m pytest -q -m "not slow"

# The slow tier: rungs 2 and 3 in Triton's CPU interpreter, contest-size tensors on a CPU, and the search
# loops killed and resumed, or run end to end with the real evaluator.
test-slow:
	$(BIN)/python -m pytest -q -m slow -n 2  # two workers: the interpreter tests are CPU-bound, one per core

workloads:
	$(BIN)/python -m fibmoe.dataset

wheels:
	scripts/fetch_wheels.sh
