"""The MLflow model registry as the platform uses it: one registered model, one ``champion`` alias.

Every move of the alias is written on the version it lands on (``champion_since``), so the
champion history and rollback need no store of their own. MLflow is imported lazily: it is slow
to import and the code location should load fast.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import dagster as dg
import duckdb
import pandas as pd
from pydantic import Field

from churn_assets.settings import CHAMPION_ALIAS, EXPERIMENT_NAME, MODEL_NAME, Surfaces

T = TypeVar("T")

SKOPS_TRUSTED_TYPES = [
    "functools.partial",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.utils.validation.check_array",
]
"""Types inside our own pipelines that skops does not trust by default; we wrote these files."""

REFERENCE_ARTIFACT = "reference/training_reference.parquet"
"""Beside each registered model, the training features it learnt from: its drift reference."""
ONNX_ARTIFACT = "onnx/model.onnx"
"""Beside each registered model, its ONNX compilation: what batch scoring and the service run."""

CHAMPION_SINCE = "champion_since"
ROLLED_BACK = "rolled_back_at"


@dataclass(frozen=True)
class ChampionEntry:
    version: int
    since: str
    roc_auc: str
    rolled_back: str | None


class ModelRegistry(dg.ConfigurableResource):
    """MLflow tracking and registry on the configured store (SQLite + local artifacts by default)."""

    tracking_uri: str = Field(description="MLflow tracking and registry URI.")
    artifact_location: str = Field(description="Where the experiment's artifacts are stored.")
    ui_url: str = Field(default=Surfaces().mlflow_url, description="The MLflow UI, for links in metadata.")
    experiment_name: str = EXPERIMENT_NAME
    model_name: str = MODEL_NAME

    def activate(self) -> str:
        """Points the mlflow module at this store and returns the experiment id."""
        import mlflow

        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        experiment = mlflow.get_experiment_by_name(self.experiment_name)
        if experiment is not None:
            return experiment.experiment_id
        return mlflow.create_experiment(self.experiment_name, artifact_location=self.artifact_location)

    def client(self):
        from mlflow import MlflowClient

        self.activate()
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def run_url(self, experiment_id: str, run_id: str) -> str:
        return f"{self.ui_url}/#/experiments/{experiment_id}/runs/{run_id}"

    def champion(self):
        """The champion's ModelVersion, or None before the first promotion."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client().get_model_version_by_alias(self.model_name, CHAMPION_ALIAS)
        except MlflowException:
            return None

    def latest_version(self):
        versions = self.client().search_model_versions(f"name = '{self.model_name}'")
        return max(versions, key=lambda v: int(v.version), default=None)

    def load(self, version: int | str):
        import mlflow.sklearn

        self.activate()
        return mlflow.sklearn.load_model(f"models:/{self.model_name}/{version}")

    def _save_file(self, run_id: str, artifact: str, write: Callable[[Path], object]) -> None:
        """Logs ``artifact`` (folder/name) with the run; ``write`` fills it in a temporary folder."""
        with tempfile.TemporaryDirectory(prefix="churnops-artifact-") as folder:
            path = Path(folder) / Path(artifact).name
            write(path)
            self.client().log_artifact(run_id, str(path), artifact_path=str(Path(artifact).parent))

    def _read_file(self, version: int | str, artifact: str, read: Callable[[Path], T]) -> T:
        """Reads ``artifact`` of the version's run from a temporary download."""
        import mlflow.artifacts

        run_id = self.client().get_model_version(self.model_name, str(version)).run_id
        with tempfile.TemporaryDirectory(prefix="churnops-artifact-") as folder:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=artifact, tracking_uri=self.tracking_uri, dst_path=folder
            )
            return read(Path(path))

    def save_reference(self, run_id: str, features: pd.DataFrame) -> None:
        """Stores the training features with the run, so drift is measured against the model in use."""
        self._save_file(run_id, REFERENCE_ARTIFACT, lambda path: features.to_parquet(path, index=False))

    def reference(self, version: int | str) -> pd.DataFrame:
        """The training features of this model version (not of whatever was trained last)."""
        return self._read_file(version, REFERENCE_ARTIFACT, pd.read_parquet)

    def reference_sample(self, version: int | str, rows: int, seed: int) -> pd.DataFrame:
        """At most ``rows`` of the version's training features, the same rows for the same seed.

        Drawn in DuckDB from the stored file by a hash of each row's position and the seed, so
        only the sample reaches pandas, whatever the size of the reference.
        """

        def sample(path: Path) -> pd.DataFrame:
            with duckdb.connect() as con:
                return con.execute(
                    "SELECT * EXCLUDE (file_row_number) FROM read_parquet(?, file_row_number = true) "
                    "ORDER BY hash(file_row_number, ?) LIMIT ?",
                    [str(path), int(seed), int(rows)],
                ).df()

        return self._read_file(version, REFERENCE_ARTIFACT, sample)

    def save_onnx(self, run_id: str, compiled: bytes) -> None:
        self._save_file(run_id, ONNX_ARTIFACT, lambda path: path.write_bytes(compiled))

    def onnx(self, version: int | str) -> bytes:
        """The version's ONNX compilation, compiled and stored on first use for versions that predate it."""
        from mlflow.exceptions import MlflowException

        from churn_assets.serve.onnx import compile_pipeline

        try:
            return self._read_file(version, ONNX_ARTIFACT, Path.read_bytes)
        except (MlflowException, OSError):
            compiled = compile_pipeline(self.load(version))
            self.save_onnx(self.client().get_model_version(self.model_name, str(version)).run_id, compiled)
            return compiled

    def promote(self, version: int | str) -> None:
        client = self.client()
        client.set_registered_model_alias(self.model_name, CHAMPION_ALIAS, str(version))
        client.set_model_version_tag(self.model_name, str(version), CHAMPION_SINCE, _now())
        if ROLLED_BACK in client.get_model_version(self.model_name, str(version)).tags:
            client.delete_model_version_tag(self.model_name, str(version), ROLLED_BACK)

    def history(self) -> list[ChampionEntry]:
        """Every version that has been champion, most recent first."""
        versions = self.client().search_model_versions(f"name = '{self.model_name}'")
        entries = [
            ChampionEntry(int(v.version), v.tags[CHAMPION_SINCE], v.tags.get("roc_auc", ""), v.tags.get(ROLLED_BACK))
            for v in versions
            if CHAMPION_SINCE in v.tags
        ]
        return sorted(entries, key=lambda e: e.since, reverse=True)

    def rollback(self) -> tuple[int, int]:
        """Moves the alias back to the champion before the current one; returns (from, to)."""
        current = self.champion()
        if current is None:
            raise ValueError(f"{self.model_name} has no champion to roll back")
        earlier = [e for e in self.history() if e.version != int(current.version) and not e.rolled_back]
        if not earlier:
            raise ValueError(f"version {current.version} is the only champion {self.model_name} has had")
        self.client().set_model_version_tag(self.model_name, current.version, ROLLED_BACK, _now())
        self.promote(earlier[0].version)
        return int(current.version), earlier[0].version


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
