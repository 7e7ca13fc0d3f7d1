"""Calibration of the shipped probability, fitted on OOF rows only.

Up to three candidates (``stacking.calibrations``), chosen per horizon on the same inner walk-forward that chose
the shipped predictor (time-ordered blocks of the OOF rows, each calibrated on the rows before it, purged by the
embargo): ``none``, ``platt`` (a logistic regression on the probability's logit, slope >= 0 so the order of bars
never changes) and ``isotonic`` (scikit-learn's isotonic regression, stored as its breakpoints; off by default).
The lowest size-weighted Brier score over the inner blocks wins; ``none`` wins ties, so calibration ships only
where it helped out of sample. The chosen map is then refitted on every OOF row. The holdout never enters (it
only reports the Brier score before and after).

Why isotonic is off by default: judged on later OOF blocks of the five real symbols (``bench/bench_choice.py``),
isotonic maps fitted on the rows before each block lowered the Brier score less than Platt did and cost AUC
(its flat steps tie bars the raw probability ranked), while Platt keeps the order; the inner walk-forward still
chose isotonic in about one case in six when it could.

A calibrator is a small JSON document inside ``meta.json`` (no pickle) and the same arithmetic runs in numpy and in
``ensemble.onnx`` (``models/release/onnx_export.py``): the isotonic map is evaluated as the piecewise-linear sum
``y0 + sum_k slope_k * clip(p - x_k, 0, x_{k+1} - x_k)``, which equals linear interpolation between the
breakpoints and clips outside them, as scikit-learn's ``out_of_bounds="clip"`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from macd_ml.models.ensemble.logistic import fit_logistic, logit  # the meta-learner's own fit


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


Kind = Literal["none", "platt", "isotonic"]
KINDS: tuple[Kind, ...] = ("none", "platt", "isotonic")
MIN_ROWS = 50  # fewer rows than this before an inner block: that block is calibrated with "none"


@dataclass
class Calibrator:
    kind: Kind = "none"
    a: float = 1.0  # platt: sigmoid(a * logit(p) + b)
    b: float = 0.0
    x: list[float] = field(default_factory=list)  # isotonic breakpoints (strictly increasing)
    y: list[float] = field(default_factory=list)

    def apply(self, p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, dtype=np.float64)
        if self.kind == "platt":
            return _sigmoid(self.a * logit(p) + self.b)
        if self.kind == "isotonic":
            x0, dx, slope = self.segments()
            return self.y[0] + (np.clip(p[..., None] - x0, 0.0, dx) * slope).sum(axis=-1)
        return p

    def segments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(start, width, slope) of each piece of the isotonic map."""
        x, y = np.asarray(self.x), np.asarray(self.y)
        dx = np.diff(x)
        return x[:-1], dx, np.diff(y) / dx

    def to_json(self) -> dict:
        if self.kind == "platt":
            return {"kind": "platt", "a": self.a, "b": self.b}
        if self.kind == "isotonic":
            return {"kind": "isotonic", "x": self.x, "y": self.y}
        return {"kind": "none"}

    @classmethod
    def from_json(cls, d: dict | None) -> "Calibrator":
        if not d or d.get("kind", "none") == "none":
            return cls()
        if d["kind"] == "platt":
            return cls("platt", a=float(d["a"]), b=float(d["b"]))
        if d["kind"] == "isotonic":
            return cls("isotonic", x=[float(v) for v in d["x"]], y=[float(v) for v in d["y"]])
        raise ValueError(f"unknown calibration kind {d['kind']!r}")


def fit_platt(p: np.ndarray, y: np.ndarray) -> Calibrator:
    (a,), b = fit_logistic(logit(p)[:, None], y, C=1e4, nonneg=True)
    return Calibrator("platt", a=float(a), b=float(b))


def fit_isotonic(p: np.ndarray, y: np.ndarray) -> Calibrator:
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(p, y)
    x, v = np.asarray(iso.X_thresholds_, float), np.asarray(iso.y_thresholds_, float)
    # equal breakpoints (a vertical step) would make a zero-width piece: keep each x once, with its last value
    keep = np.append(np.diff(x) > 0, True)
    x, v = x[keep], v[keep]
    if len(x) < 2:  # a constant map: calibration would collapse the output, so it never ships (see choose)
        return Calibrator("isotonic", x=[0.0, 1.0], y=[float(v[0])] * 2)
    return Calibrator("isotonic", x=x.tolist(), y=v.tolist())


def fit(kind: Kind, p: np.ndarray, y: np.ndarray) -> Calibrator:
    if kind == "platt":
        return fit_platt(p, y)
    if kind == "isotonic":
        return fit_isotonic(p, y)
    return Calibrator()


def brier(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((np.asarray(p, float) - np.asarray(y, float)) ** 2))


# A calibrated probability whose spread over the OOF rows is below this is collapsed: calibration can squeeze a
# weak signal towards the base rate (Brier-optimal), but then it gates nothing and the health gate refuses a
# near-constant output (models.collapse_std, 1e-3, on the holdout), so such a map never ships ("none" does).
MIN_STD = 5e-3


def collapsed(c: Calibrator, p: np.ndarray | None = None) -> bool:
    """A map that sends every probability (of ``p``, if given) to (nearly) one value: it would ship a constant."""
    if c.kind == "platt" and c.a < 1e-3:
        return True
    if c.kind == "isotonic" and max(c.y) - min(c.y) < 1e-3:
        return True
    return c.kind != "none" and p is not None and len(p) > 1 and float(np.std(c.apply(p))) < MIN_STD


@dataclass
class Choice:
    calibrator: Calibrator
    inner_brier: dict[str, float]  # kind -> size-weighted Brier over the inner blocks


def choose(
    p: np.ndarray, y: np.ndarray, blocks: list[tuple[np.ndarray, np.ndarray]], kinds: Sequence[Kind] = KINDS
) -> Choice:
    """Pick the calibration of the OOF probabilities ``p`` (labels ``y``, time-sorted rows) among ``kinds`` on
    the inner walk-forward ``blocks`` [(train_idx, test_idx)], then refit it on every row."""
    kinds = tuple(k for k in KINDS if k in kinds or k == "none")  # "none" is always a candidate
    scores: dict[str, float] = {}
    total = sum(len(t) for _, t in blocks)
    for kind in kinds:
        s = 0.0
        for train, test in blocks:
            c = fit(kind, p[train], y[train]) if len(train) >= MIN_ROWS else Calibrator()
            if collapsed(c, p[train]):
                c = Calibrator()
            s += brier(c.apply(p[test]), y[test]) * len(test)
        scores[kind] = s / max(total, 1)
    best: Kind = min(kinds, key=lambda k: (round(scores[k], 12), KINDS.index(k)))
    chosen = fit(best, p, y)
    if collapsed(chosen, p):
        chosen = Calibrator()
    return Choice(chosen, scores)


def reliability(p: np.ndarray, y: np.ndarray, bins: int = 10) -> list[dict]:
    """Per equal-width probability bin with rows: mean predicted, observed frequency, rows."""
    p, y = np.asarray(p, float), np.asarray(y, float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    out = []
    for b in range(bins):
        m = which == b
        if m.any():
            out.append({"bin": b, "predicted": float(p[m].mean()), "observed": float(y[m].mean()), "n": int(m.sum())})
    return out
