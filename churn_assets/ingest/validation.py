"""Validation of a raw batch before it is published (write-audit-publish).

A batch is first staged in a temporary DuckDB table with a ``_source`` and ``_row`` column
telling where each row came from. Each rule is a SQL predicate that selects violating rows, so
the same rules run on a hand-made CSV and on a million-user synthetic day, and every failure can
name the column and the rows. Nothing reaches the ``raw`` tables unless every rule passes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import duckdb

from churn_assets.contract import PLANS
from churn_assets.ingest.schema import (
    EVENT_COLUMNS,
    EVENT_KEYS,
    EVENT_TYPES,
    EVENTS_TABLE,
    MAX_PAYMENT_USD,
    MAX_VIDEO_MINUTES_PER_EVENT,
    USER_COLUMNS,
    USER_KEYS,
    USERS_TABLE,
)
from churn_assets.settings import LOW_VOLUME_TAG

SAMPLE_ROWS = 5
# The staged batch's alias, for a rule whose subquery has columns of the same names.
BATCH = "batch"


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    columns: tuple[str, ...]
    predicate: str
    """SQL boolean that is true for a violating row (evaluated on the staged batch)."""
    types: dict[str, str] | None = None
    """Set on the type rule, which reports each unparseable column on its own."""


@dataclass(frozen=True)
class Outcome:
    rule: str
    passed: bool
    message: str
    failing_rows: int


def _sql_list(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def _cast_fails(column: str, sql_type: str) -> str:
    return f"({column} IS NOT NULL AND TRY_CAST({column} AS {sql_type}) IS NULL)"


def _typed(column: str, columns: dict[str, str]) -> str:
    return f"TRY_CAST({column} AS {columns[column]})"


def event_rules(now: dt.datetime, replacing: tuple[dt.date, dt.date] = (dt.date.min, dt.date.max)) -> list[Rule]:
    """The rules of an events batch that replaces the days ``replacing`` (start, end exclusive)."""
    ts = _typed("event_ts", EVENT_COLUMNS)
    first, end = replacing
    value = _typed("value", EVENT_COLUMNS)
    event_type = "lower(trim(CAST(event_type AS VARCHAR)))"
    return [
        *_schema_rules("events", EVENT_COLUMNS),
        Rule(
            "events_keys_not_null",
            "Every event has an id, a user, a type and a timestamp.",
            EVENT_KEYS,
            " OR ".join(f"{c} IS NULL" for c in EVENT_KEYS),
        ),
        Rule(
            "events_known_types",
            f"Event types are one of: {', '.join(EVENT_TYPES)}.",
            ("event_type",),
            f"event_type IS NOT NULL AND {event_type} NOT IN ({_sql_list(EVENT_TYPES)})",
        ),
        Rule(
            "events_unique_ids",
            "No event id appears twice in a batch.",
            ("event_id",),
            "event_id IS NOT NULL AND count(*) OVER (PARTITION BY CAST(event_id AS VARCHAR)) > 1",
        ),
        Rule(
            "events_ids_not_loaded_before",
            "No event id is already loaded for a day outside the batch: a reload replaces its own days only.",
            ("event_id",),
            f"{_typed('event_id', EVENT_COLUMNS)} IN (SELECT event_id FROM {EVENTS_TABLE} "
            f"WHERE event_ts < DATE '{first}' OR event_ts >= DATE '{end}')",
        ),
        Rule(
            "events_known_users",
            "Every event belongs to a user in the users table (loaded before the events).",
            ("user_id",),
            f"user_id IS NOT NULL AND {_typed('user_id', EVENT_COLUMNS)} NOT IN (SELECT user_id FROM {USERS_TABLE})",
        ),
        Rule(
            "events_not_before_signup",
            "No event happens before the day its user signed up.",
            ("event_ts",),
            f"CAST({ts} AS DATE) < (SELECT u.signup_date FROM {USERS_TABLE} AS u "
            f"WHERE u.user_id = TRY_CAST({BATCH}.user_id AS {EVENT_COLUMNS['user_id']}))",
        ),
        Rule(
            "events_not_in_future",
            "No event is timestamped after the time it was loaded.",
            ("event_ts",),
            f"{ts} > TIMESTAMP '{now.isoformat(sep=' ', timespec='seconds')}'",
        ),
        Rule(
            "events_values_in_range",
            "Values are non-negative; video minutes at most a day; payments at most "
            f"{MAX_PAYMENT_USD:,.0f} USD and present on payment events.",
            ("value",),
            f"isnan({value}) OR isinf({value}) OR {value} < 0 "
            f"OR ({event_type} = 'video_minutes' AND ({value} IS NULL OR {value} > {MAX_VIDEO_MINUTES_PER_EVENT})) "
            f"OR ({event_type} IN ('payment', 'payment_failed') AND ({value} IS NULL OR {value} > {MAX_PAYMENT_USD}))",
        ),
    ]


DELIVERY_VOLUME_CHECK = "events_delivery_volume"
TRAILING_DAYS = 28


def delivery_volume(
    con: duckdb.DuckDBPyConnection, staged: str, start: dt.date, end: dt.date, min_ratio: float, expected: bool
) -> Outcome:
    """Each delivered day has events, and not far fewer than the median of the loaded days before it.

    An empty or truncated export looks like a quiet day; published, it would replace a day's
    events with too few. The baseline is the median daily count of the ``TRAILING_DAYS`` loaded
    before the window; without one (a first load) only an empty day is stopped. A ratio of 0 or
    the run tag accepts any volume.
    """
    counts = con.execute(
        f"""SELECT CAST(days.day AS DATE), count(batch.ts)
            FROM range(DATE '{start}', DATE '{end}', INTERVAL 1 DAY) AS days(day)
            LEFT JOIN (SELECT TRY_CAST(event_ts AS TIMESTAMP) AS ts FROM {staged}) AS batch
                ON CAST(batch.ts AS DATE) = CAST(days.day AS DATE)
            GROUP BY 1 ORDER BY 1"""
    ).fetchall()
    baseline = con.execute(
        f"""SELECT median(n) FROM (
                SELECT CAST(event_ts AS DATE), count(*) AS n FROM {EVENTS_TABLE}
                WHERE event_ts >= DATE '{start - dt.timedelta(days=TRAILING_DAYS)}' AND event_ts < DATE '{start}'
                GROUP BY 1)"""
    ).fetchone()[0]
    floor = min_ratio * baseline if baseline else 0
    short = [(day, n) for day, n in counts if n == 0 or n < floor]
    usual = (
        f"the median of the {TRAILING_DAYS} days before is {baseline:,.0f}"
        if baseline
        else "no earlier days are loaded"
    )
    if not short:
        return Outcome(DELIVERY_VOLUME_CHECK, True, f"every day has events; {usual}", 0)
    days = ", ".join(f"{day} has {n:,} event(s)" for day, n in short)
    threshold = f" (at least {min_ratio:.0%} of it is expected: CHURNOPS_MIN_DELIVERY_RATIO)" if baseline else ""
    if expected or min_ratio <= 0:
        why = f"the run is tagged {LOW_VOLUME_TAG}=true" if expected else "CHURNOPS_MIN_DELIVERY_RATIO is 0"
        return Outcome(DELIVERY_VOLUME_CHECK, True, f"{days}; accepted, {why}", 0)
    return Outcome(
        DELIVERY_VOLUME_CHECK,
        False,
        f"{days}; {usual}{threshold}. An empty or cut-short export would replace the loaded events. "
        f"If the low volume is real, load it again with the run tag {LOW_VOLUME_TAG}=true.",
        len(short),
    )


def user_rules(today: dt.date) -> list[Rule]:
    plan = "lower(trim(CAST(plan AS VARCHAR)))"
    return [
        *_schema_rules("users", USER_COLUMNS),
        Rule(
            "users_keys_not_null",
            "Every user has an id, a signup date and a plan.",
            USER_KEYS,
            " OR ".join(f"{c} IS NULL" for c in USER_KEYS),
        ),
        Rule(
            "users_unique_ids",
            "No user id appears twice.",
            ("user_id",),
            "user_id IS NOT NULL AND count(*) OVER (PARTITION BY CAST(user_id AS VARCHAR)) > 1",
        ),
        Rule(
            "users_known_plans",
            f"Plans are one of: {', '.join(PLANS)}.",
            ("plan",),
            f"plan IS NOT NULL AND {plan} NOT IN ({_sql_list(PLANS)})",
        ),
        Rule(
            "users_signup_not_in_future",
            "No user signed up after the day the data was loaded.",
            ("signup_date",),
            f"{_typed('signup_date', USER_COLUMNS)} > DATE '{today.isoformat()}'",
        ),
    ]


def _schema_rules(prefix: str, columns: dict[str, str]) -> list[Rule]:
    return [
        Rule(
            f"{prefix}_column_types",
            "Every contract column is present and each value parses as its type: "
            + ", ".join(f"{c} {t}" for c, t in columns.items())
            + ".",
            tuple(columns),
            " OR ".join(_cast_fails(c, t) for c, t in columns.items()),
            types=columns,
        )
    ]


def check_batch(con: duckdb.DuckDBPyConnection, table: str, rules: list[Rule]) -> list[Outcome]:
    """Evaluate every rule on the staged batch; a missing column fails the rules that need it."""
    present = {row[0] for row in con.execute(f"DESCRIBE {table}").fetchall()}
    outcomes = []
    for rule in rules:
        missing = [c for c in rule.columns if c not in present]
        if missing:
            outcomes.append(Outcome(rule.name, False, f"missing required column(s): {', '.join(missing)}", 0))
            continue
        outcomes.append(_evaluate(con, table, rule))
    return outcomes


def _evaluate(con: duckdb.DuckDBPyConnection, table: str, rule: Rule) -> Outcome:
    if rule.types:
        return _evaluate_types(con, table, rule)
    violating = f"SELECT _source, _row FROM (SELECT *, ({rule.predicate}) AS _bad FROM {table} AS {BATCH}) WHERE _bad"
    count = con.execute(f"SELECT count(*) FROM ({violating})").fetchone()[0]
    if count == 0:
        return Outcome(rule.name, True, rule.description, 0)
    sample = con.execute(f"{violating} ORDER BY _source, _row LIMIT {SAMPLE_ROWS}").fetchall()
    where = ", ".join(f"{src} row {row}" for src, row in sample)
    column_text = "column" if len(rule.columns) == 1 else "columns"
    message = (
        f"{column_text} {', '.join(rule.columns)}: {count} row(s) violate '{rule.description}' "
        f"First offending rows: {where}."
    )
    return Outcome(rule.name, False, message, count)


def _evaluate_types(con: duckdb.DuckDBPyConnection, table: str, rule: Rule) -> Outcome:
    """Reports each unparseable column separately, since that is what a user fixes."""
    problems, total = [], 0
    for column, sql_type in rule.types.items():
        cond = _cast_fails(column, sql_type)
        count = con.execute(f"SELECT count(*) FROM {table} WHERE {cond}").fetchone()[0]
        if count:
            total += count
            sample = con.execute(
                f"SELECT _source, _row, CAST({column} AS VARCHAR) FROM {table} WHERE {cond} "
                f"ORDER BY _source, _row LIMIT {SAMPLE_ROWS}"
            ).fetchall()
            where = ", ".join(f"{src} row {row} ({value!r})" for src, row, value in sample)
            problems.append(f"column {column}: {count} value(s) are not {sql_type}, e.g. {where}")
    if not problems:
        return Outcome(rule.name, True, rule.description, 0)
    return Outcome(rule.name, False, "; ".join(problems) + ".", total)
