"""What the platform does by itself: automation conditions, freshness policies and the retrain sensor.

The conditions are evaluated against a real (ephemeral) Dagster instance holding hand-reported
materializations and check results, as the daemon would see them after real runs; a "tick"
evaluates once and then reports what it requested as done, the way a run would.
"""

import datetime as dt
import json

import dagster as dg
import pytest
from dagster._core.definitions.partitions.context import partition_loading_context

from churn_assets.automation import DAILY_FRESHNESS, MODEL_FRESHNESS, retrain_on_failed_checks
from churn_assets.monitor.assets import FEATURE_DRIFT_CHECK, PERFORMANCE_CHECK, PREDICTION_DRIFT_CHECK

NOW = dt.datetime(2026, 11, 23, 12, tzinfo=dt.UTC)
YESTERDAY = "2026-11-22"
DRIFT = dg.AssetCheckKey(dg.AssetKey("feature_drift"), FEATURE_DRIFT_CHECK)
PREDICTION_DRIFT = dg.AssetCheckKey(dg.AssetKey("feature_drift"), PREDICTION_DRIFT_CHECK)
PERFORMANCE = dg.AssetCheckKey(dg.AssetKey("model_performance"), PERFORMANCE_CHECK)


@pytest.fixture(scope="module")
def defs():
    from churn_assets.definitions import defs

    return defs


class Automation:
    """The automation sensor's view of a platform whose whole history has been materialized."""

    def __init__(self, defs: dg.Definitions):
        self.defs = defs
        self.graph = defs.resolve_asset_graph()
        self.instance = dg.DagsterInstance.ephemeral()
        self.cursor = None
        self.minutes = 0
        with partition_loading_context(effective_dt=NOW):
            self.complete({key: self._all_partitions(key) for key in self.graph.get_all_asset_keys()})
        assert self.tick() == {}, "a complete, checked history should request nothing"

    def _all_partitions(self, key: dg.AssetKey) -> list[str | None]:
        partitions = self.graph.get(key).partitions_def
        return partitions.get_partition_keys() if partitions else [None]

    def complete(self, runs: dict[dg.AssetKey, list[str | None]]) -> None:
        """Records what a successful run of these asset partitions leaves behind: materializations, passed checks."""
        for key, partitions in runs.items():
            for partition in partitions:
                self.instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key, partition=partition))
            for check in self.graph.get(key).check_keys:
                self.check(check, passed=True)

    def check(self, key: dg.AssetCheckKey, passed: bool, severity=dg.AssetCheckSeverity.ERROR) -> None:
        self.instance.report_runless_asset_event(
            dg.AssetCheckEvaluation(asset_key=key.asset_key, check_name=key.name, passed=passed, severity=severity)
        )

    def tick(self) -> dict[str, list[str | None]]:
        """One evaluation of every condition: what it requests, by asset name."""
        self.minutes += 1
        result = dg.evaluate_automation_conditions(
            defs=self.defs,
            instance=self.instance,
            cursor=self.cursor,
            evaluation_time=NOW + dt.timedelta(minutes=self.minutes),
        )
        self.cursor = result.cursor
        requested = {}
        for evaluation in result.results:
            if evaluation.true_subset.size:
                partitions = evaluation.true_subset.expensively_compute_asset_partitions()
                requested[evaluation.key] = sorted((p.partition_key for p in partitions), key=str)
        return requested

    def tick_and_run(self) -> dict[str, list[str | None]]:
        requested = self.tick()
        self.complete(requested)
        return {key.path[-1]: partitions for key, partitions in requested.items()}


@pytest.fixture
def automation(defs) -> Automation:
    return Automation(defs)


def test_a_new_raw_partition_refreshes_the_dbt_models_scores_and_monitoring_downstream(automation):
    automation.complete({dg.AssetKey("raw_events"): [YESTERDAY]})

    first, second, third = (automation.tick_and_run() for _ in range(3))

    assert first == {"stg_events": [None]}
    assert second == {
        name: [YESTERDAY]
        for name in ("int_user_daily_activity", "fct_user_features", "churn_scores", "feature_drift", "drift_report")
    }
    assert third == {"fct_churn_labels": [None], "high_risk_users": [None], "model_performance": [None]}
    assert automation.tick_and_run() == {}


