"""``feature_drift``, ``drift_report`` and ``model_performance``: is the champion still right?

Drift compares each scored day's population with the scoring champion's own training reference,
stored with its model version (a candidate the gate rejected never becomes the reference), in
DuckDB for every day of the run at once; the Evidently report shows those stored numbers beside
plots of fixed-seed samples, so its cost does not grow with the users. Performance waits until a
scored day's 30-day labels exist and measures what the scores were worth. Their checks are what
the retrain sensor listens to.
"""

import datetime as dt
import functools
from contextvars import ContextVar

import dagster as dg
import pandas as pd

from churn_assets.contract import CATEGORICAL_FEATURES, FEATURE_COLUMNS, NUMERIC_FEATURES
from churn_assets.monitor.drift import column_bins, psi_by_day, verdict
from churn_assets.monitor.performance import performance_by_day
from churn_assets.partitions import daily_partitions
from churn_assets.resources import Warehouse
from churn_assets.score.assets import SCORES_TABLE, churn_scores
from churn_assets.settings import Settings, Surfaces, get_settings
from churn_assets.train.assets import LABELS_KEY, production_model
from churn_assets.train.dataset import LABELS_RELATION
from churn_assets.train.registry import ModelRegistry

DRIFT_TABLE = "monitor.feature_drift"
PERFORMANCE_TABLE = "monitor.model_performance"
PREDICTION = "churn_probability"
PLATFORM_PSI = "churnops_psi"
"""The name under which Evidently knows the platform's PSI as a stat test."""
REPORT_SAMPLE_ROWS = 50_000
"""The most rows of the day, and of the reference, that the report plots: its cost stays the same at any number of users."""

_DAY_PSI: ContextVar[dict[str, float]] = ContextVar("day_psi")
"""Each feature's PSI over the whole day, as ``feature_drift`` stored it, for the report being run."""

FEATURE_DRIFT_CHECK = "feature_drift_below_threshold"
PREDICTION_DRIFT_CHECK = "prediction_drift_below_threshold"
PERFORMANCE_CHECK = "realised_auc_holds"


def _day_sample(con, day: dt.date, seed: int) -> pd.DataFrame:
    """At most REPORT_SAMPLE_ROWS of the day's scored users, the population ``feature_drift`` measured.

    Drawn in DuckDB on the keys and the seed alone (as the training sample is), then joined to the
    features: the same users every time, and only they reach pandas.
    """
    return con.execute(
        f"WITH chosen AS (SELECT user_id, snapshot_date FROM {SCORES_TABLE} WHERE snapshot_date = ? "
        f"ORDER BY hash(user_id, snapshot_date, {int(seed)}) LIMIT {int(REPORT_SAMPLE_ROWS)}) "
        f"SELECT {', '.join(f'f.{c}' for c in FEATURE_COLUMNS)} FROM chosen "
        "JOIN marts.fct_user_features AS f USING (user_id, snapshot_date)",
        [day],
    ).df()


def _drift_result(check: str, value: float, column: str, settings: Settings) -> dg.AssetCheckResult:
    outcome = verdict(value, settings.psi_warn, settings.psi_fail)
    return dg.AssetCheckResult(
        check_name=check,
        passed=outcome == "pass",
        severity=dg.AssetCheckSeverity.ERROR if outcome == "fail" else dg.AssetCheckSeverity.WARN,
        description=f"largest PSI {value:.3f} ({column}); warn at {settings.psi_warn}, fail at {settings.psi_fail}",
        metadata={"psi": value, "column": column, "verdict": outcome},
    )


def _psi_table(psi_by_feature: dict[str, float], settings: Settings) -> dg.MetadataValue:
    """Both drift assets show the same table: each feature's PSI and what the checks make of it."""
    table = pd.Series(psi_by_feature).sort_values(ascending=False).to_frame("psi")
    table["verdict"] = [verdict(v, settings.psi_warn, settings.psi_fail) for v in table["psi"]]
    return dg.MetadataValue.md(table.round(4).to_markdown())


@functools.cache
def _platform_psi_method() -> str:
    """Evidently finds a stat test by name, so the platform's PSI is registered once per process.

    The test does not measure the samples it is handed: it returns the column's PSI over the whole
    day from ``_DAY_PSI`` (the Series is named after its column), so a sample cannot move the
    number or, near a threshold, the verdict.
    """
    from evidently.legacy.calculations.stattests import StatTest, register_stattest
    from evidently.legacy.core import ColumnType

    def platform_psi(reference: pd.Series, current: pd.Series, feature_type, threshold: float) -> tuple[float, bool]:
        value = _DAY_PSI.get()[current.name]
        return value, value >= threshold

    register_stattest(
        StatTest(
            name=PLATFORM_PSI,
            display_name="PSI over the whole day (training-reference deciles; the plots show a sample)",
            allowed_feature_types=[ColumnType.Numerical, ColumnType.Categorical],
        ),
        platform_psi,
    )
    return PLATFORM_PSI


