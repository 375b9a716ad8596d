# make demo | make test | make bench — see README.md. Both create .venv when missing and install into it once
# (again only when pyproject.toml or constraints/cpu.txt change).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
BENCH_ARGS ?=
# DeepSpeed cannot detect an accelerator on a CPU-only machine without being told.
export DS_ACCELERATOR ?= cpu
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install comm-op browser lint demo test test-all bench bench-quick clean

install: $(STAMP) comm-op

# Order matters: torch first (the local CPU build; a bare `torch` pulls GBs of CUDA wheels), then
# DeepSpeed built against it without isolation, then the package under the same constraints.
$(STAMP): pyproject.toml constraints/cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q $$(grep -E '^torch==' constraints/cpu.txt)
	DS_BUILD_OPS=0 $(PY) -m pip install -q --no-build-isolation -c constraints/cpu.txt deepspeed
	$(PY) -m pip install -q -c constraints/cpu.txt -e ".[dev]"
	touch $(STAMP)

# DeepSpeed JIT-compiles its CPU comm op on first use (minutes) into the torch_extensions cache
# ($$XDG_CACHE_HOME or ~/.cache): build it here, so no training run or test pays for it (or is
# killed mid-build, leaving a stale lock behind). Checked every time (2 s when built): the cache
# can be new while the venv is not (.ci/run gives the suite a fresh cache home).
comm-op: $(STAMP)
	@$(PY) -c "from deepspeed.ops.op_builder.cpu.comm import ShareMemCommBuilder as B; B().load()"

# The recipe's stages, then the served app answers one structured and one conversational
# request (printed with their routes) and stops.
demo: install
	$(VENV)/bin/mortgagellm run configs/cpu-demo.yaml
	$(VENV)/bin/mortgagellm serve configs/cpu-demo.yaml --demo

# Style and structure before any test: ruff (pyproject's rules, line length 100) and the
# import-linter contracts (layers, independent stages, no cycles).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

# Debian's chromium for the report.html browser test (tests/pipelines/test_report_html.py, driven
# by playwright with executable_path; playwright's own browser download is never used). CI runs
# as root with apt; elsewhere the test skips, naming the package.
browser:
	@command -v chromium >/dev/null || { test "$$(id -u)" = 0 && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } || \
		echo "chromium not installed (needs root): the report.html browser test will skip"

test: lint browser
	$(PY) -m pytest -m "not gpu and not slow" $(PYTEST_ARGS)

test-all: lint browser
	$(PY) -m pytest $(PYTEST_ARGS)

# Every benchmark in one run, each goal as a ratio to a baseline measured in the same run,
# repeated (median and spread): one table, and benchmarks/results/<date>-<host>.json. Full sizes
# want an idle machine (tens of minutes); bench-quick runs small sizes in under 5 minutes.
bench: install
	$(PY) benchmarks/bench.py $(BENCH_ARGS)

bench-quick: install
	$(PY) benchmarks/bench.py --quick $(BENCH_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
