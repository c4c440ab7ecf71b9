"""churnops: the Dagster code location and the contract the churn service shares with it."""

import warnings

# Dagster pins are exact (pyproject.toml), so its beta/preview notices on APIs this project
# chose on purpose (backfill_policy, freshness, automation) only repeat in every process's log.
warnings.filterwarnings("ignore", message=r".* is currently in (beta|preview)")
