"""What the platform costs at a given scale, and what the same features cost the "notebook way".

It measures and asserts nothing about speed, which depends on the machine and whatever else runs
on it. One run on a fresh data dir:

1. materializes the whole graph over the synthetic history (ending the day before yesterday) in
   one Dagster run and prints each step's wall time (from the run's event log), the assets it
   wrote with their row counts, and the peak RSS of the whole process tree (this process and every
   child, dbt included, sampled together); then the training and scoring times, the scoring
   throughput and both candidates' holdout metrics;
2. runs the daily increment: yesterday through raw data, features, scores and drift, one run, as
   the automation brings up each night;
3. unless ``--no-cross-check``: reads ``raw.events`` and ``raw.users`` into pandas, computes
   ``fct_user_features`` with pandas alone (a dense user x day grid with rolling sums), timed, and
   checks that pandas and dbt produce the same rows and values; exits 1 if they disagree.

    uv run python benchmarks/pipeline.py [--users 10000] [--days 120] [--seed 42] [--json out.json]

The JSON holds ``users``, ``days``, ``events``, ``feature_rows``, ``wall_s``, ``peak_rss_mb``,
``step_seconds``, ``daily_increment_s`` and the details printed.
The run's own output (Dagster's log, dbt's) goes to ``run.log`` in the data dir. The default data
dir is a fresh temporary folder, deleted at the end unless the run or the check failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self

import duckdb
import pandas as pd
import psutil

TOLERANCE = 1e-3
NIGHTLY_ASSETS = (
    "raw_users",
    "staging/stg_users",
    "raw_events",
    "staging/stg_events",
    "intermediate/int_user_daily_activity",
    "marts/fct_user_features",
    "churn_scores",
    "feature_drift",
    "drift_report",
)
"""What one night brings up to date, as automation runs it: raw data to features, scores and drift."""
SAMPLE_SECONDS = 0.25
KEYS = ["user_id", "snapshot_date"]
ENGAGEMENT_EVENTS = ["login", "lesson_view", "quiz_attempt", "video_minutes", "support_ticket"]
EVENT_TYPES = [*ENGAGEMENT_EVENTS, "payment", "payment_failed"]
WINDOWED = {
    7: ["active_days", "engagement_events", "lesson_views", "quiz_attempts", "video_minutes"],
    14: ["active_days", "engagement_events", "lesson_views", "video_minutes"],
    30: [
        "active_days",
        "engagement_events",
        "lesson_views",
        "quiz_attempts",
        "video_minutes",
        "payments",
        "failed_payments",
        "support_tickets",
    ],
}
"""Daily columns summed over the last N days (snapshot day included), named ``<column>_<N>d``."""
FEATURES = [
    "active_days_7d",
    "active_days_14d",
    "active_days_30d",
    "engagement_events_7d",
    "engagement_events_14d",
    "engagement_events_30d",
    "lesson_views_7d",
    "lesson_views_14d",
    "lesson_views_30d",
    "quiz_attempts_7d",
    "quiz_attempts_30d",
    "video_minutes_7d",
    "video_minutes_14d",
    "video_minutes_30d",
    "engagement_trend_7d_30d",
    "lesson_trend_7d_30d",
    "days_since_last_activity",
    "tenure_days",
    "plan",
    "acquisition_channel",
    "payments_30d",
    "failed_payments_30d",
    "days_since_last_payment",
    "support_tickets_30d",
]
"""fct_user_features' columns after the keys, in its order."""


def history(days: int) -> tuple[dt.date, dt.date]:
    """The history ends the day before yesterday, so yesterday is a real partition for the daily increment."""
    end = dt.date.today() - dt.timedelta(days=2)
    return end - dt.timedelta(days=days - 1), end


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
            "CHURNOPS_START_DATE": history(args.days)[0].isoformat(),
            "CHURNOPS_SOURCE": "synthetic",
            **TELEMETRY_OFF,
        }
    )


