"""``churn_scores`` (daily) and ``high_risk_users``: the champion applied to every active user.

Scores land in the warehouse (``scores.churn_scores``) for the platform and as a Parquet and CSV
file per day under the data dir for whoever runs the retention campaign. Re-scoring a day
replaces it in both places. Scoring runs the champion's ONNX compilation, the one the service
runs, over the partition window in chunks streamed out of DuckDB and written back in one
transaction, so a backfill of months holds one chunk in memory at a time.
"""

import datetime as dt

import dagster as dg
import pandas as pd

from churn_assets.contract import FEATURE_COLUMNS, RISK_TIERS, risk_tiers
from churn_assets.partitions import daily_partitions
from churn_assets.resources import Warehouse
from churn_assets.score.reasons import REASONS_PER_USER, reason_codes, typical_values
from churn_assets.serve.onnx import churn_probabilities, frame_feeds, load_session
from churn_assets.settings import get_settings
from churn_assets.train.assets import FEATURES_KEY, production_model
from churn_assets.train.registry import ModelRegistry

SCORES_TABLE = "scores.churn_scores"
HIGH_RISK_TABLE = "scores.high_risk_users"
MAX_HIGH_TIER_SHARE = 0.5
SCORE_COLUMNS = ("user_id", "snapshot_date", "churn_probability", "risk_tier", "model_version", "scored_at")
SCORING_CHUNK_ROWS = 200_000
BATCH_THREADS = 2

SCORE_CHECKS = [
    dg.AssetCheckSpec(
        "every_active_user_scored_once",
        asset="churn_scores",
        blocking=True,
        description="Each user in fct_user_features for a scored day has exactly one score.",
    ),
    dg.AssetCheckSpec(
        "probabilities_in_range",
        asset="churn_scores",
        blocking=True,
        description="Every churn_probability is a number in [0, 1].",
    ),
    dg.AssetCheckSpec(
        "risk_tiers_sane",
        asset="churn_scores",
        description=f"Tiers add up to the scored users and at most {MAX_HIGH_TIER_SHARE:.0%} are high risk.",
    ),
]


def _window(context: dg.AssetExecutionContext) -> tuple[dt.date, dt.date]:
    window = context.partition_time_window
    return window.start.date(), window.end.date()


def _export(con, day: dt.date) -> list[str]:
    folder = get_settings().exports_dir / "scores"
    folder.mkdir(parents=True, exist_ok=True)
    daily = f"SELECT {', '.join(SCORE_COLUMNS)} FROM {SCORES_TABLE} WHERE snapshot_date = DATE '{day}' ORDER BY user_id"
    parquet, csv = folder / f"churn_scores_{day}.parquet", folder / f"churn_scores_{day}.csv"
    con.execute(f"COPY ({daily}) TO '{parquet}' (FORMAT parquet)")
    con.execute(f"COPY ({daily}) TO '{csv}' (FORMAT csv, HEADER)")
    return [str(parquet), str(csv)]


def _score_chunks(con, session, start: dt.date, end: dt.date, version: int, thresholds: tuple[float, float]) -> int:
    """Scores the window chunk by chunk into the open transaction; memory follows the chunk, not the window."""
    reader = (
        con.cursor()
        .sql(
            f"SELECT user_id, snapshot_date, {', '.join(FEATURE_COLUMNS)} FROM marts.fct_user_features "
            "WHERE snapshot_date >= ? AND snapshot_date < ?",
            params=[start, end],
        )
        .to_arrow_reader(SCORING_CHUNK_ROWS)
    )
    scored_at = pd.Timestamp.now(tz="UTC").tz_localize(None)
    rows = 0
    for batch in reader:
        features = batch.to_pandas()
        probability = churn_probabilities(session, frame_feeds(features))
        chunk = pd.DataFrame(
            {
                "user_id": features["user_id"],
                "snapshot_date": features["snapshot_date"],
                "churn_probability": probability,
                "risk_tier": risk_tiers(probability, *thresholds),
                "model_version": version,
                "scored_at": scored_at,
            }
        )
        con.execute(f"INSERT INTO {SCORES_TABLE} SELECT {', '.join(SCORE_COLUMNS)} FROM chunk")
        rows += len(chunk)
    return rows


