"""The form the champion is served in: its ONNX compilation and the risk tiers of its answers."""

import numpy as np
import pandas as pd
import pytest

from churn_assets.contract import AMOUNT_FEATURES, COUNT_FEATURES, FEATURE_COLUMNS, PLANS, feature_values, risk_tiers
from churn_assets.serve.onnx import ONNX_INPUTS, churn_probabilities, compile_pipeline, feeds, input_names, load_session
from churn_assets.train.candidates import gradient_boosting, logistic_regression


def _features(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({c: rng.integers(0, min(upper, 60) + 1, n) for c, upper in COUNT_FEATURES.items()})
    for c, upper in AMOUNT_FEATURES.items():
        frame[c] = rng.uniform(0, upper, n)
    frame["plan"] = rng.choice(PLANS, n)
    return frame[list(FEATURE_COLUMNS)]


@pytest.mark.parametrize("candidate", [logistic_regression, gradient_boosting])
def test_the_onnx_form_takes_one_numeric_matrix_and_agrees_with_sklearn(candidate):
    train = _features(400, seed=1)
    labels = (train["days_since_last_activity"] > 20) ^ (train["plan"] == "free")
    pipeline = candidate(0).fit(train, labels)
    session = load_session(compile_pipeline(pipeline))
    unseen = _features(50, seed=2)

    served = churn_probabilities(session, feeds(list(map(feature_values, unseen.to_dict("records")))))

    assert input_names(session) == ONNX_INPUTS == ("numeric", "plan")
    assert np.abs(served - pipeline.predict_proba(unseen)[:, 1]).max() < 1e-5


def test_risk_tiers_split_at_the_thresholds_which_belong_to_the_higher_tier():
    probabilities = [0.0, 0.2999, 0.3, 0.5999, 0.6, 1.0]

    assert risk_tiers(probabilities, 0.3, 0.6).tolist() == ["low", "low", "medium", "medium", "high", "high"]
    assert risk_tiers(0.45, 0.3, 0.6) == "medium"
