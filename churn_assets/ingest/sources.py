"""Where raw data comes from: the synthetic product or a user's own files.

Both modes stage a batch into a temporary DuckDB table in the raw contract's columns plus
``_source``/``_row`` (for error messages), leaving validation and publishing to the assets.
Files are staged as read, untyped, so a malformed value reaches validation instead of failing
inside a reader with a message that names no row.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
from pathlib import Path

import dagster as dg
import duckdb
from pydantic import Field

from churn_assets.ingest import synthetic

FILE_SUFFIXES = (".csv", ".parquet")


class RawSource(dg.ConfigurableResource):
    """The raw-data source; ``mode`` picks the synthetic generator or files in ``source_dir``."""

    mode: str = Field(default="synthetic", description="'synthetic' or 'files'.")
    source_dir: str | None = Field(default=None, description="Folder with users.* and events.* (files mode).")
    n_users: int = Field(default=5000, description="Synthetic users.")
    start_date: str = Field(default="2026-07-01", description="First day of the synthetic history.")
    history_days: int = Field(default=120, description="Days over which synthetic users sign up.")
    seed: int = Field(default=42, description="Seed of the synthetic generator.")
    drift_from: str | None = Field(default=None, description="Synthetic behaviour shifts from this date on.")

    def stage_users(self, con: duckdb.DuckDBPyConnection, table: str, as_of: dt.date) -> None:
        """The users file as it is, or the synthetic users who have signed up by ``as_of``."""
        if self.mode == "files":
            paths = self._files("users")
            _read(con, f"CREATE OR REPLACE TEMP TABLE {table} AS {_file_scan(paths)}", paths)
            return
        users = synthetic.generate_users(self.n_users, self._start, self.history_days, self.seed, as_of)
        users["_source"] = "synthetic users"
        users["_row"] = range(1, len(users) + 1)
        con.register("_users_frame", users)
        con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT * FROM _users_frame")
        con.unregister("_users_frame")

    def stage_events(self, con: duckdb.DuckDBPyConnection, table: str, start: dt.date, end: dt.date) -> None:
        """Events with a timestamp in [start, end), plus any that belong to no past day.

        Rows whose timestamp does not parse or lies in the future would otherwise never be in any
        partition's window and vanish silently; staging them makes the checks reject the file.
        """
        if self.mode == "files":
            paths = self._files("events")
            scan = _file_scan(paths)
            columns = {row[0] for row in _read(con, f"DESCRIBE {scan}", paths)}
            where = ""
            if "event_ts" in columns:
                scan = f"SELECT * REPLACE ({_utc('event_ts')} AS event_ts) FROM ({scan})"
                ts = "TRY_CAST(event_ts AS TIMESTAMP)"
                where = f"WHERE {ts} IS NULL OR {ts} > now() OR ({ts} >= DATE '{start}' AND {ts} < DATE '{end}')"
            _read(con, f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT * FROM ({scan}) {where}", paths)
            return
        pop = synthetic.population(self.n_users, self._start, self.history_days, self.seed, end - dt.timedelta(days=1))
        drift_from = dt.date.fromisoformat(self.drift_from) if self.drift_from else None
        con.execute(f"DROP TABLE IF EXISTS {table}")
        day = start
        while day < end:
            events = synthetic.generate_events(pop, day, self.seed, drift_from)
            events["_source"] = f"synthetic {day}"
            events["_row"] = range(1, len(events) + 1)
            con.register("_events_frame", events)
            if day == start:
                con.execute(f"CREATE TEMP TABLE {table} AS SELECT * FROM _events_frame")
            else:
                con.execute(f"INSERT INTO {table} SELECT * FROM _events_frame")
            con.unregister("_events_frame")
            day += dt.timedelta(days=1)

    @property
    def _start(self) -> dt.date:
        return dt.date.fromisoformat(self.start_date)

    def _files(self, name: str) -> list[Path]:
        if not self.source_dir:
            raise dg.Failure(description="files mode needs source_dir (CHURNOPS_SOURCE_DIR)")
        root = Path(self.source_dir)
        found = [root / f"{name}{s}" for s in FILE_SUFFIXES if (root / f"{name}{s}").is_file()]
        if (root / name).is_dir():
            found += sorted(p for p in (root / name).iterdir() if p.suffix in FILE_SUFFIXES)
        if not found:
            raise dg.Failure(
                description=f"no {name} file in {root}: expected {name}.csv, {name}.parquet or {name}/*.csv|parquet"
            )
        return found


# A time of day followed by a UTC offset (+02:00, -0530, +02) or Z, at the end of the value.
_OFFSET = r"[0-9]{2}:[0-9]{2}(:[0-9]{2}([.][0-9]+)?)?[ ]*(Z|[+-][0-9]{2}(:?[0-9]{2})?)$"


def _utc(column: str) -> str:
    """SQL: a timestamp written with a UTC offset becomes the UTC time it denotes; other values stay as they are.

    Timestamps without an offset are UTC by contract, so after this every parseable timestamp is
    UTC, and an event's day is its UTC date. A value that does not parse stays as written, for the
    type check to name it.
    """
    text = f"trim(CAST({column} AS VARCHAR))"
    utc = f"CAST(timezone('UTC', TRY_CAST({text} AS TIMESTAMPTZ)) AS VARCHAR)"
    return f"CASE WHEN regexp_matches({text}, '{_OFFSET}') THEN coalesce({utc}, {text}) ELSE {text} END"


def _file_scan(paths: list[Path]) -> str:
    """A SELECT over the files with every value as text, numbered by file and line."""
    return " UNION ALL BY NAME ".join(
        f"SELECT *, '{path.name}' AS _source, row_number() OVER () AS _row FROM {_reader(path)}" for path in paths
    )


def _reader(path: Path) -> str:
    """CSV is read as the contract defines it (comma, double quotes, a header), never sniffed.

    A sniffer that meets one row with an extra field settles for a dialect of one column, and the
    file then fails as missing keys; read strictly, the row itself is named.
    """
    if path.suffix != ".csv":
        return f"read_parquet('{path}')"
    columns = ", ".join(f"'{name}': 'VARCHAR'" for name in _csv_header(path))
    return f"""read_csv('{path}', auto_detect = false, header = true, delim = ',', quote = '"', escape = '"', columns = {{{columns}}})"""


def _csv_header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
        header = next(csv.reader(handle), None)
    if not header:
        raise dg.Failure(description=f"{path.name} is empty: it needs at least its header row.", allow_retries=False)
    return [name.strip().replace("'", "''") for name in header]


def _read(con: duckdb.DuckDBPyConnection, sql: str, paths: list[Path]) -> list[tuple]:
    try:
        return con.execute(sql).fetchall()
    except duckdb.Error as error:
        raise dg.Failure(description=_unreadable(error, paths), allow_retries=False) from error


def _unreadable(error: duckdb.Error, paths: list[Path]) -> str:
    """What a person must fix, from DuckDB's reader error: the file, and for CSV the line."""
    text = str(error)
    named = [p.name for p in paths if p.name in text] or [p.name for p in paths]
    where = ", ".join(named)
    line = re.search(r"CSV Error on Line: (\d+)", text)
    counts = re.search(r"Expected Number of Columns: (\d+) Found: (\d+)", text)
    original = re.search(r"Original Line: (.*)", text)
    if line and counts:
        return (
            f"{where} line {line.group(1)} has {counts.group(2)} fields where the header has {counts.group(1)}"
            + (f": {original.group(1).strip()}" if original else "")
            + '. Quote a value that contains a comma (a decimal comma: write 2.4 or "2,4"); nothing was loaded.'
        )
    if "too small to be a Parquet file" in text or "No magic bytes" in text:
        return f"{where} is not a Parquet file (empty or cut short); nothing was loaded."
    return f"{where} could not be read: {text.splitlines()[0]}; nothing was loaded."
