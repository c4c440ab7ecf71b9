"""The candidate models and how every model is judged.

A linear baseline and a gradient-boosted challenger, each a full sklearn pipeline (preprocessing
included) so the artefact MLflow stores is exactly what scores users and serves requests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from churn_assets.contract import CATEGORICAL_FEATURES, FEATURE_COLUMNS, NUMERIC_FEATURES, PLANS


def logistic_regression(seed: int) -> Pipeline:
    prep = ColumnTransformer(
        [
            ("numeric", StandardScaler(), list(NUMERIC_FEATURES)),
            ("plan", OneHotEncoder(categories=[list(PLANS)], handle_unknown="ignore"), list(CATEGORICAL_FEATURES)),
        ]
    )
    return Pipeline([("prep", prep), ("model", LogisticRegression(max_iter=2000, C=1.0, random_state=seed))])


def gradient_boosting(seed: int) -> Pipeline:
    """Plan enters as its price order (free < pro < team), not as a categorical split.

    Trees split an ordinal as well here, and it keeps the model convertible to ONNX, which the
    service runs (the ONNX converter mistranslates HistGradientBoosting's categorical splits).
    """
    prep = ColumnTransformer(
        [
            ("numeric", "passthrough", list(NUMERIC_FEATURES)),
            ("plan", OrdinalEncoder(categories=[list(PLANS)]), list(CATEGORICAL_FEATURES)),
        ]
    )
    model = HistGradientBoostingClassifier(
        max_iter=300,
        learning_rate=0.06,
        max_leaf_nodes=31,
        l2_regularization=1.0,
        early_stopping=False,
        random_state=seed,
    )
    return Pipeline([("prep", prep), ("model", model)])


CANDIDATES = {"logistic_regression": logistic_regression, "gradient_boosting": gradient_boosting}


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]
    confusion: list[list[int]]
    probabilities: np.ndarray


def evaluate(model: Pipeline, frame: pd.DataFrame, labels: pd.Series, threshold: float) -> Evaluation:
    proba = model.predict_proba(frame[list(FEATURE_COLUMNS)])[:, 1]
    predicted = proba >= threshold
    metrics = {
        "roc_auc": roc_auc_score(labels, proba),
        "pr_auc": average_precision_score(labels, proba),
        "brier": brier_score_loss(labels, proba),
        "accuracy": accuracy_score(labels, predicted),
        "precision": precision_score(labels, predicted, zero_division=0),
        "recall": recall_score(labels, predicted, zero_division=0),
        "f1": f1_score(labels, predicted, zero_division=0),
    }
    confusion = confusion_matrix(labels, predicted, labels=[False, True]).tolist()
    return Evaluation({k: float(v) for k, v in metrics.items()}, confusion, proba)
