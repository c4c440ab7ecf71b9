"""The time split and the gate's rule, on hand-built inputs whose right answer is visible."""

import datetime as dt

import pandas as pd
import pytest

from churn_assets.train.dataset import NotEnoughHistory, split_dates, time_split
from churn_assets.train.promotion import decide

FIRST = dt.date(2026, 7, 1)


def _snapshots(days: int, users: int = 3) -> pd.DataFrame:
    rows = [(u, FIRST + dt.timedelta(days=d)) for d in range(days) for u in range(users)]
    return pd.DataFrame(rows, columns=["user_id", "snapshot_date"]).assign(churned=False)


def test_no_training_snapshot_is_later_than_any_holdout_snapshot():
    split, _ = time_split(_snapshots(120), holdout_days=14, stride_days=1)
    train, holdout = split[split.split == "train"], split[split.split == "holdout"]
    assert train.snapshot_date.max() < holdout.snapshot_date.min()


def test_training_labels_never_look_into_the_holdout_period():
    split, dates = time_split(_snapshots(120), holdout_days=14, stride_days=1)
    train = split[split.split == "train"]
    assert (train.snapshot_date + dt.timedelta(days=30)).max() < dates.holdout_start


def test_the_split_dates_for_120_labelled_days():
    dates = split_dates(FIRST, FIRST + dt.timedelta(days=119), holdout_days=14)
    assert dates.holdout_start == dt.date(2026, 10, 15) and dates.holdout_end == dt.date(2026, 10, 28)
    assert dates.train_end == dt.date(2026, 9, 14), "31 days before the holdout: the 30-day labels end before it"
    assert dates.train_start == dt.date(2026, 7, 30), "the first snapshot with a full 30-day window"


def test_stride_keeps_every_nth_training_day_counting_back_from_the_last():
    split, dates = time_split(_snapshots(120), holdout_days=14, stride_days=7)
    train_days = sorted(split[split.split == "train"].snapshot_date.unique())
    assert train_days[-1] == dates.train_end
    assert {(b - a).days for a, b in zip(train_days, train_days[1:], strict=False)} == {7}
    assert split[split.split == "holdout"].snapshot_date.nunique() == 14


def test_too_short_a_history_is_refused_with_the_reason():
    with pytest.raises(NotEnoughHistory, match="leave no training days"):
        time_split(_snapshots(60), holdout_days=14, stride_days=1)


@pytest.mark.parametrize(
    ("new", "champion", "promote", "why"),
    [
        (0.74, None, False, "below the floor"),
        (0.80, None, True, "first model"),
        (0.74, 0.70, False, "below the floor"),
        (0.905, 0.90, True, "beats the champion"),
        (0.901, 0.90, False, "does not beat"),
        (0.85, 0.90, False, "does not beat"),
    ],
)
def test_the_gate_promotes_only_a_model_above_the_floor_that_beats_the_champion(new, champion, promote, why):
    decision = decide(new, champion, floor=0.75, margin=0.002)
    assert decision.promote is promote
    assert why in decision.reason
