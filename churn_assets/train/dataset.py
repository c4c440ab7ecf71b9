"""Time-aware training data: train on the past, hold out the latest labelled days.

A label looks 30 days past its snapshot, so a training snapshot within 30 days of the holdout
would have seen the holdout period. Training snapshots therefore end more than 30 days before
the holdout starts (an embargo), and start once a full 30-day feature window exists.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import duckdb

from churn_assets.contract import FEATURE_COLUMNS, KEY_COLUMNS, LABEL_COLUMN

FEATURES_RELATION = "marts.fct_user_features"
LABELS_RELATION = "marts.fct_churn_labels"

LABEL_HORIZON_DAYS = 30
FEATURE_WINDOW_DAYS = 30


@dataclass(frozen=True)
class SplitDates:
    train_start: dt.date
    train_end: dt.date
    holdout_start: dt.date
    holdout_end: dt.date

    def as_metadata(self) -> dict[str, str]:
        return {k: v.isoformat() for k, v in self.__dict__.items()}


class NotEnoughHistory(ValueError):
    pass


def split_dates(first_snapshot: dt.date, last_labelled: dt.date, holdout_days: int) -> SplitDates:
    holdout_start = last_labelled - dt.timedelta(days=holdout_days - 1)
    train_end = holdout_start - dt.timedelta(days=LABEL_HORIZON_DAYS + 1)
    train_start = first_snapshot + dt.timedelta(days=FEATURE_WINDOW_DAYS - 1)
    if train_end < train_start:
        needed = FEATURE_WINDOW_DAYS + LABEL_HORIZON_DAYS + 1 + holdout_days + LABEL_HORIZON_DAYS
        raise NotEnoughHistory(
            f"labelled snapshots {first_snapshot}..{last_labelled} leave no training days; "
            f"a split needs about {needed} days of events (30-day windows, 30-day labels, "
            f"a {holdout_days}-day holdout and a 30-day embargo)"
        )
    return SplitDates(train_start, train_end, holdout_start, last_labelled)


def time_split(
    con: duckdb.DuckDBPyConnection,
    *,
    holdout_days: int,
    stride_days: int,
    max_train_rows: int,
    max_holdout_rows: int,
    seed: int,
    features: str = FEATURES_RELATION,
    labels: str = LABELS_RELATION,
) -> tuple[duckdb.DuckDBPyRelation, SplitDates]:
    """The labelled rows to train and evaluate on, with a ``split`` column (train/holdout).

    Selected in DuckDB, so memory follows the caps, not the history: training snapshots every
    ``stride_days`` counting back from the last training day (consecutive snapshots of a user
    are near-duplicates), then at most ``max_train_rows`` and ``max_holdout_rows`` of them, a
    sample that depends only on the keys and the seed. The sample is drawn on the keys alone
    and the features joined to it, so the top-N it keeps is three columns wide.
    """
    ((first, last),) = con.execute(f"SELECT min(snapshot_date), max(snapshot_date) FROM {labels}").fetchall()
    if first is None:
        raise NotEnoughHistory(f"no labelled snapshots yet: {labels} is empty")
    dates = split_dates(first, last, holdout_days)
    columns = ", ".join(f"f.{c}" for c in (*KEY_COLUMNS, *FEATURE_COLUMNS))
    sample_order = f"hash(user_id, snapshot_date, {int(seed)})"
    query = f"""
        WITH train AS (
            SELECT user_id, snapshot_date, 'train' AS split FROM {labels}
            WHERE snapshot_date BETWEEN DATE '{dates.train_start}' AND DATE '{dates.train_end}'
              AND date_diff('day', snapshot_date, DATE '{dates.train_end}') % {int(stride_days)} = 0
            ORDER BY {sample_order} LIMIT {int(max_train_rows)}
        ),
        holdout AS (
            SELECT user_id, snapshot_date, 'holdout' AS split FROM {labels}
            WHERE snapshot_date >= DATE '{dates.holdout_start}'
            ORDER BY {sample_order} LIMIT {int(max_holdout_rows)}
        ),
        chosen AS (SELECT * FROM train UNION ALL SELECT * FROM holdout)
        SELECT {columns}, l.{LABEL_COLUMN}, chosen.split
        FROM chosen
        JOIN {features} AS f USING (user_id, snapshot_date)
        JOIN {labels} AS l USING (user_id, snapshot_date)
        ORDER BY f.snapshot_date, f.user_id
    """
    return con.sql(query), dates
