# Two entry points for a fresh machine:
#   make demo  - create .venv if missing, install, fix the built-in mini model, write its report
#   make test  - create .venv if missing, install with test extras, run the whole test suite
#   make test-fast - the same without the tests marked slow (everyday work; CI runs `make test`)
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.debias-installed
DEMO    ?= runs/demo

.PHONY: demo test test-fast install browser sample-report clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/debias fix --model mini --professions professions/mini.txt --out $(DEMO)
	@echo "report: $(DEMO)/report.html"

# reports/ holds the report of a fix of the built-in mini model; this regenerates it with the current code.
sample-report: $(STAMP)
	rm -rf runs/sample
	$(VENV)/bin/debias fix --model mini --professions professions/mini.txt --out runs/sample
	$(VENV)/bin/debias report runs/sample --out reports/mini-fix.html

# The report tests open pages in headless Chromium (Debian package `chromium`).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "Chromium is needed for the report tests: run 'sudo apt-get install chromium'"; exit 1; fi; }

# Two worker processes of one torch thread each (the machine's two cores); a test file stays on one worker, so
# its module fixtures are built once.
PYTEST  := $(PY) -m pytest -n 2 --dist loadfile

test: $(STAMP) browser
	$(PYTEST)

test-fast: $(STAMP) browser
	$(PYTEST) -m "not slow"

clean:
	rm -rf $(VENV) runs build *.egg-info
