# recgate — `make run` serves on SQLite, `make test` runs the whole suite. Both set up .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test migrate lint typecheck demo bench clean

# The first install takes about a minute: say so, and let pip show what it is doing.
$(STAMP): pyproject.toml
	@echo "installing dependencies into $(VENV) (first run, or pyproject.toml changed; about a minute)…"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --progress-bar on -e '.[dev]'
	@touch $(STAMP)
	@echo "dependencies installed in $(VENV)"

var/dev.env:
	@mkdir -p var
	@echo "RECGATE_GENERIC_WEBHOOK_SECRET=whsec_$$($(PYTHON) -c 'import base64,secrets;print(base64.b64encode(secrets.token_bytes(32)).decode())')" > var/dev.env
	@echo "created var/dev.env with a development webhook secret"

# recgate is production-strict unless RECGATE_ENV says otherwise. These targets serve a
# development checkout, so they opt into development, unless the environment or a .env file
# already chose.
DEV_ENV := [ -n "$$RECGATE_ENV" ] || grep -qsiE '^[[:space:]]*(export[[:space:]]+)?RECGATE_ENV=' .env || export RECGATE_ENV=development

migrate: $(STAMP)
	@$(DEV_ENV); $(BIN)/recgate migrate

# Development defaults: RECGATE_ENV=development and a generated webhook secret (kept in
# var/dev.env), each unless the environment sets its own.
run: $(STAMP) var/dev.env
	@$(DEV_ENV); \
	set -a; [ -n "$$RECGATE_GENERIC_WEBHOOK_SECRET" ] || . ./var/dev.env; set +a; \
	$(BIN)/recgate migrate && \
	echo "recgate (RECGATE_ENV=$${RECGATE_ENV:-from .env}) on http://$${RECGATE_HOST:-127.0.0.1}:$${RECGATE_PORT:-8000}  (livez: /livez, API docs: /docs)" && \
	echo "create a token (another terminal): $${RECGATE_ENV:+RECGATE_ENV=$$RECGATE_ENV }$(BIN)/recgate tokens create --name me --role admin" && \
	exec $(BIN)/recgate serve

test: $(STAMP)
	@echo "running the whole test suite (a few minutes; PostgreSQL tests need RECGATE_TEST_POSTGRES_URL)…"
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check app tests bench
	$(BIN)/ruff format --check app tests bench
	$(BIN)/mypy app tests

demo: $(STAMP)
	$(BIN)/recgate demo

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
