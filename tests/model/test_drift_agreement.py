"""One drift number: the Evidently report scores and judges each feature as the drift check does.

A user once read "Detected" at PSI 0.367 in the report while the check passed with 0.052 on the
same day. Here the report's scores are compared with the check's PSI and its words with the
check's verdicts: on hand-built frames whose answer can be worked out, then through the assets on
a day of each verdict: the small graph's quietest day (pass), its last day (warn), and that day in
a copy of the warehouse with everyone's tenure a year longer (fail). The report plots samples
(its cost must not grow with the users) but shows the whole day's PSI: with a cap below a day's
users, what Evidently is handed stays under the cap and the numbers stay the stored ones.

``snapshot.dict()`` carries each column's score but not the "Detected" / "Not Detected" the report
prints, so those words are read from the report's HTML.
"""

import datetime as dt
import re
import shutil

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest

from churn_assets.contract import FEATURE_COLUMNS
from churn_assets.monitor import assets as monitor
from churn_assets.monitor.assets import DRIFT_TABLE, FEATURE_DRIFT_CHECK, drift_snapshot, snapshot_psi
from churn_assets.monitor.drift import EPSILON, column_bins, psi, psi_by_day, verdict
from churn_assets.score.assets import SCORES_TABLE
from churn_assets.settings import Settings, Surfaces
from tests.conftest import SMALL_GRAPH_DAYS, Platform

DEFAULTS = Settings.from_env()
LAST_DAY = SMALL_GRAPH_DAYS[1]
ROW = re.compile(
    r'"column_name": "(\w+)", "column_type": "\w+", "stattest_name": "[^"]*", '
    r'.*?"data_drift": "(Detected|Not Detected)", "drift_score": ([-+.\deE]+)\}'
)


def _report_rows(html: str) -> dict[str, tuple[str, float]]:
    """Each column's row of the report's drift table: its word and its score (rounded to six decimals)."""
    return {column: (word, float(score)) for column, word, score in ROW.findall(html)}


def _hand_built() -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float]]:
    """1,000 users whose every decile holds 100 of them; the current day moves three columns by a known amount."""
    values = np.arange(1000.0)
    reference = pd.DataFrame({c: values for c in FEATURE_COLUMNS})
    reference["plan"] = ["free"] * 800 + ["pro"] * 200
    current = reference.copy()
    current["tenure_days"] = values + 10_000
    current["video_minutes_7d"] = np.concatenate([values[50:], values[-50:]])
    current["plan"] = ["free"] * 600 + ["pro"] * 400
    expected = dict.fromkeys(FEATURE_COLUMNS, 0.0)
    expected["tenure_days"] = 9 * (EPSILON - 0.1) * np.log(EPSILON / 0.1) + (1 - 0.1) * np.log(1 / 0.1)
    expected["video_minutes_7d"] = (0.05 - 0.1) * np.log(0.05 / 0.1) + (0.15 - 0.1) * np.log(0.15 / 0.1)
    expected["plan"] = (0.6 - 0.8) * np.log(0.6 / 0.8) + (0.4 - 0.2) * np.log(0.4 / 0.2)
    return reference, current, expected


def test_the_report_scores_and_words_are_the_checks_on_a_hand_built_day():
    """The report is handed samples of 100 rows but shows the PSI of all 1,000, which the samples alone would not give."""
    reference, current, expected = _hand_built()
    verdicts = {c: verdict(v, DEFAULTS.psi_warn, DEFAULTS.psi_fail) for c, v in expected.items()}
    assert (verdicts["tenure_days"], verdicts["plan"], verdicts["video_minutes_7d"]) == ("fail", "warn", "pass")
    whole_day = {c: psi(reference[c], current[c]) for c in FEATURE_COLUMNS}
    assert whole_day == pytest.approx(expected, abs=1e-9)
    con = duckdb.connect()
    con.register("day", current.assign(snapshot_date=dt.date(2026, 10, 1)))
    in_sql = psi_by_day(con, "day", [column_bins(reference[c], c) for c in FEATURE_COLUMNS])
    assert whole_day == pytest.approx(in_sql.set_index("column_name")["psi"].to_dict(), abs=1e-9), "the check's own PSI"
    reference_sample, current_sample = reference.sample(100, random_state=0), current.sample(100, random_state=1)
    of_the_samples = {c: psi(reference_sample[c], current_sample[c]) for c in FEATURE_COLUMNS}
    assert of_the_samples["plan"] != pytest.approx(expected["plan"], abs=0.01)

    snapshot = drift_snapshot(reference_sample, current_sample, whole_day, DEFAULTS.psi_warn)

    scores = snapshot_psi(snapshot)
    assert scores == whole_day
    html = snapshot.get_html_str(as_iframe=False)
    rows = _report_rows(html)
    assert {c: word for c, (word, _) in rows.items()} == {
        c: "Not Detected" if v == "pass" else "Detected" for c, v in verdicts.items()
    }
    assert "Dataset Drift is detected" in html
    (drifted,) = [
        m["value"]["count"] for m in snapshot.dict()["metrics"] if m["metric_name"].startswith("DriftedColumnsCount")
    ]
    assert drifted == 2


