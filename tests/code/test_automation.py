"""What the platform does by itself: automation conditions, freshness policies and the retrain sensor.

The conditions are evaluated against a real (ephemeral) Dagster instance holding hand-reported
materializations and check results, as the daemon would see them after real runs; a "tick"
evaluates once and then reports what it requested as done, the way a run would.
"""

import copy
import datetime as dt
import threading
from collections.abc import Iterator
from contextlib import closing

import dagster as dg
import pytest
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationPlanned,
    AssetCheckEvaluationTargetMaterializationData,
)
from dagster._core.definitions.data_version import DATA_VERSION_TAG
from dagster._core.definitions.partitions.context import partition_loading_context
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._core.storage.tags import RUN_KEY_TAG, SENSOR_NAME_TAG

from churn_assets.automation import (
    DAILY_FRESHNESS,
    MODEL_FRESHNESS,
    RETRAIN_SENSOR,
    decide_retrain,
    retrain_on_failed_checks,
)
from churn_assets.cli import record_champion_change, settled_retrain_decision
from churn_assets.monitor.assets import FEATURE_DRIFT_CHECK, PERFORMANCE_CHECK, PREDICTION_DRIFT_CHECK
from churn_assets.train.assets import champion_data_version

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
        self.requested_checks: set[dg.AssetCheckKey] = set(self.graph.asset_check_keys)
        with partition_loading_context(effective_dt=NOW):
            self.complete({key: self._all_partitions(key) for key in self.graph.get_all_asset_keys()})
        assert self.tick() == {}, "a complete, checked history should request nothing"

    def fork(self) -> "Automation":
        """The same history and cursor in an instance of its own, so one test's events stay out of the others'.

        Reporting the history takes half a minute; copying the ephemeral instance's in-memory SQLite
        databases takes a fraction of a second.
        """
        twin = copy.copy(self)
        twin.instance = dg.DagsterInstance.ephemeral()
        twin.requested_checks = set(self.requested_checks)
        for source, target in (
            (self.instance.run_storage, twin.instance.run_storage),
            (self.instance.event_log_storage, twin.instance.event_log_storage),
        ):
            with closing(source._engine.raw_connection()) as src, closing(target._engine.raw_connection()) as dst:
                src.driver_connection.backup(dst.driver_connection)
        return twin

    def _all_partitions(self, key: dg.AssetKey) -> list[str | None]:
        partitions = self.graph.get(key).partitions_def
        return partitions.get_partition_keys() if partitions else [None]

    def complete(self, runs: dict[dg.AssetKey, list[str | None]]) -> None:
        """Records what a successful run of these asset partitions leaves behind: materializations, passed checks.

        As in a real run, a check runs with its asset if it is part of the asset's own step, and
        a check Dagster may leave out (a dbt test) runs only if the tick requested it too.
        """
        run = self._run()
        for key, partitions in runs.items():
            for partition in partitions:
                self.instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key, partition=partition))
            checks = [
                check
                for check in self.graph.get(key).check_keys
                if not self.graph.assets_def_for_key(key).can_subset or check in self.requested_checks
            ]
            by_partition = {p: self._latest(key, p) for p in partitions} if checks else {}
            for check in checks:
                partitioned = self.graph.get(check).partitions_def is not None
                for partition in partitions if partitioned else [None]:
                    target = by_partition[partition] if partitioned else self._latest(key, None)
                    self.check(check, passed=True, partition=partition, target=target, run=run)

    def _run(self) -> dg.DagsterRun:
        return self.instance.add_run(dg.DagsterRun(job_name="checks", status=dg.DagsterRunStatus.SUCCESS))

    def _latest(self, key: dg.AssetKey, partition: str | None):
        filter_ = dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None)
        (latest,) = self.instance.fetch_materializations(filter_, limit=1).records
        return AssetCheckEvaluationTargetMaterializationData(
            storage_id=latest.storage_id, run_id=latest.run_id, timestamp=latest.timestamp
        )

    def check(
        self,
        key: dg.AssetCheckKey,
        passed: bool,
        severity=dg.AssetCheckSeverity.ERROR,
        partition=None,
        target=None,
        run=None,
    ) -> None:
        """A check evaluated in a run against the asset's (or the partition's) latest materialization."""
        run = run or self._run()
        evaluation = dg.AssetCheckEvaluation(
            asset_key=key.asset_key,
            check_name=key.name,
            passed=passed,
            severity=severity,
            partition=partition,
            target_materialization_data=target or self._latest(key.asset_key, partition),
        )
        self.instance.report_dagster_event(
            DagsterEvent(
                DagsterEventType.ASSET_CHECK_EVALUATION.value, job_name=run.job_name, event_specific_data=evaluation
            ),
            run_id=run.run_id,
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
        self.requested_checks = {
            e.key for e in result.results if isinstance(e.key, dg.AssetCheckKey) and e.true_subset.size
        }
        for evaluation in result.results:
            if evaluation.true_subset.size and isinstance(evaluation.key, dg.AssetKey):
                partitions = evaluation.true_subset.expensively_compute_asset_partitions()
                requested[evaluation.key] = sorted((p.partition_key for p in partitions), key=str)
        return requested

    def tick_and_run(self) -> dict[str, list[str | None]]:
        requested = self.tick()
        self.complete(requested)
        return {key.path[-1]: partitions for key, partitions in requested.items()}


@pytest.fixture(scope="module")
def history(defs) -> Iterator[Automation]:
    """Reported once per module: every test starts from the same complete, checked history."""
    history = Automation(defs)
    yield history
    history.instance.dispose()


@pytest.fixture
def automation(history) -> Iterator[Automation]:
    automation = history.fork()
    yield automation
    automation.instance.dispose()


DAY_CHAIN = (
    "stg_events",
    "int_user_daily_activity",
    "fct_user_features",
    "churn_scores",
    "feature_drift",
    "drift_report",
)
"""What a day's new raw events refresh, in one run."""


def test_a_new_raw_partition_refreshes_the_dbt_models_scores_and_monitoring_downstream(automation):
    automation.complete({dg.AssetKey("raw_events"): [YESTERDAY]})

    first, second = automation.tick_and_run(), automation.tick_and_run()

    assert first == {name: [YESTERDAY] for name in DAY_CHAIN}, "one run for the day's whole chain"
    assert second == {
        "fct_churn_labels": [None],
        "high_risk_users": [None],
        "model_performance": [None],
        "online_features": [None],
    }
    assert automation.tick_and_run() == {}


def test_a_night_waits_for_the_cron_then_loads_users_then_the_days_events_and_their_chain(automation):
    automation.minutes += 12 * 60 + 30
    assert automation.tick_and_run() == {}, "after midnight a new partition exists, and its raw events do not"

    automation.minutes += 60
    today = "2026-11-23"
    assert automation.tick_and_run() == {"raw_users": [None], "stg_users": [None]}, "the 01:00 cron loads users first"
    assert automation.tick_and_run() == {name: [today] for name in ("raw_events", *DAY_CHAIN)}, (
        "then the day's events and their whole chain, as one run"
    )
    assert automation.tick_and_run() == {
        "fct_churn_labels": [None],
        "high_risk_users": [None],
        "model_performance": [None],
        "online_features": [None],
    }
    assert automation.tick_and_run() == {}


def test_a_failing_blocking_check_holds_everything_downstream_until_it_passes(automation):
    automation.complete({dg.AssetKey("raw_events"): [YESTERDAY]})
    automation.check(dg.AssetCheckKey(dg.AssetKey("raw_events"), "events_unique_ids"), passed=False)

    assert automation.tick_and_run() == {}
    assert automation.tick_and_run() == {}

    automation.check(dg.AssetCheckKey(dg.AssetKey("raw_events"), "events_unique_ids"), passed=True)
    assert "stg_events" in automation.tick_and_run()


def test_the_model_is_not_retrained_just_because_new_data_arrived(automation):
    automation.complete({dg.AssetKey("raw_events"): [YESTERDAY]})
    requested = set()
    for _ in range(4):
        requested |= set(automation.tick_and_run())
    assert not requested & {"training_set", "churn_model", "production_model", "bento_model"}


def test_a_training_set_built_by_a_retrain_run_trains_nothing_more_afterwards(automation):
    automation.instance.report_runless_asset_event(dg.AssetMaterialization("training_set"))
    requested = set()
    for _ in range(3):
        requested |= set(automation.tick_and_run())
    assert not requested & {"churn_model", "production_model"}


def test_a_kept_champion_changes_nothing_downstream_and_a_new_one_rescores_the_latest_day(automation):
    def gate(champion: str) -> None:
        automation.instance.report_runless_asset_event(
            dg.AssetMaterialization("production_model", tags={DATA_VERSION_TAG: champion})
        )

    gate("champion-v1")
    automation.tick_and_run()
    while automation.tick_and_run():
        pass

    gate("champion-v1")
    assert automation.tick_and_run() == {}, "the gate kept the champion: no re-score, no re-export"

    gate("champion-v2")
    first, second = automation.tick_and_run(), automation.tick_and_run()
    assert first == {
        "churn_scores": [YESTERDAY],
        "feature_drift": [YESTERDAY],
        "drift_report": [YESTERDAY],
        "bento_model": [None],
    }
    assert second == {"high_risk_users": [None], "model_performance": [None]}
    assert automation.tick_and_run() == {}


def test_a_rollback_by_the_cli_rescores_the_latest_day_and_reexports(automation):
    automation.instance.report_runless_asset_event(
        dg.AssetMaterialization("production_model", tags={DATA_VERSION_TAG: champion_data_version(2).value})
    )
    while automation.tick_and_run():
        pass

    record_champion_change(automation.instance, old=2, new=1)

    assert automation.tick_and_run() == {
        "churn_scores": [YESTERDAY],
        "feature_drift": [YESTERDAY],
        "drift_report": [YESTERDAY],
        "bento_model": [None],
    }


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
    """Ticks of the retrain sensor against one instance, doing with its requests what the daemon does.

    The daemon turns a request into a queued run tagged with the sensor's name and the run key,
    unless a run with that key exists; that run is what later ticks (and the CLI) see.
    """

    def __init__(self, instance: dg.DagsterInstance):
        self.instance = instance

    def report(self, key: dg.AssetCheckKey, passed: bool, severity=dg.AssetCheckSeverity.ERROR) -> None:
        self.instance.report_runless_asset_event(
            dg.AssetCheckEvaluation(
                asset_key=key.asset_key,
                check_name=key.name,
                passed=passed,
                severity=severity,
                description="largest PSI 0.412 (video_minutes_7d); warn at 0.1, fail at 0.25",
            )
        )

    def plan(self, key: dg.AssetCheckKey) -> dg.DagsterRun:
        """A run that will evaluate the check is in flight: Dagster stores a planned evaluation for it."""
        run = self.instance.add_run(dg.DagsterRun(job_name="__ASSET_JOB", status=dg.DagsterRunStatus.STARTED))
        self.instance.report_dagster_event(
            DagsterEvent(
                event_type_value=DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED.value,
                job_name=run.job_name,
                event_specific_data=AssetCheckEvaluationPlanned(asset_key=key.asset_key, check_name=key.name),
            ),
            run_id=run.run_id,
        )
        return run

    def finish(self, run: dg.DagsterRun, status=dg.DagsterRunStatus.SUCCESS) -> None:
        self.instance.handle_run_event(
            run.run_id,
            DagsterEvent(
                event_type_value=(
                    DagsterEventType.RUN_SUCCESS
                    if status == dg.DagsterRunStatus.SUCCESS
                    else DagsterEventType.RUN_FAILURE
                ).value,
                job_name=run.job_name,
            ),
        )

    def tick(self) -> list[dg.RunRequest]:
        result = retrain_on_failed_checks(dg.build_sensor_context(instance=self.instance))
        requests = list(result) if isinstance(result, list) else []
        self.skip_reason = result.skip_message if isinstance(result, dg.SkipReason) else None
        for request in requests:
            tags = {**request.tags, RUN_KEY_TAG: request.run_key, SENSOR_NAME_TAG: RETRAIN_SENSOR}
            if not self.instance.get_runs(dg.RunsFilter(tags={RUN_KEY_TAG: request.run_key})):
                self.instance.add_run(
                    dg.DagsterRun(job_name="retrain", status=dg.DagsterRunStatus.NOT_STARTED, tags=tags)
                )
        return requests


@pytest.fixture
def sensor(platform) -> RetrainSensor:
    return RetrainSensor(platform.instance)


def test_a_failing_drift_check_requests_exactly_one_retrain(sensor, platform):
    sensor.report(DRIFT, passed=False)

    requests = sensor.tick()

    assert len(requests) == 1
    assert requests[0].tags["churnops/trigger"] == DRIFT.to_user_string()
    assert requests[0].tags["churnops/reason"].startswith("largest PSI 0.412")
    assert sensor.tick() == [], "the same failing evaluation must not retrain twice"
    assert "no drift or performance check has failed since the last retrain" in sensor.skip_reason


def test_the_sensor_writes_no_incident_for_a_run_it_only_requested(sensor, platform):
    sensor.report(DRIFT, passed=False)
    assert len(sensor.tick()) == 1
    assert not (platform.data_dir / "logs" / "incidents.log").exists(), "the retrain run writes its own lines"


def test_passing_checks_and_warnings_request_nothing(sensor):
    sensor.report(DRIFT, passed=True)
    sensor.report(PREDICTION_DRIFT, passed=False, severity=dg.AssetCheckSeverity.WARN)
    sensor.report(PERFORMANCE, passed=True)
    assert sensor.tick() == []


def test_a_planned_evaluation_waits_for_its_run_without_error(sensor):
    sensor.report(DRIFT, passed=False)
    in_flight = sensor.plan(DRIFT)

    assert sensor.tick() == [], "the failure is being re-evaluated by a run in flight: wait for its verdict"
    assert sensor.skip_reason == f"waiting for run {in_flight.run_id}, which evaluates {DRIFT.to_user_string()}"

    sensor.finish(in_flight)
    sensor.report(DRIFT, passed=False)
    assert len(sensor.tick()) == 1


def test_the_demo_beside_the_daemon_waits_for_a_re_check_in_flight_and_acts_on_its_verdict(sensor, platform):
    sensor.report(DRIFT, passed=True)
    in_flight = sensor.plan(DRIFT)

    def the_daemons_run_fails_the_check():
        sensor.report(DRIFT, passed=False)
        sensor.finish(in_flight)

    threading.Timer(1.0, the_daemons_run_fails_the_check).start()
    decision = settled_retrain_decision(platform.instance)

    assert decision.waiting_on is None and decision.request is not None
    assert decision.request.tags["churnops/trigger"] == DRIFT.to_user_string()


def test_a_planned_evaluation_whose_run_ended_without_it_falls_back_to_the_last_verdict(sensor):
    sensor.report(DRIFT, passed=False)
    sensor.finish(sensor.plan(DRIFT), status=dg.DagsterRunStatus.FAILURE)
    assert len(sensor.tick()) == 1


def test_a_persistent_drift_retrains_once_per_cool_down(sensor, platform):
    sensor.report(DRIFT, passed=False)
    assert len(sensor.tick()) == 1

    sensor.report(DRIFT, passed=False)
    sensor.report(PERFORMANCE, passed=False)
    assert sensor.tick() == [], "a new failure within the cool-down waits"
    assert "within the 24 h cool-down" in sensor.skip_reason

    platform.configure(CHURNOPS_RETRAIN_COOLDOWN_HOURS="0")
    assert len(sensor.tick()) == 1, "after the cool-down, the failures newer than the last retrain count"
    assert sensor.tick() == []


def test_a_retrain_launched_by_the_cli_counts_for_the_daemon(sensor, platform):
    sensor.report(DRIFT, passed=False)
    (request,) = [decide_retrain(platform.instance).request]
    platform.instance.add_run(
        dg.DagsterRun(
            job_name="retrain",
            status=dg.DagsterRunStatus.STARTED,
            tags={**request.tags, RUN_KEY_TAG: request.run_key, SENSOR_NAME_TAG: RETRAIN_SENSOR},
        )
    )
    assert sensor.tick() == []


def test_every_failing_evaluation_gets_its_own_run_key(sensor, platform):
    platform.configure(CHURNOPS_RETRAIN_COOLDOWN_HOURS="0")
    sensor.report(DRIFT, passed=False)
    first = sensor.tick()
    sensor.report(DRIFT, passed=False)
    second = sensor.tick()
    assert first[0].run_key != second[0].run_key
