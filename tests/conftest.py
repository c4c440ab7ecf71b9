"""Shared fixtures: a private data dir per test, real DuckDB, real dbt, a real Dagster instance.

The environment is set before churn_assets is imported, because the partition calendar and the
default resources are read from it at import time.
"""

import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from churn_assets.settings import DBT_PROJECT_DIR, TELEMETRY_OFF

os.environ.update(TELEMETRY_OFF)
os.environ.setdefault("CHURNOPS_START_DATE", "2026-07-01")
# Never the developer's own platform: the Makefile exports these for `make up`.
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="churnops-tests-"))
os.environ["CHURNOPS_DATA_DIR"] = str(_SESSION_DIR / "default")
os.environ["BENTOML_HOME"] = str(_SESSION_DIR / "bentoml")
# The session's own temp dir, so a spec that no temp files are left sees this session's only.
(_SESSION_DIR / "tmp").mkdir()
os.environ["TMPDIR"] = str(_SESSION_DIR / "tmp")
tempfile.tempdir = None
os.environ.pop("CHURNOPS_WAREHOUSE", None)

import dagster as dg
import duckdb

from churn_assets.cli import materialize_history
from churn_assets.resources import build_resources
from churn_assets.settings import Settings

START = dt.date(2026, 7, 1)


def pytest_sessionfinish(session, exitstatus):
    """A passing session leaves nothing behind; a failing one (or CHURNOPS_KEEP_TEST_FILES=1) keeps its logs and warehouses."""
    if exitstatus == 0 and not os.environ.get("CHURNOPS_KEEP_TEST_FILES"):
        shutil.rmtree(_SESSION_DIR, ignore_errors=True)
    else:
        print(f"\nthis session's files (logs, warehouses, stores) are kept in {_SESSION_DIR}")


def pytest_collection_modifyitems(config, items):
    """The soak is the longest module: first in line, it runs beside the others instead of after them."""
    items.sort(key=lambda item: not item.nodeid.startswith("tests/soak/"))


def pytest_sessionstart(session):
    """The dbt assets are defined from the manifest, which ``make install`` writes; tests run without make too."""
    if not (DBT_PROJECT_DIR / "target" / "manifest.json").exists():
        subprocess.run(
            [str(Path(sys.executable).with_name("dbt")), "parse", "--quiet"],
            cwd=DBT_PROJECT_DIR,
            env={**os.environ, **Settings.from_env().subprocess_env()},
            check=True,
        )


class Platform:
    """One isolated platform: its own data dir, warehouse and Dagster instance."""

    def __init__(self, data_dir: Path, monkeypatch: pytest.MonkeyPatch):
        self.data_dir = data_dir
        self.monkeypatch = monkeypatch
        monkeypatch.setenv("CHURNOPS_DATA_DIR", str(data_dir))
        monkeypatch.delenv("CHURNOPS_WAREHOUSE", raising=False)
        self.instance = dg.DagsterInstance.ephemeral()
        self.configure()

    def configure(self, **env: str) -> None:
        for name, value in env.items():
            self.monkeypatch.setenv(name, value)
        self.settings = Settings.from_env()
        self.resources = build_resources(self.settings)

    def use_files(self, source_dir: Path) -> None:
        self.configure(CHURNOPS_SOURCE="files", CHURNOPS_SOURCE_DIR=str(source_dir))

    def materialize(
        self, start: dt.date, end: dt.date, selection: str = "*", tags: dict[str, str] | None = None
    ) -> dg.ExecuteInProcessResult:
        return materialize_history(start, end, selection, resources=self.resources, instance=self.instance, tags=tags)

    def materialize_data(self, start: dt.date, end: dt.date) -> dg.ExecuteInProcessResult:
        """Raw data to features and labels only: too short a history for the model stages."""
        return self.materialize(start, end, "group:ingest or group:transform")

    def query(self, sql: str) -> list[tuple]:
        with duckdb.connect(str(self.settings.warehouse_path), read_only=True) as con:
            return con.execute(sql).fetchall()

    def content_hashes(self, *schemas: str) -> dict[str, tuple[int, int]]:
        """Row count and an order-free hash of every row, per table of ``schemas``; load times are not content."""
        listed = ", ".join(f"'{s}'" for s in schemas)
        columns = self.query(
            f"SELECT c.table_schema || '.' || c.table_name, list(c.column_name ORDER BY c.ordinal_position) "
            f"FROM information_schema.columns AS c JOIN information_schema.tables AS t USING (table_schema, table_name) "
            f"WHERE c.table_schema IN ({listed}) AND t.table_type = 'BASE TABLE' AND c.column_name <> '_loaded_at' "
            f"GROUP BY 1 ORDER BY 1"
        )
        return {
            table: self.query(f"SELECT count(*), sum(hash({', '.join(names)})::HUGEINT) FROM {table}")[0]
            for table, names in columns
        }

    def frame(self, sql: str):
        with duckdb.connect(str(self.settings.warehouse_path), read_only=True) as con:
            return con.execute(sql).df()


@pytest.fixture
def platform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Platform:
    return Platform(tmp_path / "churnops", monkeypatch)


@pytest.fixture(scope="module")
def module_platform(tmp_path_factory: pytest.TempPathFactory):
    """A platform shared by a module's tests, for graphs too slow to rebuild per test."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield Platform(tmp_path_factory.mktemp("churnops"), monkeypatch)


USERS_HEADER = "user_id,signup_date,plan,country,acquisition_channel"
EVENTS_HEADER = "event_id,user_id,event_type,event_ts,value"


class SourceFiles:
    """A user's own export, as CSV files in the documented contract."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def write(
        self,
        users: list[str] | None = None,
        events: list[str] | None = None,
        users_header: str = USERS_HEADER,
        events_header: str = EVENTS_HEADER,
    ) -> Path:
        if users is not None:
            (self.root / "users.csv").write_text("\n".join([users_header, *users]) + "\n")
        if events is not None:
            (self.root / "events.csv").write_text("\n".join([events_header, *events]) + "\n")
        return self.root


SMALL_GRAPH_DAYS = (dt.date(2026, 7, 1), dt.date(2026, 10, 28))


@pytest.fixture(scope="session")
def small_graph(tmp_path_factory: pytest.TempPathFactory):
    """400 synthetic users over 120 days, raw events to the exported champion in one run.

    Shared by the model and service specs; those that change the champion put it back.
    """
    with pytest.MonkeyPatch.context() as monkeypatch:
        platform = Platform(tmp_path_factory.mktemp("small-graph"), monkeypatch)
        platform.configure(CHURNOPS_USERS="400")
        result = platform.materialize(*SMALL_GRAPH_DAYS)
        assert result.success
        yield platform, result


@pytest.fixture
def source_files(tmp_path: Path) -> SourceFiles:
    return SourceFiles(tmp_path / "export")


@pytest.fixture(scope="module")
def module_source_files(tmp_path_factory: pytest.TempPathFactory) -> SourceFiles:
    return SourceFiles(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="session")
def register_model():
    """Logs and registers a fitted pipeline as a new version, as churn_model would."""
    import mlflow
    import mlflow.sklearn

    from churn_assets.train.registry import SKOPS_TRUSTED_TYPES

    def register(registry, model, reference=None) -> int:
        registry.activate()
        mlflow.set_experiment(registry.experiment_name)
        with mlflow.start_run() as run:
            info = mlflow.sklearn.log_model(model, name="model", skops_trusted_types=SKOPS_TRUSTED_TYPES)
        if reference is not None:
            registry.save_reference(run.info.run_id, reference)
        return int(mlflow.register_model(info.model_uri, registry.model_name).version)

    return register
