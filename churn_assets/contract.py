"""The feature contract between training and serving.

The ordered feature columns the model is trained on, read from ``fct_user_features``, and the
records the service validates requests against (pydantic's, which documents and words errors, and
msgspec's, which decodes batches fast) are all built here from one table of bounds, so they cannot
drift apart. It imports nothing from the rest of the package, so the built Bento carries it
alone, without Dagster, dbt or the warehouse.
"""

from __future__ import annotations

from operator import itemgetter
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from pydantic import ConfigDict, Field
from typing_extensions import TypedDict

PLANS = ("free", "pro", "team")
"""Subscription plans: the raw-data contract's and the model's only categorical values."""

COUNT_FEATURES: dict[str, int] = {
    "active_days_7d": 7,
    "active_days_14d": 14,
    "active_days_30d": 30,
    "engagement_events_7d": 100_000,
    "engagement_events_14d": 100_000,
    "engagement_events_30d": 100_000,
    "lesson_views_7d": 100_000,
    "lesson_views_14d": 100_000,
    "lesson_views_30d": 100_000,
    "quiz_attempts_7d": 100_000,
    "quiz_attempts_30d": 100_000,
    "days_since_last_activity": 29,
    "tenure_days": 100_000,
    "payments_30d": 1_000,
    "failed_payments_30d": 1_000,
    "days_since_last_payment": 365,
    "support_tickets_30d": 1_000,
}
"""Integer features and their largest valid value (the smallest is 0 for all)."""

AMOUNT_FEATURES: dict[str, float] = {
    "video_minutes_7d": 7 * 1440.0,
    "video_minutes_14d": 14 * 1440.0,
    "video_minutes_30d": 30 * 1440.0,
    "engagement_trend_7d_30d": 30 / 7,
    "lesson_trend_7d_30d": 30 / 7,
}
"""Real-valued features and their largest valid value (the smallest is 0 for all)."""

NUMERIC_FEATURES: tuple[str, ...] = (*COUNT_FEATURES, *AMOUNT_FEATURES)
CATEGORICAL_FEATURES: tuple[str, ...] = ("plan",)
FEATURE_COLUMNS: tuple[str, ...] = (*NUMERIC_FEATURES, *CATEGORICAL_FEATURES)
"""The model's input columns, in order."""

KEY_COLUMNS = ("user_id", "snapshot_date")
MAX_BATCH_RECORDS = 1000
"""The most feature records one ``/predict_batch`` request may carry."""
LABEL_COLUMN = "churned"


FEATURE_DEFINITIONS = (
    Path(__file__).resolve().parent.parent / "dbt_project" / "models" / "marts" / "fct_user_features.yml"
)
"""Where every feature is defined (the dbt docs); the Bento ships this file too."""

EXAMPLE_RECORD: dict = {
    "active_days_7d": 1,
    "active_days_14d": 3,
    "active_days_30d": 9,
    "engagement_events_7d": 2,
    "engagement_events_14d": 9,
    "engagement_events_30d": 31,
    "lesson_views_7d": 1,
    "lesson_views_14d": 5,
    "lesson_views_30d": 17,
    "quiz_attempts_7d": 0,
    "quiz_attempts_30d": 2,
    "days_since_last_activity": 6,
    "tenure_days": 95,
    "payments_30d": 1,
    "failed_payments_30d": 1,
    "days_since_last_payment": 12,
    "support_tickets_30d": 1,
    "video_minutes_7d": 0.0,
    "video_minutes_14d": 14.5,
    "video_minutes_30d": 80.0,
    "engagement_trend_7d_30d": 0.2765,
    "lesson_trend_7d_30d": 0.2521,
    "plan": "pro",
}
"""A fading pro user, as Swagger's and the README's example: every value a real user could have."""


def _descriptions() -> dict[str, str]:
    import yaml

    (model,) = yaml.safe_load(FEATURE_DEFINITIONS.read_text())["models"]
    return {column["name"]: " ".join(column["description"].split()) for column in model["columns"]}


def _largest_amount(name: str) -> float:
    """dbt rounds amounts to 4 decimals, so a ratio's bound gets that much room."""
    return round(AMOUNT_FEATURES[name], 4) + 1e-4


def _field_definitions() -> dict:
    """Strict: a JSON string or boolean is never read as a number, nor a JSON float as a count."""
    descriptions = _descriptions()

    def documented(name: str, **constraints):
        return Field(description=descriptions[name], json_schema_extra={"example": EXAMPLE_RECORD[name]}, **constraints)

    fields: dict = {}
    for name, upper in COUNT_FEATURES.items():
        fields[name] = Annotated[int, documented(name, ge=0, le=upper, strict=True)]
    for name in AMOUNT_FEATURES:
        fields[name] = Annotated[
            float, documented(name, ge=0, le=_largest_amount(name), allow_inf_nan=False, strict=True)
        ]
    fields["plan"] = Annotated[Literal[PLANS], documented("plan")]  # type: ignore[valid-type]
    return fields


# A TypedDict rather than a model: a validated batch is then a list of plain dicts, what the ONNX
# feeding reads, and validating a 1,000-record batch costs about 40 % less.
FeatureRecord = TypedDict("FeatureRecord", _field_definitions())  # type: ignore[misc]
FeatureRecord.__doc__ = "One user's features as of a snapshot date, exactly the model's input columns."
FeatureRecord.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]


def _row_type(name: str):
    if name in COUNT_FEATURES:
        return Annotated[int, msgspec.Meta(ge=0, le=COUNT_FEATURES[name])]
    if name in AMOUNT_FEATURES:
        return Annotated[float, msgspec.Meta(ge=0, le=_largest_amount(name))]
    return Literal[PLANS]


FeatureRow = msgspec.defstruct(
    "FeatureRow", [(name, _row_type(name)) for name in FEATURE_COLUMNS], forbid_unknown_fields=True
)
"""``FeatureRecord`` for msgspec, which validates a 1,000-record batch in a fifth of pydantic's time.

msgspec is strict where pydantic needs telling: no string or boolean for a number, no float for a
count, no NaN. A spec generates bodies and finds msgspec never accepts what pydantic refuses
(tests/service/test_fast_validation.py). Its fields are FEATURE_COLUMNS in order, so
``msgspec.structs.astuple`` gives a ``feature_values`` row."""

feature_values = itemgetter(*FEATURE_COLUMNS)
"""A feature record's values in FEATURE_COLUMNS order: the row form scoring takes."""


RISK_TIERS = ("low", "medium", "high")


def risk_tiers(probabilities, medium_threshold: float, high_threshold: float):
    """The intervention tier of each churn probability: high >= high_threshold > medium >= medium_threshold."""
    import numpy as np

    return np.asarray(RISK_TIERS)[np.searchsorted([medium_threshold, high_threshold], probabilities, side="right")]