def parse_dbt_project() -> None:
    """Parses the dbt project in this environment before the clock starts, as a deployment does.

    dbt's partial parsing holds only while the profile renders the same, and the profile reads
    the warehouse path from the environment: parsed elsewhere, every dbt step parses afresh.
    """
    from churn_assets.settings import DBT_PROJECT_DIR, Settings

    dbt = Path(sys.executable).with_name("dbt")
    env = {**os.environ, **Settings.from_env().subprocess_env()}
    subprocess.run([str(dbt), "parse", "--quiet"], cwd=DBT_PROJECT_DIR, env=env, check=True)


class TreeMemory:
    """Peak resident memory of this process and all its descendants together (dbt, ONNX threads
    are in-process), sampled every SAMPLE_SECONDS: what the machine must really hold."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for process in [me, *me.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                except psutil.Error:
                    continue
            self.peak_mb = max(self.peak_mb, total / 2**20)
            self._stop.wait(SAMPLE_SECONDS)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def output_to(path: Path) -> Iterator[None]:
    """Sends stdout and stderr, this process's and its children's (Dagster's log, dbt's), to a file."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with path.open("ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, original in enumerate(saved, start=1):
                os.dup2(original, fd)
                os.close(original)


# --- the platform -------------------------------------------------------------------------------


def materialize(start: dt.date, end: dt.date, log: Path, instance, selection="*"):
    """One run over the partition range; returns the result, the run's event log and the warehouse path."""
    from churn_assets.cli import materialize_history
    from churn_assets.resources import build_resources
    from churn_assets.settings import Settings

    settings = Settings.from_env()
    with output_to(log):
        result = materialize_history(start, end, selection, resources=build_resources(settings), instance=instance)
    return result, instance.all_logs(result.run_id), settings.warehouse_path


def nightly_selection():
    import dagster as dg

    return dg.AssetSelection.assets(*(dg.AssetKey.from_user_string(key) for key in NIGHTLY_ASSETS))


def step_stats(logs) -> tuple[list[dict], float]:
    """Per step, in start order: wall time from STEP_START to its end, and each asset it wrote.

    Timestamps live on the event log entries (a DagsterEvent has none). An asset run over a
    partition range reports one materialization per partition, all with the same row count.
    Also returns the run's wall time: the span of its event log.
    """
    from dagster import DagsterEventType

    steps: dict[str, dict] = {}
    for entry in logs:
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        step = steps.setdefault(event.step_key, {"step": event.step_key, "status": "not finished", "assets": {}})
        if event.event_type == DagsterEventType.STEP_START:
            step["start"] = entry.timestamp
        elif event.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
            step["seconds"] = entry.timestamp - step["start"]
            step["status"] = "ok" if event.event_type == DagsterEventType.STEP_SUCCESS else "FAILED"
        elif event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
            materialization = event.event_specific_data.materialization
            rows = materialization.metadata.get("dagster/row_count")
            step["assets"][materialization.asset_key.to_user_string()] = rows.value if rows else None
            if "metrics" in materialization.metadata:
                step["metrics"] = materialization.metadata["metrics"].value
    started = sorted((s for s in steps.values() if "start" in s), key=lambda s: s.pop("start"))
    return started, logs[-1].timestamp - logs[0].timestamp


TRAINING_STEPS = ("training_set", "churn_model", "production_model")
SCORING_STEP = "churn_scores"


def model_stats(steps: list[dict]) -> dict:
    """Training (split, both candidates with MLflow logging, the gate) and batch scoring."""
    by_name = {step["step"]: step for step in steps}
    scoring = by_name[SCORING_STEP]
    scored = scoring["assets"][SCORING_STEP]
    return {
        "training_seconds": sum(by_name[name]["seconds"] for name in TRAINING_STEPS),
        "scoring_seconds": scoring["seconds"],
        "scored_rows": scored,
        "scored_rows_per_second": scored / scoring["seconds"],
        "holdout_metrics": by_name["churn_model"].get("metrics", ""),
    }