def drift_snapshot(reference: pd.DataFrame, current: pd.DataFrame, day_psi: dict[str, float], warn: float):
    """Evidently's data-drift report of the features, scored and judged as the drift checks score and judge.

    ``reference`` and ``current`` are samples, there to be plotted; each feature's drift score is
    its ``day_psi``, the PSI of the whole day against the whole reference that ``feature_drift``
    stored, and "Detected" means at or above ``warn``, where the check stops passing. The dataset
    counts as drifted from one drifted feature, as the check judges its largest PSI.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(
        numerical_columns=list(NUMERIC_FEATURES), categorical_columns=list(CATEGORICAL_FEATURES)
    )
    preset = DataDriftPreset(
        columns=list(FEATURE_COLUMNS),
        method=_platform_psi_method(),
        threshold=warn,
        drift_share=1 / len(FEATURE_COLUMNS),
    )
    token = _DAY_PSI.set(day_psi)
    try:
        return Report([preset]).run(
            current_data=Dataset.from_pandas(current[list(FEATURE_COLUMNS)], data_definition=definition),
            reference_data=Dataset.from_pandas(reference[list(FEATURE_COLUMNS)], data_definition=definition),
        )
    finally:
        _DAY_PSI.reset(token)


def snapshot_psi(snapshot) -> dict[str, float]:
    """Each feature's drift score as the report shows it."""
    return {
        m["config"]["column"]: float(m["value"])
        for m in snapshot.dict()["metrics"]
        if m["metric_name"].startswith("ValueDrift")
    }


@dg.asset(
    group_name="monitor",
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool="duckdb",
    deps=[churn_scores, production_model],
    kinds={"python", "duckdb"},
    check_specs=[
        dg.AssetCheckSpec(
            FEATURE_DRIFT_CHECK,
            asset="feature_drift",
            description="Every feature's PSI on the latest day is below the warning threshold (CHURNOPS_PSI_WARN); at or above CHURNOPS_PSI_FAIL the check fails as an error.",
        ),
        dg.AssetCheckSpec(
            PREDICTION_DRIFT_CHECK,
            asset="feature_drift",
            description="The PSI of the churn probabilities on the latest day is below the thresholds, likewise.",
        ),
    ],
    description="Daily PSI of every feature and of the churn probability between the day's scored "
    "population and the training reference (table monitor.feature_drift).",
)
def feature_drift(context: dg.AssetExecutionContext, warehouse: Warehouse, registry: ModelRegistry):
    settings = get_settings()
    champion = registry.champion()
    reference = registry.reference(champion.version)
    reference_scores = pd.Series(
        registry.load(champion.version).predict_proba(reference[list(FEATURE_COLUMNS)])[:, 1], name=PREDICTION
    )
    bins = [column_bins(reference[c], c) for c in FEATURE_COLUMNS] + [column_bins(reference_scores, PREDICTION)]
    start, end = context.partition_time_window.start.date(), context.partition_time_window.end.date()
    population = (
        f"(SELECT f.*, s.{PREDICTION} FROM marts.fct_user_features AS f JOIN {SCORES_TABLE} AS s "
        f"USING (user_id, snapshot_date) WHERE snapshot_date >= DATE '{start}' AND snapshot_date < DATE '{end}')"
    )
    with warehouse.get_connection() as con:
        drift = psi_by_day(con, population, bins)
        drift["is_prediction"] = drift["column_name"] == PREDICTION
        drift["model_version"] = int(champion.version)
        con.execute("CREATE SCHEMA IF NOT EXISTS monitor")
        con.execute(
            f"CREATE TABLE IF NOT EXISTS {DRIFT_TABLE} (snapshot_date DATE, column_name VARCHAR, psi DOUBLE, "
            "is_prediction BOOLEAN, model_version INTEGER)"
        )
        con.register("drift", drift)
        con.execute("BEGIN TRANSACTION")
        con.execute(f"DELETE FROM {DRIFT_TABLE} WHERE snapshot_date >= ? AND snapshot_date < ?", [start, end])
        con.execute(
            f"INSERT INTO {DRIFT_TABLE} SELECT snapshot_date, column_name, psi, is_prediction, model_version FROM drift"
        )
        con.execute("COMMIT")
    if drift.empty:
        raise dg.Failure(
            description=f"no scored users between {start} and {end - dt.timedelta(days=1)}: materialize churn_scores first"
        )
    day = drift["snapshot_date"].max()
    values = drift[drift["snapshot_date"] == day].set_index("column_name")["psi"].to_dict()
    day = pd.Timestamp(day).date()
    features = {c: v for c, v in values.items() if c != PREDICTION}
    worst = max(features, key=features.get)
    yield dg.MaterializeResult(
        metadata={
            "snapshot_date": str(day),
            "max_feature_psi": features[worst],
            "most_drifted_feature": worst,
            "prediction_psi": values[PREDICTION],
            "psi_by_feature": _psi_table(features, settings),
        }
    )
    yield _drift_result(FEATURE_DRIFT_CHECK, features[worst], worst, settings)
    yield _drift_result(PREDICTION_DRIFT_CHECK, values[PREDICTION], PREDICTION, settings)


