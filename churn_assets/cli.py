"""``churnops``: the commands a person runs beside the Dagster UI."""

from __future__ import annotations

import argparse
import datetime as dt
import sys

import dagster as dg

from churn_assets.settings import get_settings


def materialize_history(
    start: dt.date,
    end: dt.date,
    selection: str = "*",
    *,
    resources: dict | None = None,
    instance: dg.DagsterInstance | None = None,
) -> dg.ExecuteInProcessResult:
    """One in-process run over a partition range: one DuckDB writer, and one run in the UI, not N."""
    from churn_assets.definitions import defs

    return dg.materialize(
        list(defs.assets),
        selection=selection,
        resources=resources if resources is not None else defs.resources,
        instance=instance or dg.DagsterInstance.get(),
        tags={
            "dagster/asset_partition_range_start": start.isoformat(),
            "dagster/asset_partition_range_end": end.isoformat(),
        },
        raise_on_error=False,
    )


def _cmd_materialize(args: argparse.Namespace) -> int:
    settings = get_settings()
    start = dt.date.fromisoformat(args.start) if args.start else settings.start_date
    end = dt.date.fromisoformat(args.end) if args.end else settings.history_end
    print(f"materializing {args.select!r} for {start} .. {end} into {settings.data_dir}", flush=True)
    result = materialize_history(start, end, args.select)
    failed_checks = [c for c in result.get_asset_check_evaluations() if not c.passed]
    for check in failed_checks:
        print(f"FAILED CHECK {check.asset_key.to_user_string()}.{check.check_name}: {check.description}")
    print("run succeeded" if result.success else "run FAILED: see the Dagster UI for the step that stopped it")
    return 0 if result.success and not failed_checks else 1


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
    commands.add_parser("champion-history", help="list every champion, newest first").set_defaults(func=_cmd_history)
    commands.add_parser("rollback", help="move the champion alias back to the previous champion").set_defaults(
        func=_cmd_rollback
    )
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
