"""Dagster resources built from the settings, so the UI, the CLI and tests wire them alike."""

from __future__ import annotations

import os
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


class Dbt(DbtCliResource):
    """dbt as dagster-dbt runs it, told its version instead of asking ``dbt --version`` for it.

    dagster-dbt starts ``dbt --version`` once per step that uses dbt, only to learn the version;
    importing dbt is most of a dbt start-up (about 4 s here). dbt-core is installed beside this
    package, from the same lock, so its version is the executable's.
    """

    @cached_property
    def _cli_version(self) -> version.Version:
        return version.parse(metadata.version("dbt-core"))


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
        ),
    }
