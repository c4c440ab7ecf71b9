"""Dagster resources built from the settings, so the UI, the CLI and tests wire them alike."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from importlib import metadata
from pathlib import Path

import duckdb
from dagster_dbt import DbtCliResource
from dagster_duckdb import DuckDBResource
from packaging import version

from churn_assets.ingest.sources import RawSource
from churn_assets.settings import DBT_PROJECT_DIR, Settings, Surfaces
from churn_assets.train.registry import ModelRegistry


class Warehouse(DuckDBResource):
    """The DuckDB warehouse; unlike its parent it also closes the connection when a step fails.

    Otherwise the failed step's connection stays open in the process and the next connection
    to the file with other settings (a read-only reader, a test) is refused.
    """

    @contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with super().get_connection() as con:
            try:
                yield con
            finally:
                con.close()


PARTIAL_PARSE = "partial_parse.msgpack"


class Dbt(DbtCliResource):
    """dbt as dagster-dbt runs it, told its version and handed the data dir's last parse.

    dagster-dbt starts ``dbt --version`` once per step that uses dbt, only to learn the version;
    importing dbt is most of a dbt start-up (about 4 s here). dbt-core is installed beside this
    package, from the same lock, so its version is the executable's.

    dbt reuses a parse only for the profile it was made with, and the profile names the
    warehouse's path: the project's own parse (``make install``) serves the default data dir alone.
    In any other (an image's, a test's) every step would parse the whole project again, another
    4 s, so each data dir keeps the parse of its last build in ``parse_dir`` (``keep_parse``).
    """

    parse_dir: str

    @cached_property
    def _cli_version(self) -> version.Version:
        return version.parse(metadata.version("dbt-core"))

    @property
    def _kept_parse(self) -> Path:
        return Path(self.parse_dir, PARTIAL_PARSE)

    def cli(self, args, *, context=None, target_path: Path | None = None, **kwargs):
        target_path = target_path or self._get_unique_target_path(context=context)
        if self._kept_parse.exists():
            destination = Path(self.project_dir, target_path, PARTIAL_PARSE)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self._kept_parse, destination)
        return super().cli(args, context=context, target_path=target_path, **kwargs)

    def keep_parse(self, target_path: Path) -> None:
        """Keeps an invocation's parse for the next; replaced whole, so a reader never sees half a file."""
        made = Path(self.project_dir, target_path, PARTIAL_PARSE)
        if not made.exists():
            return
        self._kept_parse.parent.mkdir(parents=True, exist_ok=True)
        partial = self._kept_parse.with_name(f"{PARTIAL_PARSE}.{os.getpid()}")
        shutil.copyfile(made, partial)
        partial.replace(self._kept_parse)


def build_resources(settings: Settings) -> dict:
    """Also exports the paths child processes read (dbt's profile, the BentoML store)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    os.environ.update(settings.subprocess_env())
    return {
        "warehouse": Warehouse(database=str(settings.warehouse_path), connection_config=settings.duckdb_config),
        "raw_source": RawSource(
            mode=settings.source,
            source_dir=str(settings.source_dir) if settings.source_dir else None,
            n_users=settings.n_users,
            start_date=settings.start_date.isoformat(),
            history_days=settings.history_days,
            seed=settings.seed,
            drift_from=settings.drift_from.isoformat() if settings.drift_from else None,
        ),
        "registry": ModelRegistry(
            tracking_uri=settings.mlflow_tracking_uri,
            artifact_location=settings.mlflow_artifact_location,
            ui_url=Surfaces.from_env().mlflow_url,
        ),
        "dbt": Dbt(
            project_dir=str(DBT_PROJECT_DIR),
            profiles_dir=str(DBT_PROJECT_DIR),
            dbt_executable=str(Path(sys.executable).with_name("dbt")),
            parse_dir=str(settings.dbt_parse_dir),
        ),
    }
