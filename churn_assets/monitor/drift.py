"""Population stability index: how far a day's population has moved from the training reference.

This PSI is the platform's authoritative drift number (the checks and the retrain loop use it):
bins are the reference's deciles (or its categories), fixed by the reference alone, so a day's
value does not depend on the day's own data. ``psi`` is the reference implementation in pandas;
``psi_by_day`` computes the same numbers in DuckDB for every day of a window in one query, so
the monitor stage never pulls a population into Python. Evidently's report uses its own binning
(over reference and current combined) and is there to look at.
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
    expected, actual = np.clip(expected, EPSILON, None), np.clip(actual, EPSILON, None)
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


def _term(actual: str, expected: str) -> str:
    a, e = f"greatest({actual}, {EPSILON})", f"greatest({expected}, {EPSILON})"
    return f"({a} - {e}) * ln({a} / {e})"


def psi_by_day(
    con: duckdb.DuckDBPyConnection, relation: str, bins: list[ColumnBins], day: str = "snapshot_date"
) -> pd.DataFrame:
    """PSI of every binned column of ``relation`` on each of its days: ``day``, ``column_name``, ``psi``.

    A numeric value's bin is the number of edges at or below it (``searchsorted(side="right")``);
    a category unseen in the reference counts as a bin of expected share 0, as in ``psi``.
    """
    numeric = [b for b in bins if b.edges is not None]
    categorical = [b for b in bins if b.categories is not None]
    con.register("_psi_edges", pd.DataFrame({"column_name": [b.column for b in numeric], "edges": [list(b.edges) for b in numeric]}))
    con.register(
        "_psi_expected",
        pd.DataFrame(
            [(b.column, str(i), share) for b in numeric for i, share in enumerate(b.shares)]
            + [(b.column, c, share) for b in categorical for c, share in zip(b.categories, b.shares, strict=True)],
            columns=["column_name", "bucket", "share"],
        ),
    )
    observed = [
        f"""SELECT l.day, l.column_name, CAST(len(list_filter(e.edges, lambda x: x <= l.value)) AS VARCHAR) AS bucket
            FROM (UNPIVOT (SELECT {day} AS day, {", ".join(f"CAST({b.column} AS DOUBLE) AS {b.column}" for b in numeric)} FROM {relation})
                  ON {", ".join(b.column for b in numeric)} INTO NAME column_name VALUE value) AS l
            JOIN _psi_edges AS e USING (column_name)"""
    ] if numeric else []
    observed += [
        f"SELECT {day} AS day, '{b.column}' AS column_name, CAST({b.column} AS VARCHAR) AS bucket FROM {relation}"
        for b in categorical
    ]
    try:
        return con.execute(
            f"""
            WITH observed AS ({" UNION ALL ".join(observed)}),
            counts AS (SELECT day, column_name, bucket, count(*) AS n FROM observed GROUP BY ALL),
            totals AS (SELECT day, column_name, sum(n) AS total FROM counts GROUP BY ALL),
            buckets AS (
                SELECT t.day, t.column_name, x.bucket FROM totals AS t JOIN _psi_expected AS x USING (column_name)
                UNION SELECT day, column_name, bucket FROM counts
            )
            SELECT b.day AS {day}, b.column_name, sum({_term("coalesce(c.n, 0) / t.total", "coalesce(x.share, 0)")}) AS psi
            FROM buckets AS b
            JOIN totals AS t USING (day, column_name)
            LEFT JOIN counts AS c USING (day, column_name, bucket)
            LEFT JOIN _psi_expected AS x USING (column_name, bucket)
            GROUP BY ALL ORDER BY ALL
            """
        ).df()
    finally:
        con.unregister("_psi_edges")
        con.unregister("_psi_expected")
