"""The production churn model over HTTP.

Serves the newest model in the BentoML store (the champion, exported by the ``bento_model``
asset). Requests are validated against ``churn_assets.contract.FeatureRecord``, the same feature
list the model was trained on, and the model's own recorded feature order is checked against it
at start-up, so training and serving cannot drift apart silently.

Start it with ``make serve`` (or ``bentoml serve bento.service:ChurnService``) after the graph has
run. OpenAPI: ``/docs.json``; Swagger UI: ``/``.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Annotated, Literal

import bentoml
import numpy as np
import pydantic
from bentoml.exceptions import BentoMLException, NotFound
from pydantic import BaseModel, Field

from churn_assets.contract import FEATURE_COLUMNS, FeatureRecord, risk_tiers
from churn_assets.settings import MAX_BATCH_RECORDS, MODEL_NAME, SERVICE_PORT, get_settings

MODEL_TAG = os.environ.get("CHURNOPS_BENTO_MODEL", f"{MODEL_NAME}:latest")
WORKERS = int(os.environ.get("CHURNOPS_SERVICE_WORKERS", "2"))
SETTINGS = get_settings()

warnings.filterwarnings("ignore", message="X does not have valid feature names")


class Prediction(BaseModel):
    churn_probability: float = Field(ge=0, le=1)
    risk_tier: Literal["low", "medium", "high"]
    model_version: int


class UserPrediction(Prediction):
    user_id: int
    snapshot_date: str


class _RejectedRequestsAsWarnings(logging.Filter):
    """BentoML logs every rejected request at ERROR with a traceback; bad client input is no server error."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, pydantic.ValidationError):
            reason = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        elif isinstance(error, BentoMLException) and error.error_code < 500:
            reason = str(error)
        else:
            return True
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg, record.args = f"Rejected request on %s: {reason}", (record.args or ("?",))[:1]
        record.exc_info, record.exc_text = None, None
        return True


logging.getLogger("bentoml._internal.server.http_app").addFilter(_RejectedRequestsAsWarnings())

predictions_total = bentoml.metrics.Counter(
    name="churn_predictions",
    documentation="Predictions served, by risk tier and model version.",
    labelnames=["risk_tier", "model_version"],
)


def _row_predictor(pipeline):
    """The fitted pipeline as a function of an object array in FEATURE_COLUMNS order.

    Applying the fitted transformers to numpy slices skips building a DataFrame per request,
    which costs more than the model itself.
    """
    prep, model = pipeline.named_steps["prep"], pipeline.named_steps["model"]
    steps = [
        (transformer, [FEATURE_COLUMNS.index(c) for c in columns])
        for _, transformer, columns in prep.transformers_
        if not (isinstance(transformer, str) and transformer == "drop")
    ]

    def predict(rows: np.ndarray) -> np.ndarray:
        blocks = []
        for transformer, index in steps:
            part = rows[:, index]
            if isinstance(transformer, str):
                blocks.append(part.astype(float))
            else:
                block = transformer.transform(part)
                blocks.append(block.toarray() if hasattr(block, "toarray") else block)
        return model.predict_proba(np.hstack(blocks).astype(float))[:, 1]

    return predict


def _as_rows(records: list[BaseModel]) -> np.ndarray:
    return np.array([[getattr(r, c) for c in FEATURE_COLUMNS] for r in records], dtype=object)


@bentoml.service(
    name="churn_service",
    workers=WORKERS,
    traffic={"timeout": 10},
    http={"host": "127.0.0.1", "port": SERVICE_PORT},
    logging={"access": {"enabled": False}},
)
class ChurnService:
    model_ref = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        info = self.model_ref.info
        trained_on = info.metadata.get("feature_columns")
        if trained_on != list(FEATURE_COLUMNS):
            raise RuntimeError(f"{self.model_ref.tag} was trained on {trained_on}, the contract says {list(FEATURE_COLUMNS)}")
        self.version = int(info.labels["mlflow_version"])
        self.predict_rows = _row_predictor(bentoml.sklearn.load_model(self.model_ref))
        snapshot = self.model_ref.custom_objects["latest_features"]
        self.snapshot_date = str(info.metadata.get("snapshot_date", ""))
        self.snapshot_rows = {int(u): i for i, u in enumerate(snapshot["user_id"])}
        self.snapshot = snapshot[list(FEATURE_COLUMNS)].to_numpy(dtype=object)

    def _predictions(self, probabilities: np.ndarray) -> list[Prediction]:
        tiers = risk_tiers(probabilities, SETTINGS.medium_risk_threshold, SETTINGS.high_risk_threshold)
        out = []
        for probability, tier in zip(probabilities, tiers, strict=True):
            predictions_total.labels(risk_tier=str(tier), model_version=str(self.version)).inc()
            out.append(Prediction(churn_probability=float(probability), risk_tier=str(tier), model_version=self.version))
        return out

    @bentoml.api
    def predict(self, features: FeatureRecord) -> Prediction:  # type: ignore[valid-type]
        """Churn probability, risk tier and model version for one user's feature record."""
        return self._predictions(self.predict_rows(_as_rows([features])))[0]

    @bentoml.api
    def predict_batch(
        self,
        records: Annotated[list[FeatureRecord], Field(min_length=1, max_length=MAX_BATCH_RECORDS)],  # type: ignore[valid-type]
    ) -> list[Prediction]:
        """The same for up to MAX_BATCH_RECORDS records, in request order."""
        return self._predictions(self.predict_rows(_as_rows(records)))

    @bentoml.api
    def predict_user(self, user_id: Annotated[int, Field(gt=0)]) -> UserPrediction:
        """Score a user from the feature snapshot exported with the model; 404 if they are not in it."""
        row = self.snapshot_rows.get(user_id)
        if row is None:
            raise NotFound(f"user_id {user_id} is not an active user in the feature snapshot of {self.snapshot_date}")
        prediction = self._predictions(self.predict_rows(self.snapshot[row : row + 1]))[0]
        return UserPrediction(**prediction.model_dump(), user_id=user_id, snapshot_date=self.snapshot_date)