def print_steps(steps: list[dict], run_seconds: float) -> None:
    print(f"\n{'step':<20} {'seconds':>8}  assets (rows)")
    for step in steps:
        assets = ", ".join(name if rows is None else f"{name} ({rows:,})" for name, rows in step["assets"].items())
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


def clean_text(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    return frame.assign(**{column: frame[column].str.strip().str.lower() for column in columns})


def daily_activity(events: pd.DataFrame) -> pd.DataFrame:
    """Per user and day with any event (payments included): counts per type and video minutes."""
    events = clean_text(latest_load(events, "event_id"), "event_type")
    events["activity_date"] = events["event_ts"].dt.normalize()
    per_day = ["user_id", "activity_date"]
    counts = events.groupby([*per_day, "event_type"]).size().unstack(fill_value=0)
    counts = counts.reindex(columns=EVENT_TYPES, fill_value=0)
    video = events[events["event_type"] == "video_minutes"].groupby(per_day)["value"].sum()
    engagement = counts[ENGAGEMENT_EVENTS].sum(axis=1)
    return pd.DataFrame(
        {
            "active_days": (engagement > 0).astype(int),
            "engagement_events": engagement,
            "lesson_views": counts["lesson_view"],
            "quiz_attempts": counts["quiz_attempt"],
            "video_minutes": video.reindex(counts.index, fill_value=0.0),
            "support_tickets": counts["support_ticket"],
            "payments": counts["payment"],
            "failed_payments": counts["payment_failed"],
        }
    )


def dense_grid(daily: pd.DataFrame) -> pd.DataFrame:
    """Every (user, day) from the first to the last day with data, zeros on days without events."""
    dates = daily.index.get_level_values("activity_date")
    users = daily.index.get_level_values("user_id").unique()
    index = pd.MultiIndex.from_product([users, pd.date_range(dates.min(), dates.max())], names=KEYS)
    return daily.rename_axis(KEYS).reindex(index, fill_value=0)


def window_sums(grid: pd.DataFrame, days: int, columns: list[str]) -> pd.DataFrame:
    sums = grid[columns].groupby(level="user_id").rolling(days, min_periods=1).sum().droplevel(0)
    sums = sums.astype({column: int for column in columns if column != "video_minutes"})
    return sums.add_suffix(f"_{days}d")


def days_since(happened: pd.Series) -> pd.Series:
    """Days from each user's latest day on which ``happened`` holds, as of every day (NaN before the first)."""
    day = happened.index.get_level_values("snapshot_date").to_series(index=happened.index)
    latest = day.where(happened).groupby(level="user_id").ffill()
    return (day - latest).dt.days


def trend(last_7: pd.Series, last_30: pd.Series) -> pd.Series:
    """The daily rate of the last 7 days over that of the last 30."""
    return ((last_7 / 7) / (last_30 / 30)).round(4)


def notebook_features(events: pd.DataFrame, users: pd.DataFrame) -> pd.DataFrame:
    """fct_user_features: per user with an active day in the 30 days ending on each snapshot day."""
    grid = dense_grid(daily_activity(events))
    f = pd.concat([window_sums(grid, days, columns) for days, columns in WINDOWED.items()], axis=1)
    f["days_since_last_activity"] = days_since(grid["active_days"] > 0)
    f["days_since_last_payment"] = days_since(grid["payments"] > 0).fillna(365).clip(upper=365)
    f = f[f["active_days_30d"] > 0].astype({"days_since_last_activity": int, "days_since_last_payment": int})

    video = f.filter(like="video_minutes").columns
    f[video] = f[video].round(1)
    f["engagement_trend_7d_30d"] = trend(f["engagement_events_7d"], f["engagement_events_30d"])
    lesson_trend = trend(f["lesson_views_7d"], f["lesson_views_30d"])
    f["lesson_trend_7d_30d"] = lesson_trend.where(f["lesson_views_30d"] > 0, 1.0)

    users = clean_text(latest_load(users, "user_id"), "plan", "acquisition_channel")
    f = f.reset_index().merge(users[["user_id", "signup_date", "plan", "acquisition_channel"]], on="user_id")
    f["tenure_days"] = (f["snapshot_date"] - f["signup_date"]).dt.days
    return f[KEYS + FEATURES]


def run_notebook(warehouse: Path) -> tuple[pd.DataFrame, dict]:
    """Timed once untraced, then run again under tracemalloc for the peak heap (tracing slows pandas ~3x).

    tracemalloc sees Python objects and NumPy buffers, not DuckDB's own memory.
    """
    started = time.perf_counter()
    events, users = read_raw(warehouse)
    read = time.perf_counter()
    features = notebook_features(events, users)
    done = time.perf_counter()
    n_events = len(events)
    del events, users

    tracemalloc.start()
    notebook_features(*read_raw(warehouse))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return features, {
        "read_seconds": read - started,
        "compute_seconds": done - read,
        "seconds": done - started,
        "peak_heap_mb": peak / 2**20,
        "events": n_events,
    }


# --- the cross-check ----------------------------------------------------------------------------


def read_dbt_features(warehouse: Path) -> pd.DataFrame:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return con.sql("SELECT * FROM marts.fct_user_features").df()


def mismatches(ours: pd.DataFrame, dbt: pd.DataFrame, limit: int = 10) -> list[str]:
    """Rows only one side has, then values that differ (numbers by more than TOLERANCE)."""
    if list(ours.columns) != list(dbt.columns):
        return [f"columns differ: pandas {list(ours.columns)} vs dbt {list(dbt.columns)}"]
    both = ours.merge(dbt, on=KEYS, how="outer", suffixes=("_pandas", "_dbt"), indicator="side")
    sides = {"left_only": "only in pandas", "right_only": "only in dbt", "both": "both"}
    both["side"] = both["side"].cat.rename_categories(sides)

    def at(row: pd.Series) -> str:
        return f"user {row['user_id']} on {row['snapshot_date']:%Y-%m-%d}"

    problems = [f"{at(row)}: {row['side']}" for _, row in both[both["side"] != "both"].head(limit).iterrows()]
    both = both[both["side"] == "both"]
    numeric = set(dbt.select_dtypes("number").columns)
    for column in FEATURES:
        ours_, theirs = both[f"{column}_pandas"], both[f"{column}_dbt"]
        differs = ~((ours_ - theirs).abs() <= TOLERANCE) if column in numeric else ours_ != theirs
        problems += [
            f"{at(row)}: {column} pandas={row[f'{column}_pandas']} dbt={row[f'{column}_dbt']}"
            for _, row in both[differs].head(limit).iterrows()
        ]
    return problems[:limit]


# --- the report ---------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=120, help="days of history, ending the day before yesterday")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--data-dir", type=Path, help="default: a fresh temporary folder, removed if all went well")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument(
        "--no-cross-check",
        action="store_true",
        help="skip the pandas recomputation (it holds the dense user x day grid: ~45 GB at 1M users)",
    )
    return parser.parse_args()


