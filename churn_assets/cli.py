"""``churnops``: the commands a person runs beside the Dagster UI."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import os
import sys
import time
from pathlib import Path

import dagster as dg
from dagster._core.definitions.data_version import DATA_VERSION_TAG
from dagster._core.events import DagsterEventType
from dagster._core.storage.tags import RUN_KEY_TAG, SENSOR_NAME_TAG

from churn_assets.bringup import QUIET_ENV, install_instance, surfaces
from churn_assets.incidents import incident_log
from churn_assets.settings import LOW_VOLUME_TAG, MODEL_NAME, Surfaces, get_settings

DRIFT_DEMO_DAYS = 14
RETRAIN_WAIT_S = 30 * 60
DRIFT_DEMO_SELECTION = "group:ingest or group:transform or group:score or group:monitor"
"""Everything that depends on the raw data except the model stages, which the retrain sensor drives."""


QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
"""A command's run logs to the instance (the Dagster UI), not the terminal; its summary says what failed.

dagster-dbt also echoes dbt's log to stdout; a command swallows that too (``quiet_stdout``), as
dbt keeps its own in ``dbt_project/logs/dbt.log``.
"""


@contextlib.contextmanager
def quiet_stdout():
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _run_in_process(
    selection: str | dg.AssetSelection, tags: dict, resources: dict | None, instance: dg.DagsterInstance | None
) -> dg.ExecuteInProcessResult:
    from churn_assets.definitions import defs

    with quiet_stdout():
        return dg.materialize(
            list(defs.assets),
            selection=selection,
            resources=resources if resources is not None else defs.resources,
            instance=instance or dg.DagsterInstance.get(),
            tags=tags,
            run_config=QUIET_CONSOLE,
            raise_on_error=False,
        )


def materialize_history(
    start: dt.date,
    end: dt.date,
    selection: str | dg.AssetSelection = "*",
    *,
    resources: dict | None = None,
    instance: dg.DagsterInstance | None = None,
    tags: dict[str, str] | None = None,
) -> dg.ExecuteInProcessResult:
    """One in-process run over a partition range: one DuckDB writer, and one run in the UI, not N."""
    window = {
        "dagster/asset_partition_range_start": start.isoformat(),
        "dagster/asset_partition_range_end": end.isoformat(),
    }
    return _run_in_process(selection, {**(tags or {}), **window}, resources, instance)


def run_retrain(
    request: dg.RunRequest, *, resources: dict | None = None, instance: dg.DagsterInstance | None = None
) -> dg.ExecuteInProcessResult:
    """Runs the retrain job here and now, tagged as the sensor's own run so the daemon counts it as its own."""
    from churn_assets.automation import RETRAIN_SENSOR, retrain_job
    from churn_assets.definitions import defs

    job = dg.Definitions(
        assets=list(defs.assets), jobs=[retrain_job], resources=resources if resources is not None else defs.resources
    ).resolve_job_def(retrain_job.name)
    tags = {**request.tags, RUN_KEY_TAG: request.run_key, SENSOR_NAME_TAG: RETRAIN_SENSOR}
    with quiet_stdout():
        return job.execute_in_process(
            instance=instance or dg.DagsterInstance.get(), tags=tags, run_config=QUIET_CONSOLE, raise_on_error=False
        )


def gate_decision(instance: dg.DagsterInstance, run_id: str) -> dict | None:
    """The gate's decision in a run (production_model's metadata), or None if the gate did not run."""
    from churn_assets.automation import CHAMPION_KEY

    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records
    for record in records:
        materialization = record.event_log_entry.asset_materialization
        if materialization is not None and materialization.asset_key == CHAMPION_KEY:
            return {key: value.value for key, value in materialization.metadata.items()}
    return None


def wait_for_run(instance: dg.DagsterInstance, run_id: str, timeout_s: float = RETRAIN_WAIT_S) -> dg.DagsterRun:
    deadline = time.monotonic() + timeout_s
    while (run := instance.get_run_by_id(run_id)) is not None and not run.is_finished:
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} still {run.status.value} after {timeout_s:.0f} s")
        time.sleep(2)
    return run


def settled_retrain_decision(instance: dg.DagsterInstance):
    """The retrain rule's decision once no run in flight (the daemon's, beside this command) is
    about to evaluate a watched check again: acting before its verdict would race the daemon."""
    from churn_assets.automation import decide_retrain

    while (decision := decide_retrain(instance)).waiting_on is not None:
        print(f"    {decision.reason}: waiting for its verdict", flush=True)
        wait_for_run(instance, decision.waiting_on)
    return decision


