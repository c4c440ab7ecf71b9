"""The dbt project as Dagster sees it (kept alone so ``dagster-dbt project prepare-and-package`` can use it)."""

from dagster_dbt import DbtProject

from churn_assets.settings import DBT_PROJECT_DIR

dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)
dbt_project.prepare_if_dev()
