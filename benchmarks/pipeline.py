"""What the platform costs at a given scale, and what the same features cost the "notebook way".

Measures, not asserts: speed depends on the machine and on whatever else runs on it, so no test
checks a number. One run on a fresh data dir:

1. materializes the whole graph over the synthetic history in one Dagster run and prints each
   step's wall time (from the run's event log), the assets it wrote with their row counts, and
   the peak memory of this process and of its dbt subprocesses;
2. reads ``raw.events`` and ``raw.users`` from the warehouse into pandas and computes
   ``fct_user_features`` with pandas alone, timed, with its peak heap from tracemalloc;
3. checks that both feature tables hold the same rows and values (exits 1 if not), so the
   ratio compares two ways of computing the same thing.

    uv run python benchmarks/pipeline.py [--users 10000] [--days 120] [--seed 42] [--json out.json]

The default data dir is a fresh temporary folder, deleted at the end unless the check fails.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

START_DATE = dt.date(2026, 7, 1)
TOLERANCE = 1e-3
KEYS = ["user_id", "snapshot_date"]
ENGAGEMENT_EVENTS = ["login", "lesson_view", "quiz_attempt", "video_minutes", "support_ticket"]
WINDOWS = (7, 14, 30)
FEATURES = [
    "active_days_7d", "active_days_14d", "active_days_30d",
    "engagement_events_7d", "engagement_events_14d", "engagement_events_30d",
    "lesson_views_7d", "lesson_views_14d", "lesson_views_30d",
    "quiz_attempts_7d", "quiz_attempts_30d",
    "video_minutes_7d", "video_minutes_14d", "video_minutes_30d",
    "engagement_trend_7d_30d", "lesson_trend_7d_30d",
    "days_since_last_activity", "tenure_days", "plan", "acquisition_channel",
    "payments_30d", "failed_payments_30d", "days_since_last_payment", "support_tickets_30d",
]
"""fct_user_features' columns after the keys, in its order."""


def configure(args: argparse.Namespace, data_dir: Path) -> None:
    """The environment comes first: churn_assets reads it when imported (partition calendar, resources).

    The warehouse and BentoML paths are pinned inside the data dir because ``make`` exports the
    developer's own, and a benchmark must never write there.
    """
    from churn_assets.settings import TELEMETRY_OFF

    os.environ.update(
        {
            "CHURNOPS_DATA_DIR": str(data_dir),
            "CHURNOPS_WAREHOUSE": str(data_dir / "warehouse.duckdb"),
            "BENTOML_HOME": str(data_dir / "bentoml"),
            "CHURNOPS_USERS": str(args.users),
            "CHURNOPS_HISTORY_DAYS": str(args.days),
            "CHURNOPS_SEED": str(args.seed),
            "CHURNOPS_START_DATE": START_DATE.isoformat(),
            "CHURNOPS_SOURCE": "synthetic",
            **TELEMETRY_OFF,
        }
    )


def ensure_manifest() -> None:
    """The dbt assets are defined from the manifest, which ``make install`` writes."""
    from churn_assets.settings import DBT_PROJECT_DIR

    if not (DBT_PROJECT_DIR / "target" / "manifest.json").exists():
        dbt = Path(sys.executable).with_name("dbt")
        subprocess.run([str(dbt), "parse", "--quiet"], cwd=DBT_PROJECT_DIR, check=True)


def peak_rss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


# --- the platform -------------------------------------------------------------------------------


def materialize(start: dt.date, end: dt.date):
    """The whole graph in one run; returns the result and the run's event log."""
    import dagster as dg

    from churn_assets.cli import materialize_history
    from churn_assets.resources import build_resources
    from churn_assets.settings import Settings

    settings = Settings.from_env()
    instance = dg.DagsterInstance.ephemeral()
    result = materialize_history(start, end, "*", resources=build_resources(settings), instance=instance)
    return result, instance.all_logs(result.run_id), settings.warehouse_path


