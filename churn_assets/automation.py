"""What keeps the platform fresh without a person: freshness policies, automation conditions, sensors.

- Freshness: daily assets are expected within a day (warn after 26 h, fail after 50 h); the model
  stages within a week (warn after 7 days, fail after 8), visible as asset health in the UI.
- Automation: raw data loads on a daily cron; everything downstream follows eagerly once the
  blocking checks of its inputs passed; training reruns weekly or when the model's freshness warns.
  The conditions are evaluated by the automation sensor, declared RUNNING here.
- The loop: the retrain sensor launches training → gate → export when a drift or performance
  check fails as an error, once per failing evaluation and at most once per cool-down.
- Failures: a run-failure sensor writes every failed run (and the retrain sensor every failing
  check it acts on) to ``<data dir>/logs/incidents.log``, since failed checks do not fail runs.
"""

import datetime as dt
import json

import dagster as dg

from churn_assets.monitor.assets import FEATURE_DRIFT_CHECK, PERFORMANCE_CHECK, PREDICTION_DRIFT_CHECK
from churn_assets.settings import get_settings

RAW_LOAD_CRON = "0 1 * * *"
WEEKLY_RETRAIN_CRON = "0 3 * * 1"
MODEL_GROUPS = {"train", "serve"}

DAILY_FRESHNESS = dg.FreshnessPolicy.time_window(warn_window=dt.timedelta(hours=26), fail_window=dt.timedelta(hours=50))
MODEL_FRESHNESS = dg.FreshnessPolicy.time_window(warn_window=dt.timedelta(days=7), fail_window=dt.timedelta(days=8))

FOLLOW_UPSTREAM = dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()
RETRAIN_DUE = dg.AutomationCondition.on_cron(WEEKLY_RETRAIN_CRON) | (
    dg.AutomationCondition.freshness_warned().newly_true() & ~dg.AutomationCondition.in_progress()
)

RETRAIN_SELECTION = dg.AssetSelection.assets("training_set", "churn_model", "production_model", "bento_model")
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
    return FOLLOW_UPSTREAM


def _with_policies(spec: dg.AssetSpec) -> dg.AssetSpec:
    freshness = MODEL_FRESHNESS if spec.group_name in MODEL_GROUPS else DAILY_FRESHNESS
    return spec.replace_attributes(freshness_policy=freshness, automation_condition=_condition(spec))


def automated(assets: list) -> list:
    """The one place freshness policies and automation conditions are attached to every asset."""
    return list(dg.map_asset_specs(_with_policies, assets))


automation_sensor = dg.AutomationConditionSensorDefinition(
    "automation", target=dg.AssetSelection.all(), default_status=dg.DefaultSensorStatus.RUNNING
)


def record_incident(message: str) -> None:
    log = get_settings().data_dir / "logs" / "incidents.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as handle:
        handle.write(f"{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')} {message}\n")


@dg.sensor(
    job=retrain_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
    description="Retrains when a drift or realised-performance check fails as an error: one run per "
    "failing evaluation, none within the cool-down after the last one (CHURNOPS_RETRAIN_COOLDOWN_HOURS).",
)
def retrain_on_failed_checks(context: dg.SensorEvaluationContext):
    state = json.loads(context.cursor) if context.cursor else {"seen": {}, "last_retrain": 0.0}
    cooldown = dt.timedelta(hours=get_settings().retrain_cooldown_hours).total_seconds()
    now = dt.datetime.now(dt.UTC).timestamp()
    requests, skipped = [], []
    for key in RETRAIN_TRIGGERS:
        record = context.instance.get_latest_asset_check_evaluation_record(key)
        evaluation = record.evaluation if record else None
        if evaluation is None or state["seen"].get(key.to_user_string()) == record.id:
            continue
        state["seen"][key.to_user_string()] = record.id
        if evaluation.passed or evaluation.severity != dg.AssetCheckSeverity.ERROR:
            continue
        if now - state["last_retrain"] < cooldown or requests:
            skipped.append(f"{key.to_user_string()} failed ({evaluation.description}) within the cool-down")
            continue
        record_incident(f"retraining: {key.to_user_string()} failed: {evaluation.description}")
        state["last_retrain"] = now
        requests.append(
            dg.RunRequest(
                run_key=f"{key.to_user_string()}:{record.id}",
                tags={"churnops/trigger": key.to_user_string(), "churnops/check_run": record.run_id},
            )
        )
    context.update_cursor(json.dumps(state))
    if requests:
        return requests
    return dg.SkipReason("; ".join(skipped) or "no new failing drift or performance check")


@dg.run_failure_sensor(default_status=dg.DefaultSensorStatus.RUNNING, description="Writes failed runs to logs/incidents.log.")
def record_failed_runs(context: dg.RunFailureSensorContext):
    step_failures = "; ".join(
        f"{e.step_key}: {e.event_specific_data.error.message.strip().splitlines()[0]}"
        for e in context.get_step_failure_events()
        if e.event_specific_data and e.event_specific_data.error
    )
    record_incident(f"run {context.dagster_run.run_id} ({context.dagster_run.job_name}) failed: {step_failures or context.failure_event.message}")
