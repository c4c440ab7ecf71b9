"""What keeps the platform fresh without a person: freshness policies, automation conditions, sensors.

- Freshness: daily assets are expected within a day (warn after 26 h, fail after 50 h); the model
  stages within a week (warn after 7 days, fail after 8), shown on each asset's page in the UI.
- Automation: raw data loads on a daily cron; everything downstream follows eagerly once the
  blocking checks of its inputs passed; training reruns weekly or when the model's freshness warns.
  The gate (``production_model``) records every decision, but its data version is the champion's
  version, and what depends on it follows only when that changes: a kept champion re-scores
  nothing and exports nothing; a new one re-scores the latest day and is exported.
  The conditions are evaluated by the automation sensor, declared RUNNING here.
- The loop: the retrain sensor launches training → gate → export when a drift or performance
  check fails as an error, once per failing evaluation and at most once per cool-down
  (``decide_retrain``, shared with ``churnops drift-demo``).
- Failures: a run-failure sensor writes every failed run to ``<data dir>/logs/incidents.log``;
  check-triggered retrain runs write their start and the gate's verdict there themselves.
"""

import datetime as dt
from dataclasses import dataclass

import dagster as dg
from dagster._core.storage.asset_check_execution_record import (
    COMPLETED_ASSET_CHECK_EXECUTION_RECORD_STATUSES,
    AssetCheckExecutionRecord,
)
from dagster._core.storage.dagster_run import RunRecord
from dagster._core.storage.tags import SENSOR_NAME_TAG

from churn_assets.incidents import CHECK_RUN_TAG, REASON_TAG, TRIGGER_TAG, record_incident
from churn_assets.monitor.assets import FEATURE_DRIFT_CHECK, PERFORMANCE_CHECK, PREDICTION_DRIFT_CHECK
from churn_assets.settings import get_settings

RAW_LOAD_CRON = "0 1 * * *"
WEEKLY_RETRAIN_CRON = "0 3 * * 1"

DAILY_FRESHNESS = dg.FreshnessPolicy.time_window(warn_window=dt.timedelta(hours=26), fail_window=dt.timedelta(hours=50))
MODEL_FRESHNESS = dg.FreshnessPolicy.time_window(warn_window=dt.timedelta(days=7), fail_window=dt.timedelta(days=8))

CHAMPION_KEY = dg.AssetKey("production_model")
CHAMPION = dg.AssetSelection.assets(CHAMPION_KEY)
FOLLOW_UPSTREAM = dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()
CHAMPION_CHANGED = (
    dg.AutomationCondition.any_deps_match(
        dg.AutomationCondition.data_version_changed() & ~dg.AutomationCondition.executed_with_root_target()
    )
    .allow(CHAMPION)
    .with_label("champion_changed")
)
FOLLOW_CHAMPION = FOLLOW_UPSTREAM.replace(
    "any_deps_updated", dg.AutomationCondition.any_deps_updated().ignore(CHAMPION) | CHAMPION_CHANGED
)
CHECK_WITH_ITS_MODEL = dg.AutomationCondition.any_deps_match(dg.AutomationCondition.will_be_requested())
"""dbt tests are checks a run may leave out: they are requested whenever their model is."""
WITH_THE_TRAINING_SET = (
    dg.AutomationCondition.any_deps_match(dg.AutomationCondition.will_be_requested())
    & ~dg.AutomationCondition.in_progress()
)
"""The model stages run in the tick their training set is due, never later on their own.

The retrain job updates training_set, churn_model and production_model in one run. An eager
condition armed by the new training set while that run was still going stayed armed (the daemon
never saw the run's own churn_model as handling it) and trained and gated a second time after it.
"""
RETRAIN_DUE = dg.AutomationCondition.on_cron(WEEKLY_RETRAIN_CRON) | (
    dg.AutomationCondition.freshness_warned().newly_true() & ~dg.AutomationCondition.in_progress()
)

RETRAIN_SENSOR = "retrain_on_failed_checks"
MAX_REASON_CHARS = 500

RETRAIN_ASSETS = ("training_set", "churn_model", "production_model", "bento_model")
RETRAIN_SELECTION = dg.AssetSelection.assets(*RETRAIN_ASSETS)
retrain_job = dg.define_asset_job(
    "retrain", selection=RETRAIN_SELECTION, description="Training set → candidates → promotion gate → BentoML export."
)
RETRAIN_TRIGGERS = (
    dg.AssetCheckKey(dg.AssetKey("feature_drift"), FEATURE_DRIFT_CHECK),
    dg.AssetCheckKey(dg.AssetKey("feature_drift"), PREDICTION_DRIFT_CHECK),
    dg.AssetCheckKey(dg.AssetKey("model_performance"), PERFORMANCE_CHECK),
)


def _condition(spec: dg.AssetSpec) -> dg.AutomationCondition:
    if spec.group_name == "ingest":
        return dg.AutomationCondition.on_cron(RAW_LOAD_CRON)
    if spec.key == dg.AssetKey("training_set"):
        return RETRAIN_DUE
    if spec.key.path[-1] in ("churn_model", "production_model"):
        return WITH_THE_TRAINING_SET
    if any(dep.asset_key == CHAMPION_KEY for dep in spec.deps):
        return FOLLOW_CHAMPION
    return FOLLOW_UPSTREAM


def _with_policies(spec: dg.AssetSpec) -> dg.AssetSpec:
    """What the retrain job builds is fresh for a week; everything else, online features included, for a day."""
    freshness = MODEL_FRESHNESS if spec.key.path[-1] in RETRAIN_ASSETS else DAILY_FRESHNESS
    return spec.replace_attributes(freshness_policy=freshness, automation_condition=_condition(spec))


