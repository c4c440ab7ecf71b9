"""The churnops code location: every lifecycle stage's assets, wired to resources built from settings."""

import dagster as dg

from churn_assets.automation import (
    automated,
    automation_sensor,
    record_failed_runs,
    retrain_job,
    retrain_on_failed_checks,
)
from churn_assets.bringup import bring_up_job
from churn_assets.ingest.assets import raw_events, raw_users
from churn_assets.monitor.assets import drift_report, feature_drift, model_performance
from churn_assets.resources import build_resources
from churn_assets.score.assets import churn_scores, high_risk_users
from churn_assets.serve.assets import bento_model
from churn_assets.serve.online import online_features
from churn_assets.settings import get_settings
from churn_assets.train.assets import churn_model, production_model, training_set
from churn_assets.transform.assets import dbt_daily_models, dbt_models

STAGES = [
    raw_users,
    raw_events,
    dbt_models,
    dbt_daily_models,
    training_set,
    churn_model,
    production_model,
    churn_scores,
    high_risk_users,
    bento_model,
    online_features,
    feature_drift,
    drift_report,
    model_performance,
]

defs = dg.Definitions(
    assets=automated(STAGES),
    jobs=[bring_up_job, retrain_job],
    sensors=[automation_sensor, retrain_on_failed_checks, record_failed_runs],
    resources=build_resources(get_settings()),
    # Steps share one DuckDB writer, so they run one at a time anyway: a step in the run's own
    # process saves the seconds a subprocess per step costs (imports of dagster, dbt, sklearn).
    executor=dg.in_process_executor,
)
