"""``online_features``: the newest day's features of every active user, where the service reads them.

``/predict_user`` needs today's features, and the service must never open the warehouse, which
has one writer. So each day's build is published as a Parquet file (``Settings.online_features_path``)
written beside the old one and renamed over it: a reader sees the old snapshot or the new one,
never half of either. Every worker of the running service notices the new file by itself
(``bento/service.py``). A deployment that wants a shared online store, such as Redis, replaces
this asset's write; docs/serving.md says how.
"""

import os

import dagster as dg

from churn_assets.contract import FEATURE_COLUMNS
from churn_assets.resources import Warehouse
from churn_assets.settings import get_settings

FEATURES = dg.AssetKey(["marts", "fct_user_features"])


@dg.asset(
    group_name="serve",
    deps=[FEATURES],
    pool="duckdb",
    kinds={"duckdb", "parquet"},
    description="The latest snapshot day of marts.fct_user_features, every active user's model inputs, "
    "published atomically as the Parquet file the churn service's /predict_user reads.",
)
def online_features(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.MaterializeResult:
    path = get_settings().online_features_path
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.{os.getpid()}")
    with warehouse.get_connection() as con:
        day = con.execute(f"SELECT max(snapshot_date) FROM {'.'.join(FEATURES.path)}").fetchone()[0]
        if day is None:
            raise dg.Failure(
                description="marts.fct_user_features is empty: nothing to publish; the last snapshot stays"
            )
        con.execute(
            f"COPY (SELECT user_id, snapshot_date, {', '.join(FEATURE_COLUMNS)} FROM {'.'.join(FEATURES.path)} "
            f"WHERE snapshot_date = DATE '{day}' ORDER BY user_id) TO '{staged}' (FORMAT parquet)"
        )
        users = con.execute(f"SELECT count(*) FROM read_parquet('{staged}')").fetchone()[0]
    os.replace(staged, path)
    return dg.MaterializeResult(
        metadata={
            "snapshot_date": str(day),
            "dagster/row_count": users,
            "path": dg.MetadataValue.path(str(path)),
        }
    )
