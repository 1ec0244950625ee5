# One-command set-up on a fresh machine: `make test` and `make demo` create .venv, install everything and run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU machines get the CPU build of PyTorch (a plain `torch` requirement would pull a multi-GB CUDA build).
CPU_TORCH := torch==2.13.0

.PHONY: test test-slow demo bench install clean gpu-wheels

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		echo "GPU found: installing the default torch build"; \
	else \
		echo "No GPU: pinning the CPU torch wheel ($(CPU_TORCH))"; \
		$(BIN)/pip install --quiet "$(CPU_TORCH)"; \
	fi
	$(BIN)/pip install --quiet -e ".[test]"
	@touch $@

install: $(VENV)/.installed

# Triton kernels run on CPU tensors through the Triton interpreter in the tests. Two tiers: `make test` skips the
# long regression checks (@pytest.mark.slow: the published scores of the bundled models and the like, minutes on
# one CPU thread), `make test-slow` runs only those; CI runs both (.ci/run).
test: $(VENV)/.installed
	TRITON_INTERPRET=1 $(BIN)/pytest -q -m "not slow"

test-slow: $(VENV)/.installed
	TRITON_INTERPRET=1 $(BIN)/pytest -q -m slow

demo: $(VENV)/.installed
	$(BIN)/python -m dit_attn.demo

bench: $(VENV)/.installed
	$(BIN)/python -m dit_attn.bench.overhead

# For a GPU machine without a package index (it has torch, triton, transformers, peft, ... for CPython 3.12 but not
# diffusers): download those wheels here into .whl/ and copy .whl/ with the checkout; bench/gpu_session.sh installs
# them offline. A GPU machine that can reach a package index does not need this (bench/README.md).
GPU_WHEELS := diffusers==0.42.1 importlib_metadata==10.2.0
gpu-wheels:
	mkdir -p .whl
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .whl $(GPU_WHEELS)
	@ls .whl

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

# The diffusers range pyproject.toml declares: the lowest supported release and the newest one on the package
# index, each tested (tests/test_families.py, tests/test_attach.py) in its own venv under $TMPDIR.
DIFFUSERS_LOWEST := 0.35.0
.PHONY: test-diffusers-range
test-diffusers-range:
	bash .ci/diffusers_range.sh $(DIFFUSERS_LOWEST); lowest=$$?; \
	bash .ci/diffusers_range.sh newest; newest=$$?; \
	test $$lowest -eq 0 && test $$newest -eq 0
