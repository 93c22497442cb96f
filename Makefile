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
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[rabbitmq,cli,dev,bench,interop,otel,prometheus,outbox,console,browser]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests examples benchmarks
	$(BIN)/mypy src

# The tests list what the broker holds through its management API (rabbitmqctl, far slower,
# when it is off): enable the plugin on a local broker where we may (CI runs as root); the
# tests fall back on rabbitmqctl where we may not.
#
# The tests run in parallel (pytest-xdist, WORKERS processes: they mostly wait on brokers and
# subprocesses, so more workers than cores pay). Beside them run mypy (a minute without its
# cache) and the cluster tests (three throwaway RabbitMQ nodes that take 25 to 45 s to boot),
# in a pytest of their own from the start; the others run under nice, so that the cluster's
# nodes are not starved on a small machine. The RabbitMQ contract, differential, fault and soak
# tests run twice in the same pytest: on the fast paths and on aiormq's public API alone
# (EVENTYARD_AMQP_FAST_PATHS=0 for the test; see tests/conftest.py).
# The target fails when any of them fails (a pytest that ARGS left with no test to run, exit
# status 5, does not); the output of the side jobs follows the tests'.
WORKERS ?= 4
PARALLEL = -n $(WORKERS) --dist worksteal

test: $(STAMP)
	@if command -v rabbitmq-plugins >/dev/null 2>&1 && ! $(BIN)/python -c \
	  "import urllib.request as r; r.urlopen('http://localhost:15672/', timeout=2)" 2>/dev/null; then \
	  rabbitmq-plugins -q enable rabbitmq_management >/dev/null 2>&1 || \
	  echo "note: could not enable rabbitmq_management; the tests list the broker with rabbitmqctl"; \
	fi
	@# The console's browser tests drive Debian's Chromium (installed once; fast when present).
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium) || \
	  echo "note: could not install chromium; the console's browser tests will fail"
	@# Compiled once here: the tests start many Python processes, and this machine's environment
	@# may forbid them to write bytecode (PYTHONDONTWRITEBYTECODE), so each would compile eventyard
	@# and the test modules it imports.
	@$(BIN)/python -m compileall -q src tests examples >/dev/null
	@side=$$(mktemp -d); status=0; \
	passed() { [ $$1 -eq 0 ] || [ $$1 -eq 5 ] || status=1; }; \
	echo "$(BIN)/pytest tests/cluster $(ARGS) & (its output follows the tests')"; \
	$(BIN)/pytest tests/cluster $(ARGS) >$$side/cluster 2>&1 & cluster=$$!; \
	echo "nice $(BIN)/mypy src & (its output follows the tests')"; \
	nice $(BIN)/mypy src >$$side/mypy 2>&1 & mypy=$$!; \
	set -x; \
	$(BIN)/ruff check src tests examples benchmarks || status=1; \
	nice $(BIN)/pytest $(PARALLEL) tests --ignore=tests/cluster $(ARGS); passed $$?; \
	{ set +x; } 2>/dev/null; \
	wait $$cluster; passed $$?; echo "--- pytest tests/cluster"; cat $$side/cluster; \
	wait $$mypy || status=1; echo "--- mypy src"; cat $$side/mypy; \
	rm -rf $$side; exit $$status

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(ARGS)

lock: $(STAMP)
	{ echo "# Exact versions the Makefile installs (pip -c). Regenerate with: make lock"; \
	  $(BIN)/python -m pip freeze --exclude-editable; } > constraints.txt

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
