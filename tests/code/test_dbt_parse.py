"""dbt parses the project once per data dir, not once per step."""

import shutil
from pathlib import Path

from churn_assets.resources import PARTIAL_PARSE, build_resources
from churn_assets.settings import DBT_PROJECT_DIR

FULL_PARSE = "Unable to do partial parsing"


def _parse(dbt) -> str:
    """dbt's own log of one ``dbt parse`` through the resource, as a step's invocation runs it."""
    invocation = dbt.cli(["parse"])
    invocation.wait()
    target = Path(dbt.project_dir, invocation.target_path)
    log = (target / "dbt.log").read_text()
    dbt.keep_parse(invocation.target_path)
    shutil.rmtree(target)
    return log


def test_a_data_dirs_later_dbt_steps_reuse_its_first_parse(platform):
    project_parse = (DBT_PROJECT_DIR / "target" / PARTIAL_PARSE).read_bytes()
    dbt = build_resources(platform.settings)["dbt"]

    assert FULL_PARSE in _parse(dbt), "the project's parse was made for another warehouse path"
    assert (platform.settings.dbt_parse_dir / PARTIAL_PARSE).exists()
    assert FULL_PARSE not in _parse(dbt)
    assert (DBT_PROJECT_DIR / "target" / PARTIAL_PARSE).read_bytes() == project_parse