def automated(assets: list) -> list:
    """The one place freshness policies and automation conditions are attached to every asset."""
    return list(dg.map_asset_specs(_with_policies, assets))


automation_sensor = dg.AutomationConditionSensorDefinition(
    "automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=get_settings().sensor_interval_seconds,
)


@dataclass(frozen=True)
class RetrainDecision:
    """What the retrain loop does now: ``request`` a run, or nothing, and why.

    ``waiting_on`` names a run in flight that will evaluate a watched check again: its verdict is
    the one to act on, so nothing is decided before it ends.
    """

    request: dg.RunRequest | None
    reason: str
    waiting_on: str | None = None


def latest_retrain(instance: dg.DagsterInstance) -> RunRecord | None:
    """The newest run the retrain loop asked for, whoever launched it: the daemon or ``churnops``."""
    records = instance.get_run_records(filters=dg.RunsFilter(tags={SENSOR_NAME_TAG: RETRAIN_SENSOR}), limit=1)
    return records[0] if records else None


def _latest_evaluation(
    instance: dg.DagsterInstance, key: dg.AssetCheckKey
) -> tuple[AssetCheckExecutionRecord | None, str | None]:
    """The newest finished evaluation, or the id of the run in flight that will evaluate the check.

    A *planned* record is what Dagster stores for a check whose run is queued or running: it has no
    verdict yet, so it says "wait". A planned record whose run ended without evaluating it (a
    failed or skipped step) says nothing, and the newest finished evaluation before it counts.
    """
    record = instance.get_latest_asset_check_evaluation_record(key)
    if record is None or record.status in COMPLETED_ASSET_CHECK_EXECUTION_RECORD_STATUSES:
        return record, None
    run = instance.get_run_by_id(record.run_id)
    if run is not None and not run.is_finished:
        return None, run.run_id
    finished = instance.event_log_storage.get_asset_check_execution_history(
        key, limit=1, status=COMPLETED_ASSET_CHECK_EXECUTION_RECORD_STATUSES
    )
    return (finished[0] if finished else None), None


def decide_retrain(instance: dg.DagsterInstance) -> RetrainDecision:
    """The retrain loop's one rule, read from the instance alone so the daemon and the CLI agree.

    A failing (ERROR) evaluation of a drift or performance check asks for a retrain if it is newer
    than the last retrain run, and if that run is older than the cool-down. Every input lives in
    the instance (check evaluations, runs tagged with this sensor's name), none in a sensor cursor,
    so a retrain launched by ``churnops drift-demo`` counts for the daemon and the other way round.
    The run key names the evaluation, so two evaluators racing on it still make one run.
    """
    settings = get_settings()
    last = latest_retrain(instance)
    last_at = last.create_timestamp.timestamp() if last else 0.0
    failing = []
    for key in RETRAIN_TRIGGERS:
        record, in_flight = _latest_evaluation(instance, key)
        if in_flight is not None:
            return RetrainDecision(
                None, f"waiting for run {in_flight}, which evaluates {key.to_user_string()}", in_flight
            )
        evaluation = record.evaluation if record else None
        if evaluation is None or evaluation.passed or evaluation.severity != dg.AssetCheckSeverity.ERROR:
            continue
        if record.event.timestamp > last_at:
            failing.append((key, record, evaluation))
    if not failing:
        return RetrainDecision(None, "no drift or performance check has failed since the last retrain")
    key, record, evaluation = failing[0]
    failure = f"{key.to_user_string()} failed: {evaluation.description}"
    age = dt.datetime.now(dt.UTC).timestamp() - last_at
    if age < settings.retrain_cooldown_hours * 3600:
        return RetrainDecision(
            None,
            f"{failure}; retrain run {last.dagster_run.run_id} started {age / 3600:.1f} h ago, "
            f"within the {settings.retrain_cooldown_hours:g} h cool-down (CHURNOPS_RETRAIN_COOLDOWN_HOURS)",
        )
    request = dg.RunRequest(
        run_key=f"{key.to_user_string()}:{record.id}",
        tags={
            TRIGGER_TAG: key.to_user_string(),
            REASON_TAG: (evaluation.description or "")[:MAX_REASON_CHARS],
            CHECK_RUN_TAG: record.run_id,
        },
    )
    return RetrainDecision(request, failure)


@dg.sensor(
    name=RETRAIN_SENSOR,
    job=retrain_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=get_settings().sensor_interval_seconds,
    description="Retrains when a drift or realised-performance check fails as an error: one run per "
    "failing evaluation newer than the last retrain, none within the cool-down after the last one "
    "(CHURNOPS_RETRAIN_COOLDOWN_HOURS), whether that one was launched here or by `churnops drift-demo`.",
)
def retrain_on_failed_checks(context: dg.SensorEvaluationContext):
    decision = decide_retrain(context.instance)
    if decision.request is None:
        return dg.SkipReason(decision.reason)
    context.log.info(f"requesting a retrain: {decision.reason}")
    return [decision.request]


@dg.run_failure_sensor(
    default_status=dg.DefaultSensorStatus.RUNNING, description="Writes failed runs to logs/incidents.log."
)
def record_failed_runs(context: dg.RunFailureSensorContext):
    step_failures = "; ".join(
        f"{e.step_key}: {e.event_specific_data.error.message.strip().splitlines()[0]}"
        for e in context.get_step_failure_events()
        if e.event_specific_data and e.event_specific_data.error
    )
    record_incident(
        f"run {context.dagster_run.run_id} ({context.dagster_run.job_name}) failed: {step_failures or context.failure_event.message}"
    )
