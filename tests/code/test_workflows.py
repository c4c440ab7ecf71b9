"""The GitHub Actions workflows as shipped: no runner here, so these read what a run would do."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from churn_assets.settings import PROJECT_ROOT

WORKFLOWS = PROJECT_ROOT / ".github" / "workflows"
PINNED = re.compile(r"^[\w.-]+/[\w./-]+@(v\d+\.\d+\.\d+|[0-9a-f]{40})$")


def workflow(name: str) -> dict:
    loaded = yaml.safe_load((WORKFLOWS / name).read_text())
    loaded["on"] = loaded.pop(True, loaded.get("on"))  # YAML 1.1 reads the bare key `on` as true
    return loaded


def needs(job: dict) -> list[str]:
    value = job.get("needs", [])
    return [value] if isinstance(value, str) else value


def runs(job: dict) -> list[str]:
    return [step["run"].strip() for step in job["steps"] if "run" in step]


def uses(job: dict, action: str) -> list[dict]:
    return [step.get("with", {}) for step in job["steps"] if step.get("uses", "").startswith(f"{action}@")]


def pushed_tags(job: dict) -> str:
    """Every tag a job can push, whether by build-push-action or by `docker push` in a script."""
    actions = [step["tags"] for step in uses(job, "docker/build-push-action") if step.get("push") is True]
    return "\n".join(actions + [script for script in runs(job) if "docker push" in script])


def test_actionlint_passes():
    lint = subprocess.run(
        [str(Path(sys.executable).with_name("actionlint")), "-no-color"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert {"ci.yml", "release.yml"} <= {path.name for path in WORKFLOWS.glob("*.yml")}


def test_ci_runs_on_every_push_and_pull_request_as_lint_then_test_then_build_then_push():
    ci = workflow("ci.yml")
    jobs = ci["jobs"]

    assert {"push", "pull_request"} <= set(ci["on"])
    assert list(jobs) == ["lint", "test", "build", "push"]
    assert [needs(jobs[name]) for name in jobs] == [[], ["lint"], ["test"], ["build"]]


def test_the_test_job_runs_the_readmes_test_command_as_ci_does():
    readme = (PROJECT_ROOT / "README.md").read_text()
    ci_run = (PROJECT_ROOT / ".ci" / "run").read_text().strip().splitlines()

    assert re.search(r"^make test\s+#", readme, re.MULTILINE)
    assert ci_run[-1] == "make test"
    assert runs(workflow("ci.yml")["jobs"]["test"])[-1] == "make test"


def test_the_build_job_builds_both_images_and_the_bento_and_pushes_nothing():
    build = workflow("ci.yml")["jobs"]["build"]
    files = [step["file"] for step in uses(build, "docker/build-push-action")]

    assert sorted(files) == ["deploy/docker/Dockerfile.api", "deploy/docker/Dockerfile.ml"]
    assert all((PROJECT_ROOT / file).is_file() for file in files)
    assert "make bento" in runs(build)
    assert pushed_tags(build) == ""
    assert not any(step.get("push") for step in uses(build, "docker/build-push-action"))


def test_only_a_push_to_main_pushes_and_it_tags_the_commit_and_staging():
    push = workflow("ci.yml")["jobs"]["push"]
    condition = push["if"].replace(" ", "")
    tags = pushed_tags(push)

    assert "github.ref=='refs/heads/main'" in condition and "github.event_name=='push'" in condition
    assert push["permissions"]["packages"] == "write"
    assert "ghcr.io/${GITHUB_REPOSITORY,,}/" in tags
    (script,) = [step for step in push["steps"] if "docker push" in step.get("run", "")]
    assert 'for tag in "$SHA" staging' in tags and script["env"]["SHA"] == "${{ github.sha }}"
    assert "production" not in tags


def test_a_version_tag_pushes_the_version_and_production_and_creates_a_release():
    release = workflow("release.yml")
    images, published = release["jobs"]["images"], release["jobs"]["release"]
    tags = [line.strip() for line in pushed_tags(images).splitlines() if line.strip()]

    assert release["on"] == {"push": {"tags": ["v*"]}}
    assert {tag.rsplit(":", 1)[-1] for tag in tags} == {"${{ github.ref_name }}", "production"}
    assert all(tag.startswith("${{ steps.name.outputs.target }}") for tag in tags)
    assert {entry["dockerfile"] for entry in images["strategy"]["matrix"]["include"]} == {
        "deploy/docker/Dockerfile.ml",
        "deploy/docker/Dockerfile.api",
    }
    assert needs(published) == ["images"]
    assert any(script.startswith("gh release create") for script in runs(published))
    assert published["permissions"]["contents"] == "write"


@pytest.mark.parametrize("name", ["ci.yml", "release.yml"])
def test_every_action_is_pinned_to_a_version(name):
    steps = [step for job in workflow(name)["jobs"].values() for step in job.get("steps", [])]
    actions = [step["uses"] for step in steps if "uses" in step]

    assert actions
    assert [action for action in actions if not PINNED.match(action)] == []


def test_the_images_ci_pushes_are_the_ones_the_deployments_pull():
    pushed = set(re.findall(r"for image in ([\w -]+); do", pushed_tags(workflow("ci.yml")["jobs"]["push"]))[0].split())
    released = {entry["image"] for entry in workflow("release.yml")["jobs"]["images"]["strategy"]["matrix"]["include"]}
    pulled = {
        name
        for path in (PROJECT_ROOT / "deploy").rglob("*.yaml")
        for name in re.findall(r"ghcr\.io/[\w.-]+/churnops/([\w.-]+)", path.read_text())
    }

    assert pushed == released == {"code-location", "churn-service"}
    assert pulled <= pushed
