# The README's two commands: `make quickstart` (the main job on Fashion-MNIST) and `make test`.
# Each creates .venv at the repository root when missing and installs what it needs into it.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
FASHION_MNIST := /usr/share/datasets/fashion-mnist
FASHION_MNIST_FILES := train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz \
	t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz

.PHONY: quickstart test venv fashion-mnist format

quickstart: $(VENV)/.installed fashion-mnist
	$(PY) -m resend_jax.quickstart

test: $(VENV)/.installed-test fashion-mnist
	$(PY) -m pytest -q tests

$(VENV)/.installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[torch,test]'
	touch $@

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

format: $(VENV)/.installed-test
	$(VENV)/bin/ruff format resend_jax configs scripts tests
	$(VENV)/bin/ruff check --fix resend_jax configs scripts tests