def step_stats(logs) -> tuple[list[dict], float]:
    """Per step: wall time from STEP_START to its end, and each asset it wrote with its row count.

    Timestamps live on the event log entries (DagsterEvent has none). A partitioned asset run
    over a range reports one materialization per partition with the same metadata, hence a dict.
    """
    from dagster import DagsterEventType

    steps: dict[str, dict] = {}
    for entry in logs:
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        step = steps.setdefault(event.step_key, {"step": event.step_key, "status": "started", "assets": {}})
        if event.event_type == DagsterEventType.STEP_START:
            step["start"] = entry.timestamp
        elif event.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
            step["seconds"] = entry.timestamp - step["start"]
            step["status"] = "ok" if event.event_type == DagsterEventType.STEP_SUCCESS else "FAILED"
        elif event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
            materialization = event.event_specific_data.materialization
            rows = materialization.metadata.get("dagster/row_count")
            step["assets"][materialization.asset_key.to_user_string()] = rows.value if rows else None
    ordered = sorted((s for s in steps.values() if "start" in s), key=lambda s: s["start"])
    for step in ordered:
        del step["start"]
    return ordered, logs[-1].timestamp - logs[0].timestamp


def print_steps(steps: list[dict], run_seconds: float) -> None:
    print(f"\n{'step':<20} {'seconds':>8}  assets (rows)")
    for step in steps:
        assets = ", ".join(f"{name} ({rows:,})" if rows is not None else name for name, rows in step["assets"].items())
        status = "" if step["status"] == "ok" else f"  [{step['status']}]"
        print(f"{step['step']:<20} {step.get('seconds', float('nan')):8.1f}  {assets}{status}")
    print(f"{'whole run':<20} {run_seconds:8.1f}")


# --- the notebook way ---------------------------------------------------------------------------


