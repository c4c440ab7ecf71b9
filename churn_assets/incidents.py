"""The incident log, and the run tags that say why a retrain run exists.

Failed asset checks do not fail runs, so nothing in Dagster's run list shows a drift episode at
a glance; ``<data dir>/logs/incidents.log`` does. Lines are written by what really happened: a
failed run (the run-failure sensor), a retrain run that started and the gate's verdict in it
(the train stage), never by a sensor that merely decided to ask for a run.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path

from churn_assets.settings import get_settings

TRIGGER_TAG = "churnops/trigger"
"""On a retrain run: the check whose failing evaluation asked for it."""
REASON_TAG = "churnops/reason"
"""On a retrain run: that evaluation's description."""
CHECK_RUN_TAG = "churnops/check_run"
"""On a retrain run: the run that evaluated the failing check."""


def incident_log() -> Path:
    return get_settings().data_dir / "logs" / "incidents.log"


def record_incident(message: str) -> None:
    log = incident_log()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as handle:
        handle.write(f"{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')} {message}\n")


def record_retrain_step(run_id: str, tags: Mapping[str, str], what: str) -> None:
    """One line for a step of a check-triggered retrain run; weekly and manual retrains are no incident."""
    if TRIGGER_TAG in tags:
        record_incident(f"retrain run {run_id}: {what}")
