"""The dbt models as assets: staging, daily aggregates, features and labels.

dbt builds the daily models for the partition window (``--event-time-start``/``--event-time-end``,
which ``macros/event_time_window.sql`` reads), one statement per model for the whole window, and
the rest whole, so the two live in separate ``@dbt_assets``. dbt tests become asset checks;
error-severity ones are blocking, and a failing one undoes its invocation (``last_good``). After
dbt exits, each model's materialization gets its row count and date range from the warehouse,
read when dbt no longer holds the file.
"""

import datetime as dt
import shutil
from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings, DbtCliResource, dbt_assets

from churn_assets.automation import CHECK_WITH_ITS_MODEL
from churn_assets.partitions import daily_partitions
from churn_assets.resources import Warehouse
from churn_assets.transform import last_good
from churn_assets.transform.project import dbt_project

DAILY_MODELS = "stg_events int_user_daily_activity fct_user_features"
# dbt unit tests check the SQL, not the night's data: CI runs them (tests/data/test_dbt_unit_tests.py).
BUILD = ["build", "--exclude-resource-type", "unit_test"]
DATE_COLUMNS = {
    "int_user_daily_activity": "activity_date",
    "fct_user_features": "snapshot_date",
    "fct_churn_labels": "snapshot_date",
    "stg_events": "event_date",
    "stg_users": "signup_date",
}


class ChurnDbtTranslator(DagsterDbtTranslator):
    def get_asset_spec(self, manifest: Mapping[str, Any], unique_id: str, project) -> dg.AssetSpec:
        spec = super().get_asset_spec(manifest, unique_id, project)
        if unique_id.startswith("model."):
            spec = spec.replace_attributes(group_name="transform")
        return spec

    def get_asset_check_spec(self, asset_spec, manifest, unique_id, project) -> dg.AssetCheckSpec | None:
        """dbt tests run with their model when automation requests it.

        A dbt test is a check Dagster can leave out of a run; without a condition of its own,
        automation would build the model and skip its tests, and everything downstream would then
        wait for blocking checks that never ran against the new data.
        """
        spec = super().get_asset_check_spec(asset_spec, manifest, unique_id, project)
        if spec is None:
            return None
        daily = spec.asset_key.path[-1] in DAILY_MODELS.split()
        return spec._replace(
            automation_condition=CHECK_WITH_ITS_MODEL,
            partitions_def=daily_partitions if daily else None,
            description=spec.description or _test_description(manifest["nodes"][unique_id]),
        )


def _test_description(test: Mapping[str, Any]) -> str:
    """The test's own dbt ``description``, else what it asserts: a check in the UI is never blank."""
    if test.get("description"):
        return test["description"]
    metadata = test.get("test_metadata") or {}
    kwargs = metadata.get("kwargs", {})
    arguments = ", ".join(f"{k}={v}" for k, v in kwargs.items() if k not in ("model", "column_name"))
    subject = f"column {kwargs['column_name']}" if kwargs.get("column_name") else "the model"
    return f"dbt test {metadata.get('name', test['name'])}({arguments}) on {subject}"


translator = ChurnDbtTranslator(settings=DagsterDbtTranslatorSettings(enable_asset_checks=True))


def _build(
    dbt: DbtCliResource,
    args: list[str],
    context: dg.AssetExecutionContext,
    warehouse: Warehouse,
    window: tuple[dt.date, dt.date] | None = None,
) -> Iterator:
    """One all-or-nothing dbt invocation, its events with table stats.

    A failed invocation (an error-severity test, a model that does not compile) puts back the
    rows it replaced (``last_good``), reports its test results and fails the step, so nothing
    downstream runs on rows that never passed their tests. It keeps its target folder, compiled
    SQL included, to be looked at; a successful one removes it, because dagster-dbt gives each
    invocation its own (about 3 MB) and a daemon running every night would pile them up.
    """
    models = [key.path[-1] for key in context.selected_asset_keys]
    with warehouse.get_connection() as con:
        kept = last_good.keep(con, models, DATE_COLUMNS, window)
    invocation = dbt.cli(args, context=context, raise_on_error=False)
    events = list(invocation.stream())
    if invocation.is_successful():
        with warehouse.get_connection() as con:
            last_good.discard(con)
        yield from _with_table_stats(events, warehouse)
        shutil.rmtree(invocation.target_path, ignore_errors=True)
        return
    with warehouse.get_connection() as con:
        restored = last_good.restore(con, kept)
    checks = [e for e in events if isinstance(e, dg.AssetCheckResult | dg.AssetCheckEvaluation)]
    yield from checks
    failed = [f"- {c.check_name} on {c.asset_key.path[-1]}: {c.description or 'failed'}" for c in checks if not c.passed]
    raise dg.Failure(
        description="dbt build failed; the tables it replaced hold their rows from before this run "
        f"({', '.join(restored) or 'nothing was replaced'}).\n" + "\n".join(failed or [str(invocation.get_error())]),
        metadata={"dbt_target": dg.MetadataValue.path(str(invocation.target_path))},
        allow_retries=False,
    )


def _with_table_stats(events: Iterator, warehouse: Warehouse) -> Iterator:
    """Lets dbt finish (it holds the DuckDB file) before reading row counts and date ranges."""
    collected = list(events)
    with warehouse.get_connection() as con:
        for event in collected:
            if isinstance(event, dg.Output | dg.AssetMaterialization):
                model = event.asset_key.path[-1] if isinstance(event, dg.AssetMaterialization) else event.output_name
                event = event.with_metadata({**event.metadata, **_table_stats(con, model)})
            yield event


def _table_stats(con, model: str) -> dict[str, Any]:
    relation = con.execute(
        "SELECT table_schema FROM information_schema.tables WHERE table_name = ?", [model]
    ).fetchone()
    if relation is None:
        return {}
    table = f"{relation[0]}.{model}"
    stats: dict[str, Any] = {"dagster/row_count": con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]}
    if model in DATE_COLUMNS:
        first, last = con.execute(f"SELECT min({DATE_COLUMNS[model]}), max({DATE_COLUMNS[model]}) FROM {table}").fetchone()
        stats.update(first_date=str(first), last_date=str(last))
    return stats


@dbt_assets(
    manifest=dbt_project.manifest_path,
    select=DAILY_MODELS,
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    dagster_dbt_translator=translator,
    pool="duckdb",
    name="dbt_daily_models",
)
def dbt_daily_models(context: dg.AssetExecutionContext, dbt: DbtCliResource, warehouse: Warehouse):
    """Daily aggregates and features for the partition window being run."""
    window = context.partition_time_window.start.date(), context.partition_time_window.end.date()
    window_flags = ["--event-time-start", window[0].isoformat(), "--event-time-end", window[1].isoformat()]
    yield from _build(dbt, [*BUILD, *window_flags], context, warehouse, window)


@dbt_assets(
    manifest=dbt_project.manifest_path,
    exclude=DAILY_MODELS,
    dagster_dbt_translator=translator,
    pool="duckdb",
    name="dbt_models",
)
def dbt_models(context: dg.AssetExecutionContext, dbt: DbtCliResource, warehouse: Warehouse):
    """Staging views and the labels, which always cover the whole history."""
    yield from _build(dbt, BUILD, context, warehouse)
