"""Time-aware training data: train on the past, hold out the latest labelled days.

A label looks 30 days past its snapshot, so a training snapshot within 30 days of the holdout
would have seen the holdout period. Training snapshots therefore end more than 30 days before
the holdout starts (an embargo), and start once a full 30-day feature window exists.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import duckdb
import pandas as pd

from churn_assets.contract import FEATURE_COLUMNS, KEY_COLUMNS, LABEL_COLUMN

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


def load_labelled_features(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    columns = ", ".join(f"f.{c}" for c in (*KEY_COLUMNS, *FEATURE_COLUMNS))
    frame = con.execute(
        f"""
        SELECT {columns}, l.{LABEL_COLUMN}
        FROM marts.fct_user_features AS f
        JOIN marts.fct_churn_labels AS l USING (user_id, snapshot_date)
        ORDER BY f.snapshot_date, f.user_id
        """
    ).df()
    frame["snapshot_date"] = pd.to_datetime(frame["snapshot_date"]).dt.date
    return frame


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


def time_split(frame: pd.DataFrame, holdout_days: int, stride_days: int) -> tuple[pd.DataFrame, SplitDates]:
    """Adds a ``split`` column (train/holdout) and drops snapshots in neither.

    Training snapshots are taken every ``stride_days`` counting back from the last training
    day, which thins out near-duplicate consecutive snapshots of the same user.
    """
    dates = split_dates(frame.snapshot_date.min(), frame.snapshot_date.max(), holdout_days)
    days_before_end = frame.snapshot_date.map(lambda d: (dates.train_end - d).days)
    in_train = (frame.snapshot_date >= dates.train_start) & (days_before_end >= 0) & (days_before_end % stride_days == 0)
    in_holdout = frame.snapshot_date >= dates.holdout_start
    split = frame.loc[in_train | in_holdout].copy()
    split["split"] = "train"
    split.loc[split.snapshot_date >= dates.holdout_start, "split"] = "holdout"
    return split.reset_index(drop=True), dates
