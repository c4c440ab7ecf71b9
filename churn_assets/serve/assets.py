"""``bento_model``: the champion exported to the BentoML model store, ready for ``bento/service.py``.

The export carries what the service needs and nothing it would have to fetch: the sklearn
pipeline and its ONNX compilation (what the service runs, see ``serve/onnx.py``), the feature
order it expects, the MLflow version and run it came from, when it was trained, its holdout
metrics, and the risk-tier thresholds, so the service tiers a probability exactly as batch
scoring does. A running service swaps to a new export by itself. ``/predict_user``'s features
come from ``online_features``, which changes daily, not with the model.
"""

import datetime as dt

import dagster as dg
import pandas as pd

from churn_assets.contract import FEATURE_COLUMNS
from churn_assets.resources import Warehouse
from churn_assets.serve.onnx import ONNX_INPUTS, ONNX_TOLERANCE, onnx_disagreement
from churn_assets.settings import get_settings
from churn_assets.train.assets import production_model
from churn_assets.train.registry import ModelRegistry

MLFLOW_VERSION_LABEL = "mlflow_version"
ONNX_OBJECT = "onnx_model"


def _latest_features(warehouse: Warehouse) -> pd.DataFrame:
    """Real rows to check the ONNX compilation against the sklearn pipeline on."""
    with warehouse.get_connection() as con:
        frame = con.execute(
            f"SELECT user_id, snapshot_date, {', '.join(FEATURE_COLUMNS)} FROM marts.fct_user_features "
            "WHERE snapshot_date = (SELECT max(snapshot_date) FROM marts.fct_user_features) ORDER BY user_id"
        ).df()
    frame["snapshot_date"] = pd.to_datetime(frame["snapshot_date"]).dt.date
    return frame


@dg.asset(
    group_name="serve",
    deps=[production_model],
    pool="duckdb",
    kinds={"bentoml", "scikitlearn"},
    description="The champion model in the BentoML store (BENTOML_HOME) with its MLflow version, "
    "metrics, feature order, risk-tier thresholds and dbt manifest hash; bento/service.py serves it and swaps to "
    "each new export by itself.",
)
def bento_model(
    context: dg.AssetExecutionContext, registry: ModelRegistry, warehouse: Warehouse
) -> dg.MaterializeResult:
    import bentoml

    champion = registry.champion()
    if champion is None:
        raise dg.Failure(description=f"{registry.model_name} has no champion yet: materialize production_model first")
    version = str(champion.version)
    settings = get_settings()
    thresholds = {"medium": settings.medium_risk_threshold, "high": settings.high_risk_threshold}
    try:
        current = bentoml.models.get(f"{registry.model_name}:latest")
    except bentoml.exceptions.NotFound:
        current = None
    # The run id, unique across MLflow stores, tells two platforms sharing one BentoML store apart;
    # an export whose ONNX inputs the service no longer feeds, or whose tiers batch scoring no
    # longer uses, is made again.
    if (
        current is not None
        and current.info.labels.get(MLFLOW_VERSION_LABEL) == version
        and current.info.metadata.get("mlflow_run_id") == champion.tags.get("run_id", "")
        and current.info.metadata.get("onnx_inputs") == list(ONNX_INPUTS)
        and current.info.metadata.get("risk_thresholds") == thresholds
    ):
        context.log.info(f"{current.tag} already holds champion version {version}; nothing to export")
        return dg.MaterializeResult(
            metadata={"bento_model": str(current.tag), "mlflow_version": int(version), "exported": False}
        )

    snapshot = _latest_features(warehouse)
    pipeline = registry.load(version)
    onnx_model = registry.onnx(version)
    disagreement = onnx_disagreement(pipeline, onnx_model, snapshot)
    if disagreement > ONNX_TOLERANCE:
        raise dg.Failure(
            description=f"the ONNX compilation of version {version} differs from the sklearn model by up to "
            f"{disagreement:.2e} in probability (tolerance {ONNX_TOLERANCE:.0e}); nothing was exported"
        )
    tags = champion.tags
    saved = bentoml.sklearn.save_model(
        registry.model_name,
        pipeline,
        labels={MLFLOW_VERSION_LABEL: version, "candidate": tags.get("candidate", "unknown")},
        metadata={
            "mlflow_model": registry.model_name,
            "mlflow_version": version,
            "mlflow_run_id": tags.get("run_id", ""),
            "roc_auc": float(tags.get("roc_auc", "nan")),
            "pr_auc": float(tags.get("pr_auc", "nan")),
            "feature_columns": list(FEATURE_COLUMNS),
            "onnx_inputs": list(ONNX_INPUTS),
            "dbt_manifest_sha256": tags.get("dbt_manifest_sha256", ""),
            "git_commit": tags.get("git_commit", ""),
            "trained_at": dt.datetime.fromtimestamp(champion.creation_timestamp / 1000, dt.UTC).isoformat(),
            "risk_thresholds": thresholds,
        },
        custom_objects={ONNX_OBJECT: onnx_model},
    )
    return dg.MaterializeResult(
        metadata={
            "bento_model": str(saved.tag),
            "mlflow_version": int(version),
            "exported": True,
            "onnx_max_abs_difference": disagreement,
            "path": dg.MetadataValue.path(saved.path),
        }
    )
