# `make demo`: set up and run the main job on the embedded default (a local SQLite store, no server):
# train, gate, serve, watch a bad promotion get rolled back, then roll candidates out on a slice
# of live traffic: a bad one aborted at 5%, a good one promoted step by step.
# `make install` installs every extra (`.[all]`); `make test` the test extra (all of it and the
# test tools), and runs every test against a real MLflow server.
# Both are idempotent: the venv and the installs are redone only when pyproject.toml changes.

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt
PYTEST_ARGS ?=

.PHONY: demo test install install-test lint bench clean

demo: $(VENV)/.installed
	$(VENV)/bin/promote demo --watch --rollout

test: $(VENV)/.installed-test
	$(PY) -m pytest $(PYTEST_ARGS)

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml constraints.txt | $(PY)
	$(PIP) -e '.[all]'
	@touch $@

$(VENV)/.installed-test: pyproject.toml constraints.txt | $(PY)
	$(PIP) -e '.[test]'
	@touch $@ $(VENV)/.installed

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check promotion tests bench train
	$(VENV)/bin/mypy

bench: $(VENV)/.installed-test
	@for script in bench/*.py; do echo "== $$script"; $(PY) $$script || exit $$?; done

clean:
	rm -rf $(VENV) mlflow.db mlruns mlartifacts .pytest_cache
