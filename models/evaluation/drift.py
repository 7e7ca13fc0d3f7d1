"""Drift between nightly runs: population stability of the newest features against the training span,
and the shift of the shipped probability against the current champion's. Pure numpy; no Prefect.

PSI (population stability index) of a sample ``a`` against a reference ``e``: bins at the reference's deciles,
``sum (a_i - e_i) * ln(a_i / e_i)`` over the bins' shares (each floored at 1e-4). Rules of thumb: < 0.1 stable,
0.1-0.25 moderate, > 0.25 a large shift. The health gate turns the feature limits (``HealthSpec``) into a warning
check; the prediction shift is measured by champion / challenger and flagged there (``PromotionSpec``).
"""

from __future__ import annotations

import numpy as np

FLOOR = 1e-4


def psi(expected: np.ndarray, actual: np.ndarray, bins: int = 10) -> float | None:
    e = np.asarray(expected, float)
    a = np.asarray(actual, float)
    e, a = e[np.isfinite(e)], a[np.isfinite(a)]
    if len(e) < bins or len(a) < bins:
        return None
    edges = np.unique(np.quantile(e, np.linspace(0, 1, bins + 1)[1:-1]))
    if len(edges) == 0:  # a constant reference: no bins to compare
        return 0.0
    pe = np.bincount(np.searchsorted(edges, e, side="right"), minlength=len(edges) + 1) / len(e)
    pa = np.bincount(np.searchsorted(edges, a, side="right"), minlength=len(edges) + 1) / len(a)
    pe, pa = np.maximum(pe, FLOOR), np.maximum(pa, FLOOR)
    return float(np.sum((pa - pe) * np.log(pa / pe)))


def feature_drift(X: np.ndarray, names: list[str], train: slice, newest: slice, limit: float) -> dict:
    """PSI of every feature column of ``X``: rows ``newest`` against rows ``train``."""
    values = {n: psi(X[train, j], X[newest, j]) for j, n in enumerate(names)}
    scored = {n: v for n, v in values.items() if v is not None}
    drifted = sorted((n for n, v in scored.items() if v > limit), key=lambda n: -scored[n])
    top = sorted(scored, key=lambda n: -scored[n])[:10]
    return {
        "train_rows": [train.start, train.stop],
        "newest_rows": [newest.start, newest.stop],
        "limit": limit,
        "max_psi": max(scored.values()) if scored else None,
        "drifted": drifted,
        "drifted_share": len(drifted) / max(len(scored), 1),
        "top": [{"feature": n, "psi": round(scored[n], 4)} for n in top],
    }


def prediction_shift(champion: np.ndarray, challenger: np.ndarray) -> dict:
    """The shipped probability's distribution: the challenger's against the champion's, on the same bars (champion
    / challenger's comparison window, models/release/promotion.py)."""
    c, n = np.asarray(champion, float), np.asarray(challenger, float)
    c, n = c[np.isfinite(c)], n[np.isfinite(n)]
    return {
        "psi": psi(c, n),
        "mean_champion": float(c.mean()) if len(c) else None,
        "mean_challenger": float(n.mean()) if len(n) else None,
        "std_champion": float(c.std()) if len(c) else None,
        "std_challenger": float(n.std()) if len(n) else None,
    }
