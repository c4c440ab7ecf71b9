"""Every tunable of the platform, declared once and read from the environment.

One frozen object so that Dagster resources, the dbt profile (through the environment), the
CLI, the churn service, the benchmarks and the tests agree on paths and numbers. Each default is
written here and nowhere else: the Makefile and ``profiles.yml`` restate none, and child
processes get the resolved paths from ``subprocess_env()``. Everything the platform writes lives
under ``data_dir``; deleting that folder resets the platform and touches nothing else.

``CHURNOPS_PROFILE`` is the one switch between the local platform and production. Production keeps
Dagster's instance and MLflow in PostgreSQL, and refuses to start without their connections rather
than fall back to SQLite files that no other pod or machine would ever see.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DBT_PROJECT_DIR = PROJECT_ROOT / "dbt_project"

DEFAULT_START_DATE = dt.date(2026, 7, 1)

MODEL_NAME = "churn-model"
"""The registered model in MLflow and the model's name in the BentoML store."""
SERVICE_PORT = 3001
"""The churn service's default port (``CHURNOPS_SERVICE_PORT``); the built Bento reads this module too."""
CHAMPION_ALIAS = "champion"
EXPERIMENT_NAME = "churnops"

INSTANCE_TEMPLATES = {"local": "dagster.yaml", "production": "dagster.production.yaml"}
"""The Dagster instance each profile installs into DAGSTER_HOME: SQLite there, or PostgreSQL."""
PRODUCTION_CONNECTIONS = ("dagster_postgres_url", "mlflow_tracking_uri", "mlflow_artifact_location")
"""What production must be told: left to their defaults they would be files inside one container."""

TELEMETRY_OFF = {
    "DAGSTER_DISABLE_TELEMETRY": "1",
    "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "BENTOML_DO_NOT_TRACK": "true",
}


