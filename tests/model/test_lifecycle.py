"""Train, register, gate, roll back and score, on a real MLflow store and a real warehouse.

The session's small synthetic platform (conftest ``small_graph``) is built once, raw events to
scores in a single run. The gate specs then each get a fresh MLflow store and register
hand-picked models, so which one deserves to win is known in advance.
"""

import datetime as dt
import json
import tempfile
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from churn_assets.cli import materialize_history
from churn_assets.contract import FEATURE_COLUMNS, LABEL_COLUMN
from churn_assets.score.assets import churn_scores
from churn_assets.settings import CHAMPION_ALIAS
from churn_assets.train.assets import production_model, read_split
from churn_assets.train.candidates import gradient_boosting, logistic_regression
from churn_assets.train.registry import ModelRegistry

pytestmark = pytest.mark.slow

LAST = dt.date(2026, 10, 28)
SESSION_START = time.time()


@pytest.fixture(scope="module")
def graph(small_graph):
    return small_graph


@pytest.fixture
def fresh_registry(graph, tmp_path):
    platform, _ = graph
    registry = ModelRegistry(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_location=(tmp_path / "artifacts").as_uri()
    )
    return registry, {**platform.resources, "registry": registry}


def _fit(build, shuffle: bool = False, only: str | None = None):
    """A model on the real training split, optionally crippled: shuffled labels, or one feature seen."""
    train = read_split("train")
    features = train[list(FEATURE_COLUMNS)].copy()
    labels = train[LABEL_COLUMN].to_numpy()
    if shuffle:
        labels = np.random.default_rng(0).permutation(labels)
    if only:
        hidden = [c for c in FEATURE_COLUMNS if c not in (only, "plan")]
        features[hidden] = 0
    return build(42).fit(features, labels)


def _gate(resources) -> dict:
    result = dg.materialize([production_model], resources=resources)
    return result.asset_materializations_for_node("production_model")[0].metadata


def test_the_full_graph_trains_registers_promotes_and_scores(graph):
    platform, result = graph
    model = result.asset_materializations_for_node("churn_model")[0].metadata
    gate = result.asset_materializations_for_node("production_model")[0].metadata
    registry = platform.resources["registry"]
    runs = registry.client().search_runs([registry.activate()])
    best = max(runs, key=lambda r: r.data.metrics["roc_auc"])
    assert model["candidate"].value == best.data.tags["candidate"]
    assert model["roc_auc"].value == pytest.approx(best.data.metrics["roc_auc"])
    assert model["roc_auc"].value > 0.75
    assert gate["decision"].value == "promoted"
    assert int(registry.champion().version) == model["version"].value
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks["meets_floors"] and checks["every_active_user_scored_once"] and checks["probabilities_in_range"]


def test_every_run_records_metrics_dataset_provenance_and_plots(graph):
    platform, _ = graph
    registry = platform.resources["registry"]
    client = registry.client()
    runs = client.search_runs([registry.activate()])
    assert {r.data.tags["candidate"] for r in runs} == {"logistic_regression", "gradient_boosting"}
    for run in runs:
        assert {"roc_auc", "pr_auc", "brier", "precision", "recall", "f1", "accuracy"} <= set(run.data.metrics)
        assert len(run.data.tags["git_commit"]) in (40, len("unknown"))
        assert len(run.data.tags["dbt_manifest_sha256"]) == 64
        assert {i.dataset.name for i in run.inputs.dataset_inputs} == {"training_set", "holdout_set"}
        for recorded in run.inputs.dataset_inputs:
            assert json.loads(recorded.dataset.source)["uri"].endswith("training_set.parquet")
            schema = [c["name"] for c in json.loads(recorded.dataset.schema)["mlflow_colspec"]]
            assert schema == [*FEATURE_COLUMNS, LABEL_COLUMN]
        assert int(run.data.params["training_rows"]) > int(run.data.params["holdout_rows"]) > 0
        plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert plots == {f"plots/{p}.png" for p in ("roc_curve", "pr_curve", "calibration", "feature_importance")}


def test_the_plots_are_embedded_in_the_metadata_and_leave_no_files_behind(graph):
    _, result = graph
    model = result.asset_materializations_for_node("churn_model")[0].metadata
    assert model["plots"].value.count("](data:image/png;base64,") == 2
    candidates = ("logistic_regression", "gradient_boosting")
    assert not [
        p
        for c in candidates
        for p in Path(tempfile.gettempdir()).glob(f"churnops-{c}-*")
        if p.stat().st_mtime > SESSION_START
    ]


def test_a_worse_model_is_not_promoted_and_the_champion_stays(fresh_registry, register_model):
    registry, resources = fresh_registry
    good = register_model(registry, _fit(gradient_boosting))
    assert _gate(resources)["decision"].value == "promoted"

    shuffled = register_model(registry, _fit(gradient_boosting, shuffle=True))
    gate = _gate(resources)

    assert gate["decision"].value == "kept_champion"
    assert "below the floor" in gate["reason"].value
    assert int(registry.champion().version) == good
    tags = registry.client().get_model_version(registry.model_name, str(shuffled)).tags
    assert tags["gate_decision"] == "kept_champion" and tags["gate_champion_version"] == str(good)


