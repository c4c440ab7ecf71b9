"""Every tunable of the platform, read once from the environment.

One frozen object so that Dagster resources, the dbt profile (through the environment), the
CLI, the benchmarks and the tests agree on paths and numbers. Everything the platform writes
lives under ``data_dir``; deleting that folder resets the platform and touches nothing else.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DBT_PROJECT_DIR = PROJECT_ROOT / "dbt_project"

DEFAULT_START_DATE = dt.date(2026, 7, 1)

MODEL_NAME = "churn-model"
"""The registered model in MLflow and the model's name in the BentoML store."""
SERVICE_PORT = 3001
"""The churn service's default port (``CHURNOPS_SERVICE_PORT``); the built Bento reads this module too."""
CHAMPION_ALIAS = "champion"
EXPERIMENT_NAME = "churnops"

TELEMETRY_OFF = {
    "DAGSTER_DISABLE_TELEMETRY": "1",
    "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "BENTOML_DO_NOT_TRACK": "true",
}


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def _optional_date(name: str) -> dt.date | None:
    value = os.environ.get(name, "").strip()
    return dt.date.fromisoformat(value) if value else None


@dataclass(frozen=True)
class Surfaces:
    """Where ``make up`` serves each surface: one host, a port each, every one set from the environment."""

    host: str = "127.0.0.1"
    dagster_port: int = 3000
    service_port: int = SERVICE_PORT
    mlflow_port: int = 5000
    reports_port: int = 8081
    docs_port: int = 8080

    @classmethod
    def from_env(cls) -> Surfaces:
        return cls(
            host=_env("CHURNOPS_HOST", cls.host),
            dagster_port=int(_env("CHURNOPS_DAGSTER_PORT", str(cls.dagster_port))),
            service_port=int(_env("CHURNOPS_SERVICE_PORT", str(cls.service_port))),
            mlflow_port=int(_env("CHURNOPS_MLFLOW_PORT", str(cls.mlflow_port))),
            reports_port=int(_env("CHURNOPS_REPORTS_PORT", str(cls.reports_port))),
            docs_port=int(_env("CHURNOPS_DOCS_PORT", str(cls.docs_port))),
        )

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


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    start_date: dt.date
    history_days: int
    n_users: int
    seed: int
    source: str
    source_dir: Path | None
    drift_from: dt.date | None
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
    warehouse_path: Path = field(init=False)

    def __post_init__(self) -> None:
        if self.source not in {"synthetic", "files"}:
            raise ValueError(f"CHURNOPS_SOURCE must be 'synthetic' or 'files', not {self.source!r}")
        if self.source == "files" and self.source_dir is None:
            raise ValueError("CHURNOPS_SOURCE=files needs CHURNOPS_SOURCE_DIR")
        warehouse = os.environ.get("CHURNOPS_WAREHOUSE", "").strip()
        object.__setattr__(
            self, "warehouse_path", Path(warehouse).resolve() if warehouse else self.data_dir / "warehouse.duckdb"
        )

    @classmethod
    def from_env(cls) -> Settings:
        source_dir = os.environ.get("CHURNOPS_SOURCE_DIR", "").strip()
        return cls(
            data_dir=Path(_env("CHURNOPS_DATA_DIR", str(PROJECT_ROOT / ".churnops"))).resolve(),
            start_date=dt.date.fromisoformat(_env("CHURNOPS_START_DATE", DEFAULT_START_DATE.isoformat())),
            history_days=int(_env("CHURNOPS_HISTORY_DAYS", "120")),
            n_users=int(_env("CHURNOPS_USERS", "5000")),
            seed=int(_env("CHURNOPS_SEED", "42")),
            source=_env("CHURNOPS_SOURCE", "synthetic"),
            source_dir=Path(source_dir).resolve() if source_dir else None,
            drift_from=_optional_date("CHURNOPS_DRIFT_FROM"),
            holdout_days=int(_env("CHURNOPS_HOLDOUT_DAYS", "14")),
            snapshot_stride_days=int(_env("CHURNOPS_SNAPSHOT_STRIDE_DAYS", "1")),
            max_train_rows=int(_env("CHURNOPS_MAX_TRAIN_ROWS", "1000000")),
            max_holdout_rows=int(_env("CHURNOPS_MAX_HOLDOUT_ROWS", "500000")),
            min_roc_auc=float(_env("CHURNOPS_MIN_ROC_AUC", "0.75")),
            promotion_margin=float(_env("CHURNOPS_PROMOTION_MARGIN", "0.002")),
            decision_threshold=float(_env("CHURNOPS_DECISION_THRESHOLD", "0.5")),
            high_risk_threshold=float(_env("CHURNOPS_HIGH_RISK_THRESHOLD", "0.6")),
            medium_risk_threshold=float(_env("CHURNOPS_MEDIUM_RISK_THRESHOLD", "0.3")),
            high_risk_top_n=int(_env("CHURNOPS_HIGH_RISK_TOP_N", "200")),
            psi_warn=float(_env("CHURNOPS_PSI_WARN", "0.1")),
            psi_fail=float(_env("CHURNOPS_PSI_FAIL", "0.25")),
            max_auc_drop=float(_env("CHURNOPS_MAX_AUC_DROP", "0.05")),
            retrain_cooldown_hours=float(_env("CHURNOPS_RETRAIN_COOLDOWN_HOURS", "24")),
            sensor_interval_seconds=int(_env("CHURNOPS_SENSOR_INTERVAL_SECONDS", "30")),
            duckdb_memory_limit=_env("CHURNOPS_DUCKDB_MEMORY_LIMIT", "4GB"),
            duckdb_threads=int(_env("CHURNOPS_DUCKDB_THREADS", "2")),
            min_delivery_ratio=float(_env("CHURNOPS_MIN_DELIVERY_RATIO", "0.2")),
            service_poll_seconds=float(_env("CHURNOPS_SERVICE_POLL_SECONDS", "2")),
        )

    @property
    def history_end(self) -> dt.date:
        """Last day the bring-up materializes: yesterday, the last complete day.

        The daily cron then continues from a complete history; the synthetic product keeps
        producing events every day (new signups stop after ``history_days``).
        """
        return max(dt.date.today() - dt.timedelta(days=1), self.start_date + dt.timedelta(days=self.history_days - 1))

    @property
    def dagster_home(self) -> Path:
        return self.data_dir / "dagster_home"

    @property
    def mlflow_dir(self) -> Path:
        return self.data_dir / "mlflow"

    @property
    def mlflow_tracking_uri(self) -> str:
        """``CHURNOPS_MLFLOW_TRACKING_URI`` (e.g. a tracking server or Postgres) or SQLite under the data dir."""
        return (
            os.environ.get("CHURNOPS_MLFLOW_TRACKING_URI", "").strip() or f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"
        )

    @property
    def mlflow_artifact_location(self) -> str:
        """``CHURNOPS_MLFLOW_ARTIFACT_LOCATION`` (e.g. ``s3://bucket/churnops``) or a folder under the data dir."""
        return (
            os.environ.get("CHURNOPS_MLFLOW_ARTIFACT_LOCATION", "").strip() or (self.mlflow_dir / "artifacts").as_uri()
        )

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
    def reports_dir(self) -> Path:
        return self.data_dir / "reports"

    @property
    def bentoml_home(self) -> Path:
        """BentoML reads BENTOML_HOME when it is imported, so the environment decides when it is set."""
        home = os.environ.get("BENTOML_HOME", "").strip()
        return Path(home).resolve() if home else self.data_dir / "bentoml"

    @property
    def duckdb_config(self) -> dict[str, str | int]:
        """Every warehouse connection's share of the machine (Dagster's and dbt's): beyond the
        memory limit DuckDB spills to disk instead of growing."""
        return {"memory_limit": self.duckdb_memory_limit, "threads": self.duckdb_threads}

    def subprocess_env(self) -> dict[str, str]:
        """What child processes read: the warehouse for the dbt profile, the BentoML store, no
        telemetry, and no MLflow download progress bars in the CLI's output or the run logs."""
        return {
            "CHURNOPS_WAREHOUSE": str(self.warehouse_path),
            "CHURNOPS_DUCKDB_MEMORY_LIMIT": self.duckdb_memory_limit,
            "CHURNOPS_DUCKDB_THREADS": str(self.duckdb_threads),
            "BENTOML_HOME": str(self.bentoml_home),
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            **TELEMETRY_OFF,
        }


def get_settings() -> Settings:
    return Settings.from_env()
