"""``raw_users`` and ``raw_events``: the graph's entry point, audited before publishing.

Each asset stages its batch, evaluates the contract rules as blocking asset checks, and only
then replaces its slice of the ``raw`` tables in one transaction. A failing rule fails the step
with the rule's message, so downstream assets are skipped and the last good tables stay as they
were.
"""

import datetime as dt

import dagster as dg
import duckdb

from churn_assets.ingest.schema import (
    EVENT_COLUMNS,
    EVENTS_TABLE,
    RAW_SCHEMA,
    USER_COLUMNS,
    USERS_TABLE,
)
from churn_assets.ingest.sources import RawSource
from churn_assets.ingest.validation import (
    DELIVERY_VOLUME_CHECK,
    Outcome,
    Rule,
    check_batch,
    delivery_volume,
    event_rules,
    user_rules,
)
from churn_assets.partitions import daily_partitions
from churn_assets.resources import Warehouse
from churn_assets.settings import LOW_VOLUME_TAG, get_settings

SAMPLE_SIZE = 5


def _check_specs(asset: str, rules: list[Rule]) -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec(r.name, asset=asset, description=r.description, blocking=True) for r in rules]


def _check_results(outcomes: list[Outcome]) -> list[dg.AssetCheckResult]:
    return [
        dg.AssetCheckResult(
            check_name=o.rule,
            passed=o.passed,
            severity=dg.AssetCheckSeverity.ERROR,
            description=o.message,
            metadata={"failing_rows": o.failing_rows},
        )
        for o in outcomes
    ]


def _raise_if_failed(asset: str, outcomes: list[Outcome]) -> None:
    failed = [o for o in outcomes if not o.passed]
    if failed:
        lines = "\n".join(f"- {o.rule}: {o.message}" for o in failed)
        raise dg.Failure(
            description=f"{asset} rejected; nothing was published and the previous tables are unchanged.\n{lines}",
            allow_retries=False,
        )


def _typed_select(columns: dict[str, str], staged: str) -> str:
    casts = ", ".join(f"CAST({c} AS {t}) AS {c}" for c, t in columns.items())
    return f"SELECT {casts}, now()::TIMESTAMP AS _loaded_at FROM {staged}"


def ensure_raw_tables(con: duckdb.DuckDBPyConnection) -> None:
    """The raw tables in their contract types, which dbt's sources read even before a first load."""
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {RAW_SCHEMA}")
    for table, columns in ((USERS_TABLE, USER_COLUMNS), (EVENTS_TABLE, EVENT_COLUMNS)):
        ddl = ", ".join(f"{c} {t}" for c, t in columns.items())
        con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({ddl}, _loaded_at TIMESTAMP)")


