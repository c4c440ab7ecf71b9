"""Dagster resources built from the settings, so the UI, the CLI and tests wire them alike."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from dagster_dbt import DbtCliResource
from dagster_duckdb import DuckDBResource

from churn_assets.ingest.sources import RawSource
from churn_assets.settings import DBT_PROJECT_DIR, Settings


def build_resources(settings: Settings) -> dict:
    """Also exports the warehouse path: dbt runs as a subprocess and its profile reads it there."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    os.environ.update(settings.dbt_env())
    return {
        "warehouse": DuckDBResource(database=str(settings.warehouse_path)),
        "raw_source": RawSource(
            mode=settings.source,
            source_dir=str(settings.source_dir) if settings.source_dir else None,
            n_users=settings.n_users,
            start_date=settings.start_date.isoformat(),
            history_days=settings.history_days,
            seed=settings.seed,
            drift_from=settings.drift_from.isoformat() if settings.drift_from else None,
        ),
        "dbt": DbtCliResource(
            project_dir=str(DBT_PROJECT_DIR),
            profiles_dir=str(DBT_PROJECT_DIR),
            dbt_executable=str(Path(sys.executable).with_name("dbt")),
        ),
    }
