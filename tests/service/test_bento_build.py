"""The built Bento carries everything the service imports, and nothing of the platform behind it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import bentoml
import pytest

from churn_assets.settings import PROJECT_ROOT

pytestmark = pytest.mark.slow

PLATFORM_ONLY = ("dagster", "dagster_dbt", "dbt", "duckdb", "mlflow", "evidently", "sklearn")
"""Imported by the asset graph, never by the service: the Bento does not ship them (bentofile.yaml)."""

IMPORT_FROM_THE_BUILD = """
import json, sys
from pathlib import Path
project, src = Path(sys.argv[1]).resolve(), sys.argv[2]
sys.path = [src] + [p for p in sys.path if p and Path(p).resolve() != project]
import bento.service
print(json.dumps({
    "files": {m.__name__: m.__file__ for m in list(sys.modules.values())
              if m.__name__.split(".")[0] in ("bento", "churn_assets") and getattr(m, "__file__", None)},
    "imported": sorted({name.split(".")[0] for name in sys.modules}),
    "service": bento.service.ChurnService.name,
}))
"""


def _uv() -> str:
    return os.environ.get("UV") or shutil.which("uv") or str(PROJECT_ROOT / ".tools" / "bin" / "uv")


def test_the_built_bento_imports_its_service_from_its_own_files_alone(exported, tmp_path):
    env = {**os.environ, "PATH": f"{Path(_uv()).parent}{os.pathsep}{os.environ['PATH']}"}
    build = subprocess.run(
        [str(Path(sys.executable).with_name("bentoml")), "build", "-f", "bento/bentofile.yaml", ".", "--output", "tag"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    tag = build.stdout.strip().rsplit("__tag__:", 1)[-1].strip()
    src = Path(bentoml.get(tag).path) / "src"

    imported = subprocess.run(
        [sys.executable, "-c", IMPORT_FROM_THE_BUILD, str(PROJECT_ROOT), str(src)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert imported.returncode == 0, imported.stderr[-3000:]
    result = json.loads(imported.stdout.strip().splitlines()[-1])
    assert result["service"] == "churn_service"
    assert all(Path(file).is_relative_to(src) for file in result["files"].values()), result["files"]
    assert {"bento.service", "bento.surface", "churn_assets.contract"} <= set(result["files"])
    assert not set(PLATFORM_ONLY) & set(result["imported"])
