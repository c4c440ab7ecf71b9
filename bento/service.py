"""The production churn model over HTTP.

Serves the newest model in the BentoML store (the champion, exported by the ``bento_model``
asset) through its ONNX compilation on onnxruntime, which answers a single row in well under a
millisecond where the sklearn pipeline takes several. Requests are validated against
``churn_assets.contract.FeatureRecord``, the same feature list the model was trained on, and the
model's own recorded feature order is checked against it at start-up, so training and serving
cannot drift apart silently.

The APIs answer with JSON they serialize themselves; their ``output_spec`` still documents the
shape in the OpenAPI document. BentoML's own serialization of a returned pydantic model sends the
body in chunks, each passing every middleware once more; at a fraction of a millisecond per
prediction that was a quarter of the cost of ``/predict``. For the same reason ``DirectApis``
(bento/surface.py) calls them without BentoML's generic dispatch.

Nothing needs a restart. Each worker looks every ``CHURNOPS_SERVICE_POLL_SECONDS`` for a newer
champion export in the BentoML store (``bento_model``) and a newer ``/predict_user`` snapshot
(``online_features``), loads what changed beside what it serves, and swaps one reference: a
request reads that reference once, so it finishes on the model it started with and never mixes
two. ``GET /model`` says what is served and how fresh it is (docs/serving.md).

Start it with ``make serve`` (or ``bentoml serve bento.service:ChurnService``) after the graph has
run. OpenAPI: ``/docs.json``; Swagger UI: ``/``.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import bentoml
import msgspec
import orjson
from pydantic import BaseModel, ConfigDict, Field, RootModel
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from bento.surface import DirectApis, GuardedService, error_response, printable
from churn_assets.contract import (
    FEATURE_COLUMNS,
    MAX_BATCH_RECORDS,
    RISK_TIERS,
    FeatureRecord,
    FeatureRow,
    feature_values,
    risk_tiers,
)
from churn_assets.serve.onnx import ONNX_INPUTS, churn_probabilities, feeds, input_names, load_session
from churn_assets.settings import SERVICE_PORT, get_settings

SETTINGS = get_settings()
MODEL_TAG = SETTINGS.bento_model
WORKERS = SETTINGS.service_workers
TRACING = SETTINGS.service_tracing == "on"


class Prediction(BaseModel):
    churn_probability: float = Field(ge=0, le=1)
    risk_tier: Literal["low", "medium", "high"]
    model_version: int


class Predictions(RootModel[list[Prediction]]):
    pass


class UserPrediction(Prediction):
    user_id: int
    snapshot_date: str


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PredictRequest(_Request):
    features: FeatureRecord  # type: ignore[valid-type]


class BatchRequest(_Request):
    records: Annotated[list[FeatureRecord], Field(min_length=1, max_length=MAX_BATCH_RECORDS)]  # type: ignore[valid-type]


class BatchRecords(msgspec.Struct, forbid_unknown_fields=True):
    """``BatchRequest`` for msgspec, which ``DirectApis`` decodes a batch with: 2 ms for 1,000 records where pydantic takes 10."""

    records: Annotated[list[FeatureRow], msgspec.Meta(min_length=1, max_length=MAX_BATCH_RECORDS)]  # type: ignore[valid-type]


class UserRequest(_Request):
    user_id: Annotated[int, Field(ge=1, strict=True)]


logger = logging.getLogger("bentoml.churn_service")

predictions_total = bentoml.metrics.Counter(
    name="churn_predictions",
    documentation="Predictions served, by risk tier and model version.",
    labelnames=["risk_tier", "model_version"],
)
model_age = bentoml.metrics.Gauge(
    name="churn_model_age_seconds", documentation="Seconds since the served model was trained."
)
snapshot_age = bentoml.metrics.Gauge(
    name="churn_feature_snapshot_age_seconds",
    documentation="Seconds since the /predict_user feature snapshot was published (-1: none yet).",
)

MODEL_MAX_AGE = dt.timedelta(days=8)
"""The model's freshness policy (retrain assets, churn_assets/automation.py): older is degraded."""
SNAPSHOT_MAX_AGE = dt.timedelta(hours=50)
"""The online features' freshness policy: an older snapshot is degraded."""


