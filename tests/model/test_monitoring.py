"""Is the champion still right? PSI by hand-built cases, the drift switch, and the monitor stage's outputs."""

import datetime as dt
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from churn_assets.contract import FEATURE_COLUMNS
from churn_assets.ingest import synthetic
from churn_assets.monitor.assets import DRIFT_TABLE, PERFORMANCE_TABLE, PREDICTION
from churn_assets.monitor.drift import column_bins, psi, psi_by_day
from churn_assets.monitor.performance import performance_by_day
from churn_assets.settings import Settings, Surfaces
from tests.conftest import SMALL_GRAPH_DAYS

DEFAULTS = Settings.from_env()


def test_psi_of_identical_distributions_is_zero():
    values = pd.Series(np.arange(1000.0))
    plans = pd.Series(["free"] * 60 + ["pro"] * 30 + ["team"] * 10)
    assert psi(values, values.copy()) == pytest.approx(0, abs=1e-12)
    assert psi(plans, plans.sample(frac=1, random_state=0)) == pytest.approx(0, abs=1e-12)


def test_psi_grows_with_the_shift_across_the_usual_thresholds():
    reference = pd.Series(np.arange(1000.0))
    slight, half = reference + 20, reference + 500
    assert 0 < psi(reference, slight) < DEFAULTS.psi_warn
    assert psi(reference, half) > DEFAULTS.psi_fail


def test_psi_in_sql_for_every_day_at_once_equals_the_pandas_reference():
    rng = np.random.default_rng(0)
    reference = pd.DataFrame(
        {
            "logins": rng.poisson(3, 5000),
            "minutes": rng.exponential(2, 5000).round(1),
            "plan": rng.choice(["free", "pro", "team"], 5000, p=[0.6, 0.3, 0.1]),
        }
    )
    days = pd.date_range("2026-10-01", periods=3).date
    current = pd.concat(
        pd.DataFrame(
            {
                "snapshot_date": day,
                "logins": rng.poisson(3 + shift, 700),
                "minutes": rng.exponential(2 + shift, 700).round(1),
                "plan": rng.choice(
                    ["free", "pro", "team", "edu"], 700, p=[0.5, 0.3, 0.0, 0.2] if shift else [0.6, 0.3, 0.1, 0]
                ),
            }
        )
        for shift, day in enumerate(days)
    )
    con = duckdb.connect()
    con.register("current_days", current)

    in_sql = psi_by_day(con, "current_days", [column_bins(reference[c], c) for c in ("logins", "minutes", "plan")])

    assert len(in_sql) == 9
    for row in in_sql.itertuples():
        day = current[current["snapshot_date"] == row.snapshot_date.date()]
        assert row.psi == pytest.approx(psi(reference[row.column_name], day[row.column_name]), abs=1e-9)


