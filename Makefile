# Set-up and common tasks. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# CPU machines take the CPU build of torch pinned in constraints.txt, from a local wheel folder
# when the machine has one, else from PyTorch's CPU wheel index (PyPI's Linux torch is the CUDA
# build, several GB of CUDA libraries).
CPU_TORCH = $(if $(wildcard /opt/wheels),--find-links /opt/wheels,--extra-index-url https://download.pytorch.org/whl/cpu)
PIP_FLAGS = -c constraints.txt $(CPU_TORCH)
# `make demo` installs the package alone; `make test` adds the test and dev extras (pytest,
# transformers, dask-jobqueue, dask-kubernetes, arviz, prdc, ruff, mypy…) to the same
# environment, marked done by this file.
TEST_STAMP = $(VENV)/.test-extras

# The encoder reference tests need torchvision (pytorch-fid and clean-fid import it), which
# installs here only beside torch 2.14.1: a second environment, made once (about 5.5 GB).
ENC_VENV ?= .venv-encoders

REAL ?= demo-data/real.zarr
GEN  ?= demo-data/gen.zarr

.PHONY: demo test lint bench clean gpu-check mutation

$(BIN)/shardeval: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(PIP_FLAGS) -e .
	touch $@

$(TEST_STAMP): $(BIN)/shardeval
	$(BIN)/python -m pip install -q $(PIP_FLAGS) -e '.[test,dev]'
	touch $@

$(ENC_VENV)/bin/shardeval: pyproject.toml constraints-encoders.txt
	$(PYTHON) -m venv $(ENC_VENV)
	$(ENC_VENV)/bin/python -m pip install -q --upgrade pip
	$(ENC_VENV)/bin/python -m pip install -q -c constraints-encoders.txt -e '.[encoders-test]'
	touch $@

demo: $(BIN)/shardeval
	@if [ "$(REAL)" = demo-data/real.zarr ] && [ ! -e demo-data/real.zarr ]; then \
	  $(BIN)/shardeval synth demo-data/real.zarr --n 20000 --d 256 --seed 1; fi
	@if [ "$(GEN)" = demo-data/gen.zarr ] && [ ! -e demo-data/gen.zarr ]; then \
	  $(BIN)/shardeval synth demo-data/gen.zarr --n 20000 --d 256 --seed 2 --mean 0.05 --scale 1.1; fi
	$(BIN)/shardeval fid $(REAL) $(GEN) --shard-rows 4096 --out demo-data/fid.json --overwrite
	@echo "JSON report: demo-data/fid.json"

# Lint first: CI fails on ruff or mypy errors as it does on a failing test.
test: $(TEST_STAMP) lint $(ENC_VENV)/bin/shardeval
	$(BIN)/python -m pytest -q
	$(ENC_VENV)/bin/python -m pytest -q -m encoders -p no:cacheprovider tests/encoders

lint: $(TEST_STAMP)
	$(BIN)/ruff check shardeval tests benchmarks tools
	$(BIN)/ruff format --check shardeval tests benchmarks tools
	$(BIN)/mypy

bench: $(TEST_STAMP)
	$(BIN)/python -m benchmarks.fid_vs_peers
	$(BIN)/python -m benchmarks.nll_ess
	$(BIN)/python -m benchmarks.kernels
	$(BIN)/python -m benchmarks.cluster_scale
	$(BIN)/python -m benchmarks.sample_metrics
	$(BIN)/python -m benchmarks.extract
	$(MAKE) $(ENC_VENV)/bin/shardeval
	$(ENC_VENV)/bin/python -m benchmarks.inception_score   # beside torch-fidelity

# Mutation testing of the numerical core (docs/development.md, "Mutation testing"): each module
# of tools/mutation.py's table against its tests, in build/mutation/, on demand and never in
# `make test`. MUTATION_MODULES picks some (short names: fid/frechet core/states); JOBS workers.
MUTATION_MODULES ?=
JOBS ?= 2
mutation: $(TEST_STAMP)
	$(BIN)/python -m tools.mutation --jobs $(JOBS) $(MUTATION_MODULES)

# GPU acceptance (benchmarks/gpu_check.py): on a CUDA machine, in an environment with a CUDA
# build of torch (pip install -e '.[test,encoders]' without constraints.txt, whose torch is the
# CPU build), so this target does not create $(VENV); GPU_PYTHON picks another interpreter.
# Exit 0 all passed, 1 a check failed (named on stderr), 2 no CUDA device.
GPU_PYTHON ?= $(BIN)/python
gpu-check:
	$(GPU_PYTHON) -m benchmarks.gpu_check --out bench-data/gpu-check.json

clean:
	rm -rf $(VENV) $(ENC_VENV) demo-data bench-data *.egg-info
