"""`make bento` builds on a fresh clone, and the Bento carries everything the service imports and
nothing of the platform behind it."""

import json
import os
import re
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


def _path_without_uv() -> str:
    """A fresh clone's PATH: the Makefile's uv lives in .tools/bin, where BentoML does not look."""
    return os.pathsep.join(
        folder for folder in os.environ["PATH"].split(os.pathsep) if not (Path(folder) / "uv").exists()
    )


@pytest.fixture(scope="module")
def built_by_make(exported):
    """``make bento`` as a user runs it, building from the model the test graph exported."""
    uv = PROJECT_ROOT / ".tools" / "bin" / "uv"
    given = [] if uv.exists() else [f"UV={os.environ.get('UV') or shutil.which('uv')}"]
    build = subprocess.run(
        ["make", "--no-print-directory", "bento", *given],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PATH": _path_without_uv()},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return build


def test_make_bento_builds_with_no_uv_on_the_callers_path(built_by_make):
    assert shutil.which("uv", path=_path_without_uv()) is None
    assert built_by_make.returncode == 0, built_by_make.stdout[-2000:] + built_by_make.stderr[-3000:]
    assert "No module named pip" not in built_by_make.stderr


def test_the_built_bento_imports_its_service_from_its_own_files_alone(built_by_make, tmp_path):
    (tag,) = re.findall(r'Successfully built Bento\(tag="([^"]+)"\)', built_by_make.stdout)
    src = Path(bentoml.get(tag).path) / "src"

    imported = subprocess.run(
        [sys.executable, "-c", IMPORT_FROM_THE_BUILD, str(PROJECT_ROOT), str(src)],
        cwd=tmp_path,
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
