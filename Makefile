# churnops: `make up` brings the platform up, `make test` runs every test. Both install first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Nothing may reach the internet at run time: every tool has its own switch.
export DAGSTER_DISABLE_TELEMETRY := 1
export DBT_SEND_ANONYMOUS_USAGE_STATS := false
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export BENTOML_DO_NOT_TRACK := true

# Every setting (paths, ports, CHURNOPS_PROFILE) has its default in churn_assets/settings.py alone.
# `churnops` resolves them and hands them to what it starts; `churnops exec` does the same for a tool.
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)
RUN := $(UV) run --frozen --quiet
DBT := cd dbt_project && $(RUN) churnops exec dbt
DATA_DIR = $(shell $(RUN) churnops exec printenv CHURNOPS_DATA_DIR)

.PHONY: help install manifest up materialize ui lint test test-fast validate docs docs-serve serve bento mlflow-ui bench-serving champion-history rollback drift-demo bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(CURDIR)/.tools/bin/uv:
	python3 -m venv .tools && .tools/bin/pip install --quiet uv

install: $(if $(findstring .tools,$(UV)),$(UV))  ## install the locked environment and parse the dbt project
	@echo "installing the locked environment (uv sync) and parsing the dbt project"
	@$(UV) sync --frozen --quiet
	@$(MAKE) --no-print-directory manifest

manifest:
	$(DBT) parse --quiet

up: install  ## install, materialize the whole graph, start every surface (Ctrl+C stops them all)
	@$(RUN) churnops up

materialize:  ## materialize the whole graph for the default history in one run
	$(RUN) churnops materialize

ui:  ## start the Dagster webserver and daemon (after the graph has run)
	$(RUN) churnops start dagster daemon

# sqlfluff's dbt templater opens the profile's warehouse read-write: an in-memory one keeps it off
# the platform's file, which a running platform holds.
lint: install  ## ruff (check and format) on the Python, sqlfluff (dbt templater) on the dbt models
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	CHURNOPS_WAREHOUSE=:memory: CHURNOPS_DUCKDB_MEMORY_LIMIT=1GB CHURNOPS_DUCKDB_THREADS=1 $(RUN) sqlfluff lint dbt_project/models

test: install lint  ## lint, then run the whole test suite
	$(RUN) pytest

test-fast: install  ## run the tests not marked slow
	$(RUN) pytest -m "not slow"

validate: install  ## check that the Dagster definitions load
	$(RUN) churnops exec dagster definitions validate -w workspace.yaml

docs: install  ## write the dbt docs site (feature definitions) to dbt_project/target
	$(DBT) docs generate

docs-serve: docs  ## serve the dbt docs site
	$(RUN) churnops start docs

serve:  ## serve the champion over HTTP (after the graph has run)
	$(RUN) churnops start service

bento: $(if $(findstring .tools,$(UV)),$(UV))  ## build the Bento (bento/bentofile.yaml); `bentoml containerize churn_service:latest` needs Docker
	PATH="$(dir $(UV)):$$PATH" $(RUN) churnops exec bentoml build -f bento/bentofile.yaml .

mlflow-ui:  ## the MLflow UI, on the platform's tracking store
	$(RUN) churnops start mlflow

champion-history:  ## list every champion model version, newest first
	$(RUN) churnops champion-history

rollback:  ## move the champion alias back to the previous champion
	$(RUN) churnops rollback

drift-demo:  ## drift the last 14 days' data, refresh, let the retrain sensor act, show the gate's decision (after make up)
	$(RUN) churnops drift-demo

bench: install  ## run the pipeline benchmark (USERS=10000 DAYS=120 by default)
	$(RUN) python benchmarks/pipeline.py --users $(or $(USERS),10000) --days $(or $(DAYS),120)

bench-serving: install  ## measure the churn service (needs a model: make materialize first)
	$(RUN) python benchmarks/serving.py --data-dir "$(DATA_DIR)"

clean:  ## delete everything the platform wrote (the data dir and dbt artifacts)
	rm -rf $(DATA_DIR) dbt_project/target dbt_project/logs