@dg.asset(
    group_name="monitor",
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool="duckdb",
    deps=[feature_drift],
    kinds={"evidently", "html"},
    description="Evidently's data-drift report (HTML) of the latest day in the run against the "
    "reference feature_drift measured it with, saved under reports/ and linked (served by `make up`). "
    "Its drift scores are the numbers feature_drift stored for that day, the platform's PSI over the "
    "whole day; its plots are of fixed-seed samples of at most "
    f'{REPORT_SAMPLE_ROWS:,} rows of the day and of the reference. "Detected" means at or above '
    "CHURNOPS_PSI_WARN, where the drift check stops passing. Each feature's PSI and verdict (pass, "
    "warn, fail) as metadata.",
)
def drift_report(
    context: dg.AssetExecutionContext, warehouse: Warehouse, registry: ModelRegistry
) -> dg.MaterializeResult:
    settings = get_settings()
    day = context.partition_time_window.end.date() - dt.timedelta(days=1)
    with warehouse.get_connection() as con:
        stored = con.execute(
            f"SELECT column_name, psi, model_version FROM {DRIFT_TABLE} WHERE snapshot_date = ? AND NOT is_prediction",
            [day],
        ).df()
        current = _day_sample(con, day, settings.seed)
    if stored.empty or current.empty:
        raise dg.Failure(description=f"no drift measured on {day}: materialize churn_scores and feature_drift first")
    version = int(stored["model_version"].iloc[0])
    reference = registry.reference_sample(version, REPORT_SAMPLE_ROWS, settings.seed)
    day_psi = stored.set_index("column_name")["psi"].to_dict()
    snapshot = drift_snapshot(reference, current, day_psi, settings.psi_warn)
    path = settings.reports_dir / f"drift_report_{day}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(path))
    features = snapshot_psi(snapshot)
    verdicts = {c: verdict(v, settings.psi_warn, settings.psi_fail) for c, v in features.items()}
    worst = max(features, key=features.get)
    return dg.MaterializeResult(
        metadata={
            "snapshot_date": str(day),
            "model_version": version,
            "max_feature_psi": features[worst],
            "most_drifted_feature": worst,
            "verdict": verdicts[worst],
            "drifted_features": dg.MetadataValue.json(sorted(c for c, v in verdicts.items() if v != "pass")),
            "psi_by_feature": _psi_table(features, settings),
            "report": dg.MetadataValue.url(f"{Surfaces.from_env().reports_url}/{path.name}"),
            "report_path": dg.MetadataValue.path(str(path)),
        }
    )


@dg.asset(
    group_name="monitor",
    deps=[churn_scores, LABELS_KEY],
    pool="duckdb",
    kinds={"python", "duckdb"},
    check_specs=[
        dg.AssetCheckSpec(
            PERFORMANCE_CHECK,
            asset="model_performance",
            description="Realised ROC-AUC of the latest labelled scored day is within CHURNOPS_MAX_AUC_DROP of the model's holdout ROC-AUC.",
        )
    ],
    description="What the scores were worth: for every scored day whose 30-day labels exist, the "
    "realised ROC-AUC, precision and recall next to the scoring model's holdout ROC-AUC (table monitor.model_performance).",
)
def model_performance(context: dg.AssetExecutionContext, warehouse: Warehouse, registry: ModelRegistry):
    settings = get_settings()
    with warehouse.get_connection() as con:
        performance = performance_by_day(con, SCORES_TABLE, LABELS_RELATION, settings.decision_threshold).df()
        holdout_auc = {
            int(v): float(registry.client().get_model_version(registry.model_name, str(v)).tags.get("roc_auc", "nan"))
            for v in performance["model_version"].unique()
        }
        performance["holdout_roc_auc"] = performance["model_version"].map(holdout_auc)
        con.execute("CREATE SCHEMA IF NOT EXISTS monitor")
        con.register("performance", performance)
        con.execute(f"CREATE OR REPLACE TABLE {PERFORMANCE_TABLE} AS SELECT * FROM performance")
    if performance.empty:
        yield dg.MaterializeResult(metadata={"labelled_days": 0})
        yield dg.AssetCheckResult(check_name=PERFORMANCE_CHECK, passed=True, description="no scored day has labels yet")
        return
    latest = performance.sort_values("snapshot_date").iloc[-1]
    drop = latest["holdout_roc_auc"] - latest["roc_auc"]
    yield dg.MaterializeResult(
        metadata={
            "labelled_days": len(performance),
            "latest_labelled_day": str(latest["snapshot_date"]),
            "realised_roc_auc": float(latest["roc_auc"]),
            "holdout_roc_auc": float(latest["holdout_roc_auc"]),
            "recent": dg.MetadataValue.md(performance.tail(10).round(4).to_markdown(index=False)),
        }
    )
    yield dg.AssetCheckResult(
        check_name=PERFORMANCE_CHECK,
        passed=bool(drop <= settings.max_auc_drop),
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"{pd.Timestamp(latest['snapshot_date']).date()}: realised ROC-AUC {latest['roc_auc']:.4f} vs holdout "
        f"{latest['holdout_roc_auc']:.4f} (version {latest['model_version']}); allowed drop {settings.max_auc_drop}",
        metadata={"auc_drop": float(drop)},
    )
