# Two commands set everything up on a fresh machine:
#   make train   – a short Fashion-MNIST training run that writes metrics and pictures to runs/quickstart
#   make test    – the test suite
#   make gpu-check – the CUDA claims on a GPU (benchmarks/gpu_check.py)
# Both create .venv and install the package with its test extra first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUN ?= runs/quickstart
EPOCHS ?= 2

.PHONY: install data train lint test test-fast gpu-check clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[test]"
	touch $@

install: $(VENV)/.installed

# Offline machines: Fashion-MNIST from Debian's package when we may install it (root), else torchvision downloads it.
data:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist) || true; fi

train: install data
	$(VENV)/bin/pyro-vae train --dataset fashion-mnist --epochs $(EPOCHS) --batch-size 128 --latent-dim 20 \
		--hidden-dims 400 --elbo trace --device auto --out $(RUN) $(if $(wildcard $(RUN)/config.json),--resume,)
	$(VENV)/bin/pyro-vae evaluate $(RUN) --nll-samples 100 --limit 1000

lint: install
	$(VENV)/bin/ruff check pyro_vae tests benchmarks examples

# one pytest worker per core, a test file per worker (its module fixtures built once)
test: install data lint
	$(PY) -m pytest -q -n auto --dist loadfile

test-fast: install
	$(PY) -m pytest -q -m "not slow" -n auto --dist loadfile

# Every CUDA claim of the README and docs/ on one GPU in at most 8 minutes → benchmarks/gpu.json (one line and exit 0 without one)
gpu-check: install data
	$(PY) benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) runs .pytest_cache
