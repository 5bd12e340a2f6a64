# hpcdock: `make demo` renders the example animation; `make test` runs the whole suite.
# Both set up what is missing (system packages and the engine user when run as root).
# `make unit` runs every test that needs neither the engine nor root.
PYTHON ?= /usr/bin/python3
VENV ?= .venv
BIN := $(VENV)/bin
PYSIDE2_VENV ?= .venv-pyside2
# The reference OpenJD runtime the OpenJD lane compares with (tests/engine/test_openjd_oracle.py):
# openjd-cli pins older openjd-model and openjd-sessions than the service's, so it has a Python of its own.
OPENJD_VENV ?= .venv-openjd
OPENJD_CLI ?= openjd-cli>=0.8,<0.9
# What runs again in the PySide2 lane: the plugin's own tests (tests/qt/test_panel_engine.py needs the service).
PLUGIN_TESTS := tests/qt tests/houdini tests/plugin_env --ignore=tests/qt/test_panel_engine.py

.PHONY: demo test bench lint demo-here test-here bench-here lint-here venv venv-pyside2 venv-openjd engine unit test-pyside2

demo test bench:
	@scripts/as-engine-user.sh $@

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	@echo "hpcdock: preparing the Python environment in $(VENV)"
	@$(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install -q --upgrade pip >/dev/null
	@$(BIN)/pip install -q -e '.[test,qt,exr]'
	@touch $@

# Debian's Python with Debian's PySide2 (Houdini 19.5-20.5's binding) and test tools only.
venv-pyside2: $(PYSIDE2_VENV)/.installed
$(PYSIDE2_VENV)/.installed: scripts/venv-pyside2.sh tests/plugin_env/requirements-pyside2.txt
	@echo "hpcdock: preparing the PySide2 test environment in $(PYSIDE2_VENV)"
	@PYTHON=$(PYTHON) scripts/venv-pyside2.sh $(PYSIDE2_VENV)
	@touch $@

venv-openjd: $(OPENJD_VENV)/.installed
$(OPENJD_VENV)/.installed: Makefile
	@echo "hpcdock: preparing the reference OpenJD runtime in $(OPENJD_VENV)"
	@$(PYTHON) -m venv $(OPENJD_VENV)
	@$(OPENJD_VENV)/bin/pip install -q '$(OPENJD_CLI)'
	@touch $@

engine:
	@scripts/setup-engine.sh
	@scripts/build-test-image.sh

demo-here: venv engine
	@$(BIN)/python scripts/demo.py

# Both lanes run even when the first fails; the exit status is that of the worse one.
# HPCDOCK_EXPECT_ENGINES: the engines whose conformance scenarios must run here (they fail when missing).
test-here: venv venv-pyside2 venv-openjd engine
	@rc=0; HPCDOCK_EXPECT_QT=PySide6 HPCDOCK_EXPECT_ENGINES=podman,slurm,swarm $(BIN)/python -m pytest $(PYTEST_ARGS) || rc=1; \
	  [ -n "$(PYTEST_ARGS)" ] || $(MAKE) --no-print-directory test-pyside2 || rc=1; exit $$rc

unit: venv venv-pyside2
	@rc=0; HPCDOCK_EXPECT_QT=PySide6 $(BIN)/python -m pytest -m "not engine" --ignore=tests/engine $(PYTEST_ARGS) || rc=1; \
	  $(MAKE) --no-print-directory test-pyside2 || rc=1; exit $$rc

# The plugin's tests in a Python like Houdini's: PySide2, the test tools, and only the PYTHONPATH that
# package.json sets (no editable install). --confcutdir keeps tests/conftest.py, whose service fixtures
# need the service's libraries, out of this run.
test-pyside2: venv-pyside2
	@echo "hpcdock: the plugin's tests under PySide2, PYTHONPATH from package.json"
	@PYTHONPATH="$$($(PYTHON) tests/plugin_env/houdini_package.py PYTHONPATH)" HPCDOCK_EXPECT_QT=PySide2 \
	  $(PYSIDE2_VENV)/bin/python -m pytest --confcutdir=tests/plugin_env $(PLUGIN_TESTS)

bench-here: venv engine
	@$(BIN)/python bench/run.py $(BENCH_ARGS)

lint: venv
	@$(BIN)/ruff check houdini_plugin service tests bench scripts
