"""What the scores were worth, per scored day and model version, computed in DuckDB.

ROC-AUC is the Mann-Whitney statistic: the chance that a churner was scored above a stayer, ties
counting half, from the average rank of each probability within its day. That is the area under
the ROC curve scikit-learn computes, without pulling a day's scores into Python.
"""

from __future__ import annotations

from churn_assets.contract import LABEL_COLUMN

PERFORMANCE_COLUMNS = ("snapshot_date", "model_version", "users", "churn_rate", "roc_auc", "precision", "recall")


def performance_by_day(con, scores: str, labels: str, threshold: float):
    """One row per (snapshot_date, model_version) with both classes among its labelled users."""
    return con.sql(
        f"""
        WITH joined AS (
            SELECT s.snapshot_date, s.model_version, s.churn_probability AS p, l.{LABEL_COLUMN}::INTEGER AS y
            FROM {scores} AS s JOIN {labels} AS l USING (user_id, snapshot_date)
        ),
        ranked AS (
            SELECT *,
                rank() OVER (PARTITION BY snapshot_date, model_version ORDER BY p)
                    + (count(*) OVER (PARTITION BY snapshot_date, model_version, p) - 1) / 2.0 AS average_rank
            FROM joined
        )
        SELECT
            snapshot_date,
            model_version,
            count(*) AS users,
            avg(y) AS churn_rate,
            (sum(y * average_rank) - sum(y) * (sum(y) + 1) / 2.0) / (sum(y) * (count(*) - sum(y))) AS roc_auc,
            coalesce(sum(y) FILTER (WHERE p >= {float(threshold)}) / nullif(count(*) FILTER (WHERE p >= {float(threshold)}), 0), 0.0)
                AS precision,
            coalesce(sum(y) FILTER (WHERE p >= {float(threshold)}), 0) / sum(y) AS recall
        FROM ranked
        GROUP BY snapshot_date, model_version
        HAVING sum(y) > 0 AND sum(y) < count(*)
        ORDER BY snapshot_date, model_version
        """
    )
