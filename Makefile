# Two commands from a fresh clone: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test demo bench clean

venv: $(STAMP)

# torch is pinned to the CPU wheel that lies on this machine's disk; an unpinned torch pulls CUDA builds.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Triton (CPU build from PyPI) only for the tests: they run the PSPC Triton kernels through its interpreter and
# compile them for a Hopper GPU with its ptxas; the package itself imports Triton only on CUDA.
TRITON_STAMP := $(VENV)/.triton
$(TRITON_STAMP): $(STAMP)
	$(PY) -m pip install --quiet triton==3.7.1
	touch $(TRITON_STAMP)

test: venv $(TRITON_STAMP)
	$(PY) -m pytest -q

demo: venv
	$(VENV)/bin/denoiserlab demo --out results/demo

bench: venv
	$(PY) benchmarks/bench_denoisers.py

clean:
	rm -rf $(VENV) results build src/*.egg-info