def read_raw(warehouse: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return con.sql("SELECT * FROM raw.events").df(), con.sql("SELECT * FROM raw.users").df()


def latest_load(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """One row per key, the most recently loaded, as the staging models keep it."""
    return frame.sort_values("_loaded_at", kind="stable").drop_duplicates(key, keep="last")


def daily_activity(events: pd.DataFrame) -> pd.DataFrame:
    """int_user_daily_activity: per user and day with any event (payments too), counts and minutes."""
    events = latest_load(events, "event_id")
    events = events.assign(
        event_type=events["event_type"].str.strip().str.lower(),
        activity_date=events["event_ts"].dt.normalize(),
    )
    per_type = events.groupby(["user_id", "activity_date", "event_type"])["value"].agg(["size", "sum"])
    counts = per_type["size"].unstack(fill_value=0)
    counts = counts.reindex(columns=sorted({*ENGAGEMENT_EVENTS, "payment", "payment_failed"}), fill_value=0)
    return pd.DataFrame(
        {
            "engagement_events": counts[ENGAGEMENT_EVENTS].sum(axis=1),
            "lesson_views": counts["lesson_view"],
            "quiz_attempts": counts["quiz_attempt"],
            "video_minutes": per_type["sum"].unstack(fill_value=0.0).get("video_minutes", 0.0),
            "support_tickets": counts["support_ticket"],
            "payments": counts["payment"],
            "failed_payments": counts["payment_failed"],
        }
    ).fillna({"video_minutes": 0.0})


def dense_grid(daily: pd.DataFrame) -> pd.DataFrame:
    """Every (user, day) from the first to the last day with data; days without events are zeros."""
    dates = daily.index.get_level_values("activity_date")
    days = pd.date_range(dates.min(), dates.max(), freq="D")
    users = daily.index.get_level_values("user_id").unique()
    index = pd.MultiIndex.from_product([users, days], names=KEYS)
    grid = daily.rename_axis(KEYS).reindex(index, fill_value=0)
    return grid.assign(active_days=(grid["engagement_events"] > 0).astype(int))


def days_since(grid: pd.DataFrame, happened: pd.Series) -> pd.Series:
    """Days from the user's latest day on which ``happened`` was true, up to each day (NaN if none)."""
    day = pd.Series(grid.index.get_level_values("snapshot_date"), index=grid.index)
    latest = day.where(happened).groupby(level="user_id").ffill()
    return (day - latest).dt.days


def trend(last_7: pd.Series, last_30: pd.Series) -> pd.Series:
    """Daily rate of the last 7 days over that of the last 30."""
    return ((last_7 / 7) / (last_30 / 30)).round(4)


def notebook_features(events: pd.DataFrame, users: pd.DataFrame) -> pd.DataFrame:
    """fct_user_features in pandas: rolling windows that include the snapshot day, on a dense grid."""
    grid = dense_grid(daily_activity(events))
    per_user = grid.groupby(level="user_id")
    windows = pd.concat(
        {days: per_user.rolling(days, min_periods=1).sum().droplevel(0) for days in WINDOWS}, axis=1
    )
    f = pd.DataFrame({f"{column}_{days}d": windows[days][column] for days in WINDOWS for column in grid.columns})
    f["days_since_last_activity"] = days_since(grid, grid["active_days"] > 0)
    f["days_since_last_payment"] = days_since(grid, grid["payments"] > 0).fillna(365).clip(upper=365)
    f = f[f["active_days_30d"] > 0]

    for column in ("video_minutes_7d", "video_minutes_14d", "video_minutes_30d"):
        f[column] = f[column].round(1)
    f["engagement_trend_7d_30d"] = trend(f["engagement_events_7d"], f["engagement_events_30d"])
    f["lesson_trend_7d_30d"] = trend(f["lesson_views_7d"], f["lesson_views_30d"]).where(f["lesson_views_30d"] > 0, 1.0)

    users = latest_load(users, "user_id")
    users = users.assign(
        plan=users["plan"].str.strip().str.lower(),
        acquisition_channel=users["acquisition_channel"].str.strip().str.lower(),
    )
    f = f.reset_index().merge(users[["user_id", "signup_date", "plan", "acquisition_channel"]], on="user_id")
    f["tenure_days"] = (f["snapshot_date"] - pd.to_datetime(f["signup_date"])).dt.days
    counts = [c for c in FEATURES if c not in {"plan", "acquisition_channel"} and not c.startswith(("video", "lesson_trend", "engagement_trend"))]
    return f.astype({c: int for c in counts})[KEYS + FEATURES]


def run_notebook(warehouse: Path) -> tuple[pd.DataFrame, dict]:
    """Times the read and the computation apart; peak heap (tracemalloc) over both."""
    tracemalloc.start()
    started = time.perf_counter()
    events, users = read_raw(warehouse)
    read = time.perf_counter()
    features = notebook_features(events, users)
    done = time.perf_counter()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return features, {
        "read_seconds": read - started,
        "compute_seconds": done - read,
        "seconds": done - started,
        "peak_heap_mb": peak / 2**20,
        "events": len(events),
    }


# --- the cross-check ----------------------------------------------------------------------------


def read_dbt_features(warehouse: Path) -> pd.DataFrame:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return con.sql("SELECT * FROM marts.fct_user_features").df()


def mismatches(ours: pd.DataFrame, dbt: pd.DataFrame, limit: int = 10) -> list[str]:
    """Rows only one side has, then feature values that differ by more than the tolerance."""
    if list(ours.columns) != list(dbt.columns):
        return [f"columns differ: pandas {list(ours.columns)} vs dbt {list(dbt.columns)}"]
    both = ours.merge(dbt, on=KEYS, how="outer", suffixes=("_pandas", "_dbt"), indicator=True)
    problems = [
        f"user {row.user_id} on {row.snapshot_date:%Y-%m-%d}: only in {'pandas' if row._merge == 'left_only' else 'dbt'}"
        for row in both[both["_merge"] != "both"].head(limit).itertuples()
    ]
    both = both[both["_merge"] == "both"]
    numeric = dbt.select_dtypes("number").columns.drop("user_id")
    for column in FEATURES:
        left, right = both[f"{column}_pandas"], both[f"{column}_dbt"]
        if column in numeric:
            differs = ~((left - right).abs() <= TOLERANCE)
        else:
            differs = left != right
        problems += [
            f"user {row.user_id} on {row.snapshot_date:%Y-%m-%d}: {column} pandas={row[f'{column}_pandas']} dbt={row[f'{column}_dbt']}"
            for _, row in both[differs].head(limit).iterrows()
        ]
    return problems[:limit]


# --- the report ---------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=120, help="days of history, from %s" % START_DATE)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--data-dir", type=Path, help="default: a fresh temporary folder, removed if the check passes")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    data_dir = (args.data_dir or Path(tempfile.mkdtemp(prefix="churnops-bench-"))).resolve()
    configure(args, data_dir)
    ensure_manifest()
    end = START_DATE + dt.timedelta(days=args.days - 1)
    print(f"{args.users:,} users, {START_DATE} .. {end} ({args.days} days), seed {args.seed}, data in {data_dir}", flush=True)

    result, logs, warehouse = materialize(START_DATE, end)
    steps, run_seconds = step_stats(logs)
    peak_self, peak_children = peak_rss_mb(resource.RUSAGE_SELF), peak_rss_mb(resource.RUSAGE_CHILDREN)
    print_steps(steps, run_seconds)
    print(f"peak RSS: this process {peak_self:,.0f} MB, largest dbt subprocess {peak_children:,.0f} MB")
    if not result.success:
        print("the run FAILED; nothing to compare", file=sys.stderr)
        return 1
    dbt_seconds = sum(s["seconds"] for s in steps if s["step"].startswith("dbt_"))

    print("\nnotebook way: pandas from raw.events and raw.users ...", flush=True)
    ours, notebook = run_notebook(warehouse)
    problems = mismatches(ours, read_dbt_features(warehouse))
    rows = len(ours)
    print(f"read {notebook['events']:,} events in {notebook['read_seconds']:.1f} s, "
          f"features in {notebook['compute_seconds']:.1f} s, peak heap {notebook['peak_heap_mb']:,.0f} MB (tracemalloc)")
    if problems:
        print("pandas and dbt features DISAGREE:\n  " + "\n  ".join(problems))
    else:
        print(f"pandas and dbt features agree on {rows:,} rows")

    ratios = {"vs_dbt_steps": notebook["seconds"] / dbt_seconds, "vs_whole_run": notebook["seconds"] / run_seconds}
    print(f"\n=== summary: {args.users:,} users x {args.days} days, {notebook['events']:,} events, {rows:,} feature rows")
    print(f"whole graph        {run_seconds:7.1f} s   peak RSS {peak_self:,.0f} MB (+ dbt {peak_children:,.0f} MB)")
    print(f"dbt steps (dbt_*)  {dbt_seconds:7.1f} s   (dbt build: models and their tests)")
    print(f"pandas, read+build {notebook['seconds']:7.1f} s   peak heap {notebook['peak_heap_mb']:,.0f} MB")
    print(f"pandas / dbt steps {ratios['vs_dbt_steps']:7.2f}x   pandas / whole graph {ratios['vs_whole_run']:.2f}x")
    print(f"cross-check        {'passed' if not problems else 'FAILED'}")

    if args.json:
        args.json.write_text(json.dumps({
            "users": args.users, "days": args.days, "seed": args.seed, "steps": steps,
            "run_seconds": run_seconds, "dbt_seconds": dbt_seconds,
            "peak_rss_mb": {"self": peak_self, "children": peak_children},
            "notebook": notebook, "ratios": ratios, "feature_rows": rows, "mismatches": problems,
        }, indent=2))
    if problems:
        print(f"data kept in {data_dir}", file=sys.stderr)
        return 1
    if args.data_dir is None:
        shutil.rmtree(data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
