"""One switch, one place: every setting's default lives in churn_assets/settings.py, the environment
overrides it, and CHURNOPS_PROFILE=production refuses to start without its PostgreSQL stores."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from churn_assets.bringup import install_instance
from churn_assets.settings import DBT_PROJECT_DIR, PROJECT_ROOT, TELEMETRY_OFF, Settings, Surfaces

CONNECTIONS = {
    "CHURNOPS_DAGSTER_POSTGRES_URL": "postgresql://dagster:secret@db:5432/dagster",
    "CHURNOPS_MLFLOW_TRACKING_URI": "postgresql://mlflow:secret@db:5432/mlflow",
    "CHURNOPS_MLFLOW_ARTIFACT_LOCATION": "s3://churnops/mlflow",
}


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch):
    """No variable a setting reads, whatever the session or an earlier test exported."""
    for variable in [*Settings.variables().values(), *Surfaces.variables().values()]:
        monkeypatch.delenv(variable, raising=False)

    def given(**variables: str) -> Settings:
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        return Settings.from_env()

    return given


def test_the_local_profile_keeps_everything_under_the_data_dir_by_default(environment):
    settings = environment()
    data_dir = PROJECT_ROOT / ".churnops"

    assert settings.profile == "local"
    assert settings.data_dir == data_dir
    assert settings.warehouse_path == data_dir / "warehouse.duckdb"
    assert settings.bentoml_home == data_dir / "bentoml"
    assert settings.dagster_home == data_dir / "dagster_home"
    assert settings.mlflow_tracking_uri == f"sqlite:///{data_dir}/mlflow/mlflow.db"
    assert settings.mlflow_artifact_location == f"file://{data_dir}/mlflow/artifacts"
    assert settings.dagster_instance_template == PROJECT_ROOT / "dagster.yaml"
    assert settings.dagster_postgres_url is None
    numbers = {"n_users", "duckdb_memory_limit", "duckdb_threads", "service_workers", "bento_model", "service_tracing"}
    assert settings.model_dump(include=numbers) == {
        "n_users": 5000,
        "duckdb_memory_limit": "4GB",
        "duckdb_threads": 2,
        "service_workers": 2,
        "bento_model": "churn-model:latest",
        "service_tracing": "off",
    }
    assert Surfaces.from_env().model_dump() == {
        "host": "127.0.0.1",
        "dagster_port": 3000,
        "service_port": 3001,
        "mlflow_port": 5000,
        "reports_port": 8081,
        "docs_port": 8080,
    }


def test_a_variable_overrides_its_default_and_the_paths_follow_the_data_dir(environment, tmp_path):
    settings = environment(
        CHURNOPS_DATA_DIR=str(tmp_path),
        CHURNOPS_USERS="400",
        CHURNOPS_DUCKDB_MEMORY_LIMIT="1GB",
        CHURNOPS_SERVICE_WORKERS="1",
        CHURNOPS_BENTO_MODEL="churn-model:abc123",
        CHURNOPS_SERVICE_TRACING="on",
        CHURNOPS_SERVICE_PORT="4001",
    )

    assert settings.n_users == 400
    assert (settings.service_workers, settings.bento_model, settings.service_tracing) == (1, "churn-model:abc123", "on")
    assert Surfaces.from_env().service_port == 4001
    assert settings.subprocess_env() == {
        "CHURNOPS_DATA_DIR": str(tmp_path),
        "CHURNOPS_WAREHOUSE": str(tmp_path / "warehouse.duckdb"),
        "CHURNOPS_DUCKDB_MEMORY_LIMIT": "1GB",
        "CHURNOPS_DUCKDB_THREADS": "2",
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        **TELEMETRY_OFF,
    }


def test_paths_given_relative_are_made_absolute_and_a_named_path_wins_over_the_data_dir(
    environment, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    settings = environment(CHURNOPS_DATA_DIR="data", CHURNOPS_WAREHOUSE="elsewhere/w.duckdb", DAGSTER_HOME="home")

    assert settings.data_dir == tmp_path / "data"
    assert settings.warehouse_path == tmp_path / "elsewhere" / "w.duckdb"
    assert settings.dagster_home == tmp_path / "home"
    assert settings.bentoml_home == tmp_path / "data" / "bentoml"


def test_a_blank_variable_means_its_default(environment):
    settings = environment(CHURNOPS_DATA_DIR="  ", CHURNOPS_SEED="", CHURNOPS_PROFILE=" ")

    assert (settings.data_dir, settings.seed, settings.profile) == (PROJECT_ROOT / ".churnops", 42, "local")


def test_an_invalid_variable_is_named_with_the_value_it_had(environment):
    with pytest.raises(ValueError) as refused:
        environment(CHURNOPS_USERS="many", CHURNOPS_SOURCE="ftp")

    assert str(refused.value) == (
        "invalid settings:\n"
        "  CHURNOPS_USERS: Input should be a valid integer, unable to parse string as an integer (got 'many')\n"
        "  CHURNOPS_SOURCE: Input should be 'synthetic' or 'files' (got 'ftp')"
    )


@pytest.mark.parametrize(
    "given",
    [
        [],
        ["CHURNOPS_DAGSTER_POSTGRES_URL"],
        ["CHURNOPS_MLFLOW_TRACKING_URI", "CHURNOPS_MLFLOW_ARTIFACT_LOCATION"],
    ],
)
def test_production_refuses_to_start_without_its_connections_and_names_each_missing_one(environment, given):
    with pytest.raises(ValueError) as refused:
        environment(CHURNOPS_PROFILE="production", **{name: CONNECTIONS[name] for name in given})

    missing = [name for name in CONNECTIONS if name not in given]
    assert str(refused.value) == f"invalid settings:\n  CHURNOPS_PROFILE=production needs {', '.join(missing)}"


def test_production_takes_a_blank_connection_for_a_missing_one(environment):
    with pytest.raises(ValueError, match=r"needs CHURNOPS_DAGSTER_POSTGRES_URL$"):
        environment(CHURNOPS_PROFILE="production", **{**CONNECTIONS, "CHURNOPS_DAGSTER_POSTGRES_URL": " "})


def test_production_refuses_an_mlflow_store_outside_postgresql(environment, tmp_path):
    with pytest.raises(ValueError) as refused:
        environment(
            CHURNOPS_PROFILE="production",
            **{**CONNECTIONS, "CHURNOPS_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"},
        )

    assert str(refused.value) == (
        "invalid settings:\n  CHURNOPS_PROFILE=production needs CHURNOPS_MLFLOW_TRACKING_URI to be a postgresql:// URI"
    )


def test_production_uses_the_connections_given_and_selects_the_postgres_instance(environment):
    settings = environment(
        CHURNOPS_PROFILE="production",
        **{**CONNECTIONS, "CHURNOPS_MLFLOW_TRACKING_URI": "postgresql+psycopg2://mlflow:secret@db:5432/mlflow"},
    )

    assert settings.dagster_instance_template == PROJECT_ROOT / "dagster.production.yaml"
    assert settings.dagster_postgres_url == CONNECTIONS["CHURNOPS_DAGSTER_POSTGRES_URL"]
    assert settings.mlflow_tracking_uri == "postgresql+psycopg2://mlflow:secret@db:5432/mlflow"
    assert settings.mlflow_artifact_location == "s3://churnops/mlflow"
    assert "secret" not in repr(settings)


def test_a_command_installs_the_profiles_instance_yaml_into_dagster_home(environment, tmp_path):
    template = tmp_path / "instance.yaml"
    template.write_text("telemetry:\n  enabled: false\n")
    settings = environment(CHURNOPS_DATA_DIR=str(tmp_path / "data"), CHURNOPS_DAGSTER_INSTANCE_TEMPLATE=str(template))

    install_instance(settings)

    assert (tmp_path / "data" / "dagster_home" / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"


def test_the_makefile_and_the_dbt_profile_restate_no_default():
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    profile = (DBT_PROJECT_DIR / "profiles.yml").read_text()

    assert set(re.findall(r"^export (\w+)", makefile, re.MULTILINE)) == set(TELEMETRY_OFF)
    assert ".churnops" not in makefile + profile
    assert re.findall(r"env_var\(([^)]*)\)", profile) == [
        "'CHURNOPS_WAREHOUSE'",
        "'CHURNOPS_DUCKDB_MEMORY_LIMIT'",
        "'CHURNOPS_DUCKDB_THREADS'",
    ]


@pytest.mark.slow
def test_dbt_parses_from_a_bare_environment_through_churnops_exec_and_not_without_it(tmp_path):
    bare = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "CHURNOPS_DATA_DIR": str(tmp_path / "data"),
        **TELEMETRY_OFF,
    }
    where = ["--target-path", str(tmp_path / "target"), "--log-path", str(tmp_path / "logs")]

    def parse(*launcher: str) -> subprocess.CompletedProcess:
        command = [str(Path(sys.executable).with_name(launcher[0])), *launcher[1:], "parse", "--quiet", *where]
        return subprocess.run(
            command, cwd=DBT_PROJECT_DIR, env=bare, capture_output=True, text=True, timeout=300, check=False
        )

    bare_dbt = parse("dbt")
    parsed = parse("churnops", "exec", "dbt")

    assert parsed.returncode == 0, parsed.stdout[-2000:] + parsed.stderr[-2000:]
    assert (tmp_path / "target" / "manifest.json").exists()
    assert bare_dbt.returncode != 0
    assert "Env var required but not provided: 'CHURNOPS_WAREHOUSE'" in bare_dbt.stdout


def test_a_training_run_records_the_commit_an_image_was_built_from_and_asks_git_otherwise(environment, monkeypatch):
    from churn_assets.train.assets import _provenance

    environment(CHURNOPS_GIT_COMMIT="0123abc")
    assert _provenance()["git_commit"] == "0123abc"

    monkeypatch.delenv("CHURNOPS_GIT_COMMIT")
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=False)
    assert _provenance()["git_commit"] == (git.stdout.strip() if git.returncode == 0 else "unknown")

    monkeypatch.setenv("PATH", "/nonexistent")
    assert _provenance()["git_commit"] == "unknown", "an image has no git: the run goes on"