def _print_failed_checks(result: dg.ExecuteInProcessResult) -> list:
    """Prints every check that did not pass; returns those that failed as errors (warnings do not fail a command)."""
    failed = []
    for check in result.get_asset_check_evaluations():
        if check.passed:
            continue
        error = check.severity == dg.AssetCheckSeverity.ERROR
        failed += [check] if error else []
        label = "FAILED CHECK" if error else "WARNING"
        print(f"{label} {check.asset_key.to_user_string()}.{check.check_name}: {check.description}")
    return failed


def _print_failed_steps(result: dg.ExecuteInProcessResult) -> None:
    """Each failed step's own message (the traceback stays in the run's log and the Dagster UI)."""
    for event in result.all_events:
        if event.event_type_value != "STEP_FAILURE":
            continue
        failure = event.step_failure_data
        if failure.user_failure_data is not None and failure.user_failure_data.description:
            message = failure.user_failure_data.description
        else:
            message = (failure.error.message if failure.error else "no message").strip().splitlines()[0]
        print(f"FAILED STEP {event.step_key}: {message}")


def _tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _cmd_materialize(args: argparse.Namespace) -> int:
    settings = get_settings()
    start = dt.date.fromisoformat(args.start) if args.start else settings.start_date
    end = dt.date.fromisoformat(args.end) if args.end else settings.history_end
    tags = dict(args.tag)
    print(f"materializing {args.select!r} for {start} .. {end} into {settings.data_dir}", flush=True)
    result = materialize_history(start, end, args.select, tags=tags)
    failed_checks = _print_failed_checks(result)
    _print_failed_steps(result)
    print("run succeeded" if result.success else "run FAILED: see the Dagster UI for the step that stopped it")
    return 0 if result.success and not failed_checks else 1


def _cmd_drift_demo(args: argparse.Namespace) -> int:
    from churn_assets.automation import latest_retrain
    from churn_assets.resources import build_resources
    from churn_assets.settings import Settings

    end = get_settings().history_end
    start = dt.date.fromisoformat(args.start) if args.start else end - dt.timedelta(days=DRIFT_DEMO_DAYS - 1)
    os.environ["CHURNOPS_DRIFT_FROM"] = start.isoformat()
    settings = Settings.from_env()
    resources, instance = build_resources(settings), dg.DagsterInstance.get()

    refreshed_at = time.time()
    print(
        f"1/3 drift switch on from {start}: regenerating {start} .. {end} and refreshing everything downstream",
        flush=True,
    )
    result = materialize_history(start, end, DRIFT_DEMO_SELECTION, resources=resources, instance=instance)
    _print_failed_checks(result)
    if not result.success:
        print("the refresh FAILED: see the run in the Dagster UI", file=sys.stderr)
        return 1

    print("2/3 the retrain loop's decision (the same rule the daemon's retrain sensor applies)", flush=True)
    decision = settled_retrain_decision(instance)
    previous = latest_retrain(instance)
    if decision.request is not None:
        print(f"    retrain: {decision.reason}", flush=True)
        print("3/3 retraining here: training_set -> churn_model -> production_model -> bento_model", flush=True)
        result = run_retrain(decision.request, resources=resources, instance=instance)
        run = instance.get_run_by_id(result.run_id)
    elif previous is not None and previous.create_timestamp.timestamp() >= refreshed_at:
        run = previous.dagster_run
        print(f"    the daemon's retrain sensor already launched run {run.run_id} for this drift", flush=True)
        print(
            "3/3 waiting for that retrain: training_set -> churn_model -> production_model -> bento_model", flush=True
        )
        run = wait_for_run(instance, run.run_id)
    else:
        print(f"    no retrain: {decision.reason}")
        return 1
    gate = gate_decision(instance, run.run_id)
    if run.status != dg.DagsterRunStatus.SUCCESS or gate is None:
        print(f"the retrain run {run.run_id} ended {run.status.value}: see it in the Dagster UI", file=sys.stderr)
        return 1
    print(f"    gate: {gate['decision']} version {gate['candidate_version']}: {gate['reason']}")
    where = Surfaces.from_env()
    print(
        "\nwhere to look:\n"
        f"  Dagster UI  {where.url(where.dagster_port)}: Catalog > feature_drift > Checks (the failed drift check) and its psi_by_feature;\n"
        "              Runs filtered by tag churnops/trigger (the retrain); production_model's metadata (the decision)\n"
        f"  Evidently   {where.reports_url}/drift_report_{end}.html\n"
        f"  MLflow      {where.mlflow_url} > Models > {MODEL_NAME} > version {gate['candidate_version']}: gate_* tags\n"
        f"  incidents   {incident_log()}"
    )
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    from churn_assets.bringup import materialize_everything, serve_until_stopped, write_dbt_docs

    settings = get_settings()
    log_dir = settings.data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    print(
        f"1/3 the whole graph, {settings.start_date} .. {settings.history_end}, as run bring_up (full log: {log_dir / 'bring_up.log'})",
        flush=True,
    )
    result = materialize_everything(settings, dg.DagsterInstance.get(), log_dir)
    failed_checks = _print_failed_checks(result)
    _print_failed_steps(result)
    if not result.success or failed_checks:
        print("A step or a check failed (listed above); starting the surfaces anyway so you can see where.")
    print("2/3 the dbt docs site", flush=True)
    if not write_dbt_docs(settings, log_dir):
        print(f"dbt docs generate failed: see {log_dir / 'dbt_docs.log'}")
    print("3/3 the surfaces", flush=True)
    banner = f"\nbring-up took {(time.monotonic() - started) / 60:.1f} min"
    code = serve_until_stopped(settings, banner=banner)
    # Everything is stopped and nothing is left to flush; interpreter shutdown would wait another
    # 15-20 s on threads the in-process run left behind before the prompt came back.
    sys.stdout.flush()
    os._exit(code)


