"""``training_set`` → ``churn_model`` → ``production_model``: train, track, register, gate.

Every candidate is an MLflow run with its parameters, metrics, datasets, provenance tags, model
(with signature) and plots; the best on the holdout becomes a new registered version. A version
below the absolute floors fails a blocking check, so the gate never sees it. The gate compares
the new version with the champion on the same holdout and moves the ``champion`` alias only when
the new one is better by the margin; either way its decision is recorded in Dagster and MLflow.
"""

import hashlib
import subprocess
import tempfile
import warnings
from pathlib import Path

import dagster as dg
import pandas as pd

from churn_assets.contract import FEATURE_COLUMNS, LABEL_COLUMN
from churn_assets.incidents import REASON_TAG, TRIGGER_TAG, record_retrain_step
from churn_assets.resources import Warehouse
from churn_assets.settings import DBT_PROJECT_DIR, PROJECT_ROOT, get_settings
from churn_assets.train.dataset import NotEnoughHistory, time_split
from churn_assets.train.promotion import decide
from churn_assets.train.registry import SKOPS_TRUSTED_TYPES, ModelRegistry

FEATURES_KEY = dg.AssetKey(["marts", "fct_user_features"])
LABELS_KEY = dg.AssetKey(["marts", "fct_churn_labels"])
TRAINING_SET_FILE = "training_set.parquet"


def training_set_path() -> Path:
    return get_settings().training_dir / TRAINING_SET_FILE


def champion_data_version(version: int | str | None) -> dg.DataVersion:
    """production_model's data version: which version is champion, not when the gate last ran."""
    return dg.DataVersion(f"champion-v{version}" if version is not None else "no-champion")


def read_split(name: str) -> pd.DataFrame:
    frame = pd.read_parquet(training_set_path())
    return frame[frame["split"] == name]


@dg.asset(
    group_name="train",
    deps=[FEATURES_KEY, LABELS_KEY],
    pool="duckdb",
    kinds={"python", "parquet"},
    description="Labelled feature rows split by time: train on earlier snapshots, hold out the "
    "latest labelled days, with a 30-day embargo between them so no label sees the holdout period. "
    "Selected and sampled in DuckDB up to CHURNOPS_MAX_TRAIN_ROWS / CHURNOPS_MAX_HOLDOUT_ROWS.",
)
def training_set(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.MaterializeResult:
    settings = get_settings()
    tags = context.run.tags
    record_retrain_step(context.run.run_id, tags, f"started: {tags.get(TRIGGER_TAG)} failed: {tags.get(REASON_TAG)}")
    path = training_set_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warehouse.get_connection() as con:
        try:
            split, dates = time_split(
                con,
                holdout_days=settings.holdout_days,
                stride_days=settings.snapshot_stride_days,
                max_train_rows=settings.max_train_rows,
                max_holdout_rows=settings.max_holdout_rows,
                seed=settings.seed,
            )
        except NotEnoughHistory as error:
            raise dg.Failure(description=str(error)) from error
        split.write_parquet(str(path))
        summary = {
            name: (rows, rate)
            for name, rows, rate in con.execute(
                f"SELECT split, count(*), avg({LABEL_COLUMN}::DOUBLE) FROM read_parquet(?) GROUP BY split", [str(path)]
            ).fetchall()
        }
    if "train" not in summary or "holdout" not in summary:
        raise dg.Failure(description=f"the split left a side empty: {summary}")
    return dg.MaterializeResult(
        metadata={
            **dates.as_metadata(),
            "dagster/row_count": summary["train"][0] + summary["holdout"][0],
            "train_rows": summary["train"][0],
            "holdout_rows": summary["holdout"][0],
            "train_churn_rate": summary["train"][1],
            "holdout_churn_rate": summary["holdout"][1],
            "snapshot_stride_days": settings.snapshot_stride_days,
            "max_train_rows": settings.max_train_rows,
            "max_holdout_rows": settings.max_holdout_rows,
            "path": dg.MetadataValue.path(str(path)),
        }
    )


MODEL_REQUIREMENTS = ("mlflow", "scikit-learn", "skops", "numpy", "scipy", "pandas")


def _requirements() -> list[str]:
    """The model's pip requirements, pinned to what is installed (uv installs exactly uv.lock).

    Given explicitly, MLflow skips its environment inference, which loads the model again in a
    subprocess for every candidate.
    """
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in MODEL_REQUIREMENTS]


def _provenance() -> dict[str, str]:
    manifest = DBT_PROJECT_DIR / "target" / "manifest.json"
    return {
        "dbt_manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.exists() else "none",
        "git_commit": get_settings().git_commit or _checked_out_commit(),
    }


def _checked_out_commit() -> str:
    try:
        found = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=False
        )
    except OSError:  # no git where the run executes
        return "unknown"
    return found.stdout.strip() if found.returncode == 0 else "unknown"


MLFLOW_TYPES = {
    "int32": "integer",
    "int64": "long",
    "float32": "float",
    "float64": "double",
    "bool": "boolean",
    "object": "string",
}


