# ChittyOS ChatGPT MCP server. `make run` serves it locally; `make test` runs every check.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Node 22 and the official TypeScript MCP clients (tests and conformance), from npm, under .chitty/node.
NODE_STAMP := .chitty/node/.installed
PORT ?= 8000
STAGE ?= prod

.PHONY: run test lint format bench conformance package clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

$(NODE_STAMP): devtools/node.sh
	bash devtools/node.sh >/dev/null

run: $(STAMP)
	PYTHONUNBUFFERED=1 PORT=$(PORT) $(PY) -m devtools.local

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint $(NODE_STAMP)
	$(PY) -m pytest

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Every benchmark against a real PostgreSQL and a local upstream; not part of `make test`.
bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

conformance: $(STAMP)
	$(PY) -m devtools.conformance $(CONFORMANCE_ARGS)

# The deployment artifact (dist/deployment.zip and the SAM template dist/sam.json), then a lint of the
# template. `chalice package` needs a region only to render the template.
package: $(STAMP)
	rm -rf dist
	AWS_DEFAULT_REGION=$${AWS_DEFAULT_REGION:-us-east-1} $(VENV)/bin/chalice package --stage $(STAGE) dist
	$(VENV)/bin/cfn-lint dist/sam.json

clean:
	rm -rf $(VENV) .chitty .pytest_cache .ruff_cache dist
