# Phoenix: `make plan` runs the offline plan of the dev stack; `make test` passes the tests.
# Both set up everything they need on a fresh Debian/Ubuntu machine.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STACK  ?= dev
OUT    ?= build/$(STACK)

.PHONY: setup deps plan test test-fast bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

deps:
	bash scripts/install-debian-deps.sh

plan: setup
	$(VENV)/bin/phoenix plan --stack $(STACK) --out $(OUT)

test: setup deps
	bash scripts/test.sh

test-fast: setup
	$(PY) -m pytest -q -m "not lab"

bench: setup deps
	bash scripts/in-netns.sh $(PY) bench/run.py

clean:
	rm -rf build .pytest_cache
