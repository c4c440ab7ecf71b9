"""A deterministic stand-in for TechITFactory's production data.

Each user gets hidden traits (a base engagement level, an intensity and a churn day). Most users
fade over the weeks before the churn day and stop after it, so churn is learnable from recent
behaviour. It is not trivial: some users leave abruptly, loyal users take breaks that look like
fading, and both the lightest and the most intense learners leave sooner than the middle (a
non-monotone effect a linear baseline cannot capture), and most users leave when they
finish their course, so churn also peaks at a certain tenure.

Every day is generated from its own seed (``seed``, day ordinal), so a partition can be
regenerated alone and always yields the same frame, and generating day N never requires
generating days before it.

The product keeps growing after the history: users go on signing up at the history's daily rate,
drawn in blocks of ``SIGNUP_BLOCK_DAYS`` with their own seeds, so a platform left running gets
new users as well as new days, its population does not simply age (which the drift checks would
rightly flag), and a block never changes what came before it.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, fields
from functools import lru_cache

import numpy as np
import pandas as pd

from churn_assets.contract import PLANS
from churn_assets.ingest.schema import CHANNELS, COUNTRIES, PLAN_PRICE_USD

SIGNUP_LEAD_DAYS = 180
"""Users sign up from this many days before the history start until its end."""

SIGNUP_BLOCK_DAYS = 30
"""After the history, signups are drawn in blocks of this many days."""

BILLING_CYCLE_DAYS = 30
COURSE_LENGTH_DAYS = 100
"""Most users leave once they finish their course, around this many days after signup."""
EVENT_ID_DAY_STRIDE = 1_000_000_000

_PLAN_P = (0.6, 0.3, 0.1)
_PLAN_LIFETIME_DAYS = np.array([110.0, 220.0, 330.0])
_CHANNEL_P = (0.35, 0.25, 0.2, 0.12, 0.08)
_CHANNEL_LIFETIME_FACTOR = np.array([1.0, 0.75, 0.8, 1.4, 1.2])
_COUNTRY_P = (0.3, 0.2, 0.1, 0.08, 0.08, 0.06, 0.05, 0.05, 0.04, 0.04)


@dataclass(frozen=True)
class Population:
    """Users as the product sees them plus the hidden traits that drive their behaviour."""

    user_id: np.ndarray
    signup_day: np.ndarray
    plan: np.ndarray
    country: np.ndarray
    channel: np.ndarray
    activity: np.ndarray
    intensity: np.ndarray
    churn_day: np.ndarray
    fade_days: np.ndarray
    break_start: np.ndarray
    break_days: np.ndarray
    start_date: dt.date

    def users_frame(self) -> pd.DataFrame:
        signup = np.datetime64(self.start_date, "D") + self.signup_day.astype("timedelta64[D]")
        return pd.DataFrame(
            {
                "user_id": self.user_id,
                "signup_date": pd.to_datetime(signup).date,
                "plan": np.asarray(PLANS)[self.plan],
                "country": np.asarray(COUNTRIES)[self.country],
                "acquisition_channel": np.asarray(CHANNELS)[self.channel],
            }
        )


def population(
    n_users: int, start_date: dt.date, history_days: int, seed: int, through: dt.date | None = None
) -> Population:
    """The ``n_users`` who sign up until the end of the history, and everyone who signs up after it until ``through``."""
    days = (through - start_date).days if through else 0
    blocks = max(0, math.ceil((days - history_days + 1) / SIGNUP_BLOCK_DAYS))
    return _population(n_users, start_date, history_days, seed, blocks)


@lru_cache(maxsize=4)
def _population(n_users: int, start_date: dt.date, history_days: int, seed: int, blocks: int) -> Population:
    rng = np.random.default_rng([seed, 0])
    signup_day = np.sort(rng.integers(-SIGNUP_LEAD_DAYS, history_days, size=n_users))
    parts = [_draw_users(rng, signup_day, 1, start_date)]
    per_block = round(n_users * SIGNUP_BLOCK_DAYS / (SIGNUP_LEAD_DAYS + history_days))
    for block in range(blocks):
        rng = np.random.default_rng([seed, 1, block])
        first_day = history_days + block * SIGNUP_BLOCK_DAYS
        signup_day = np.sort(rng.integers(first_day, first_day + SIGNUP_BLOCK_DAYS, size=per_block))
        parts.append(_draw_users(rng, signup_day, n_users + block * per_block + 1, start_date))
    if len(parts) == 1:
        return parts[0]
    arrays = {
        f.name: np.concatenate([getattr(p, f.name) for p in parts])
        for f in fields(Population)
        if f.name != "start_date"
    }
    return Population(**arrays, start_date=start_date)


def _draw_users(rng: np.random.Generator, signup_day: np.ndarray, first_id: int, start_date: dt.date) -> Population:
    n_users = signup_day.size
    plan = rng.choice(len(PLANS), size=n_users, p=_PLAN_P)
    channel = rng.choice(len(CHANNELS), size=n_users, p=_CHANNEL_P)
    country = rng.choice(len(COUNTRIES), size=n_users, p=_COUNTRY_P)
    intensity = rng.lognormal(0.0, 0.45, size=n_users)
    extremeness = np.abs(np.log(intensity)) / 0.45
    mean_lifetime = _PLAN_LIFETIME_DAYS[plan] * _CHANNEL_LIFETIME_FACTOR[channel] / (0.15 + 2.5 * extremeness**2)
    lifetime = np.ceil(rng.exponential(mean_lifetime)).astype(np.int64) + 7
    finishes_course = rng.random(n_users) < 0.6
    course_days = np.clip(rng.normal(COURSE_LENGTH_DAYS, 4, size=n_users), 60, None).astype(np.int64)
    lifetime = np.where(finishes_course, np.minimum(lifetime, course_days), lifetime)
    abrupt = rng.random(n_users) < 0.7
    fade_days = np.where(abrupt, rng.integers(1, 4, size=n_users), rng.integers(14, 40, size=n_users))
    signup_to_break = rng.integers(7, 240, size=n_users)
    return Population(
        user_id=np.arange(first_id, first_id + n_users, dtype=np.int64),
        signup_day=signup_day,
        plan=plan,
        country=country,
        channel=channel,
        activity=np.clip(rng.beta(1.6, 2.2, size=n_users), 0.04, 0.95),
        intensity=intensity,
        churn_day=signup_day + lifetime,
        fade_days=fade_days,
        break_start=signup_day + signup_to_break,
        break_days=np.where(rng.random(n_users) < 0.6, rng.integers(7, 40, size=n_users), 0),
        start_date=start_date,
    )


def generate_users(
    n_users: int, start_date: dt.date, history_days: int, seed: int, through: dt.date | None = None
) -> pd.DataFrame:
    """Everyone who has signed up by ``through`` (by default, the whole history's users)."""
    users = population(n_users, start_date, history_days, seed, through).users_frame()
    return users[users["signup_date"] <= through].reset_index(drop=True) if through else users


def generate_events(
    pop: Population,
    day: dt.date,
    seed: int,
    drift_from: dt.date | None = None,
) -> pd.DataFrame:
    """All events of one calendar day, in the raw contract's columns."""
    day_index = (day - pop.start_date).days
    rng = np.random.default_rng([seed, day.toordinal()])
    drifted = drift_from is not None and day >= drift_from

    alive = np.flatnonzero((pop.signup_day <= day_index) & (day_index < pop.churn_day))
    days_left = pop.churn_day[alive] - day_index
    fade = np.clip(days_left / pop.fade_days[alive], 0.0, 1.0)
    fading = 0.15 + 0.85 * fade
    weekday_factor = 0.8 if day.weekday() >= 5 else 1.0
    on_break = (day_index >= pop.break_start[alive]) & (day_index < pop.break_start[alive] + pop.break_days[alive])
    p_active = pop.activity[alive] * fading * weekday_factor * np.where(on_break, 0.04, 1.0)
    if drifted:
        p_active = p_active * 0.85
    active = rng.random(alive.size) < p_active
    users = alive[active]
    intensity = pop.intensity[users] * fading[active]

    lesson_rate = 2.5 * intensity * (0.6 if drifted else 1.0)
    video_p = 0.65 if not drifted else 0.8
    video_scale = 9.0 * (1.5 if drifted else 1.0)
    counts = {
        "login": 1 + rng.poisson(0.3, users.size),
        "lesson_view": rng.poisson(lesson_rate),
        "quiz_attempt": rng.poisson(0.5 * intensity),
        "video_minutes": (rng.random(users.size) < video_p).astype(np.int64),
        "support_ticket": (rng.random(users.size) < 0.015 + 0.06 * (1 - fade[active])).astype(np.int64),
    }
    frames = [_engagement_rows(pop, users, counts, intensity, video_scale, rng)]
    frames.append(_billing_rows(pop, alive, day_index, fade, drifted, rng))
    events = pd.concat(frames, ignore_index=True)

    seconds = rng.integers(0, 86_400, size=len(events))
    events["event_ts"] = pd.Timestamp(day) + pd.to_timedelta(seconds, unit="s")
    events = events.sort_values(["event_ts", "user_id"], kind="stable", ignore_index=True)
    events.insert(0, "event_id", day.toordinal() * EVENT_ID_DAY_STRIDE + np.arange(len(events), dtype=np.int64))
    return events[["event_id", "user_id", "event_type", "event_ts", "value"]]


def _engagement_rows(pop, users, counts, intensity, video_scale, rng) -> pd.DataFrame:
    types, user_ids, values = [], [], []
    for event_type, n in counts.items():
        idx = np.repeat(np.arange(users.size), n)
        types.append(np.full(idx.size, event_type, dtype=object))
        user_ids.append(pop.user_id[users][idx])
        if event_type == "video_minutes":
            values.append(np.round(rng.gamma(2.0, video_scale * intensity[idx]), 1) + 1.0)
        else:
            values.append(np.full(idx.size, np.nan))
    return pd.DataFrame(
        {"user_id": np.concatenate(user_ids), "event_type": np.concatenate(types), "value": np.concatenate(values)}
    )


def _billing_rows(pop, alive, day_index, fade, drifted, rng) -> pd.DataFrame:
    """Paid plans bill every 30 days from signup; failures grow as a user fades."""
    paying = (pop.plan[alive] > 0) & ((day_index - pop.signup_day[alive]) % BILLING_CYCLE_DAYS == 0)
    paying &= day_index > pop.signup_day[alive]
    billed = alive[paying]
    p_fail = 0.04 + 0.45 * (1 - fade[paying])
    if drifted:
        p_fail = np.minimum(p_fail * 3, 0.9)
    failed = rng.random(billed.size) < p_fail
    return pd.DataFrame(
        {
            "user_id": pop.user_id[billed],
            "event_type": np.where(failed, "payment_failed", "payment").astype(object),
            "value": np.asarray([PLAN_PRICE_USD[p] for p in PLANS])[pop.plan[billed]],
        }
    )
