"""All-or-nothing dbt builds: the rows a build replaces are kept until its tests pass.

dbt publishes a model before it tests it, so a failing error-severity test would leave a mart
holding the rows it rejected. Before each dbt invocation the rows it may replace are copied
aside: the run's window of a daily model, the whole of any other table. When the invocation
fails, every table it touched gets those rows back in one transaction, so every mart is as it
was before the run. A model that did not exist before the run is dropped again.

The copy costs the rows being replaced: a night's window of the daily models and the labels.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import duckdb

SCHEMA = "_last_good"


@dataclass(frozen=True)
class Kept:
    table: str
    """``schema.name`` of the model's table, or the bare model name when it did not exist yet."""
    existed: bool
    where: str


def keep(
    con: duckdb.DuckDBPyConnection,
    models: list[str],
    date_columns: dict[str, str],
    window: tuple[dt.date, dt.date] | None,
) -> list[Kept]:
    """Copies aside the rows of ``models`` the build may replace (views are code, not rows)."""
    con.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    con.execute(f"CREATE SCHEMA {SCHEMA}")
    kept = []
    for model in models:
        relation = con.execute(
            "SELECT table_schema, table_type FROM information_schema.tables WHERE table_name = ? AND table_schema <> ?",
            [model, SCHEMA],
        ).fetchone()
        if relation is not None and relation[1] != "BASE TABLE":
            continue
        where = "true"
        if window and model in date_columns:
            column = date_columns[model]
            where = f"{column} >= DATE '{window[0]}' AND {column} < DATE '{window[1]}'"
        if relation is None:
            kept.append(Kept(model, False, where))
            continue
        table = f"{relation[0]}.{model}"
        con.execute(f"CREATE TABLE {SCHEMA}.{model} AS SELECT * FROM {table} WHERE {where}")
        kept.append(Kept(table, True, where))
    return kept


def restore(con: duckdb.DuckDBPyConnection, kept: list[Kept]) -> list[str]:
    """Puts the kept rows back in one transaction; returns the tables it restored or dropped."""
    restored = []
    con.execute("BEGIN TRANSACTION")
    for entry in kept:
        if entry.existed:
            con.execute(f"DELETE FROM {entry.table} WHERE {entry.where}")
            name = entry.table.split(".")[-1]
            con.execute(f"INSERT INTO {entry.table} BY NAME SELECT * FROM {SCHEMA}.{name}")
            restored.append(entry.table)
            continue
        created = con.execute(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = ? AND table_schema <> ?",
            [entry.table, SCHEMA],
        ).fetchone()
        if created is not None:
            con.execute(f"DROP TABLE {created[0]}.{entry.table}")
            restored.append(f"{created[0]}.{entry.table}")
    con.execute("COMMIT")
    discard(con)
    return restored


def discard(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
