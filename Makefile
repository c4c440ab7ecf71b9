# churnops: `make up` brings the platform up, `make test` runs every test. Both install first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

export CHURNOPS_DATA_DIR ?= $(CURDIR)/.churnops
export DAGSTER_HOME ?= $(CHURNOPS_DATA_DIR)/dagster_home
export CHURNOPS_WAREHOUSE ?= $(CHURNOPS_DATA_DIR)/warehouse.duckdb
export BENTOML_HOME ?= $(CHURNOPS_DATA_DIR)/bentoml
# Nothing may reach the internet at run time: every tool has its own switch.
export DAGSTER_DISABLE_TELEMETRY := 1
export DBT_SEND_ANONYMOUS_USAGE_STATS := false
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export BENTOML_DO_NOT_TRACK := true

HOST ?= 127.0.0.1
DAGSTER_PORT ?= 3000
DOCS_PORT ?= 8080
MLFLOW_PORT ?= 5000
SERVICE_PORT ?= 3001
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)
RUN := $(UV) run --frozen
DBT := cd dbt_project && $(RUN) dbt

.PHONY: help install manifest up materialize ui test test-fast validate docs docs-serve serve bento mlflow-ui bench-serving champion-history rollback drift-demo bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(CURDIR)/.tools/bin/uv:
	python3 -m venv .tools && .tools/bin/pip install --quiet uv

install: $(if $(findstring .tools,$(UV)),$(UV))  ## install the locked environment and parse the dbt project
	$(UV) sync --frozen
	$(MAKE) --no-print-directory manifest

manifest:
	$(DBT) parse --quiet

up: install  ## install, materialize the whole graph, start the churn service and the Dagster UI
	@$(MAKE) --no-print-directory materialize || echo "A step or a check failed (listed above); starting the UI anyway so you can see where."
	@$(RUN) bentoml serve bento.service:ChurnService --host $(HOST) --port $(SERVICE_PORT) > $(CHURNOPS_DATA_DIR)/service.log 2>&1 & \
	  trap "kill $$! 2>/dev/null" EXIT; \
	  echo "Churn service: http://$(HOST):$(SERVICE_PORT)  (Swagger UI at /, OpenAPI at /docs.json, log in $(CHURNOPS_DATA_DIR)/service.log)"; \
	  $(MAKE) --no-print-directory ui

materialize:  ## materialize the whole graph for the default history in one run
	@mkdir -p $(DAGSTER_HOME) && cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	$(RUN) churnops materialize

ui:  ## start the Dagster webserver and daemon on $(HOST):$(DAGSTER_PORT)
	@mkdir -p $(DAGSTER_HOME) && cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	@echo "Dagster UI: http://$(HOST):$(DAGSTER_PORT)  (lineage: Assets > View global asset lineage)"
	@echo "Warehouse:  $(CHURNOPS_WAREHOUSE)   dbt docs: make docs-serve"
	$(RUN) dagster dev -w workspace.yaml -h $(HOST) -p $(DAGSTER_PORT)

test: install  ## run the whole test suite
	$(RUN) pytest

test-fast: install  ## run the tests not marked slow
	$(RUN) pytest -m "not slow"

validate: install  ## check that the Dagster definitions load
	$(RUN) dagster definitions validate -w workspace.yaml

docs: install  ## write the dbt docs site (feature definitions) to dbt_project/target
	$(DBT) docs generate

docs-serve: docs  ## serve the dbt docs on $(HOST):$(DOCS_PORT)
	$(DBT) docs serve --host $(HOST) --port $(DOCS_PORT) --no-browser

serve:  ## serve the champion over HTTP on $(HOST):$(SERVICE_PORT) (after the graph has run)
	$(RUN) bentoml serve bento.service:ChurnService --host $(HOST) --port $(SERVICE_PORT)

bento:  ## build the Bento (bento/bentofile.yaml); `bentoml containerize churn_service:latest` needs Docker
	PATH="$(dir $(UV)):$$PATH" $(RUN) bentoml build -f bento/bentofile.yaml .

mlflow-ui:  ## the MLflow UI on $(HOST):$(MLFLOW_PORT), on the platform's tracking store
	$(RUN) mlflow ui --backend-store-uri $(or $(CHURNOPS_MLFLOW_TRACKING_URI),sqlite:///$(CHURNOPS_DATA_DIR)/mlflow/mlflow.db) \
		--default-artifact-root $(or $(CHURNOPS_MLFLOW_ARTIFACT_LOCATION),file://$(CHURNOPS_DATA_DIR)/mlflow/artifacts) \
		--host $(HOST) --port $(MLFLOW_PORT)

champion-history:  ## list every champion model version, newest first
	$(RUN) churnops champion-history

rollback:  ## move the champion alias back to the previous champion
	$(RUN) churnops rollback

drift-demo:  ## drift the last 14 days' data, refresh, let the retrain sensor act, show the gate's decision (after make up)
	$(RUN) churnops drift-demo

bench: install  ## run the pipeline benchmark (USERS=10000 DAYS=120 by default)
	$(RUN) python benchmarks/pipeline.py --users $(or $(USERS),10000) --days $(or $(DAYS),120)

bench-serving: install  ## measure the churn service (needs a model: make materialize first)
	$(RUN) python benchmarks/serving.py --data-dir $(CHURNOPS_DATA_DIR)

clean:  ## delete everything the platform wrote (the data dir and dbt artifacts)
	rm -rf $(CHURNOPS_DATA_DIR) dbt_project/target dbt_project/logs