def _score_checks(con, start: dt.date, end: dt.date, tiers: dict[str, int]) -> list[dg.AssetCheckResult]:
    window = f"snapshot_date >= DATE '{start}' AND snapshot_date < DATE '{end}'"
    missing, duplicated, extra = con.execute(
        f"""
        WITH f AS (SELECT user_id, snapshot_date FROM marts.fct_user_features WHERE {window}),
             s AS (SELECT user_id, snapshot_date, count(*) AS n FROM {SCORES_TABLE} WHERE {window} GROUP BY ALL)
        SELECT
            count(*) FILTER (WHERE s.n IS NULL),
            count(*) FILTER (WHERE s.n > 1),
            count(*) FILTER (WHERE f.user_id IS NULL)
        FROM f FULL OUTER JOIN s USING (user_id, snapshot_date)
        """
    ).fetchone()
    out_of_range = con.execute(
        f"SELECT count(*) FROM {SCORES_TABLE} WHERE {window} AND (churn_probability IS NULL "
        "OR isnan(churn_probability) OR NOT churn_probability BETWEEN 0 AND 1)"
    ).fetchone()[0]
    rows = sum(tiers.values())
    high_share = tiers.get("high", 0) / rows if rows else 0.0
    return [
        dg.AssetCheckResult(
            check_name="every_active_user_scored_once",
            passed=missing == duplicated == extra == 0,
            severity=dg.AssetCheckSeverity.ERROR,
            description=f"{missing} active user-days unscored, {duplicated} scored twice, {extra} scored but not active",
        ),
        dg.AssetCheckResult(
            check_name="probabilities_in_range",
            passed=out_of_range == 0,
            severity=dg.AssetCheckSeverity.ERROR,
            description=f"{out_of_range} probabilities outside [0, 1]",
        ),
        dg.AssetCheckResult(
            check_name="risk_tiers_sane",
            passed=set(tiers) <= set(RISK_TIERS) and high_share <= MAX_HIGH_TIER_SHARE,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"tiers {tiers}; high-risk share {high_share:.1%}",
            metadata={"high_share": high_share},
        ),
    ]


@dg.asset(
    group_name="score",
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool="duckdb",
    deps=[FEATURES_KEY, production_model],
    check_specs=SCORE_CHECKS,
    kinds={"python", "duckdb", "parquet", "csv"},
    description="The champion's churn probability and risk tier for every active user, per day "
    "(table scores.churn_scores, and churn_scores_<day>.parquet/.csv under exports/scores).",
)
def churn_scores(context: dg.AssetExecutionContext, warehouse: Warehouse, registry: ModelRegistry):
    settings = get_settings()
    champion = registry.champion()
    if champion is None:
        raise dg.Failure(description=f"{registry.model_name} has no champion yet: materialize production_model first")
    version = int(champion.version)
    session = load_session(registry.onnx(version), threads=BATCH_THREADS)
    start, end = _window(context)
    window = f"snapshot_date >= DATE '{start}' AND snapshot_date < DATE '{end}'"
    with warehouse.get_connection() as con:
        con.execute("CREATE SCHEMA IF NOT EXISTS scores")
        con.execute(
            f"CREATE TABLE IF NOT EXISTS {SCORES_TABLE} (user_id BIGINT, snapshot_date DATE, "
            "churn_probability DOUBLE, risk_tier VARCHAR, model_version INTEGER, scored_at TIMESTAMP)"
        )
        con.execute("BEGIN TRANSACTION")
        con.execute(f"DELETE FROM {SCORES_TABLE} WHERE {window}")
        rows = _score_chunks(
            con, session, start, end, version, (settings.medium_risk_threshold, settings.high_risk_threshold)
        )
        con.execute("COMMIT")
        tiers = dict(
            con.execute(f"SELECT risk_tier, count(*) FROM {SCORES_TABLE} WHERE {window} GROUP BY 1").fetchall()
        )
        checks = _score_checks(con, start, end, tiers)
        days = [
            row[0]
            for row in con.execute(
                f"SELECT DISTINCT snapshot_date FROM {SCORES_TABLE} WHERE {window} ORDER BY 1"
            ).fetchall()
        ]
        exports = [path for day in days for path in _export(con, day)]
        ((mean, (p10, p50, p90)),) = con.execute(
            "SELECT coalesce(avg(churn_probability), 0), coalesce(quantile_cont(churn_probability, [0.1, 0.5, 0.9]), [0, 0, 0]) "
            f"FROM {SCORES_TABLE} WHERE {window}"
        ).fetchall()
    yield dg.MaterializeResult(
        metadata={
            "dagster/row_count": rows,
            "model_version": version,
            "days_scored": len(days),
            "mean_churn_probability": mean,
            "tiers": dg.MetadataValue.json({tier: int(tiers.get(tier, 0)) for tier in RISK_TIERS}),
            "distribution": dg.MetadataValue.md(
                pd.DataFrame({"churn_probability": {"mean": mean, "10%": p10, "50%": p50, "90%": p90}})
                .round(4)
                .to_markdown()
            ),
            "latest_export": dg.MetadataValue.path(exports[-1]) if exports else "none",
        }
    )
    yield from checks


