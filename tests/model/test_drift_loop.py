"""The loop end to end: the generator's drift switch is noticed, and the platform retrains by itself.

One platform whose behaviour shifts from DRIFT_FROM on: a single materialization pass, the retrain
loop's decision, and the run it asks for, exactly what ``churnops drift-demo`` does without a daemon
(``tests/soak`` runs the same loop under the real daemon).
"""

import datetime as dt

import dagster as dg
import pytest

from churn_assets.automation import decide_retrain
from churn_assets.cli import gate_decision, run_retrain
from churn_assets.monitor.assets import DRIFT_TABLE, FEATURE_DRIFT_CHECK
from tests.conftest import SMALL_GRAPH_DAYS

pytestmark = pytest.mark.slow

DRIFT_FROM = dt.date(2026, 10, 15)


@pytest.fixture(scope="module")
def drifted(module_platform):
    module_platform.configure(CHURNOPS_USERS="400", CHURNOPS_DRIFT_FROM=DRIFT_FROM.isoformat())
    result = module_platform.materialize(*SMALL_GRAPH_DAYS)
    assert result.success
    return module_platform, result


def test_the_drift_switch_pushes_feature_psi_past_the_failure_threshold(drifted):
    platform, _ = drifted
    daily_max = platform.frame(
        f"SELECT snapshot_date, max(psi) AS psi FROM {DRIFT_TABLE} WHERE NOT is_prediction GROUP BY ALL"
    ).set_index("snapshot_date")["psi"]
    days = daily_max.index.date
    month_before = daily_max[(days >= DRIFT_FROM - dt.timedelta(days=30)) & (days < DRIFT_FROM)]
    week_on = daily_max[days >= DRIFT_FROM + dt.timedelta(days=7)]
    assert len(month_before) == 30 and len(week_on) == 7
    assert week_on.min() > platform.settings.psi_fail
    assert week_on.median() > 3 * month_before.median(), "400 users' sampling noise alone is well below the shift"


def test_the_failed_drift_check_names_the_feature_and_is_an_error(drifted):
    _, result = drifted
    (check,) = [c for c in result.get_asset_check_evaluations() if c.check_name == FEATURE_DRIFT_CHECK]
    assert not check.passed
    assert check.severity == dg.AssetCheckSeverity.ERROR
    assert "largest PSI" in check.description and check.metadata["column"].value in check.description


def test_one_decision_retrains_and_the_gate_records_its_decision(drifted):
    platform, _ = drifted
    registry = platform.resources["registry"]
    versions_before = int(registry.latest_version().version)

    decision = decide_retrain(platform.instance)
    assert decision.request is not None, decision.reason
    result = run_retrain(decision.request, resources=platform.resources, instance=platform.instance)

    assert result.success
    new_version = registry.latest_version()
    assert int(new_version.version) == versions_before + 1
    gate = gate_decision(platform.instance, result.run_id)
    assert gate["candidate_version"] == int(new_version.version)
    assert gate["decision"] in {"promoted", "kept_champion"}
    assert new_version.tags["gate_decision"] == gate["decision"]
    run = platform.instance.get_run_by_id(result.run_id)
    assert run.job_name == "retrain"
    assert run.tags["dagster/run_key"] == decision.request.run_key, "tagged so the daemon's sensor does not repeat it"
    assert decide_retrain(platform.instance).request is None, "the drift episode has had its retrain"

    incidents = (platform.data_dir / "logs" / "incidents.log").read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in incidents] == [
        (
            f"retrain run {result.run_id}: started: feature_drift:{FEATURE_DRIFT_CHECK} failed: "
            f"{decision.request.tags['churnops/reason']}"
        ),
        f"retrain run {result.run_id}: gate {gate['decision']} version {gate['candidate_version']}: {gate['reason']}",
    ]
