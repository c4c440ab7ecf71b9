"""Diagnostic plots of a candidate on the holdout, saved as PNG files for MLflow and the Dagster UI."""

from __future__ import annotations

import base64
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.calibration import CalibrationDisplay
from sklearn.inspection import permutation_importance
from sklearn.metrics import PrecisionRecallDisplay, RocCurveDisplay

from churn_assets.contract import FEATURE_COLUMNS

IMPORTANCE_SAMPLE = 3000


def save_plots(
    model, holdout: pd.DataFrame, labels: pd.Series, proba: np.ndarray, out_dir: Path, seed: int
) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, draw in (
        ("roc_curve", lambda ax: RocCurveDisplay.from_predictions(labels, proba, ax=ax)),
        ("pr_curve", lambda ax: PrecisionRecallDisplay.from_predictions(labels, proba, ax=ax)),
        ("calibration", lambda ax: CalibrationDisplay.from_predictions(labels, proba, n_bins=10, ax=ax)),
        ("feature_importance", lambda ax: _importance(model, holdout, labels, ax, seed)),
    ):
        fig, ax = plt.subplots(figsize=(6, 4.5) if name != "feature_importance" else (7, 6))
        draw(ax)
        ax.set_title(name.replace("_", " "))
        fig.tight_layout()
        paths[name] = out_dir / f"{name}.png"
        fig.savefig(paths[name], dpi=80)
        plt.close(fig)
    return paths


def _importance(model, holdout: pd.DataFrame, labels: pd.Series, ax, seed: int) -> None:
    """Permutation importance (drop in ROC-AUC), model-agnostic so both candidates compare."""
    sample = holdout.sample(min(IMPORTANCE_SAMPLE, len(holdout)), random_state=seed)
    result = permutation_importance(
        model,
        sample[list(FEATURE_COLUMNS)],
        labels.loc[sample.index],
        scoring="roc_auc",
        n_repeats=3,
        random_state=seed,
    )
    order = np.argsort(result.importances_mean)
    ax.barh(np.asarray(FEATURE_COLUMNS)[order], result.importances_mean[order])
    ax.set_xlabel("mean drop in ROC-AUC when shuffled")


def markdown_image(path: Path, alt: str) -> str:
    """An inline image for Dagster's markdown metadata (the UI cannot read local files)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"
