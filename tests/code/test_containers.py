"""The images as shipped in deploy/docker/: no engine runs here, so these read what a build would do."""

import fnmatch
import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from churn_assets.settings import PROJECT_ROOT

DOCKER_DIR = PROJECT_ROOT / "deploy" / "docker"
ML, API = DOCKER_DIR / "Dockerfile.ml", DOCKER_DIR / "Dockerfile.api"
ROOT_USERS = {"root", "0", "root:root", "0:0"}


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, instruction: str) -> list[str]:
        return [args for name, args in self.instructions if name == instruction]


def stages(dockerfile: Path) -> list[Stage]:
    """Instructions by stage, continuation lines joined and comments dropped, as the builder reads them."""
    text = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", dockerfile.read_text())
    result: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        instruction, args = instruction.upper(), " ".join(args.split())
        if instruction == "FROM":
            base, _, name = args.partition(" AS ")
            result.append(Stage(base=base.strip(), name=name.strip() or None))
        else:
            result[-1].instructions.append((instruction, args))
    return result


def copies_from_context(stage: Stage) -> list[str]:
    """Sources of each COPY that reads the build context (not another stage)."""
    sources = []
    for args in stage.args("COPY"):
        words = shlex.split(args)
        if any(word.startswith("--from=") for word in words):
            continue
        sources += [word for word in words if not word.startswith("--")][:-1]
    return sources


def dockerignore() -> list[str]:
    lines = (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str) -> bool:
    parts = Path(path).parts
    for pattern in dockerignore():
        pattern = pattern.removeprefix("**/")
        for depth in range(1, len(parts) + 1):
            prefix = "/".join(parts[:depth])
            if fnmatch.fnmatch(prefix, pattern) or fnmatch.fnmatch(parts[depth - 1], pattern):
                return True
    return False


def exec_form(args: str) -> list[str]:
    return json.loads(args)


@pytest.mark.parametrize("dockerfile", [ML, API], ids=lambda path: path.name)
def test_hadolint_passes(dockerfile):
    lint = subprocess.run(
        [str(Path(sys.executable).with_name("hadolint")), str(dockerfile.relative_to(PROJECT_ROOT))],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr


@pytest.mark.parametrize("dockerfile", [ML, API], ids=lambda path: path.name)
def test_the_image_is_built_in_stages_and_its_final_stage_runs_as_a_user_that_is_not_root(dockerfile):
    built = stages(dockerfile)
    final = built[-1]
    users = final.args("USER")

    assert len(built) >= 2
    assert any(args.startswith("--from=") for args in final.args("COPY")), "the final stage takes the build's result"
    assert not any(re.search(r"\buv (sync|pip install)", args) for args in final.args("RUN")), "nothing built last"
    assert users and users[-1] not in ROOT_USERS
    assert users[-1].split(":")[0].isdigit(), "a numeric uid lets Kubernetes' runAsNonRoot verify it"


@pytest.mark.parametrize("dockerfile", [ML, API], ids=lambda path: path.name)
def test_every_file_the_image_copies_is_committed_and_in_the_build_context(dockerfile):
    sources = [source for stage in stages(dockerfile) for source in copies_from_context(stage)]

    tracked = subprocess.run(
        ["git", "ls-files", "--", *sources], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()

    assert sources
    assert [source for source in sources if not any(path.startswith(source) for path in tracked)] == []
    assert [source for source in sources if ignored(source)] == []


def test_the_build_context_leaves_out_what_the_machine_wrote():
    for path in (".venv/bin/python", ".churnops/warehouse.duckdb", ".tools/bin/uv", "dbt_project/target/manifest.json"):
        assert ignored(path), path
    for path in ("churn_assets/__pycache__/settings.cpython-311.pyc", ".pytest_cache/v", ".ruff_cache/x", ".git/HEAD"):
        assert ignored(path), path
    for path in (
        "uv.lock",
        "pyproject.toml",
        "churn_assets/settings.py",
        "dbt_project/models/marts/fct_user_features.yml",
    ):
        assert not ignored(path), path


def test_the_ml_image_installs_the_locked_environment_and_bakes_the_dbt_manifest():
    builder, final = stages(ML)[-2], stages(ML)[-1]
    runs = " && ".join(builder.args("RUN"))

    assert "uv.lock" in copies_from_context(builder)
    assert "uv sync --frozen --no-dev" in runs
    assert "dbt parse" in runs
    assert ignored("dbt_project/target/manifest.json"), "the manifest comes from the build, never the machine"
    assert any(f"--from={builder.name}" in args and "/dbt_project" in args for args in final.args("COPY")), (
        "the parsed project, target/manifest.json with it, is what the final stage copies"
    )


def test_the_ml_image_serves_the_code_location_the_workspace_loads_over_grpc():
    (location,) = yaml.safe_load((PROJECT_ROOT / "workspace.yaml").read_text())["load_from"]
    module = location["python_module"]["module_name"]
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    command = exec_form(stages(ML)[-1].args("CMD")[-1])
    port = command[command.index("-p") + 1]

    assert command[:3] == ["dagster", "api", "grpc"]
    assert command[command.index("-m") + 1] == module == pyproject["tool"]["dagster"]["module_name"]
    assert command[command.index("-h") + 1] == "0.0.0.0"
    assert stages(ML)[-1].args("EXPOSE") == [port]


def test_the_serving_image_serves_the_service_on_its_port_and_checks_its_liveness_there():
    from bento.service import ChurnService

    port = str(ChurnService.config["http"]["port"])
    final = stages(API)[-1]
    command = exec_form(final.args("CMD")[-1])
    (healthcheck,) = final.args("HEALTHCHECK")

    assert command[:3] == ["bentoml", "serve", "bento.service:ChurnService"]
    assert command[command.index("--port") + 1] == port
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert final.args("EXPOSE") == [port]
    assert f"127.0.0.1:{port}/livez" in healthcheck


def test_the_serving_image_carries_every_file_the_bento_includes_and_its_packages_list():
    bentofile = yaml.safe_load((PROJECT_ROOT / "bento" / "bentofile.yaml").read_text())
    copied = {source for stage in stages(API) for source in copies_from_context(stage)}

    def copied_whole_or_in_a_folder(path: str) -> bool:
        return any(path == source or path.startswith(source.rstrip("/") + "/") for source in copied)

    assert bentofile["service"] == "bento.service:ChurnService"
    assert [path for path in bentofile["include"] if not copied_whole_or_in_a_folder(path)] == []
    assert {"uv.lock", "bento/bentofile.yaml"} <= copied, "the Bento's packages, at the lock's versions"