def test_realised_metrics_in_sql_equal_scikit_learns_per_day_and_version():
    from sklearn.metrics import precision_score, recall_score, roc_auc_score

    rng = np.random.default_rng(1)
    n = 3000
    scores = pd.DataFrame(
        {
            "user_id": np.arange(n),
            "snapshot_date": np.repeat([dt.date(2026, 8, 1), dt.date(2026, 8, 2), dt.date(2026, 8, 3)], n // 3),
            "model_version": np.repeat([1, 1, 2], n // 3),
            # Rounded to two decimals so that many probabilities tie, the case ranks must average.
            "churn_probability": rng.uniform(0, 1, n).round(2),
        }
    )
    churned = rng.uniform(0, 1, n) < scores["churn_probability"]
    labels = scores[["user_id", "snapshot_date"]].assign(churned=churned)
    labels.loc[scores["snapshot_date"] == dt.date(2026, 8, 3), "churned"] = True
    con = duckdb.connect()
    con.register("s", scores)
    con.register("l", labels)
    measured = performance_by_day(con, "s", "l", threshold=0.5).df()
    assert measured["snapshot_date"].dt.date.tolist() == [dt.date(2026, 8, 1), dt.date(2026, 8, 2)], (
        "one class only: not measured"
    )
    for row in measured.itertuples():
        day = scores["snapshot_date"] == row.snapshot_date.date()
        y, p = churned[day], scores.loc[day, "churn_probability"]
        assert row.roc_auc == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert row.precision == pytest.approx(precision_score(y, p >= 0.5), abs=1e-12)
        assert row.recall == pytest.approx(recall_score(y, p >= 0.5), abs=1e-12)
        assert row.users == day.sum() and row.churn_rate == pytest.approx(y.mean())


def test_psi_of_a_category_that_doubled_its_share():
    reference = pd.Series(["free"] * 80 + ["pro"] * 20)
    current = pd.Series(["free"] * 60 + ["pro"] * 40)
    expected = (0.6 - 0.8) * np.log(0.6 / 0.8) + (0.4 - 0.2) * np.log(0.4 / 0.2)
    assert psi(reference, current) == pytest.approx(expected)


def _weekly_lesson_views(drift_from: dt.date | None, first_day: dt.date) -> pd.Series:
    """Lesson views per user active in the week, as lesson_views_7d counts them."""
    pop = synthetic.population(3000, dt.date(2026, 7, 1), 120, 42)
    days = [first_day + dt.timedelta(days=i) for i in range(7)]
    events = pd.concat([synthetic.generate_events(pop, day, 42, drift_from) for day in days])
    views = events[events.event_type == "lesson_view"].groupby("user_id").size()
    return views.reindex(events.user_id.unique(), fill_value=0)


def test_the_generators_drift_switch_moves_a_feature_past_the_failure_threshold():
    week = dt.date(2026, 9, 1)
    reference = _weekly_lesson_views(None, week - dt.timedelta(days=7))
    assert psi(reference, _weekly_lesson_views(None, week)) < DEFAULTS.psi_warn
    assert psi(reference, _weekly_lesson_views(week, week)) > DEFAULTS.psi_fail


@pytest.fixture(scope="module")
def graph(small_graph):
    return small_graph


def test_drift_is_stored_per_scored_day_for_every_feature_and_the_prediction(graph):
    platform, _ = graph
    per_day = platform.frame(
        f"SELECT snapshot_date, count(*) AS columns, count(*) FILTER (WHERE is_prediction) AS predictions, "
        f"min(psi) AS low, any_value(model_version) AS version FROM {DRIFT_TABLE} GROUP BY ALL"
    )
    scored_days = platform.query("SELECT count(DISTINCT snapshot_date) FROM scores.churn_scores")[0][0]
    assert len(per_day) == scored_days
    assert (per_day["columns"] == len(FEATURE_COLUMNS) + 1).all()
    assert (per_day["predictions"] == 1).all()
    assert (per_day["low"] >= 0).all()
    assert set(per_day["version"]) == {int(platform.resources["registry"].champion().version)}


def test_the_evidently_report_is_saved_for_the_last_day_and_linked(graph):
    platform, result = graph
    (materialization,) = result.asset_materializations_for_node("drift_report")[-1:]
    path = Path(materialization.metadata["report_path"].value)
    assert path == platform.settings.reports_dir / f"drift_report_{SMALL_GRAPH_DAYS[1]}.html"
    assert materialization.metadata["report"].value == f"{Surfaces.from_env().reports_url}/{path.name}"
    html = path.read_text()
    assert len(html) > 100_000
    assert all(column in html for column in ("lesson_views_7d", "days_since_last_activity", "plan"))
    assert all(f"| {column} " in materialization.metadata["psi_by_feature"].value for column in FEATURE_COLUMNS)


def test_realised_performance_is_measured_once_labels_exist(graph):
    platform, _ = graph
    performance = platform.frame(f"SELECT * FROM {PERFORMANCE_TABLE} ORDER BY snapshot_date")
    last_labelled = SMALL_GRAPH_DAYS[1] - dt.timedelta(days=30)
    assert performance["snapshot_date"].max().date() == last_labelled
    assert performance["roc_auc"].between(0.6, 1).all()
    champion = platform.resources["registry"].champion()
    assert np.allclose(performance["holdout_roc_auc"], float(champion.tags["roc_auc"]))
    labelled = platform.query(
        f"SELECT count(*) FROM scores.churn_scores s JOIN marts.fct_churn_labels l USING (user_id, snapshot_date) "
        f"WHERE snapshot_date = DATE '{last_labelled}'"
    )[0][0]
    assert performance["users"].iloc[-1] == labelled
    assert PREDICTION not in performance.columns