def print_summary(report: dict) -> None:
    print(
        f"\n=== summary: {report['users']:,} users x {report['days']} days, "
        f"{report['events']:,} events, {report['feature_rows']:,} feature rows"
    )
    print(
        f"whole graph          {report['wall_s']:7.1f} s   peak RSS of the process tree {report['peak_rss_mb']:,.0f} MB"
    )
    print(
        f"daily increment      {report['daily_increment_s']:7.1f} s   peak RSS {report['daily_increment_peak_rss_mb']:,.0f} MB"
    )
    print(f"dbt steps            {report['dbt_seconds']:7.1f} s   {', '.join(report['dbt_steps'])} (models and tests)")
    model = report["model"]
    print(f"training             {model['training_seconds']:7.1f} s   training_set + churn_model + production_model")
    print(
        f"scoring              {model['scoring_seconds']:7.1f} s   {model['scored_rows']:,} user-days, "
        f"{model['scored_rows_per_second']:,.0f} user-days/s (exports included)"
    )
    print(f"holdout metrics (both candidates):\n{model['holdout_metrics']}")
    notebook = report["notebook"]
    if notebook is None:
        print("cross-check          skipped")
        return
    print(
        f"pandas, read+compute {notebook['seconds']:7.1f} s   "
        f"peak heap {notebook['peak_heap_mb']:,.0f} MB (tracemalloc)"
    )
    print(f"pandas / dbt steps   {notebook['seconds'] / report['dbt_seconds']:7.2f}x")
    print(f"cross-check          {'FAILED' if report['mismatches'] else 'passed'}")


