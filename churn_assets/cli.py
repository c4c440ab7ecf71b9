"""``churnops``: the commands a person runs beside the Dagster UI."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys

import dagster as dg

from churn_assets.settings import MODEL_NAME, get_settings


DRIFT_DEMO_DAYS = 14
DRIFT_DEMO_SELECTION = "group:ingest or group:transform or group:score or group:monitor"
"""Everything that depends on the raw data except the model stages, which the retrain sensor drives."""


def _run_in_process(
    selection: str | dg.AssetSelection, tags: dict, resources: dict | None, instance: dg.DagsterInstance | None
) -> dg.ExecuteInProcessResult:
    from churn_assets.definitions import defs

    return dg.materialize(
        list(defs.assets),
        selection=selection,
        resources=resources if resources is not None else defs.resources,
        instance=instance or dg.DagsterInstance.get(),
        tags=tags,
        raise_on_error=False,
    )


def materialize_history(
    start: dt.date,
    end: dt.date,
    selection: str | dg.AssetSelection = "*",
    *,
    resources: dict | None = None,
    instance: dg.DagsterInstance | None = None,
) -> dg.ExecuteInProcessResult:
    """One in-process run over a partition range: one DuckDB writer, and one run in the UI, not N."""
    tags = {"dagster/asset_partition_range_start": start.isoformat(), "dagster/asset_partition_range_end": end.isoformat()}
    return _run_in_process(selection, tags, resources, instance)


def tick_retrain_sensor(instance: dg.DagsterInstance) -> list[dg.RunRequest]:
    """One evaluation of the retrain sensor, as the daemon's next tick would make it."""
    from churn_assets.automation import retrain_on_failed_checks

    result = retrain_on_failed_checks(dg.build_sensor_context(instance=instance))
    return result if isinstance(result, list) else []


def run_retrain(
    request: dg.RunRequest, *, resources: dict | None = None, instance: dg.DagsterInstance | None = None
) -> dg.ExecuteInProcessResult:
    """Runs a retrain request here and now, tagged as the sensor's own run so the daemon does not repeat it."""
    from churn_assets.automation import RETRAIN_SELECTION, retrain_on_failed_checks

    tags = {**request.tags, "dagster/run_key": request.run_key, "dagster/sensor_name": retrain_on_failed_checks.name}
    return _run_in_process(RETRAIN_SELECTION, tags, resources, instance)


def gate_decision(result: dg.ExecuteInProcessResult) -> dict:
    """The production_model materialization's metadata: the gate's decision and both scores."""
    (materialization,) = result.asset_materializations_for_node("production_model")
    return {key: value.value for key, value in materialization.metadata.items()}


def _print_failed_checks(result: dg.ExecuteInProcessResult) -> list:
    failed = [check for check in result.get_asset_check_evaluations() if not check.passed]
    for check in failed:
        print(f"FAILED CHECK {check.asset_key.to_user_string()}.{check.check_name}: {check.description}")
    return failed


def _cmd_materialize(args: argparse.Namespace) -> int:
    settings = get_settings()
    start = dt.date.fromisoformat(args.start) if args.start else settings.start_date
    end = dt.date.fromisoformat(args.end) if args.end else settings.history_end
    print(f"materializing {args.select!r} for {start} .. {end} into {settings.data_dir}", flush=True)
    result = materialize_history(start, end, args.select)
    failed_checks = _print_failed_checks(result)
    print("run succeeded" if result.success else "run FAILED: see the Dagster UI for the step that stopped it")
    return 0 if result.success and not failed_checks else 1


