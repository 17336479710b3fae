# Realtime leaderboard. `make help` lists the targets.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-dev.txt
	@command -v python3 >/dev/null || { echo "python3 is required"; exit 1; }
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install the pinned dependencies

run: $(STAMP) ## Start both services (SQLite, local Redis) on :8000 and :8001
	scripts/run.sh

test: $(STAMP) ## Run the whole test suite against real PostgreSQL and Redis (installs what it needs)
	scripts/ensure-services.sh tools
	scripts/ensure-services.sh postgres
	scripts/ensure-services.sh redis redis://127.0.0.1:6379
	$(PY) -m pytest

bench: $(STAMP) ## Benchmarks (about 13 minutes): writes BENCHMARKS.md and bench/results.json
	scripts/ensure-services.sh tools
	scripts/ensure-services.sh postgres
	scripts/ensure-services.sh redis redis://127.0.0.1:6379
	$(PY) -m bench.run $(if $(wildcard bench/before/*.json),--before $(sort $(wildcard bench/before/*.json)))

lint: $(STAMP) ## ruff (lint and format check) and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy app config

format: $(STAMP) ## Reformat the code with ruff
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

migrate: $(STAMP) ## Apply database migrations (DATABASE_URL, default SQLite)
	$(VENV)/bin/flask --app wsgi_increment db upgrade

# USER_ID and EXPIRES reach the CLI exactly as given: read unexpanded ($(value)),
# never exported (make would expand them on the way), and single-quoted for
# the shell, so neither shell nor make syntax in them is ever run.
unexport USER_ID EXPIRES
shell_quote = '$(subst ','\'',$(1))'

token: $(STAMP) ## Print a token: make token USER_ID=alice [EXPIRES=1h]
	@$(VENV)/bin/flask --app wsgi_increment token --expires $(call shell_quote,$(or $(value EXPIRES),1h)) \
		-- $(call shell_quote,$(or $(value USER_ID),alice))

demo: $(STAMP) ## Start both services with a score generator; open the board page it prints
	scripts/demo.sh

clean: ## Remove the virtualenv, caches and the local SQLite database
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache instance .run

.PHONY: help install run demo test bench lint format migrate token clean