def _preview(con: duckdb.DuckDBPyConnection, query: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(con.execute(f"{query} LIMIT {SAMPLE_SIZE}").df().to_markdown(index=False))


def _users_as_of(context: dg.AssetExecutionContext) -> dt.date:
    """The last day of the events loaded with the users in the same run, or yesterday."""
    range_end = context.run.tags.get("dagster/asset_partition_range_end")
    return dt.date.fromisoformat(range_end) if range_end else dt.date.today() - dt.timedelta(days=1)


def _volume(context, con, raw_source: RawSource, start: dt.date, end: dt.date) -> Outcome:
    """Deliveries only: the synthetic product has quiet days of its own at a few dozen users."""
    if raw_source.mode != "files":
        return Outcome(DELIVERY_VOLUME_CHECK, True, "synthetic events: no delivery to check", 0)
    expected = context.run.tags.get(LOW_VOLUME_TAG, "").lower() == "true"
    return delivery_volume(con, "staged_events", start, end, get_settings().min_delivery_ratio, expected)


@dg.asset(
    group_name="ingest",
    kinds={"python", "duckdb"},
    pool="duckdb",
    check_specs=_check_specs("raw_users", user_rules(dt.date.today())),
    description="Every TechITFactory user with signup date, plan, country and acquisition channel "
    "(table raw.users), replaced whole on each load.",
)
def raw_users(context: dg.AssetExecutionContext, warehouse: Warehouse, raw_source: RawSource):
    with warehouse.get_connection() as con:
        raw_source.stage_users(con, "staged_users", _users_as_of(context))
        outcomes = check_batch(con, "staged_users", user_rules(dt.date.today()))
        yield from _check_results(outcomes)
        _raise_if_failed("raw_users", outcomes)
        ensure_raw_tables(con)
        con.execute("BEGIN TRANSACTION")
        con.execute(f"DELETE FROM {USERS_TABLE}")
        con.execute(f"INSERT INTO {USERS_TABLE} {_typed_select(USER_COLUMNS, 'staged_users')}")
        con.execute("COMMIT")
        rows, first, last = con.execute(
            f"SELECT count(*), min(signup_date), max(signup_date) FROM {USERS_TABLE}"
        ).fetchone()
        plans = dict(con.execute(f"SELECT plan, count(*) FROM {USERS_TABLE} GROUP BY 1 ORDER BY 1").fetchall())
        preview = _preview(con, f"SELECT * EXCLUDE (_loaded_at) FROM {USERS_TABLE} ORDER BY user_id")
    yield dg.MaterializeResult(
        metadata={
            "dagster/row_count": rows,
            "first_signup": str(first),
            "last_signup": str(last),
            "users_by_plan": dg.MetadataValue.json(plans),
            "source": raw_source.mode,
            "preview": preview,
        }
    )


@dg.asset(
    group_name="ingest",
    kinds={"python", "duckdb"},
    pool="duckdb",
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[raw_users],
    check_specs=[
        *_check_specs("raw_events", event_rules(dt.datetime.now())),
        dg.AssetCheckSpec(
            DELIVERY_VOLUME_CHECK,
            asset="raw_events",
            blocking=True,
            description="Each delivered day has events, and at least CHURNOPS_MIN_DELIVERY_RATIO of the median "
            f"day before it, unless the run is tagged {LOW_VOLUME_TAG}=true (files only).",
        ),
    ],
    description="Product events (logins, lessons, quizzes, video minutes, payments, support tickets), "
    "one partition per calendar day (table raw.events); re-loading a day replaces it. Loaded after "
    "the users, so a day's new signups are known before their first events are built into features.",
)
def raw_events(context: dg.AssetExecutionContext, warehouse: Warehouse, raw_source: RawSource):
    window = context.partition_time_window
    start, end = window.start.date(), window.end.date()
    with warehouse.get_connection() as con:
        raw_source.stage_events(con, "staged_events", start, end)
        ensure_raw_tables(con)
        outcomes = check_batch(con, "staged_events", event_rules(dt.datetime.now(), (start, end)))
        outcomes.append(_volume(context, con, raw_source, start, end))
        yield from _check_results(outcomes)
        _raise_if_failed("raw_events", outcomes)
        con.execute("BEGIN TRANSACTION")
        con.execute(f"DELETE FROM {EVENTS_TABLE} WHERE event_ts >= DATE '{start}' AND event_ts < DATE '{end}'")
        con.execute(f"INSERT INTO {EVENTS_TABLE} {_typed_select(EVENT_COLUMNS, 'staged_events')}")
        con.execute("COMMIT")
        in_window = f"FROM {EVENTS_TABLE} WHERE event_ts >= DATE '{start}' AND event_ts < DATE '{end}'"
        rows, users = con.execute(f"SELECT count(*), count(DISTINCT user_id) {in_window}").fetchone()
        by_type = dict(con.execute(f"SELECT event_type, count(*) {in_window} GROUP BY 1 ORDER BY 1").fetchall())
        preview = _preview(con, f"SELECT * EXCLUDE (_loaded_at) {in_window} ORDER BY event_ts")
    yield dg.MaterializeResult(
        metadata={
            "dagster/row_count": rows,
            "active_users": users,
            "first_day": str(start),
            "last_day": str(end - dt.timedelta(days=1)),
            "events_by_type": dg.MetadataValue.json(by_type),
            "source": raw_source.mode,
            "preview": preview,
        }
    )
