"""The feature and label SQL against hand-built rows: dbt's own unit tests, run by real dbt without Dagster.

The cases and their expected rows live beside the models (``unit_tests`` in
``fct_user_features.yml`` and ``fct_churn_labels.yml``), where the dbt docs show them. dbt needs
the models' inputs to exist to know their column types, so the project is first built empty.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb

from churn_assets.ingest.assets import ensure_raw_tables
from churn_assets.settings import DBT_PROJECT_DIR, Settings

UNIT_TESTS = {
    "rolling_windows_end_on_the_snapshot_day_and_start_29_days_before",
    "a_user_is_scored_until_30_quiet_days_and_only_on_days_with_events",
    "failed_payments_count_but_do_not_make_a_day_active",
    "ratios_round_to_4_places_video_minutes_to_a_tenth_and_old_payments_read_365",
    "a_user_churned_when_no_active_day_follows_within_30_days",
}


def _dbt(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        **Settings.from_env().subprocess_env(),
        "CHURNOPS_WAREHOUSE": str(tmp_path / "warehouse.duckdb"),
    }
    command = [
        str(Path(sys.executable).with_name("dbt")),
        *args,
        "--target-path",
        str(tmp_path / "target"),
        "--log-path",
        str(tmp_path / "logs"),
    ]
    return subprocess.run(command, cwd=DBT_PROJECT_DIR, env=env, capture_output=True, text=True, check=False)


def test_every_feature_and_label_unit_test_passes(tmp_path):
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
        ensure_raw_tables(con)
    built = _dbt(tmp_path, "run", "--empty")
    assert built.returncode == 0, built.stdout

    tested = _dbt(tmp_path, "test", "--select", "test_type:unit")

    results = json.loads((tmp_path / "target" / "run_results.json").read_text())["results"]
    outcomes = {r["unique_id"].rsplit(".", 1)[-1]: r["status"] for r in results}
    assert outcomes == dict.fromkeys(UNIT_TESTS, "pass"), tested.stdout
