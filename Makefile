# The README's two commands: `make quickstart` (the main job on Fashion-MNIST) and `make test`.
# Each creates .venv at the repository root when missing and installs requirements.lock into it:
# every package at the exact version the published numbers were measured with. `make lock`
# regenerates the lock from setup.py's ranges and extras; `make lint` checks style as CI does.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LOCK := requirements.lock
LOCK_VENV := .venv-lock
PIP_TOOLS := pip-tools==7.6.2
# `make lock LOCK_FLAGS=--upgrade` moves every package to the newest version setup.py allows;
# without it the pins still allowed are kept and only what changed is resolved.
LOCK_FLAGS ?=
SOURCES := resend_jax configs scripts tests
FASHION_MNIST := /usr/share/datasets/fashion-mnist
FASHION_MNIST_FILES := train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz \
	t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz

.PHONY: quickstart test lint lock fashion-mnist format

quickstart: $(VENV)/.installed fashion-mnist
	$(PY) -m resend_jax.benchmark --config configs/benchmark_fashion_mnist.py:quickstart --workdir runs/quickstart

test: $(VENV)/.installed fashion-mnist
	$(PY) -m pytest -q tests

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check $(SOURCES)
	$(VENV)/bin/ruff format --check $(SOURCES)

# One environment for every target: the lock holds the `torch` (PyTorch CPU) and `test` extras.
$(VENV)/.installed: $(LOCK) setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e .
	touch $@

# pip-compile resolves with pip's configuration, so it finds the CPU build of torch where pip
# would install it from; the lock names no index.
lock:
	test -x $(LOCK_VENV)/bin/pip-compile || \
		{ $(PYTHON) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install -q $(PIP_TOOLS); }
	CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile -q $(LOCK_FLAGS) --allow-unsafe \
		--strip-extras --no-emit-index-url --no-emit-find-links --extra torch --extra test \
		-o $(LOCK) setup.py

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package.
fashion-mnist:
	@missing=0; for f in $(FASHION_MNIST_FILES); do \
		[ -f $(FASHION_MNIST)/$$f ] || [ -f $(FASHION_MNIST)/$${f%.gz} ] || missing=1; done; \
	if [ $$missing = 1 ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
		else \
			echo "Fashion-MNIST is missing from $(FASHION_MNIST)."; \
			echo "Install it with: sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist"; \
			exit 1; \
		fi; \
	fi

format: $(VENV)/.installed
	$(VENV)/bin/ruff format $(SOURCES)
	$(VENV)/bin/ruff check --fix $(SOURCES)