@dg.asset(
    group_name="score",
    deps=[churn_scores],
    pool="duckdb",
    kinds={"python", "duckdb", "csv"},
    description="The intervention list: the highest-risk users of the latest scored day with the "
    f"{REASONS_PER_USER} features that push each score up most (table scores.high_risk_users, exports/high_risk_users.csv).",
)
def high_risk_users(context: dg.AssetExecutionContext, warehouse: Warehouse, registry: ModelRegistry):
    settings = get_settings()
    with warehouse.get_connection() as con:
        latest = con.execute(f"SELECT max(snapshot_date) FROM {SCORES_TABLE}").fetchone()[0]
        if latest is None:
            raise dg.Failure(description="no scores yet: materialize churn_scores first")
        population = con.execute(
            f"SELECT f.*, s.churn_probability, s.risk_tier, s.model_version FROM marts.fct_user_features f "
            f"JOIN {SCORES_TABLE} s USING (user_id, snapshot_date) WHERE snapshot_date = ?",
            [latest],
        ).df()
        top = (
            population[population["risk_tier"] == "high"]
            .sort_values(["churn_probability", "user_id"], ascending=[False, True])
            .head(settings.high_risk_top_n)
        )
        versions = top["model_version"].unique()
        model = registry.load(int(versions[0])) if len(versions) else None
        reasons = reason_codes(model, top, typical_values(population)) if model is not None else []
        listing = pd.DataFrame(
            {
                "user_id": top["user_id"].to_numpy(),
                "snapshot_date": latest,
                "churn_probability": top["churn_probability"].round(4).to_numpy(),
                "plan": top["plan"].to_numpy(),
                "model_version": top["model_version"].to_numpy(),
                **{f"reason_{i + 1}": [r[i] if i < len(r) else None for r in reasons] for i in range(REASONS_PER_USER)},
            }
        )
        con.execute("CREATE SCHEMA IF NOT EXISTS scores")
        con.register("listing", listing)
        con.execute(f"CREATE OR REPLACE TABLE {HIGH_RISK_TABLE} AS SELECT * FROM listing")
    path = get_settings().exports_dir / "high_risk_users.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    listing.to_csv(path, index=False)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(listing),
            "snapshot_date": str(latest),
            "high_risk_users_that_day": int((population["risk_tier"] == "high").sum()),
            "preview": dg.MetadataValue.md(listing.head(10).to_markdown(index=False)),
            "path": dg.MetadataValue.path(str(path)),
        }
    )