def _cmd_start(args: argparse.Namespace) -> int:
    from churn_assets.bringup import serve_until_stopped

    return serve_until_stopped(get_settings(), args.surface)


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


def record_champion_change(instance: dg.DagsterInstance, old: int, new: int) -> None:
    """Tells Dagster the champion moved outside a run, so automation re-scores and re-exports as after a promotion."""
    from churn_assets.automation import CHAMPION_KEY
    from churn_assets.train.assets import champion_data_version

    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key=CHAMPION_KEY,
            description=f"rolled back by churnops: version {old} -> version {new}",
            metadata={"decision": "rolled_back", "previous_champion_version": old, "champion_version": new},
            tags={DATA_VERSION_TAG: champion_data_version(new).value},
        )
    )


def _cmd_rollback(args: argparse.Namespace) -> int:
    registry = _registry()
    try:
        old, new = registry.rollback()
    except ValueError as error:
        print(f"cannot roll back: {error}", file=sys.stderr)
        return 1
    record_champion_change(dg.DagsterInstance.get(), old, new)
    print(f"{registry.model_name}@champion: version {old} -> version {new}")
    print("recorded on production_model: the automation sensor re-scores the latest day and re-exports bento_model")
    return 0


def _cmd_exec(args: argparse.Namespace) -> int:
    """Replaces this process, so the tool's exit code and Ctrl+C are its own; the venv's tools are
    found without activating it."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    os.execvpe(args.tool[0], args.tool, {**os.environ, "PATH": path})


def main(argv: list[str] | None = None) -> int:
    try:
        settings, where = get_settings(), Surfaces.from_env()
    except ValueError as error:
        print(f"churnops: {error}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="churnops", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    materialize = commands.add_parser("materialize", help="materialize assets over a date range in one run")
    materialize.add_argument("--select", default="*", help="Dagster asset selection (default: the whole graph)")
    materialize.add_argument("--start", help="first day (default: CHURNOPS_START_DATE)")
    materialize.add_argument("--end", help="last day (default: yesterday)")
    materialize.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        type=_tag,
        help=f"a run tag, repeatable (e.g. {LOW_VOLUME_TAG}=true to accept a low-volume delivery)",
    )
    materialize.set_defaults(func=_cmd_materialize)
    demo = commands.add_parser(
        "drift-demo",
        help="switch the generator's drift on, refresh, let the retrain sensor tick, show the gate's decision",
    )
    demo.add_argument("--start", help=f"first drifted day (default: the last {DRIFT_DEMO_DAYS} days up to yesterday)")
    demo.set_defaults(func=_cmd_drift_demo)
    commands.add_parser(
        "up", help="materialize the whole graph as run bring_up, then start every surface until Ctrl+C"
    ).set_defaults(func=_cmd_up)
    start = commands.add_parser("start", help="start surfaces of a platform that has run, until Ctrl+C")
    keys = [s.key for s in surfaces(settings, where)]
    start.add_argument("surface", nargs="*", metavar="SURFACE", help=f"which: {', '.join(keys)} (default: all)")
    start.set_defaults(func=_cmd_start)
    commands.add_parser("champion-history", help="list every champion, newest first").set_defaults(func=_cmd_history)
    commands.add_parser("rollback", help="move the champion alias back to the previous champion").set_defaults(
        func=_cmd_rollback
    )
    tool = commands.add_parser(
        "exec", help="run a tool (dbt, dagster, bentoml) with the environment the settings resolve, e.g. exec dbt parse"
    )
    tool.add_argument("tool", nargs=argparse.REMAINDER, metavar="COMMAND", help="the command and its arguments")
    tool.set_defaults(func=_cmd_exec)
    args = parser.parse_args(argv)
    if unknown := set(getattr(args, "surface", [])) - set(keys):
        start.error(f"no such surface: {', '.join(sorted(unknown))} (choose from {', '.join(keys)})")
    if args.command == "exec" and not args.tool:
        tool.error("name the command to run")
    install_instance(settings)
    os.environ.update({**settings.subprocess_env(), **QUIET_ENV})
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
