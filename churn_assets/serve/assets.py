"""``bento_model``: the champion exported to the BentoML model store, ready for ``bento/service.py``.

The export carries what the service needs and nothing it would have to fetch: the sklearn
pipeline and its ONNX compilation (what the service runs, see ``serve/onnx.py``), the feature
order it expects, the MLflow version it came from (as a label, so the
service reports it), and the latest feature snapshot per user for ``/predict_user``, so the
service never opens the warehouse the pipeline writes to.
"""

import dagster as dg
import pandas as pd

from churn_assets.contract import FEATURE_COLUMNS
from churn_assets.resources import Warehouse
from churn_assets.serve.onnx import ONNX_INPUTS, ONNX_TOLERANCE, onnx_disagreement
from churn_assets.train.assets import production_model
from churn_assets.train.registry import ModelRegistry

MLFLOW_VERSION_LABEL = "mlflow_version"
SNAPSHOT_OBJECT = "latest_features"
ONNX_OBJECT = "onnx_model"


def _latest_features(warehouse: Warehouse) -> pd.DataFrame:
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
    "metrics, feature order, dbt manifest hash and the latest feature snapshot; bento/service.py serves it.",
)
def bento_model(context: dg.AssetExecutionContext, registry: ModelRegistry, warehouse: Warehouse) -> dg.MaterializeResult:
    import bentoml

    champion = registry.champion()
    if champion is None:
        raise dg.Failure(description=f"{registry.model_name} has no champion yet: materialize production_model first")
    version = str(champion.version)
    try:
        current = bentoml.models.get(f"{registry.model_name}:latest")
    except bentoml.exceptions.NotFound:
        current = None
    # The run id, unique across MLflow stores, tells two platforms sharing one BentoML store apart;
    # an export whose ONNX inputs the service no longer feeds is compiled again.
    if (
        current is not None
        and current.info.labels.get(MLFLOW_VERSION_LABEL) == version
        and current.info.metadata.get("mlflow_run_id") == champion.tags.get("run_id", "")
        and current.info.metadata.get("onnx_inputs") == list(ONNX_INPUTS)
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
            "snapshot_date": str(snapshot["snapshot_date"].max()) if len(snapshot) else "",
        },
        custom_objects={SNAPSHOT_OBJECT: snapshot, ONNX_OBJECT: onnx_model},
    )
    return dg.MaterializeResult(
        metadata={
            "bento_model": str(saved.tag),
            "mlflow_version": int(version),
            "exported": True,
            "snapshot_users": len(snapshot),
            "onnx_max_abs_difference": disagreement,
            "path": dg.MetadataValue.path(saved.path),
        }
    )
