"""Population stability index: how far today's population has moved from the training reference.

This PSI is the platform's authoritative drift number (the checks and the retrain loop use it):
bins are the reference's deciles, fixed by the reference alone, so a day's value does not depend
on the day's own data, and the same number comes out of SQL, pandas or a notebook. Evidently's
report uses its own binning (over reference and current combined) and is there to look at.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

BINS = 10
EPSILON = 1e-4


def psi(reference: pd.Series, current: pd.Series) -> float:
    """PSI of one column; categorical columns compare category shares."""
    if reference.dtype == object or isinstance(reference.dtype, pd.CategoricalDtype):
        categories = sorted(set(reference.dropna()) | set(current.dropna()))
        expected = reference.value_counts(normalize=True).reindex(categories, fill_value=0).to_numpy()
        actual = current.value_counts(normalize=True).reindex(categories, fill_value=0).to_numpy()
    else:
        ref = reference.to_numpy(dtype=float)
        cur = current.to_numpy(dtype=float)
        edges = np.unique(np.quantile(ref, np.linspace(0, 1, BINS + 1)[1:-1]))
        expected = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=edges.size + 1) / ref.size
        actual = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=edges.size + 1) / cur.size
    expected, actual = np.clip(expected, EPSILON, None), np.clip(actual, EPSILON, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def psi_by_column(reference: pd.DataFrame, current: pd.DataFrame, columns: list[str]) -> dict[str, float]:
    return {c: psi(reference[c], current[c]) for c in columns}
