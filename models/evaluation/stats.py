"""The statistics every layer scores with: ROC AUC over defined labels, AUC within blocks (one model's own
intercept per block), and the standard error of an AUC over overlapping labels. numpy only (scikit-learn's AUC is
imported when first used: the scorer imports this module)."""

from __future__ import annotations

import math

import numpy as np


def auc(y: np.ndarray, p: np.ndarray) -> float | None:
    """ROC AUC over rows with a defined label; None if only one class is present."""
    ok = ~np.isnan(y)
    y, p = y[ok], p[ok]
    if len(y) < 2 or y.min() == y.max():
        return None
    from sklearn.metrics import roc_auc_score  # here, not at the top: the scorer imports this module (1 s)

    return float(roc_auc_score(y, p))


def auc_within(y: np.ndarray, p: np.ndarray, blocks: np.ndarray) -> float | None:
    """AUC within each block (``blocks``: a block label per row), averaged weighted by the block's rows with a
    defined label and prediction; blocks with one class are skipped; None if no block can be scored.

    Each block here is predicted by a model with its own intercept (a fold's model, an inner fit). Pooled over
    blocks, an AUC also scores how those intercepts line up with each block's base rate: a constant per block
    scored 0.52-0.54 pooled in the stacker, and near-constant fold models scored 0.35-0.42 pooled out of fold.
    Within a block a constant scores 0.5, as it should."""
    ok = ~np.isnan(y) & ~np.isnan(p)
    total, weight = 0.0, 0
    for b in np.unique(blocks[ok]):
        rows = ok & (blocks == b)
        a = auc(y[rows], p[rows])
        if a is not None:
            total += a * int(rows.sum())
            weight += int(rows.sum())
    return total / weight if weight else None


def auc_se(n: int, h: int) -> float:
    """Standard error of an AUC over n rows of h-bar overlapping labels: sqrt(h / (3 n)) (docs/leakage.md,
    "How AUCs are reported")."""
    return math.sqrt(h / (3 * n)) if n > 0 else float("inf")
