"""Feature drift (models/evaluation/drift.py): the newest window against the refit's training rows, never against
itself."""

from __future__ import annotations

import numpy as np

from macd_ml.models.evaluation.drift import feature_drift, psi


def test_a_shifted_feature_drifts_and_a_stable_one_does_not():
    rng = np.random.default_rng(3)
    n, newest = 6_000, 500
    stable = rng.standard_normal(n)
    shifted = rng.standard_normal(n)
    shifted[-newest:] += 1.5  # the newest window moved by 1.5 std: a regime change
    X = np.column_stack([stable, shifted])
    d = feature_drift(X, ["stable", "shifted"], slice(0, 4_000), slice(n - newest, n), limit=0.25)
    assert d["drifted"] == ["shifted"] and d["drifted_share"] == 0.5, d
    assert d["top"][0]["feature"] == "shifted" and d["top"][0]["psi"] > 0.25
    assert d["top"][1]["psi"] < 0.1  # the stable feature's newest window matches its training rows
    # and the PSI of a sample against itself is zero: a window compared with itself can never drift
    assert psi(shifted[-newest:], shifted[-newest:]) == 0.0
