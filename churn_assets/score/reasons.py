"""Reason codes: which features push a user's churn score up.

Model-agnostic on purpose (the champion may be linear or boosted): each feature in turn is set
to the population's typical value, and the drop in the user's probability is that feature's
contribution. Cheap for the few hundred users of an intervention list.
"""

from __future__ import annotations

import pandas as pd

from churn_assets.contract import CATEGORICAL_FEATURES, FEATURE_COLUMNS

REASONS_PER_USER = 3


def typical_values(population: pd.DataFrame) -> pd.Series:
    numeric = population[[c for c in FEATURE_COLUMNS if c not in CATEGORICAL_FEATURES]].median()
    categorical = population[list(CATEGORICAL_FEATURES)].mode().iloc[0]
    return pd.concat([numeric, categorical])[list(FEATURE_COLUMNS)]


def reason_codes(model, users: pd.DataFrame, typical: pd.Series) -> list[list[str]]:
    features = users[list(FEATURE_COLUMNS)].reset_index(drop=True)
    base = model.predict_proba(features)[:, 1]
    contributions = {}
    for column in FEATURE_COLUMNS:
        counterfactual = features.copy()
        counterfactual[column] = typical[column]
        contributions[column] = base - model.predict_proba(counterfactual)[:, 1]
    contributions = pd.DataFrame(contributions)
    reasons = []
    for i, row in contributions.iterrows():
        top = row[row > 0].sort_values(ascending=False).head(REASONS_PER_USER)
        reasons.append(
            [f"{c}={_fmt(features.at[i, c])} (typical {_fmt(typical[c])}): +{v:.2f}" for c, v in top.items()]
        )
    return reasons


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, int | float) else str(value)
