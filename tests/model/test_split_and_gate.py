"""The time split and the gate's rule, on hand-built inputs whose right answer is visible."""

import datetime as dt
import itertools

import duckdb
import pandas as pd
import pytest

from churn_assets.contract import FEATURE_COLUMNS
from churn_assets.train.dataset import NotEnoughHistory, split_dates, time_split
from churn_assets.train.promotion import decide

FIRST = dt.date(2026, 7, 1)
NO_CAP = 10**9


def _warehouse(days: int, users: int = 3) -> duckdb.DuckDBPyConnection:
    """A features table and a labels table with one labelled snapshot per user and day."""
    con = duckdb.connect()
    keys = pd.DataFrame(
        [(u, FIRST + dt.timedelta(days=d)) for d in range(days) for u in range(users)],
        columns=["user_id", "snapshot_date"],
    )
    con.register("keys", keys)
    con.register("feature_rows", keys.assign(**{c: 0 for c in FEATURE_COLUMNS}))
    con.execute("CREATE TABLE features AS SELECT * FROM feature_rows")
    con.execute("CREATE TABLE labels AS SELECT user_id, snapshot_date, user_id % 2 = 0 AS churned FROM keys")
    return con


def _split(con, holdout_days=14, stride_days=1, max_train_rows=NO_CAP, max_holdout_rows=NO_CAP):
    split, dates = time_split(
        con,
        holdout_days=holdout_days,
        stride_days=stride_days,
        max_train_rows=max_train_rows,
        max_holdout_rows=max_holdout_rows,
        seed=7,
        features="features",
        labels="labels",
    )
    return split.df(), dates


def test_no_training_snapshot_is_later_than_any_holdout_snapshot():
    split, _ = _split(_warehouse(120))
    train, holdout = split[split.split == "train"], split[split.split == "holdout"]
    assert train.snapshot_date.max() < holdout.snapshot_date.min()


def test_training_labels_never_look_into_the_holdout_period():
    split, dates = _split(_warehouse(120))
    train = split[split.split == "train"]
    assert (train.snapshot_date.dt.date + dt.timedelta(days=30)).max() < dates.holdout_start


def test_the_split_dates_for_120_labelled_days():
    dates = split_dates(FIRST, FIRST + dt.timedelta(days=119), holdout_days=14)
    assert dates.holdout_start == dt.date(2026, 10, 15) and dates.holdout_end == dt.date(2026, 10, 28)
    assert dates.train_end == dt.date(2026, 9, 14), "31 days before the holdout: the 30-day labels end before it"
    assert dates.train_start == dt.date(2026, 7, 30), "the first snapshot with a full 30-day window"


def test_every_labelled_row_in_the_split_windows_is_kept_when_under_the_caps():
    split, dates = _split(_warehouse(120))
    train_days = (dates.train_end - dates.train_start).days + 1
    assert (split.split == "train").sum() == 3 * train_days
    assert (split.split == "holdout").sum() == 3 * 14
    assert list(split.columns[-2:]) == ["churned", "split"]


def test_stride_keeps_every_nth_training_day_counting_back_from_the_last():
    split, dates = _split(_warehouse(120), stride_days=7)
    train_days = sorted(split[split.split == "train"].snapshot_date.dt.date.unique())
    assert train_days[-1] == dates.train_end
    assert {(b - a).days for a, b in itertools.pairwise(train_days)} == {7}
    assert split[split.split == "holdout"].snapshot_date.nunique() == 14


def test_the_caps_sample_the_same_rows_every_time():
    con = _warehouse(120, users=50)
    first, _ = _split(con, max_train_rows=500, max_holdout_rows=100)
    again, _ = _split(con, max_train_rows=500, max_holdout_rows=100)
    assert (first.split == "train").sum() == 500 and (first.split == "holdout").sum() == 100
    pd.testing.assert_frame_equal(first, again)
    assert first[first.split == "train"].snapshot_date.nunique() > 30, "a sample across days, not the first days"


def test_too_short_a_history_is_refused_with_the_reason():
    with pytest.raises(NotEnoughHistory, match="leave no training days"):
        _split(_warehouse(60))


def test_no_labels_at_all_is_refused_with_the_reason():
    con = _warehouse(120)
    con.execute("DELETE FROM labels")
    with pytest.raises(NotEnoughHistory, match="labels is empty"):
        _split(con)


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