class FromTheEnvironment(BaseSettings):
    """Settings read from ``CHURNOPS_*`` variables, where a blank variable means its default (as
    ``VAR= make up`` intends), and an invalid one is reported by its variable's name."""

    model_config = SettingsConfigDict(env_prefix="CHURNOPS_", str_strip_whitespace=True, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _blank_is_unset(cls, values: dict) -> dict:
        return {name: value for name, value in values.items() if not (isinstance(value, str) and not value.strip())}

    @classmethod
    def variables(cls) -> dict[str, str]:
        """Each setting's environment variable, by field name."""
        prefix = cls.model_config["env_prefix"]
        return {
            name: field.validation_alias if isinstance(field.validation_alias, str) else f"{prefix}{name.upper()}"
            for name, field in cls.model_fields.items()
        }

    @classmethod
    def from_env(cls) -> Self:
        try:
            return cls()
        except ValidationError as error:
            variables = cls.variables()
            problems = [
                f"{variables.get(str(e['loc'][0]), e['loc'][0])}: {e['msg']} (got {e['input']!r})"
                if e["loc"]
                else str(e["ctx"]["error"])
                for e in error.errors()
                if e["type"] != "default_factory_not_called"
            ]
            raise ValueError("invalid settings:\n  " + "\n  ".join(problems)) from None


class Surfaces(FromTheEnvironment):
    """Where ``make up`` serves each surface: one host, a port each, every one set from the environment."""

    host: str = "127.0.0.1"
    dagster_port: int = 3000
    service_port: int = SERVICE_PORT
    mlflow_port: int = 5000
    reports_port: int = 8081
    docs_port: int = 8080

    def url(self, port: int) -> str:
        return f"http://{self.host}:{port}"

    @property
    def mlflow_url(self) -> str:
        return self.url(self.mlflow_port)

    @property
    def reports_url(self) -> str:
        """The data dir's ``reports/`` folder over HTTP: a browser opens an Evidently report from a link."""
        return self.url(self.reports_port)


LOW_VOLUME_TAG = "churnops/low_volume_expected"
"""Run tag (value ``true``) with which an operator accepts a delivery the volume check would stop."""


class Settings(FromTheEnvironment):
    """Each field is ``CHURNOPS_<FIELD>`` unless its alias names another variable; defaults that are
    paths follow ``data_dir``, so one variable moves everything the platform writes."""

    profile: Literal["local", "production"] = "local"
    data_dir: Path = PROJECT_ROOT / ".churnops"
    start_date: dt.date = DEFAULT_START_DATE
    history_days: int = 120
    n_users: int = Field(5000, validation_alias="CHURNOPS_USERS")
    seed: int = 42
    source: Literal["synthetic", "files"] = "synthetic"
    source_dir: Path | None = None
    drift_from: dt.date | None = None
    holdout_days: int = 14
    snapshot_stride_days: int = 1
    max_train_rows: int = 1_000_000
    max_holdout_rows: int = 500_000
    min_roc_auc: float = 0.75
    promotion_margin: float = 0.002
    decision_threshold: float = 0.5
    high_risk_threshold: float = 0.6
    medium_risk_threshold: float = 0.3
    high_risk_top_n: int = 200
    psi_warn: float = 0.1
    psi_fail: float = 0.25
    max_auc_drop: float = 0.05
    retrain_cooldown_hours: float = 24.0
    sensor_interval_seconds: int = 30
    duckdb_memory_limit: str = "4GB"
    duckdb_threads: int = 2
    min_delivery_ratio: float = 0.2
    service_poll_seconds: float = 2.0
    service_workers: int = 2
    service_tracing: Literal["off", "on"] = "off"
    """BentoML traces every request with OpenTelemetry even with no exporter configured, where the
    spans go nowhere and cost more than the prediction (benchmarks/README.md). ``on`` keeps it, for
    a deployment that configures an exporter in its BentoML configuration."""
    git_commit: str = ""
    """The code's commit, recorded on every training run. Images carry no git, so they set it at
    build time (deploy/docker/Dockerfile.ml); a checkout leaves it blank and asks git."""
    bento_model: str = f"{MODEL_NAME}:latest"
    """The model the service loads; ``bento_model`` keeps ``latest`` equal to the champion."""
    warehouse_path: Path = Field(
        default_factory=lambda s: s["data_dir"] / "warehouse.duckdb", validation_alias="CHURNOPS_WAREHOUSE"
    )
    bentoml_home: Path = Field(default_factory=lambda s: s["data_dir"] / "bentoml", validation_alias="BENTOML_HOME")
    """BentoML reads BENTOML_HOME when it is imported, so the environment decides, not code."""
    dagster_home: Path = Field(
        default_factory=lambda s: s["data_dir"] / "dagster_home", validation_alias="DAGSTER_HOME"
    )
    dagster_instance_template: Path = Field(default_factory=lambda s: PROJECT_ROOT / INSTANCE_TEMPLATES[s["profile"]])
    """The instance yaml every ``churnops`` command installs into DAGSTER_HOME as ``dagster.yaml``."""
    dagster_postgres_url: str | None = Field(None, repr=False)
    """Read by the production instance yaml itself (``env:``); declared here so production checks it."""
    mlflow_tracking_uri: str = Field(
        default_factory=lambda s: f"sqlite:///{s['data_dir'] / 'mlflow' / 'mlflow.db'}", repr=False
    )
    mlflow_artifact_location: str = Field(default_factory=lambda s: (s["data_dir"] / "mlflow" / "artifacts").as_uri())

    @field_validator(
        "data_dir", "source_dir", "warehouse_path", "bentoml_home", "dagster_home", "dagster_instance_template"
    )
    @classmethod
    def _absolute(cls, path: Path | None) -> Path | None:
        """Dagster, dbt and the servers each start in their own working directory."""
        return path.resolve() if path is not None else None

    @model_validator(mode="after")
    def _complete(self) -> Settings:
        if self.source == "files" and self.source_dir is None:
            raise ValueError("CHURNOPS_SOURCE=files needs CHURNOPS_SOURCE_DIR")
        if self.profile != "production":
            return self
        variables = self.variables()
        if missing := [variables[name] for name in PRODUCTION_CONNECTIONS if name not in self.model_fields_set]:
            raise ValueError(f"CHURNOPS_PROFILE=production needs {', '.join(missing)}")
        if urlsplit(self.mlflow_tracking_uri).scheme.split("+")[0] != "postgresql":
            raise ValueError("CHURNOPS_PROFILE=production needs CHURNOPS_MLFLOW_TRACKING_URI to be a postgresql:// URI")
        return self

    @property
    def history_end(self) -> dt.date:
        """Last day the bring-up materializes: yesterday, the last complete day.

        The daily cron then continues from a complete history; the synthetic product keeps
        producing events every day (new signups stop after ``history_days``).
        """
        return max(dt.date.today() - dt.timedelta(days=1), self.start_date + dt.timedelta(days=self.history_days - 1))

    @property
    def mlflow_dir(self) -> Path:
        return self.data_dir / "mlflow"

    @property
    def exports_dir(self) -> Path:
        return self.data_dir / "exports"

    @property
    def training_dir(self) -> Path:
        return self.data_dir / "training"

    @property
    def online_features_path(self) -> Path:
        """The serving snapshot ``online_features`` publishes and the service reads (never the warehouse)."""
        return self.data_dir / "online" / "features.parquet"

    @property
    def dbt_parse_dir(self) -> Path:
        """dbt's parse of the project for this data dir's profile (``resources.Dbt``)."""
        return self.data_dir / "dbt"

    @property
    def reports_dir(self) -> Path:
        return self.data_dir / "reports"

    @property
    def duckdb_config(self) -> dict[str, str | int]:
        """Every warehouse connection's share of the machine (Dagster's and dbt's): beyond the
        memory limit DuckDB spills to disk instead of growing."""
        return {"memory_limit": self.duckdb_memory_limit, "threads": self.duckdb_threads}

    def subprocess_env(self) -> dict[str, str]:
        """What child processes read: the data paths (the dbt profile has no defaults of its own),
        the BentoML store, Dagster's home, no telemetry, and no MLflow download progress bars in
        the CLI's output or the run logs."""
        return {
            "CHURNOPS_DATA_DIR": str(self.data_dir),
            "CHURNOPS_WAREHOUSE": str(self.warehouse_path),
            "CHURNOPS_DUCKDB_MEMORY_LIMIT": self.duckdb_memory_limit,
            "CHURNOPS_DUCKDB_THREADS": str(self.duckdb_threads),
            "BENTOML_HOME": str(self.bentoml_home),
            "DAGSTER_HOME": str(self.dagster_home),
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            **TELEMETRY_OFF,
        }


def get_settings() -> Settings:
    return Settings.from_env()
