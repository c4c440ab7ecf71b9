"""The code location loads, is laid out by lifecycle stage, and documents itself."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from churn_assets.contract import PLANS
from churn_assets.ingest.schema import EVENT_TYPES
from churn_assets.settings import DBT_PROJECT_DIR, PROJECT_ROOT, Settings, Surfaces

EXPECTED_GROUPS = {
    "raw_users": "ingest",
    "raw_events": "ingest",
    "stg_users": "transform",
    "stg_events": "transform",
    "int_user_daily_activity": "transform",
    "fct_user_features": "transform",
    "fct_churn_labels": "transform",
}


@pytest.fixture(scope="module")
def graph():
    from churn_assets.definitions import defs

    return defs.resolve_asset_graph()


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((DBT_PROJECT_DIR / "target" / "manifest.json").read_text())


def test_every_asset_sits_in_its_lifecycle_group(graph):
    groups = {key.path[-1]: graph.get(key).group_name for key in graph.get_all_asset_keys()}
    for asset, group in EXPECTED_GROUPS.items():
        assert groups.get(asset) == group, f"{asset} should be in group {group}"


def test_every_asset_has_a_description(graph):
    missing = [k.to_user_string() for k in graph.get_all_asset_keys() if not graph.get(k).description]
    assert not missing


def test_every_check_says_what_it_asserts(graph):
    checks = {key: graph.get_check_spec(key) for key in graph.asset_check_keys}
    assert not [key.name for key, spec in checks.items() if not spec.description]


def test_every_dbt_test_is_a_check_with_a_short_name_and_its_yaml_description(graph, manifest):
    """Unnamed, dbt names a test after its macro, model, column and arguments (hashed past 64
    characters), and the UI shows that name cut short: each test in the YAML names itself."""
    tests = [n for n in manifest["nodes"].values() if n["resource_type"] == "test"]
    checks = {(key.asset_key.path[-1], key.name): graph.get_check_spec(key) for key in graph.asset_check_keys}
    for test in tests:
        model = test["attached_node"].split(".")[-1]
        assert re.fullmatch(r"[a-z][a-z0-9_]{0,39}", test["name"]) and model not in test["name"], test["name"]
        assert test["description"].strip(), f"{test['name']} on {model} does not say what it asserts"
        assert checks[model, test["name"]].description == test["description"]
    assert len({(t["attached_node"], t["name"]) for t in tests}) == len(tests)
    assert (
        checks["fct_user_features", "tenure_days_not_negative"].description
        == "No snapshot is dated before its user signed up."
    )


def test_lineage_runs_from_raw_events_to_labels(graph):
    upstream = graph.get(dg.AssetKey(["marts", "fct_churn_labels"])).parent_keys
    assert dg.AssetKey(["marts", "fct_user_features"]) in upstream
    staging_events = graph.get(dg.AssetKey(["staging", "stg_events"]))
    assert dg.AssetKey("raw_events") in staging_events.parent_keys


def test_raw_checks_are_blocking(graph):
    specs = list(graph.get(dg.AssetKey("raw_events")).check_keys)
    assert specs
    assert all(graph.get_check_spec(k).blocking for k in specs)


def test_every_dbt_model_and_column_is_described(manifest):
    models = [n for n in manifest["nodes"].values() if n["resource_type"] == "model"]
    assert len(models) == 5
    for model in models:
        assert model["description"].strip(), f"{model['name']} has no description"
        assert model["columns"], f"{model['name']} documents no columns"
        for name, column in model["columns"].items():
            assert column["description"].strip(), f"{model['name']}.{name} has no description"


def test_every_mart_is_tested(manifest):
    tested = {
        dep for n in manifest["nodes"].values() if n["resource_type"] == "test" for dep in n["depends_on"]["nodes"]
    }
    marts = [n for n in manifest["nodes"].values() if n["resource_type"] == "model" and "marts" in n["fqn"]]
    assert marts
    assert all(m["unique_id"] in tested for m in marts)


def _accepted_values(path: Path, column: str) -> list:
    model = yaml.safe_load(path.read_text())["models"][0]
    column_spec = next(c for c in model["columns"] if c["name"] == column)
    test = next(t for t in column_spec["data_tests"] if isinstance(t, dict) and "accepted_values" in t)
    return test["accepted_values"]["arguments"]["values"]


def test_dbt_accepts_exactly_the_contract_values():
    models = DBT_PROJECT_DIR / "models"
    assert _accepted_values(models / "staging" / "stg_events.yml", "event_type") == list(EVENT_TYPES)
    assert _accepted_values(models / "staging" / "stg_users.yml", "plan") == list(PLANS)
    assert _accepted_values(models / "marts" / "fct_user_features.yml", "plan") == list(PLANS)


@pytest.mark.slow
def test_dagster_validates_the_workspace_on_our_instance_config(tmp_path):
    shutil.copy(PROJECT_ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    result = subprocess.run(
        [str(Path(sys.executable).with_name("dagster")), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=PROJECT_ROOT,
        env={**os.environ, "DAGSTER_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_every_setting_is_documented_in_the_readme():
    declared = [*Settings.variables().values(), *Surfaces.variables().values()]
    variables = {v for v in declared if v.startswith("CHURNOPS_")}
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert len(variables) > 20
    assert sorted(v for v in variables if f"`{v}`" not in readme) == []
