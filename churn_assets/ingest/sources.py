"""Where raw data comes from: the synthetic product or a user's own files.

Both modes stage a batch into a temporary DuckDB table in the raw contract's columns plus
``_source``/``_row`` (for error messages), leaving validation and publishing to the assets.
Files are staged as read, untyped, so a malformed value reaches validation instead of failing
inside a reader with a message that names no row.
"""

from __future__ import annotations

import datetime as dt
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
            con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS {_file_scan(self._files('users'))}")
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
            scan = _file_scan(self._files("events"))
            columns = {row[0] for row in con.execute(f"DESCRIBE {scan}").fetchall()}
            where = ""
            if "event_ts" in columns:
                ts = "TRY_CAST(event_ts AS TIMESTAMP)"
                where = f"WHERE {ts} IS NULL OR {ts} > now() OR ({ts} >= DATE '{start}' AND {ts} < DATE '{end}')"
            con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT * FROM ({scan}) {where}")
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


def _file_scan(paths: list[Path]) -> str:
    """A SELECT over the files with every value as text, numbered by file and line."""
    parts = []
    for path in paths:
        if path.suffix == ".csv":
            reader = f"read_csv('{path}', all_varchar = true, header = true)"
        else:
            reader = f"read_parquet('{path}')"
        parts.append(f"SELECT *, '{path.name}' AS _source, row_number() OVER () AS _row FROM {reader}")
    return " UNION ALL BY NAME ".join(parts)
