# Two entry points that work on a fresh machine with Python 3.11 and pip.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-quick typecheck test-interop clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# deepcell-toolbox 0.12.1 (the reference of the mesmer backend's processing,
# tests/test_mesmer_deepcell.py) declares Python < 3.11 but builds on 3.11 from
# its sdist. A failed build does not stop the install: those tests then fail
# and name the log.
$(VENV)/.test-installed: pyproject.toml Makefile | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev,cluster]"
	$(BIN)/python -m pip install --quiet cython wheel setuptools opencv-python-headless
	$(BIN)/python -m pip install --quiet --no-build-isolation --ignore-requires-python \
		--no-deps deepcell-toolbox==0.12.1 > $(VENV)/deepcell-toolbox.log 2>&1 \
		|| echo "deepcell-toolbox did not build; see $(VENV)/deepcell-toolbox.log"
	touch $@ $(VENV)/.demo-installed

demo: $(VENV)/.demo-installed
	$(BIN)/tiled-seg demo

test: typecheck
	$(BIN)/python -m pytest

typecheck: $(VENV)/.test-installed
	$(BIN)/python -m mypy

# The tests that start no cluster, load no model library and take under a
# second or two each (markers in tests/conftest.py): about a minute.
test-quick: $(VENV)/.test-installed
	$(BIN)/python -m pytest -m "not slow and not cluster and not model"

# spatialdata pins an older dask and napari-ome-zarr needs napari, so the
# readers that need them get their own environment.
INTEROP ?= .venv-interop

$(INTEROP)/.installed: pyproject.toml
	$(PYTHON) -m venv $(INTEROP)
	$(INTEROP)/bin/python -m pip install --quiet --upgrade pip
	$(INTEROP)/bin/python -m pip install --quiet -e ".[interop]"
	touch $@

test-interop: $(INTEROP)/.installed
	$(INTEROP)/bin/python -m pytest -p no:cacheprovider tests/test_interop.py tests/test_steinbock.py

clean:
	rm -rf $(VENV) $(INTEROP) demo_output
