"""The production profile end to end: Dagster's instance and MLflow's store on PostgreSQL.

As in a deployment, the webserver, the daemon and a code server (``dagster api grpc``) are separate
processes sharing one instance (``dagster.production.yaml``), and every run goes through the
queue. The bring-up is submitted through the webserver's GraphQL API and launched by the daemon.
A drifted refresh from the ``churnops`` CLI then fails the drift check, the daemon's retrain sensor
retrains once, the daemon is restarted, and ``churnops rollback`` moves the champion back.
PostgreSQL 15 is a throw-away cluster of this module (pytest-postgresql); both stores are then
read with SQL, so what the specs see is what PostgreSQL holds. The clock is the real one:
PostgreSQL stamps each run's creation time itself, so a faked clock in the platform's processes
alone (as in the SQLite soak) would mix two clocks in the retrain rule.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from dagster._core.scheduler.instigation import TickStatus
from dagster._core.storage.tags import RUN_KEY_TAG, SENSOR_NAME_TAG
from dagster_graphql import DagsterGraphQLClient
from pytest_postgresql.executors import PostgreSQLExecutor
from pytest_postgresql.janitor import DatabaseJanitor

from churn_assets.automation import RETRAIN_SENSOR
from churn_assets.bringup import BRING_UP_JOB
from churn_assets.cli import DRIFT_DEMO_DAYS, DRIFT_DEMO_SELECTION, wait_for_run
from churn_assets.monitor.assets import FEATURE_DRIFT_CHECK
from churn_assets.settings import CHAMPION_ALIAS, MODEL_NAME, PROJECT_ROOT
from tests.soak.harness import PlatformProcesses, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3000)]

PG_CTL = Path(__file__).with_name("pg_ctl_as_postgres")
HISTORY_DAYS = 120
RUN_TIMEOUT_S = 900
DAEMON_START_TIMEOUT_S = 180


def _hand_to_postgres(folder: Path) -> None:
    """As root, the server runs as ``postgres`` (see pg_ctl_as_postgres): it owns its folder and
    may pass through pytest's private temp folders above it, without listing them."""
    shutil.chown(folder, "postgres", "postgres")
    for parent in folder.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL 15 cluster with a database for Dagster and one for MLflow; yields the server's URL."""
    folder = tmp_path_factory.mktemp("postgres")
    if os.geteuid() == 0:
        _hand_to_postgres(folder)
    port = free_port()
    server = PostgreSQLExecutor(
        executable=str(PG_CTL),
        host="127.0.0.1",
        port=port,
        datadir=str(folder / "data"),
        unixsocketdir=str(folder),
        logfile=str(folder / "postgresql.log"),
        startparams="-w",
        dbname="dagster",
    )
    databases = [
        DatabaseJanitor(user=server.user, host=server.host, port=port, dbname=name) for name in ("dagster", "mlflow")
    ]
    with server:
        for database in databases:
            database.init()
        yield f"postgresql://{server.user}@{server.host}:{port}"


def psycopg2_url(url: str) -> str:
    """SQLAlchemy 2.1 picks psycopg 3 for ``postgresql://``; dagster-postgres is written for psycopg2
    (under psycopg 3 its webserver's per-connection hook closes every connection it opens)."""
    return url.replace("postgresql://", "postgresql+psycopg2://")