@dataclass(frozen=True)
class ServedModel:
    """One champion export, loaded whole before it is swapped in."""

    tag: str
    version: int
    session: object
    thresholds: tuple[float, float]
    trained_at: dt.datetime
    info: dict
    served: dict

    @classmethod
    def load(cls, tag: str) -> ServedModel:
        model = bentoml.models.get(tag)
        metadata = model.info.metadata
        if metadata.get("feature_columns") != list(FEATURE_COLUMNS):
            raise RuntimeError(
                f"{model.tag} was trained on {metadata.get('feature_columns')}, the contract says {list(FEATURE_COLUMNS)}"
            )
        compiled = model.custom_objects["onnx_model"]
        session = load_session(compiled)
        if input_names(session) != ONNX_INPUTS:
            raise RuntimeError(
                f"{model.tag} takes ONNX inputs {input_names(session)}, this service feeds "
                f"{ONNX_INPUTS}: re-materialize bento_model to export it again"
            )
        thresholds = metadata.get("risk_thresholds") or {
            "medium": SETTINGS.medium_risk_threshold,
            "high": SETTINGS.high_risk_threshold,
        }
        version = int(model.info.labels["mlflow_version"])
        trained_at = metadata.get("trained_at")
        return cls(
            tag=str(model.tag),
            version=version,
            session=session,
            thresholds=(float(thresholds["medium"]), float(thresholds["high"])),
            trained_at=dt.datetime.fromisoformat(trained_at) if trained_at else model.info.creation_time,
            info={
                "model_version": version,
                "bento_model": str(model.tag),
                "mlflow_run_id": metadata.get("mlflow_run_id", ""),
                "holdout_metrics": {"roc_auc": metadata.get("roc_auc"), "pr_auc": metadata.get("pr_auc")},
                "risk_thresholds": thresholds,
            },
            served={tier: predictions_total.labels(risk_tier=tier, model_version=str(version)) for tier in RISK_TIERS},
        )


@dataclass(frozen=True)
class FeatureSnapshot:
    """The ``online_features`` file as one ``feature_values`` row per active user, keyed by user id."""

    date: str
    published_at: dt.datetime
    records: dict
    signature: tuple

    @classmethod
    def load(cls, path: Path, signature: tuple) -> FeatureSnapshot:
        import pyarrow.parquet as pq

        table = pq.read_table(path, columns=["user_id", "snapshot_date", *FEATURE_COLUMNS])
        date = str(table["snapshot_date"][0]) if table.num_rows else ""
        rows = zip(*(table[column].to_pylist() for column in FEATURE_COLUMNS), strict=True)
        records = dict(zip(table["user_id"].to_pylist(), rows, strict=True))
        return cls(date, dt.datetime.fromtimestamp(signature[0] / 1e9, dt.UTC), records, signature)


def _signature(path: Path) -> tuple | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


async def _model_info(request) -> Response:
    """GET /model: what is served and how fresh it is; ``status`` is ``degraded`` past a freshness policy."""
    return _json(bentoml.get_current_service().freshness())


