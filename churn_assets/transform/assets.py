"""The dbt models as assets: staging, daily aggregates, features and labels.

dbt builds the daily models for the partition window (``--event-time-start``/``--event-time-end``,
which ``macros/event_time_window.sql`` reads), one statement per model for the whole window, and
the rest whole, so the two live in separate ``@dbt_assets``. dbt tests become asset checks;
error-severity ones are blocking, and a failing one undoes its invocation (``last_good``). After
dbt exits, each model's materialization gets its row count, column types and date range from the
warehouse, read when dbt no longer holds the file.
"""

import datetime as dt
import shutil
from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg
import duckdb
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings, dbt_assets

from churn_assets.automation import CHECK_WITH_ITS_MODEL
from churn_assets.partitions import daily_partitions
from churn_assets.resources import Dbt, Warehouse
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
        """dbt tests run with their model when automation requests it, and say what they assert.

        A dbt test is a check Dagster can leave out of a run; without a condition of its own,
        automation would build the model and skip its tests, and everything downstream would then
        wait for blocking checks that never ran against the new data. dagster-dbt reads a check's
        description from the test's ``meta``; the YAML gives each test a dbt ``description``.
        """
        spec = super().get_asset_check_spec(asset_spec, manifest, unique_id, project)
        if spec is None:
            return None
        daily = spec.asset_key.path[-1] in DAILY_MODELS.split()
        return spec._replace(
            automation_condition=CHECK_WITH_ITS_MODEL,
            partitions_def=daily_partitions if daily else None,
            description=manifest["nodes"][unique_id]["description"],
        )


translator = ChurnDbtTranslator(settings=DagsterDbtTranslatorSettings(enable_asset_checks=True))


def _build(
    dbt: Dbt,
    args: list[str],
    context: dg.AssetExecutionContext,
    warehouse: Warehouse,
    window: tuple[dt.date, dt.date] | None = None,
) -> Iterator:
    """One all-or-nothing dbt invocation, its events with table stats and what each test asserts.

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
    nodes = invocation.manifest["nodes"]
    events = [_saying_what_it_asserts(event, nodes) for event in invocation.stream()]
    if invocation.is_successful():
        with warehouse.get_connection() as con:
            last_good.discard(con)
            events = [_with_table_stats(con, event, nodes) for event in events]
        yield from events
        dbt.keep_parse(invocation.target_path)
        shutil.rmtree(invocation.target_path, ignore_errors=True)
        return
    with warehouse.get_connection() as con:
        restored = last_good.restore(con, kept)
    checks = [e for e in events if isinstance(e, dg.AssetCheckResult | dg.AssetCheckEvaluation)]
    yield from checks
    failed = [f"- {c.check_name} on {c.asset_key.path[-1]}: {c.description}" for c in checks if not c.passed]
    raise dg.Failure(
        description="dbt build failed; the tables it replaced hold their rows from before this run "
        f"({', '.join(restored) or 'nothing was replaced'}).\n" + "\n".join(failed or [str(invocation.get_error())]),
        metadata={"dbt_target": dg.MetadataValue.path(str(invocation.target_path))},
        allow_retries=False,
    )


def _saying_what_it_asserts(event, nodes: Mapping[str, Any]):
    """dagster-dbt leaves a test's result blank; the check's history, the step's failure and the
    CLI's list of failed checks then show the test's own description."""
    if not isinstance(event, dg.AssetCheckResult):
        return event
    return event._replace(description=nodes[event.metadata["unique_id"].value]["description"])


def _with_table_stats(con: duckdb.DuckDBPyConnection, event, nodes: Mapping[str, Any]):
    """A model's row count, column types and date range, read once dbt has let go of the file.

    dagster-dbt's ``fetch_row_counts``/``fetch_column_metadata`` query through dbt-duckdb's
    adapter, which keeps its read-only handle open in this process (``keep_open``): every later
    writer in the process, the next step of an in-process run included, is then refused. Its row
    counts also leave out views, the staging models. One scan gives the count and the date range.
    """
    if not isinstance(event, dg.Output | dg.AssetMaterialization):
        return event
    model = nodes[event.metadata["unique_id"].value]
    schema, name = model["schema"], model["alias"]
    columns = con.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
        [schema, name],
    ).fetchall()
    date = DATE_COLUMNS.get(model["name"])
    span = f", min({date}), max({date})" if date else ""
    rows, *first_last = con.execute(f"SELECT count(*){span} FROM {schema}.{name}").fetchone()
    schema_metadata = dg.TableSchema(columns=[dg.TableColumn(column, data_type) for column, data_type in columns])
    dates = dict(zip(("first_date", "last_date"), map(str, first_last))) if rows else {}
    return event.with_metadata(
        {**event.metadata, "dagster/row_count": rows, "dagster/column_schema": schema_metadata, **dates}
    )


@dbt_assets(
    manifest=dbt_project.manifest_path,
    select=DAILY_MODELS,
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    dagster_dbt_translator=translator,
    pool="duckdb",
    name="dbt_daily_models",
)
def dbt_daily_models(context: dg.AssetExecutionContext, dbt: Dbt, warehouse: Warehouse):
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
def dbt_models(context: dg.AssetExecutionContext, dbt: Dbt, warehouse: Warehouse):
    """Staging views and the labels, which always cover the whole history."""
    yield from _build(dbt, BUILD, context, warehouse)