def _dataset(frame: pd.DataFrame, name: str):
    """A split as MLflow records it: the training-set file it came from, a digest of its rows, its schema.

    MLflow's pandas dataset would find the schema by visiting every value in Python, about half
    a minute per candidate at a million rows; the dtypes give it, and the contract rules out gaps.
    """
    import mlflow.data.dataset_source_registry
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types import ColSpec, DataType, Schema

    columns = [*FEATURE_COLUMNS, LABEL_COLUMN]
    schema = Schema([ColSpec(DataType[MLFLOW_TYPES[str(frame[c].dtype)]], c) for c in columns])
    digest = hashlib.sha256(pd.util.hash_pandas_object(frame[columns], index=False).to_numpy().tobytes()).hexdigest()
    with warnings.catch_warnings():
        # A local path matches the local artifact source twice over; either reading is this one.
        warnings.filterwarnings("ignore", ".*can be interpreted in multiple ways", UserWarning)
        source = mlflow.data.dataset_source_registry.resolve_dataset_source(str(training_set_path()))
    return MetaDataset(source, name=name, digest=digest[:8], schema=schema)


def _log_candidate(name, model, evaluation, train, holdout, datasets, tags, seed, threshold) -> tuple[str, str, str]:
    """One MLflow run for one candidate; returns its run id, model URI and its plots as Markdown.

    The plot files are needed only until MLflow and the Markdown hold them.
    """
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    from churn_assets.train.plots import markdown_image, save_plots

    features = list(FEATURE_COLUMNS)
    with mlflow.start_run(run_name=name) as run:
        params = {
            k: v for k, v in model.named_steps["model"].get_params().items() if isinstance(v, int | float | str | bool)
        }
        sizes = {"training_rows": len(train), "holdout_rows": len(holdout)}
        mlflow.log_params({"candidate": name, "decision_threshold": threshold, **sizes, **params})
        mlflow.log_metrics(evaluation.metrics)
        mlflow.log_dict(
            {"threshold": threshold, "labels": [False, True], "matrix": evaluation.confusion}, "confusion_matrix.json"
        )
        mlflow.set_tags({"candidate": name, **tags})
        for context, dataset in datasets.items():
            mlflow.log_input(dataset, context=context)
        with warnings.catch_warnings():
            # The feature contract forbids missing values, the case this warning is about.
            warnings.filterwarnings("ignore", ".*Inferred schema contains integer", UserWarning)
            example = train[features].head(100)
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                signature=infer_signature(example, model.predict_proba(example)[:, 1]),
                input_example=train[features].head(3),
                skops_trusted_types=SKOPS_TRUSTED_TYPES,
                pip_requirements=_requirements(),
            )
        with tempfile.TemporaryDirectory(prefix=f"churnops-{name}-") as folder:
            plots = save_plots(model, holdout, holdout[LABEL_COLUMN], evaluation.probabilities, Path(folder), seed)
            mlflow.log_artifacts(folder, artifact_path="plots")
            markdown = "\n\n".join(markdown_image(plots[p], p) for p in ("roc_curve", "feature_importance"))
    return run.info.run_id, info.model_uri, markdown