def test_a_failing_blocking_check_holds_everything_downstream_until_it_passes(automation):
    automation.instance.report_runless_asset_event(dg.AssetMaterialization("raw_events", partition=YESTERDAY))
    automation.check(dg.AssetCheckKey(dg.AssetKey("raw_events"), "events_unique_ids"), passed=False)

    assert automation.tick_and_run() == {}
    assert automation.tick_and_run() == {}

    automation.check(dg.AssetCheckKey(dg.AssetKey("raw_events"), "events_unique_ids"), passed=True)
    assert automation.tick_and_run() == {"stg_events": [None]}


def test_the_model_is_not_retrained_just_because_new_data_arrived(automation):
    automation.complete({dg.AssetKey("raw_events"): [YESTERDAY]})
    requested = set()
    for _ in range(4):
        requested |= set(automation.tick_and_run())
    assert not requested & {"training_set", "churn_model", "production_model", "bento_model"}


def test_daily_assets_expect_a_fresh_day_and_the_model_a_fresh_week(defs):
    graph = defs.resolve_asset_graph()
    policies = {key.path[-1]: graph.get(key).freshness_policy for key in graph.get_all_asset_keys()}
    assert all(policy is not None for policy in policies.values())
    for name in ("raw_events", "fct_user_features", "churn_scores", "feature_drift"):
        assert policies[name] == DAILY_FRESHNESS, name
    for name in ("churn_model", "production_model", "bento_model"):
        assert policies[name] == MODEL_FRESHNESS, name
    assert (MODEL_FRESHNESS.warn_window.days, DAILY_FRESHNESS.warn_window.days) == (7, 1)


def test_the_automation_and_retrain_sensors_are_on_from_the_start(defs):
    sensors = {sensor.name: sensor for sensor in defs.sensors}
    assert set(sensors) >= {"automation", "retrain_on_failed_checks", "record_failed_runs"}
    for sensor in sensors.values():
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING, sensor.name


class RetrainSensor:
    """Ticks of the retrain sensor against one instance, carrying its cursor as the daemon does."""

    def __init__(self, instance: dg.DagsterInstance):
        self.instance = instance
        self.cursor = None

    def report(self, key: dg.AssetCheckKey, passed: bool, severity=dg.AssetCheckSeverity.ERROR) -> None:
        self.instance.report_runless_asset_event(
            dg.AssetCheckEvaluation(
                asset_key=key.asset_key, check_name=key.name, passed=passed, severity=severity,
                description="largest PSI 0.412 (video_minutes_7d); warn at 0.1, fail at 0.25",
            )
        )

    def tick(self) -> list[dg.RunRequest]:
        context = dg.build_sensor_context(instance=self.instance, cursor=self.cursor)
        result = retrain_on_failed_checks(context)
        self.cursor = context.cursor
        return list(result) if isinstance(result, list) else []


@pytest.fixture
def sensor(platform) -> RetrainSensor:
    return RetrainSensor(platform.instance)


def test_a_failing_drift_check_requests_exactly_one_retrain(sensor, platform):
    sensor.report(DRIFT, passed=False)

    requests = sensor.tick()

    assert len(requests) == 1
    assert requests[0].tags["churnops/trigger"] == DRIFT.to_user_string()
    assert sensor.tick() == [], "the same failing evaluation must not retrain twice"
    incidents = (platform.data_dir / "logs" / "incidents.log").read_text()
    assert "retraining: feature_drift:feature_drift_below_threshold failed: largest PSI 0.412" in incidents


def test_passing_checks_and_warnings_request_nothing(sensor):
    sensor.report(DRIFT, passed=True)
    sensor.report(PREDICTION_DRIFT, passed=False, severity=dg.AssetCheckSeverity.WARN)
    sensor.report(PERFORMANCE, passed=True)
    assert sensor.tick() == []


def test_a_persistent_drift_retrains_once_per_cool_down(sensor, platform):
    sensor.report(DRIFT, passed=False)
    assert len(sensor.tick()) == 1

    sensor.report(DRIFT, passed=False)
    sensor.report(PERFORMANCE, passed=False)
    assert sensor.tick() == [], "a new failure within the cool-down waits"

    platform.configure(CHURNOPS_RETRAIN_COOLDOWN_HOURS="0")
    sensor.report(DRIFT, passed=False)
    requests = sensor.tick()
    assert len(requests) == 1
    assert json.loads(sensor.cursor)["last_retrain"] > 0


def test_every_failing_evaluation_gets_its_own_run_key(sensor, platform):
    platform.configure(CHURNOPS_RETRAIN_COOLDOWN_HOURS="0")
    sensor.report(DRIFT, passed=False)
    first = sensor.tick()
    sensor.report(DRIFT, passed=False)
    second = sensor.tick()
    assert first[0].run_key != second[0].run_key
