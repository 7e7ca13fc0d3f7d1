"""The logistic building blocks of the ensemble: logit and sigmoid with the clip every graph shares (``EPS``),
and the regularised logistic fit (L-BFGS-B) used by the meta-learner and by Platt calibration alike."""

from __future__ import annotations

import numpy as np

EPS = 1e-4


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p / (1 - p))


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def fit_logistic(Z: np.ndarray, y: np.ndarray, C: float, nonneg: bool) -> tuple[np.ndarray, float]:
    """argmin 0.5·|w|² + C·Σ logloss(y, σ(Zw + b)), w >= 0 if ``nonneg``. Returns (w, b)."""
    from scipy.optimize import minimize  # here: the scorer imports this module and fits nothing

    n, m = Z.shape

    def f(theta):
        w, b = theta[:m], theta[m]
        z = Z @ w + b
        # logloss = log(1 + e^z) - y z, computed stably
        loss = np.logaddexp(0.0, z) - y * z
        g = sigmoid(z) - y
        value = 0.5 * w @ w + C * loss.sum()
        grad = np.concatenate([w + C * (Z.T @ g), [C * g.sum()]])
        return value, grad

    bounds = [(0.0, None) if nonneg else (None, None)] * m + [(None, None)]
    res = minimize(f, np.zeros(m + 1), jac=True, method="L-BFGS-B", bounds=bounds)
    return res.x[:m], float(res.x[m])