def count(warehouse: Path, table: str) -> int:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return con.sql(f"SELECT count(*) FROM {table}").fetchall()[0][0]


def main() -> int:
    import dagster as dg

    args = parse_args()
    data_dir = (args.data_dir or Path(tempfile.mkdtemp(prefix="churnops-bench-"))).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    configure(args, data_dir)
    parse_dbt_project()
    start, end = history(args.days)
    log = data_dir / "run.log"
    print(f"{args.users:,} users, {start} .. {end} ({args.days} days), seed {args.seed}, data in {data_dir}")
    print(f"materializing the whole graph (its log: {log}) ...", flush=True)

    instance = dg.DagsterInstance.ephemeral()
    with TreeMemory() as memory:
        result, logs, warehouse = materialize(start, end, log, instance)
    steps, run_seconds = step_stats(logs)
    print_steps(steps, run_seconds)
    print(f"peak RSS of the process tree: {memory.peak_mb:,.0f} MB")
    if not result.success:
        print(f"the run FAILED: see {log}", file=sys.stderr)
        return 1
    dbt_steps = [step for step in steps if step["step"].startswith("dbt_")]
    dbt_seconds = sum(step["seconds"] for step in dbt_steps)
    feature_rows = count(warehouse, "marts.fct_user_features")
    events = count(warehouse, "raw.events")

    night = end + dt.timedelta(days=1)
    print(f"\nthe daily increment: {night} through {', '.join(NIGHTLY_ASSETS)} ...", flush=True)
    with TreeMemory() as night_memory:
        nightly, night_logs, _ = materialize(night, night, log, instance, nightly_selection())
    night_steps, night_seconds = step_stats(night_logs)
    print_steps(night_steps, night_seconds)
    if not nightly.success:
        print(f"the daily increment FAILED: see {log}", file=sys.stderr)
        return 1

    problems: list[str] = []
    notebook = None
    if not args.no_cross_check:
        print("\nthe notebook way: pandas from raw.events and raw.users ...", flush=True)
        ours, notebook = run_notebook(warehouse)
        dbt = read_dbt_features(warehouse)
        print(
            f"read {notebook['events']:,} events in {notebook['read_seconds']:.1f} s, "
            f"features in {notebook['compute_seconds']:.1f} s, "
            f"peak heap {notebook['peak_heap_mb']:,.0f} MB (tracemalloc, in a second run)"
        )
        problems = mismatches(ours, dbt)
        if problems:
            print("pandas and dbt features DISAGREE; first mismatches:\n  " + "\n  ".join(problems))
        else:
            print(f"pandas and dbt features agree on {len(dbt):,} rows")

    report = {
        "users": args.users,
        "days": args.days,
        "seed": args.seed,
        "events": events,
        "feature_rows": feature_rows,
        "wall_s": run_seconds,
        "peak_rss_mb": memory.peak_mb,
        "step_seconds": {step["step"]: step.get("seconds") for step in steps},
        "daily_increment_s": night_seconds,
        "daily_increment_peak_rss_mb": night_memory.peak_mb,
        "daily_increment_step_seconds": {step["step"]: step.get("seconds") for step in night_steps},
        "steps": steps,
        "dbt_steps": [step["step"] for step in dbt_steps],
        "dbt_seconds": dbt_seconds,
        "notebook": notebook,
        "mismatches": problems,
        "model": model_stats(steps),
    }
    print_summary(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    if problems:
        print(f"data kept in {data_dir}", file=sys.stderr)
        return 1
    if args.data_dir is None:
        shutil.rmtree(data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