@bentoml.asgi_app(Starlette(routes=[Route("/model", _model_info, methods=["GET"])]), path="/")
@bentoml.service(
    service_class=GuardedService,
    name="churn_service",
    description=(
        "Churn probability and risk tier for TechITFactory users, from the production model "
        "(churnops). `GET /model` says which model and feature snapshot are served and how fresh they are."
    ),
    workers=WORKERS,
    traffic={"timeout": 10},
    http={"host": "127.0.0.1", "port": SERVICE_PORT},
    logging={"access": {"enabled": False}},
    **({} if TRACING else {"tracing": {"excluded_urls": [".*"]}}),
)
class ChurnService:
    model_ref = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        self.model = ServedModel.load(MODEL_TAG)
        self.features: FeatureSnapshot | None = None
        self._refresh_features()
        self._update_gauges()
        threading.Thread(target=self._watch, name="churn-swap", daemon=True).start()
        # Everything loaded so far lives as long as the worker: keeping it out of the cyclic GC's
        # full collections takes 100+ ms pauses out of the latency tail.
        gc.freeze()

    def _watch(self) -> None:
        """Swaps in a new export or snapshot as soon as one appears; a broken one is logged and skipped."""
        failed: set[str] = set()
        while True:
            time.sleep(SETTINGS.service_poll_seconds)
            for refresh in (self._refresh_model, self._refresh_features):
                try:
                    swapped = refresh()
                except Exception as error:  # noqa: BLE001 - a bad export must never take down the model being served
                    text = f"{refresh.__name__}: {error}"
                    if text not in failed:
                        failed.add(text)
                        logger.error("Keeping what is served; %s", printable(text))
                    continue
                if swapped:
                    gc.freeze()
            self._update_gauges()

    def _refresh_model(self) -> bool:
        tag = str(bentoml.models.get(MODEL_TAG).tag)
        if tag == self.model.tag:
            return False
        model = ServedModel.load(tag)
        self.model = model
        logger.info("Now serving %s (model version %s)", model.tag, model.version)
        return True

    def _refresh_features(self) -> bool:
        path = SETTINGS.online_features_path
        signature = _signature(path)
        if signature is None or (self.features is not None and self.features.signature == signature):
            return False
        self.features = FeatureSnapshot.load(path, signature)
        logger.info("Now answering /predict_user from the snapshot of %s", self.features.date)
        return True

    def _update_gauges(self) -> None:
        now = dt.datetime.now(dt.UTC)
        model_age.set((now - self.model.trained_at).total_seconds())
        snapshot_age.set((now - self.features.published_at).total_seconds() if self.features else -1)

    def freshness(self) -> dict:
        now = dt.datetime.now(dt.UTC)
        model, features = self.model, self.features
        degraded = []
        if now - model.trained_at > MODEL_MAX_AGE:
            degraded.append(
                f"the model was trained {model.trained_at:%Y-%m-%d %H:%M} UTC, over {MODEL_MAX_AGE.days} days ago"
            )
        if features is None:
            degraded.append(f"no feature snapshot at {SETTINGS.online_features_path}: materialize online_features")
        elif now - features.published_at > SNAPSHOT_MAX_AGE:
            degraded.append(
                f"the feature snapshot was published over {SNAPSHOT_MAX_AGE.total_seconds() / 3600:.0f} h ago"
            )
        return {
            "status": "degraded" if degraded else "ok",
            "degraded_because": degraded,
            **model.info,
            "trained_at": model.trained_at.isoformat(),
            "model_age_seconds": round((now - model.trained_at).total_seconds()),
            "feature_snapshot_date": features.date if features else None,
            "feature_snapshot_published_at": features.published_at.isoformat() if features else None,
            "feature_snapshot_age_seconds": round((now - features.published_at).total_seconds()) if features else None,
            "feature_snapshot_users": len(features.records) if features else 0,
            "example_user_id": min(features.records) if features and features.records else None,
        }

    def openapi_examples(self) -> dict[str, dict]:
        """Swagger's /predict_user example: a user of the served snapshot, so "Try it out" gets a 200."""
        features = self.features
        return {"/predict_user": {"user_id": min(features.records)}} if features and features.records else {}

    def _score(self, model: ServedModel, rows: list[tuple]) -> list[dict]:
        probabilities = churn_probabilities(model.session, feeds(rows))
        tiers = risk_tiers(probabilities, *model.thresholds).tolist()
        for tier in set(tiers):
            model.served[tier].inc(tiers.count(tier))
        return [
            {"churn_probability": p, "risk_tier": t, "model_version": model.version}
            for p, t in zip(probabilities.tolist(), tiers, strict=True)
        ]

    # The APIs are async: each costs well under a millisecond of CPU, less than a hop to a thread.
    # Each reads self.model (and self.features) once, so a swap never splits a request.
    @bentoml.api(input_spec=PredictRequest, output_spec=Prediction)
    async def predict(self, features: FeatureRecord) -> Response:  # type: ignore[valid-type]
        """Churn probability, risk tier and model version for one user's feature record."""
        return _json(self._score(self.model, [feature_values(features)])[0])

    @bentoml.api(input_spec=BatchRequest, output_spec=Predictions)
    async def predict_batch(self, records: list[FeatureRow]) -> Response:  # type: ignore[valid-type]
        """The same for up to MAX_BATCH_RECORDS records, in request order."""
        return _json(self._score(self.model, list(map(msgspec.structs.astuple, records))))

    @bentoml.api(input_spec=UserRequest, output_spec=UserPrediction)
    async def predict_user(self, user_id: int) -> Response:
        """Score a user from the newest published feature snapshot; 404 if they are not in it."""
        model, snapshot = self.model, self.features
        if snapshot is None:
            return error_response(503, "no feature snapshot is published yet: materialize online_features")
        row = snapshot.records.get(user_id)
        if row is None:
            return error_response(
                404,
                f"user_id {user_id} is not an active user in the feature snapshot of {snapshot.date}",
                loc=("user_id",),
                type="not_found",
            )
        return _json({**self._score(model, [row])[0], "user_id": user_id, "snapshot_date": snapshot.date})


FAST_DECODING = {"predict_batch": BatchRecords}
ChurnService.add_asgi_middleware(DirectApis, service=ChurnService, fast=FAST_DECODING)


def _json(body: dict | list) -> Response:
    """orjson: a 1,000-prediction answer in 0.15 ms, where json.dumps takes 2.5."""
    return Response(orjson.dumps(body), media_type="application/json")
