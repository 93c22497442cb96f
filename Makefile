# eventyard: `make demo` runs the demo, `make test` runs the whole test suite.
# Each creates its own virtual environment in .venv with pinned versions (constraints.txt).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench lock clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[rabbitmq,cli,dev,bench,interop]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests examples benchmarks
	$(BIN)/mypy src

test: lint
	$(BIN)/pytest tests $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(ARGS)

lock: $(STAMP)
	{ echo "# Exact versions the Makefile installs (pip -c). Regenerate with: make lock"; \
	  $(BIN)/python -m pip freeze --exclude-editable; } > constraints.txt

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