def test_drift_is_measured_against_the_champions_reference_not_a_rejected_candidates(fresh_registry, register_model):
    registry, resources = fresh_registry
    train = read_split("train")[list(FEATURE_COLUMNS)]
    champion_reference, candidate_reference = train.iloc[::2], train.iloc[1::2]
    good = register_model(registry, _fit(gradient_boosting), reference=champion_reference)
    assert _gate(resources)["decision"].value == "promoted"
    register_model(registry, _fit(gradient_boosting, shuffle=True), reference=candidate_reference)
    assert _gate(resources)["decision"].value == "kept_champion"

    reference = registry.reference(registry.champion().version)

    assert int(registry.champion().version) == good
    pd.testing.assert_frame_equal(reference, champion_reference.reset_index(drop=True))


def test_a_better_model_is_promoted_and_rollback_restores_the_previous(fresh_registry, register_model):
    registry, resources = fresh_registry
    baseline = register_model(registry, _fit(logistic_regression, only="video_minutes_7d"))
    assert _gate(resources)["decision"].value == "promoted"
    boosted = register_model(registry, _fit(logistic_regression))

    gate = _gate(resources)

    assert gate["decision"].value == "promoted", gate["reason"].value
    assert gate["candidate_roc_auc"].value > gate["previous_champion_roc_auc"].value
    assert int(registry.champion().version) == boosted
    assert registry.rollback() == (boosted, baseline)
    assert int(registry.client().get_model_version_by_alias(registry.model_name, CHAMPION_ALIAS).version) == baseline
    assert [e.version for e in registry.history()] == [baseline, boosted]


def test_a_model_below_the_floor_never_becomes_champion_even_first(graph, fresh_registry):
    platform, _ = graph
    registry, resources = fresh_registry
    platform.configure(CHURNOPS_MIN_ROC_AUC="0.99")
    try:
        result = materialize_history(LAST, LAST, "churn_model+", resources=resources, instance=platform.instance)
    finally:
        platform.configure(CHURNOPS_MIN_ROC_AUC="0.75")
    floors = next(c for c in result.get_asset_check_evaluations() if c.check_name == "meets_floors")
    assert not floors.passed and "floor 0.9900" in floors.description
    started = {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}
    assert "production_model" not in started
    assert registry.latest_version() is not None and registry.champion() is None


def test_scores_cover_each_active_user_once_and_reproduce(graph):
    platform, _ = graph
    per_day = platform.query(
        "SELECT f.snapshot_date, count(*), count(s.user_id) FROM marts.fct_user_features f "
        "LEFT JOIN scores.churn_scores s USING (user_id, snapshot_date) GROUP BY 1 HAVING count(*) <> count(s.user_id)"
    )
    assert per_day == []
    day = LAST
    before = platform.frame(
        f"SELECT user_id, churn_probability, risk_tier FROM scores.churn_scores WHERE snapshot_date = '{day}' ORDER BY user_id"
    )

    assert dg.materialize([churn_scores], resources=platform.resources, partition_key=day.isoformat()).success

    after = platform.frame(
        f"SELECT user_id, churn_probability, risk_tier FROM scores.churn_scores WHERE snapshot_date = '{day}' ORDER BY user_id"
    )
    pd.testing.assert_frame_equal(before, after)
    exported = pd.read_csv(platform.settings.exports_dir / "scores" / f"churn_scores_{day}.csv")
    assert len(exported) == len(after)
    assert exported["churn_probability"].between(0, 1).all()


def test_batch_scores_from_the_onnx_compilation_equal_the_sklearn_pipelines(graph):
    platform, _ = graph
    registry = platform.resources["registry"]
    scored = platform.frame(
        "SELECT f.*, s.churn_probability, s.model_version FROM marts.fct_user_features f "
        "JOIN scores.churn_scores s USING (user_id, snapshot_date) ORDER BY snapshot_date, user_id"
    )
    (version,) = scored["model_version"].unique()
    pipeline = registry.load(int(version))

    expected = pipeline.predict_proba(scored[list(FEATURE_COLUMNS)])[:, 1]

    assert len(scored) > 10_000
    assert np.abs(scored["churn_probability"].to_numpy() - expected).max() <= 1e-6


def test_the_intervention_list_gives_reasons_for_the_riskiest_users(graph):
    platform, _ = graph
    listing = platform.frame("SELECT * FROM scores.high_risk_users ORDER BY churn_probability DESC")
    assert len(listing) > 0
    assert listing["churn_probability"].is_monotonic_decreasing
    assert listing["reason_1"].str.contains(r"=.*\(typical .*\): \+").all()