class ProductionPlatform(PlatformProcesses):
    """The production profile on the module's PostgreSQL, with history up to yesterday by the real clock."""

    def __init__(self, root: Path, server_url: str):
        self.dagster_db = f"{server_url}/dagster"
        self.mlflow_db = f"{server_url}/mlflow"
        self.end = dt.date.today() - dt.timedelta(days=1)
        self.start = self.end - dt.timedelta(days=HISTORY_DAYS - 1)
        super().__init__(
            root,
            PROJECT_ROOT / "dagster.production.yaml",
            {
                "CHURNOPS_PROFILE": "production",
                "CHURNOPS_DAGSTER_POSTGRES_URL": psycopg2_url(self.dagster_db),
                "CHURNOPS_MLFLOW_TRACKING_URI": psycopg2_url(self.mlflow_db),
                "CHURNOPS_MLFLOW_ARTIFACT_LOCATION": (root / "mlflow-artifacts").as_uri(),
                "CHURNOPS_START_DATE": self.start.isoformat(),
                "CHURNOPS_HISTORY_DAYS": str(HISTORY_DAYS),
                # A weekly snapshot per user is enough to train on here, with a seventh of the rows to fit.
                "CHURNOPS_SNAPSHOT_STRIDE_DAYS": "7",
                # Every retrain's candidate above the floor is promoted, so there are two champions
                # to roll back between whatever the drifted data does to the candidate's score.
                "CHURNOPS_PROMOTION_MARGIN": "-1",
            },
        )

    def sql(self, database: str, query: str, *params) -> list[tuple]:
        with psycopg.connect(database) as con:
            return con.execute(query, params).fetchall()

    def champion(self) -> int:
        ((version,),) = self.sql(
            self.mlflow_db,
            "SELECT version FROM registered_model_aliases WHERE name = %s AND alias = %s",
            MODEL_NAME,
            CHAMPION_ALIAS,
        )
        return version


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory, postgres: str):
    """Bring-up through the webserver, a drifted refresh, the daemon's retrain, a daemon restart, a rollback."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        # The test reads the instance through the same dagster.yaml, which names this variable.
        monkeypatch.setenv("CHURNOPS_DAGSTER_POSTGRES_URL", psycopg2_url(f"{postgres}/dagster"))
        platform = ProductionPlatform(tmp_path_factory.mktemp("production"), postgres)
        try:
            platform.start_code_server()
            webserver = platform.start_webserver()
            platform.start_daemon()
            client = DagsterGraphQLClient("127.0.0.1", port_number=webserver)
            platform.bring_up_run = client.submit_job_execution(
                BRING_UP_JOB,
                tags={
                    "dagster/asset_partition_range_start": platform.start.isoformat(),
                    "dagster/asset_partition_range_end": platform.end.isoformat(),
                },
            )
            bring_up = wait_for_run(platform.instance, platform.bring_up_run, timeout_s=RUN_TIMEOUT_S)
            assert bring_up.status == dg.DagsterRunStatus.SUCCESS, f"see {platform.data_dir}"
            platform.wait_until_idle(since=time.time())

            drift_from = platform.end - dt.timedelta(days=DRIFT_DEMO_DAYS - 1)
            platform.drifted = platform.churnops(
                "materialize",
                "--select",
                DRIFT_DEMO_SELECTION,
                "--start",
                drift_from.isoformat(),
                CHURNOPS_DRIFT_FROM=drift_from.isoformat(),
            )
            platform.wait_until_idle(since=time.time())

            platform.restarted_at = platform.restart_daemon()
            platform.wait_for_tick(RETRAIN_SENSOR, after=platform.restarted_at, timeout_s=DAEMON_START_TIMEOUT_S)
            platform.wait_until_idle(since=platform.restarted_at)
        finally:
            platform.stop()
        platform.champion_before_rollback = platform.champion()
        platform.rollback = platform.churnops("rollback")
        yield platform


def test_a_run_submitted_through_the_webserver_is_queued_then_launched_by_the_daemon(production):
    """The webserver only enqueues (QueuedRunCoordinator); the daemon is the one process that launches queued runs."""
    events = production.sql(
        production.dagster_db,
        "SELECT dagster_event_type FROM event_logs WHERE run_id = %s AND dagster_event_type LIKE 'PIPELINE_%%' "
        "ORDER BY id",
        production.bring_up_run,
    )
    assert [e for (e,) in events] == ["PIPELINE_ENQUEUED", "PIPELINE_STARTING", "PIPELINE_START", "PIPELINE_SUCCESS"]


def test_the_whole_graph_materializes_in_that_run_with_its_events_in_postgres(production):
    from churn_assets.definitions import defs

    rows = production.sql(
        production.dagster_db,
        "SELECT asset_key, count(DISTINCT coalesce(partition, '')) FROM event_logs "
        "WHERE run_id = %s AND dagster_event_type = 'ASSET_MATERIALIZATION' GROUP BY asset_key",
        production.bring_up_run,
    )
    materialized = {dg.AssetKey.from_db_string(key): partitions for key, partitions in rows}
    assert set(materialized) == set(defs.resolve_asset_graph().materializable_asset_keys)
    assert materialized[dg.AssetKey("raw_events")] == HISTORY_DAYS
    assert materialized[dg.AssetKey(["marts", "fct_user_features"])] == HISTORY_DAYS
    assert materialized[dg.AssetKey("churn_model")] == 1


def test_the_failing_drift_check_gives_one_retrain_launched_by_the_daemon_also_after_a_restart(production):
    assert production.drifted.returncode == 1, production.drifted.stdout + production.drifted.stderr
    assert f"FAILED CHECK feature_drift.{FEATURE_DRIFT_CHECK}" in production.drifted.stdout
    (retrain,) = production.instance.get_runs(dg.RunsFilter(tags={SENSOR_NAME_TAG: RETRAIN_SENSOR}))
    assert retrain.status == dg.DagsterRunStatus.SUCCESS
    (state,) = [s for s in production.instance.all_instigator_state() if s.instigator_name == RETRAIN_SENSOR]
    assert state.instigator_data.last_run_key == retrain.tags[RUN_KEY_TAG]
    ticks = production.ticks(RETRAIN_SENSOR)
    before_restart = [t for t in ticks if t.timestamp < production.restarted_at]
    assert [t.run_ids for t in before_restart if t.status == TickStatus.SUCCESS] == [[retrain.run_id]]
    latest = production.instance.get_latest_asset_check_evaluation_record(
        dg.AssetCheckKey(dg.AssetKey("feature_drift"), FEATURE_DRIFT_CHECK)
    )
    assert latest.event.timestamp > production.instance.get_run_record_by_id(retrain.run_id).end_time
    assert not latest.evaluation.passed, "the drift check failed again after the retrain"
    # A tick the daemon's stop interrupted (still STARTED) decided nothing; the finished ones all skipped.
    after_restart = [t for t in ticks if t.timestamp >= production.restarted_at and t.status != TickStatus.STARTED]
    assert after_restart and {t.status for t in after_restart} == {TickStatus.SKIPPED}
    assert all(f"retrain run {retrain.run_id}" in t.skip_reason for t in after_restart)
    assert all("within the 24 h cool-down" in t.skip_reason for t in after_restart)


def test_the_champion_and_the_gates_tags_are_in_the_postgres_mlflow_store(production):
    tags = production.sql(
        production.mlflow_db,
        "SELECT version, key, value FROM model_version_tags WHERE name = %s AND key LIKE 'gate_%%'",
        MODEL_NAME,
    )
    gates = {(version, key): value for version, key, value in tags}
    assert gates[1, "gate_decision"] == gates[2, "gate_decision"] == "promoted"
    assert (gates[1, "gate_champion_version"], gates[2, "gate_champion_version"]) == ("none", "1")
    assert production.champion_before_rollback == 2
    ((location,),) = production.sql(
        production.mlflow_db, "SELECT artifact_location FROM experiments WHERE name = 'churnops'"
    )
    assert location == production.env["CHURNOPS_MLFLOW_ARTIFACT_LOCATION"]


def test_rollback_moves_the_champion_back_in_postgres_and_tells_the_instance(production):
    assert production.rollback.returncode == 0, production.rollback.stdout + production.rollback.stderr
    assert f"{MODEL_NAME}@{CHAMPION_ALIAS}: version 2 -> version 1" in production.rollback.stdout
    assert production.champion() == 1
    ((rolled_back,),) = production.sql(
        production.mlflow_db,
        "SELECT count(*) FROM model_version_tags WHERE name = %s AND version = 2 AND key = 'rolled_back_at'",
        MODEL_NAME,
    )
    assert rolled_back == 1
    latest = production.instance.get_latest_materialization_event(dg.AssetKey("production_model"))
    assert latest.run_id == ""
    assert latest.asset_materialization.metadata["decision"].value == "rolled_back"


def test_no_sensor_tick_errored_and_no_run_failed(production):
    assert {"automation", RETRAIN_SENSOR, "record_failed_runs"} <= set(production.sensors())
    for sensor in production.sensors():
        errors = [t.error.to_string() for t in production.ticks(sensor) if t.status == TickStatus.FAILURE]
        assert errors == [], sensor
    failed = production.instance.get_runs(
        dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED])
    )
    assert failed == []
