"""What ships for one horizon, for scoring: the meta-learner's coefficients, the equal-weight mean, or one model.

Fitted in :mod:`macd_ml.models.ensemble.stacking` (OOF rows only); here it only predicts, and saves to / loads from JSON
(``meta.json``: one predictor per horizon). No pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from macd_ml.models.ensemble.calibration import Calibrator
from macd_ml.models.ensemble.logistic import logit, sigmoid


@dataclass
class Predictor:
    """What ships for one horizon: ``kind`` is 'meta', 'mean' or 'best'. Serialises to JSON coefficients."""

    kind: Literal["meta", "mean", "best"]
    models: list[str]
    weights: list[float] = field(default_factory=list)  # meta: on standardised logits
    intercept: float = 0.0
    mean: list[float] = field(default_factory=list)  # standardisation of the logits (fitted on OOF rows)
    std: list[float] = field(default_factory=list)
    C: float | None = None
    calibration: Calibrator = field(
        default_factory=Calibrator
    )  # applied to the output (models/ensemble/calibration.py)

    @property
    def label(self) -> str:
        return f"best:{self.models[0]}" if self.kind == "best" else self.kind

    def predict(self, P: np.ndarray) -> np.ndarray:
        """P: (n, len(models)) base-model probabilities in ``models`` order; calibrated (if it has a calibration)."""
        return self.calibration.apply(self.predict_raw(P))

    def predict_raw(self, P: np.ndarray) -> np.ndarray:
        """The predictor's output before calibration."""
        if self.kind == "mean":
            return P.mean(axis=1)
        if self.kind == "best":
            return P[:, 0]
        Z = (logit(P) - np.asarray(self.mean)) / np.asarray(self.std)
        return sigmoid(Z @ np.asarray(self.weights) + self.intercept)

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "models": self.models,
            "weights": self.weights,
            "intercept": self.intercept,
            "logit_mean": self.mean,
            "logit_std": self.std,
            "C": self.C,
            "calibration": self.calibration.to_json(),
        }

    @classmethod
    def from_json(cls, d: dict) -> "Predictor":
        return cls(
            kind=d["kind"],
            models=d["models"],
            weights=d["weights"],
            intercept=d["intercept"],
            mean=d["logit_mean"],
            std=d["logit_std"],
            C=d["C"],
            calibration=Calibrator.from_json(d.get("calibration")),
        )


def predictors_document(horizons: list[int], predictors: dict[str, Predictor]) -> dict:
    """``meta.json``: one predictor per horizon (string keys), in JSON coefficients."""
    return {
        "horizons": horizons,
        "predictors": {h: p.to_json() for h, p in predictors.items()},
        "input": "base-model probabilities; meta uses standardised logits",
    }


def save_predictors(path: Path | str, horizons: list[int], predictors: dict[str, Predictor]) -> Path:
    from macd_ml.artifacts.store import write_json

    write_json(path, predictors_document(horizons, predictors))
    return Path(path)


def load_predictors(path: Path | str) -> dict[str, Predictor]:
    """Horizon ("5") -> Predictor from a ``meta.json``; a ValueError names the file if it is not one."""
    try:
        doc = json.loads(Path(path).read_text())
        return {h: Predictor.from_json(d) for h, d in doc["predictors"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a predictor document ({exc})") from None
