# Two entry points for a fresh machine:
#   make demo  - create .venv if missing, install, fix the built-in mini model, write its report
#   make test  - create .venv if missing, install with test extras, run the whole test suite
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.debias-installed
DEMO    ?= runs/demo

.PHONY: demo test install browser sample-report clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/debias audit --model mini --professions professions/mini.txt --out $(DEMO)

# The report tests open pages in headless Chromium (Debian package `chromium`).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "Chromium is needed for the report tests: run 'sudo apt-get install chromium'"; exit 1; fi; }

test: $(STAMP) browser
	$(PY) -m pytest

clean:
	rm -rf $(VENV) runs build *.egg-info
