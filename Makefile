# recgate — `make run` serves on SQLite, `make test` runs the whole suite. Both set up .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test migrate lint typecheck demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

var/dev.env:
	@mkdir -p var
	@echo "RECGATE_GENERIC_WEBHOOK_SECRET=whsec_$$($(PYTHON) -c 'import base64,secrets;print(base64.b64encode(secrets.token_bytes(32)).decode())')" > var/dev.env
	@echo "created var/dev.env with a development webhook secret"

migrate: $(STAMP)
	$(BIN)/recgate migrate

# Development defaults: a generated webhook secret (kept in var/dev.env) unless one is set.
run: $(STAMP) var/dev.env
	@set -a; [ -n "$$RECGATE_GENERIC_WEBHOOK_SECRET" ] || . ./var/dev.env; set +a; \
	$(BIN)/recgate migrate && \
	echo "recgate on http://$${RECGATE_HOST:-127.0.0.1}:$${RECGATE_PORT:-8000}  (livez: /livez, API docs: /docs)" && \
	echo "create a token: $(BIN)/recgate tokens create --name me --role admin" && \
	exec $(BIN)/recgate serve

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check app tests bench
	$(BIN)/ruff format --check app tests bench
	$(BIN)/mypy app

demo: $(STAMP)
	$(BIN)/recgate demo

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
