"""The synthetic TechITFactory: deterministic, scalable, and with a churn signal to learn."""

import datetime as dt

import numpy as np
import pandas as pd

from churn_assets.ingest import synthetic
from churn_assets.ingest.schema import EVENT_COLUMNS, EVENT_TYPES, USER_COLUMNS

START = dt.date(2026, 7, 1)
DAY = dt.date(2026, 8, 15)


def test_same_seed_gives_the_same_users_and_events():
    first = synthetic.generate_users(2000, START, 120, seed=7)
    synthetic._population.cache_clear()
    again = synthetic.generate_users(2000, START, 120, seed=7)
    pd.testing.assert_frame_equal(first, again)
    pop = synthetic.population(2000, START, 120, 7)
    pd.testing.assert_frame_equal(synthetic.generate_events(pop, DAY, 7), synthetic.generate_events(pop, DAY, 7))


def test_another_seed_gives_other_data():
    a = synthetic.generate_events(synthetic.population(2000, START, 120, 1), DAY, 1)
    b = synthetic.generate_events(synthetic.population(2000, START, 120, 2), DAY, 2)
    assert not a[["user_id", "event_type"]].equals(b[["user_id", "event_type"]])


def test_frames_follow_the_raw_contract():
    pop = synthetic.population(2000, START, 120, 42)
    assert list(pop.users_frame().columns) == list(USER_COLUMNS)
    events = synthetic.generate_events(pop, DAY, 42)
    assert list(events.columns) == list(EVENT_COLUMNS)
    assert set(events.event_type) <= set(EVENT_TYPES)
    assert events.event_id.is_unique
    assert (events.event_ts.dt.date == DAY).all()


def test_event_ids_never_collide_across_days():
    pop = synthetic.population(2000, START, 120, 42)
    ids = [synthetic.generate_events(pop, START + dt.timedelta(days=d), 42).event_id for d in range(3)]
    assert pd.concat(ids).is_unique


def test_a_million_users_generate_a_day_in_one_pass():
    pop = synthetic.population(1_000_000, START, 120, 42)
    events = synthetic.generate_events(pop, DAY, 42)
    assert pop.user_id.size == 1_000_000
    assert 50_000 < events.user_id.nunique() < 1_000_000
    assert events.event_id.is_unique


def test_users_about_to_churn_are_less_active_than_the_rest():
    pop = synthetic.population(20_000, START, 120, 42)
    day_index = (DAY - START).days
    alive = (pop.signup_day <= day_index - 30) & (day_index < pop.churn_day)
    days_left = pop.churn_day - day_index
    fading = alive & (days_left <= 7) & (pop.fade_days >= 14)
    staying = alive & (days_left > 60)
    events = synthetic.generate_events(pop, DAY, 42)
    per_user = events.groupby("user_id").size().reindex(pop.user_id, fill_value=0).to_numpy()
    assert fading.sum() > 50 and staying.sum() > 1000
    assert per_user[fading].mean() < 0.6 * per_user[staying].mean()


def test_the_drift_switch_shifts_behaviour_from_its_date_on():
    pop = synthetic.population(20_000, START, 120, 42)
    before = synthetic.generate_events(pop, DAY, 42, drift_from=DAY + dt.timedelta(days=1))
    pd.testing.assert_frame_equal(before, synthetic.generate_events(pop, DAY, 42))
    drifted = synthetic.generate_events(pop, DAY, 42, drift_from=DAY)

    def lessons_per_user(frame):
        return (frame.event_type == "lesson_view").sum() / frame.user_id.nunique()

    def minutes_per_session(frame):
        return frame.loc[frame.event_type == "video_minutes", "value"].mean()

    assert lessons_per_user(drifted) < 0.8 * lessons_per_user(before)
    assert minutes_per_session(drifted) > 1.2 * minutes_per_session(before)
    assert np.isnan(drifted.loc[drifted.event_type == "login", "value"]).all()


def test_users_keep_signing_up_after_the_history_without_changing_it():
    history = synthetic.generate_users(3000, START, 120, seed=42)
    two_months_on = START + dt.timedelta(days=179)
    later = synthetic.generate_users(3000, START, 120, seed=42, through=two_months_on)

    pd.testing.assert_frame_equal(later.head(len(history)), history)
    newcomers = later.iloc[len(history) :]
    assert len(newcomers) == 2 * 300, "the history's rate: 3,000 users over 180 lead + 120 days, 300 a month"
    assert newcomers.signup_date.min() >= START + dt.timedelta(days=120)
    assert newcomers.signup_date.max() <= two_months_on
    assert newcomers.user_id.is_unique and newcomers.user_id.min() == 3001

    extended = synthetic.population(3000, START, 120, 42, through=two_months_on)
    pd.testing.assert_frame_equal(
        synthetic.generate_events(extended, DAY, 42),
        synthetic.generate_events(synthetic.population(3000, START, 120, 42), DAY, 42),
    )