def _cmd_drift_demo(args: argparse.Namespace) -> int:
    from churn_assets.resources import build_resources
    from churn_assets.settings import Settings

    end = get_settings().history_end
    start = dt.date.fromisoformat(args.start) if args.start else end - dt.timedelta(days=DRIFT_DEMO_DAYS - 1)
    os.environ["CHURNOPS_DRIFT_FROM"] = start.isoformat()
    settings = Settings.from_env()
    resources, instance = build_resources(settings), dg.DagsterInstance.get()

    print(f"1/3 drift switch on from {start}: regenerating {start} .. {end} and refreshing everything downstream", flush=True)
    result = materialize_history(start, end, DRIFT_DEMO_SELECTION, resources=resources, instance=instance)
    _print_failed_checks(result)
    if not result.success:
        print("the refresh FAILED: see the run in the Dagster UI", file=sys.stderr)
        return 1

    print("2/3 the retrain sensor's tick", flush=True)
    requests = tick_retrain_sensor(instance)
    if not requests:
        print("no drift or performance check failed as an error: nothing to retrain (try an earlier --start)")
        return 1
    print(f"    retrain requested by {requests[0].tags['churnops/trigger']} (run key {requests[0].run_key})")

    print("3/3 retraining: training_set -> churn_model -> production_model -> bento_model", flush=True)
    result = run_retrain(requests[0], resources=resources, instance=instance)
    if not result.success:
        print("the retrain run FAILED: see the run in the Dagster UI", file=sys.stderr)
        return 1
    gate = gate_decision(result)
    print(f"    gate: {gate['decision']} version {gate['candidate_version']}: {gate['reason']}")
    print(
        "\nwhere to look:\n"
        "  Dagster UI  Assets > feature_drift > Checks (the failed drift check) and its psi_by_feature;\n"
        "              Runs filtered by tag churnops/trigger (the retrain); production_model's metadata (the decision)\n"
        f"  Evidently   {settings.reports_dir}/drift_report_{end}.html\n"
        f"  MLflow      make mlflow-ui > Models > {MODEL_NAME} > version {gate['candidate_version']}: gate_* tags\n"
        f"  incidents   {settings.data_dir / 'logs' / 'incidents.log'}"
    )
    return 0


def _registry():
    from churn_assets.resources import build_resources

    return build_resources(get_settings())["registry"]


def _cmd_history(args: argparse.Namespace) -> int:
    registry = _registry()
    champion = registry.champion()
    entries = registry.history()
    if not entries:
        print(f"{registry.model_name} has had no champion yet")
        return 0
    print(f"{'version':>7}  {'champion since':<32}  {'roc_auc':<8}  status")
    for entry in entries:
        status = "champion" if champion and int(champion.version) == entry.version else ""
        status = status or (f"rolled back {entry.rolled_back}" if entry.rolled_back else "previous")
        print(f"{entry.version:>7}  {entry.since:<32}  {entry.roc_auc[:8]:<8}  {status}")
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    registry = _registry()
    try:
        old, new = registry.rollback()
    except ValueError as error:
        print(f"cannot roll back: {error}", file=sys.stderr)
        return 1
    print(f"{registry.model_name}@champion: version {old} -> version {new}")
    print("re-materialize churn_scores (and bento_model) to serve and score with it")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="churnops", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    materialize = commands.add_parser("materialize", help="materialize assets over a date range in one run")
    materialize.add_argument("--select", default="*", help="Dagster asset selection (default: the whole graph)")
    materialize.add_argument("--start", help="first day (default: CHURNOPS_START_DATE)")
    materialize.add_argument("--end", help="last day (default: yesterday)")
    materialize.set_defaults(func=_cmd_materialize)
    demo = commands.add_parser(
        "drift-demo", help="switch the generator's drift on, refresh, let the retrain sensor tick, show the gate's decision"
    )
    demo.add_argument("--start", help=f"first drifted day (default: the last {DRIFT_DEMO_DAYS} days up to yesterday)")
    demo.set_defaults(func=_cmd_drift_demo)
    commands.add_parser("champion-history", help="list every champion, newest first").set_defaults(func=_cmd_history)
    commands.add_parser("rollback", help="move the champion alias back to the previous champion").set_defaults(
        func=_cmd_rollback
    )
    args = parser.parse_args(argv)
    dagster_home = get_settings().dagster_home
    os.environ.setdefault("DAGSTER_HOME", str(dagster_home))
    dagster_home.mkdir(parents=True, exist_ok=True)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