@dg.asset(
    group_name="train",
    deps=[training_set],
    kinds={"scikitlearn", "mlflow"},
    check_specs=[
        dg.AssetCheckSpec(
            "meets_floors",
            asset="churn_model",
            blocking=True,
            description="The registered version's holdout ROC-AUC reaches the absolute floor (CHURNOPS_MIN_ROC_AUC).",
        )
    ],
    description="Trains a logistic-regression baseline and a gradient-boosted challenger, tracks "
    "both in MLflow, and registers the better one (holdout ROC-AUC) as a new version of churn-model.",
)
def churn_model(context: dg.AssetExecutionContext, registry: ModelRegistry):
    import mlflow

    from churn_assets.serve.onnx import ONNX_TOLERANCE, compile_pipeline, onnx_disagreement
    from churn_assets.train.candidates import CANDIDATES, evaluate

    settings = get_settings()
    train, holdout = read_split("train"), read_split("holdout")
    experiment_id = registry.activate()
    mlflow.set_experiment(experiment_id=experiment_id)
    tags = {**_provenance(), "dagster_run_id": context.run.run_id}
    datasets = {"training": _dataset(train, "training_set"), "holdout": _dataset(holdout, "holdout_set")}
    results, models = {}, {}
    for name, build in CANDIDATES.items():
        model = build(settings.seed).fit(train[list(FEATURE_COLUMNS)], train[LABEL_COLUMN])
        evaluation = evaluate(model, holdout, holdout[LABEL_COLUMN], settings.decision_threshold)
        run_id, model_uri, plots = _log_candidate(
            name, model, evaluation, train, holdout, datasets, tags, settings.seed, settings.decision_threshold
        )
        results[name] = (evaluation, run_id, model_uri, plots)
        models[name] = model
        context.log.info(f"{name}: holdout ROC-AUC {evaluation.metrics['roc_auc']:.4f}")

    best = max(results, key=lambda n: results[n][0].metrics["roc_auc"])
    evaluation, run_id, model_uri, plots = results[best]
    compiled = compile_pipeline(models[best])
    disagreement = onnx_disagreement(models[best], compiled, holdout)
    if disagreement > ONNX_TOLERANCE:
        raise dg.Failure(
            description=f"the ONNX compilation of {best} differs from the sklearn model by up to {disagreement:.2e} "
            f"in probability on the holdout (tolerance {ONNX_TOLERANCE:.0e}); nothing was registered"
        )
    registry.save_onnx(run_id, compiled)
    registry.save_reference(run_id, train[list(FEATURE_COLUMNS)])
    version = mlflow.register_model(model_uri, registry.model_name)
    client = registry.client()
    for key, value in {"candidate": best, "run_id": run_id, **tags, **evaluation.metrics}.items():
        client.set_model_version_tag(registry.model_name, version.version, key, str(value))

    table = pd.DataFrame({n: r[0].metrics for n, r in results.items()}).T.round(4)
    roc_auc = evaluation.metrics["roc_auc"]
    yield dg.MaterializeResult(
        metadata={
            "model_name": registry.model_name,
            "version": int(version.version),
            "candidate": best,
            "roc_auc": roc_auc,
            "pr_auc": evaluation.metrics["pr_auc"],
            "metrics": dg.MetadataValue.md(table.to_markdown()),
            "onnx_max_abs_difference": disagreement,
            "confusion_matrix": dg.MetadataValue.md(
                pd.DataFrame(
                    evaluation.confusion,
                    index=["actual stay", "actual churn"],
                    columns=["predicted stay", "predicted churn"],
                ).to_markdown()
            ),
            "mlflow_run": dg.MetadataValue.url(registry.run_url(experiment_id, run_id)),
            "plots": dg.MetadataValue.md(plots),
        }
    )
    yield dg.AssetCheckResult(
        check_name="meets_floors",
        passed=roc_auc >= settings.min_roc_auc,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"version {version.version} ({best}): holdout ROC-AUC {roc_auc:.4f}, floor {settings.min_roc_auc:.4f}",
        metadata={"roc_auc": roc_auc, "floor": settings.min_roc_auc},
    )


def _holdout_auc(registry: ModelRegistry, version: str, holdout: pd.DataFrame) -> float:
    from sklearn.metrics import roc_auc_score

    model = registry.load(version)
    return float(roc_auc_score(holdout[LABEL_COLUMN], model.predict_proba(holdout[list(FEATURE_COLUMNS)])[:, 1]))


@dg.asset(
    group_name="train",
    deps=[churn_model],
    kinds={"mlflow"},
    description="The promotion gate: moves churn-model@champion to the newest version only if it "
    "passes the floors and beats the champion on the same holdout by the configured margin. Every "
    "decision is a materialization; its data version is the champion's version, so what depends on "
    "the champion follows only when it changes.",
)
def production_model(context: dg.AssetExecutionContext, registry: ModelRegistry) -> dg.MaterializeResult:
    settings = get_settings()
    holdout = read_split("holdout")
    candidate = registry.latest_version()
    if candidate is None:
        raise dg.Failure(description=f"{registry.model_name} has no registered version to consider")
    champion = registry.champion()
    candidate_auc = _holdout_auc(registry, candidate.version, holdout)
    champion_auc = None
    if champion is not None and champion.version != candidate.version:
        champion_auc = _holdout_auc(registry, champion.version, holdout)
    if champion is not None and champion.version == candidate.version:
        promote, reason = False, f"version {candidate.version} is already the champion"
    else:
        decision = decide(candidate_auc, champion_auc, settings.min_roc_auc, settings.promotion_margin)
        promote, reason = decision.promote, decision.reason
    if promote:
        registry.promote(candidate.version)
    gate = {
        "gate_decision": "promoted" if promote else "kept_champion",
        "gate_reason": reason,
        "gate_roc_auc": f"{candidate_auc:.6f}",
        "gate_champion_version": champion.version if champion else "none",
        "gate_champion_roc_auc": f"{champion_auc:.6f}" if champion_auc is not None else "none",
    }
    client = registry.client()
    for key, value in gate.items():
        client.set_model_version_tag(registry.model_name, candidate.version, key, str(value))
    current = registry.champion()
    context.log.info(f"gate: {gate['gate_decision']}: {reason}")
    record_retrain_step(
        context.run.run_id, context.run.tags, f"gate {gate['gate_decision']} version {candidate.version}: {reason}"
    )
    return dg.MaterializeResult(
        data_version=champion_data_version(current.version if current else None),
        metadata={
            "decision": gate["gate_decision"],
            "reason": reason,
            "candidate_version": int(candidate.version),
            "candidate_roc_auc": candidate_auc,
            "previous_champion_version": int(champion.version) if champion else None,
            "previous_champion_roc_auc": champion_auc,
            "champion_version": int(current.version) if current else None,
            "holdout_rows": len(holdout),
        },
    )
