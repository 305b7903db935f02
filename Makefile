# The two commands that set up a fresh machine. Both create .venv and install into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LRM_DATA_DIR ?= $(abspath ../shared/datasets)
CONFIG ?= configs/hstu_beauty.py
WORKDIR ?= runs/hstu_beauty

.PHONY: venv train test clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

venv: $(VENV)/.installed

train: venv
	LRM_DATA_DIR=$(LRM_DATA_DIR) $(PY) -m launch.train --config $(CONFIG) --workdir $(WORKDIR)

# Two workers, one test file each (module fixtures are built once); the suite is CPU-bound on 2 cores.
test: venv
	$(PY) -m pytest -q -n 2 --dist loadfile tests

clean:
	rm -rf $(VENV) runs
