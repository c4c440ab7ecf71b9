"""Population stability index: how far a day's population has moved from the training reference.

This PSI is the platform's authoritative drift number (the checks and the retrain loop use it):
bins are the reference's deciles (or its categories), fixed by the reference alone, so a day's
value does not depend on the day's own data. ``psi`` is the reference implementation in pandas;
``psi_by_day`` counts every day's bins of a window in DuckDB in one scan, so the monitor stage
never pulls a population into Python, only a few counts per column and day. Evidently's report
shows those stored numbers through a stat test registered to return them, and plots samples:
Evidently's own PSI bins reference and current combined and gave another number, and another
verdict, for the same day, and any PSI of the samples would move with the sample. There is one
drift number, and ``verdict`` is its one word wherever it is shown.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd

BINS = 10
EPSILON = 1e-4


def _is_categorical(values: pd.Series) -> bool:
    return values.dtype == object or isinstance(values.dtype, pd.CategoricalDtype)


def _decile_edges(reference: np.ndarray) -> np.ndarray:
    return np.unique(np.quantile(reference, np.linspace(0, 1, BINS + 1)[1:-1]))


def psi(reference: pd.Series, current: pd.Series) -> float:
    """PSI of one column; categorical columns compare category shares."""
    if _is_categorical(reference):
        categories = sorted(set(reference.dropna()) | set(current.dropna()))
        expected = reference.value_counts(normalize=True).reindex(categories, fill_value=0).to_numpy()
        actual = current.value_counts(normalize=True).reindex(categories, fill_value=0).to_numpy()
    else:
        ref = reference.to_numpy(dtype=float)
        cur = current.to_numpy(dtype=float)
        edges = _decile_edges(ref)
        expected = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=edges.size + 1) / ref.size
        actual = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=edges.size + 1) / cur.size
    return _psi(actual, expected)


def verdict(value: float, warn: float, fail: float) -> str:
    """What the drift checks make of a PSI: they pass below ``warn``, fail as a warning from it, and as an error from ``fail``."""
    return "fail" if value >= fail else "warn" if value >= warn else "pass"


def _psi(actual, expected) -> float:
    """The index from each bin's actual and expected share; an empty bin counts as EPSILON."""
    actual, expected = np.clip(actual, EPSILON, None), np.clip(expected, EPSILON, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


@dataclass(frozen=True)
class ColumnBins:
    """One column of a reference, binned: decile edges (numeric) or categories, and each bin's share."""

    column: str
    edges: tuple[float, ...] | None
    categories: tuple[str, ...] | None
    shares: tuple[float, ...]


def column_bins(reference: pd.Series, column: str) -> ColumnBins:
    if _is_categorical(reference):
        shares = reference.value_counts(normalize=True).sort_index()
        return ColumnBins(column, None, tuple(map(str, shares.index)), tuple(shares.to_numpy(dtype=float)))
    ref = reference.to_numpy(dtype=float)
    edges = _decile_edges(ref)
    shares = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=edges.size + 1) / ref.size
    return ColumnBins(column, tuple(edges.tolist()), None, tuple(shares.tolist()))


def _bucket(b: ColumnBins) -> str:
    """SQL for a value's bin: its category, or the number of edges at or below it (``searchsorted(side="right")``).

    The edges are parsed from their shortest repr, which round-trips to the same double.
    """
    if b.edges is None:
        return f"CAST({b.column} AS VARCHAR)"
    value = f"CAST({b.column} AS DOUBLE)"
    return " + ".join(f"CAST({value} >= CAST('{edge!r}' AS DOUBLE) AS INTEGER)" for edge in b.edges) or "0"


def _psi_of_counts(counts: dict, expected: dict) -> float:
    total = sum(counts.values())
    buckets = sorted(set(counts) | set(expected), key=str)
    return _psi([counts.get(k, 0) / total for k in buckets], [expected.get(k, 0.0) for k in buckets])


def psi_by_day(
    con: duckdb.DuckDBPyConnection, relation: str, bins: list[ColumnBins], day: str = "snapshot_date"
) -> pd.DataFrame:
    """PSI of every binned column of ``relation`` on each of its days: ``day``, ``column_name``, ``psi``.

    One scan: DuckDB counts each column's bins per day (a histogram per column), and the PSI of
    those few counts is computed here as ``psi`` computes it. A category unseen in the reference
    counts as a bin of expected share 0.
    """
    histograms = ", ".join(f"histogram({_bucket(b)})" for b in bins)
    rows = con.execute(f"SELECT {day}, {histograms} FROM {relation} GROUP BY 1 ORDER BY 1").fetchall()
    expected = {
        b.column: dict(zip(b.categories if b.edges is None else range(len(b.shares)), b.shares, strict=True))
        for b in bins
    }
    records = [
        (snapshot, b.column, _psi_of_counts(counts, expected[b.column]))
        for snapshot, *per_column in rows
        for b, counts in zip(bins, per_column, strict=True)
    ]
    frame = pd.DataFrame(records, columns=[day, "column_name", "psi"])
    frame[day] = pd.to_datetime(frame[day])
    return frame
