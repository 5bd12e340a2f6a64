# hpcdock: `make demo` renders the example animation; `make test` runs the whole suite.
# Both set up what is missing (system packages and the engine user when run as root).
PYTHON ?= /usr/bin/python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test bench lint demo-here test-here bench-here lint-here venv engine

demo test bench:
	@scripts/as-engine-user.sh $@

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	@echo "hpcdock: preparing the Python environment in $(VENV)"
	@$(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install -q --upgrade pip >/dev/null
	@$(BIN)/pip install -q -e '.[test,qt,exr]'
	@touch $@

engine:
	@scripts/setup-engine.sh
	@scripts/build-test-image.sh

demo-here: venv engine
	@$(BIN)/python scripts/demo.py

test-here: venv engine
	@$(BIN)/python -m pytest $(PYTEST_ARGS)

bench-here: venv engine
	@$(BIN)/python bench/run.py

lint: venv
	@$(BIN)/ruff check houdini_plugin service tests bench scripts