def _one_verdict(platform: Platform, result: dg.ExecuteInProcessResult, day: dt.date) -> tuple[str, list[str]]:
    """What the check, its stored PSI, the report and the report's metadata say about ``day``: the same."""
    settings = platform.settings
    (check,) = [c for c in result.get_asset_check_evaluations() if c.check_name == FEATURE_DRIFT_CHECK]
    report = result.asset_materializations_for_node("drift_report")[-1]
    metadata = {k: v.value for k, v in report.metadata.items()}
    stored = platform.frame(
        f"SELECT column_name, psi FROM {DRIFT_TABLE} WHERE snapshot_date = DATE '{day}' AND NOT is_prediction"
    ).set_index("column_name")["psi"]
    flagged = sorted(stored[stored >= settings.psi_warn].index)

    path = settings.reports_dir / f"drift_report_{day}.html"
    assert (metadata["snapshot_date"], metadata["report_path"]) == (str(day), str(path))
    assert metadata["report"] == f"{Surfaces.from_env().reports_url}/{path.name}"
    html = path.read_text()
    rows = _report_rows(html)
    assert set(rows) == set(FEATURE_COLUMNS)
    for column, (word, score) in rows.items():
        assert score == pytest.approx(stored[column], abs=5e-7), column
        assert (word == "Detected") == (column in flagged), column
    assert ("Dataset Drift is detected" in html) == bool(flagged)

    assert metadata["drifted_features"] == flagged
    assert metadata["max_feature_psi"] == pytest.approx(check.metadata["psi"].value, abs=1e-9)
    assert metadata["most_drifted_feature"] == check.metadata["column"].value
    assert metadata["verdict"] == check.metadata["verdict"].value
    assert check.passed == (metadata["verdict"] == "pass")
    assert (check.severity == dg.AssetCheckSeverity.ERROR) == (metadata["verdict"] == "fail")
    return metadata["verdict"], flagged


@pytest.fixture(scope="module")
def copy_of_the_graph(small_graph, tmp_path_factory):
    """The small graph's warehouse and registry, copied so that its days can be moved and measured again."""
    source, _ = small_graph
    with pytest.MonkeyPatch.context() as monkeypatch:
        data_dir = tmp_path_factory.mktemp("drift-agreement") / "churnops"
        (data_dir / "mlflow").mkdir(parents=True)
        shutil.copy(source.settings.warehouse_path, data_dir / "warehouse.duckdb")
        shutil.copy(source.settings.mlflow_dir / "mlflow.db", data_dir / "mlflow" / "mlflow.db")
        platform = Platform(data_dir, monkeypatch)
        platform.configure(CHURNOPS_USERS="400")
        yield platform


def _measure(platform: Platform, day: dt.date) -> dg.ExecuteInProcessResult:
    result = platform.materialize(day, day, dg.AssetSelection.assets("feature_drift", "drift_report"))
    assert result.success
    return result


def test_on_a_quiet_day_the_report_detects_nothing_and_the_check_passes(copy_of_the_graph):
    platform = copy_of_the_graph
    quiet_day = platform.frame(
        f"SELECT snapshot_date FROM {DRIFT_TABLE} WHERE NOT is_prediction GROUP BY 1 ORDER BY max(psi) LIMIT 1"
    )["snapshot_date"][0].date()
    assert _one_verdict(platform, _measure(platform, quiet_day), quiet_day) == ("pass", [])


def test_on_the_small_graphs_last_day_both_warn_on_the_same_features(small_graph):
    """400 users are few: a day's deciles move by sampling alone, past the warning threshold for some features."""
    platform, result = small_graph
    outcome, flagged = _one_verdict(platform, result, LAST_DAY)
    assert outcome == "warn" and flagged


def test_the_report_plots_at_most_the_cap_and_still_shows_the_whole_days_numbers(copy_of_the_graph, monkeypatch):
    """A cap of 50 rows on a day of some 400 users: Evidently gets 50 of each, the same 50 every run, and the stored PSI."""
    platform = copy_of_the_graph
    day = LAST_DAY - dt.timedelta(days=1)
    ((users,),) = platform.query(f"SELECT count(*) FROM {SCORES_TABLE} WHERE snapshot_date = DATE '{day}'")
    assert users > 50
    monkeypatch.setattr(monitor, "REPORT_SAMPLE_ROWS", 50)
    handed = []

    def recording(reference, current, day_psi, warn):
        handed.append((reference, current))
        return drift_snapshot(reference, current, day_psi, warn)

    monkeypatch.setattr(monitor, "drift_snapshot", recording)
    _one_verdict(platform, _measure(platform, day), day)
    _measure(platform, day)

    (reference, current), again = handed
    assert (len(reference), len(current)) == (50, 50)
    pd.testing.assert_frame_equal(current, again[1])
    pd.testing.assert_frame_equal(reference, again[0])


def test_on_a_drifted_day_the_report_detects_exactly_what_the_check_fails_on(copy_of_the_graph):
    platform = copy_of_the_graph
    with duckdb.connect(str(platform.settings.warehouse_path)) as con:
        con.execute(
            "UPDATE marts.fct_user_features SET tenure_days = tenure_days + 365 WHERE snapshot_date = ?", [LAST_DAY]
        )
    outcome, flagged = _one_verdict(platform, _measure(platform, LAST_DAY), LAST_DAY)
    assert outcome == "fail" and "tenure_days" in flagged
