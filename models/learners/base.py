"""The small model interface every base learner implements (in the spirit of Qlib's ``Model.fit/predict``).

A model is configured by a pydantic params object, fitted on one training span with its inner early-stopping
slice, predicts one probability per horizon, saves to a folder without pickle, loads back, and describes itself.

Data reach models as a :class:`Dataset`: the whole feature matrix plus the rows to use. Tabular models read only
their rows; sequence models also read the rows before them (features only, never labels) to build windows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel


@dataclass(frozen=True)
class Dataset:
    """Feature matrix X (n_rows x n_features, float32), labels Y (n_rows x n_horizons, float32 with NaN where
    undefined), and ``segment_start[i]`` = first row of row i's contiguous stretch (sequence windows stop there).

    The training view has labels; the inference view (``models.train.inference_view``) has ``Y=None``: fitting on
    it is an error, predicting works the same."""

    X: np.ndarray
    Y: np.ndarray | None
    feature_names: list[str]
    horizons: list[int]
    segment_start: np.ndarray
    timestamps: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.Y is not None and (self.X.shape[0] != self.Y.shape[0] or self.Y.shape[1] != len(self.horizons)):
            raise ValueError("X, Y and horizons disagree in shape")
        if self.segment_start.shape[0] != self.X.shape[0]:
            raise ValueError("X and segment_start disagree in length")
        if self.X.shape[1] != len(self.feature_names):
            raise ValueError("X columns and feature_names disagree")

    @property
    def n_rows(self) -> int:
        return self.X.shape[0]

    @property
    def labels(self) -> np.ndarray:
        """Y, for fitting; an inference view has none."""
        if self.Y is None:
            raise ValueError("this dataset is an inference view without labels; fit on a training view (build_dataset)")
        return self.Y

    def columns(self, names: list[str]) -> np.ndarray:
        idx = [self.feature_names.index(n) for n in names]
        return self.X[:, idx]


@dataclass(frozen=True)
class Rows:
    """Which rows of a Dataset a call uses: indices into it, ascending."""

    idx: np.ndarray

    @classmethod
    def span(cls, start: int, stop: int) -> "Rows":
        return cls(np.arange(start, stop, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.idx)


class NotFittedError(RuntimeError):
    """predict() or save() on a model that was neither fitted nor loaded."""


@dataclass
class FitInfo:
    """What a fit produced, for describe() and the report."""

    best_iteration: dict[str, int] = field(default_factory=dict)  # per horizon (trees) or epochs
    device: str = "cpu"
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class Model(ABC):
    """Base learner. Subclasses set ``name`` and ``Params`` and implement the five methods."""

    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]]

    def __init__(self, params: BaseModel, feature_names: list[str], horizons: list[int]):
        self.params = params
        self.feature_names = list(feature_names)
        self.horizons = list(horizons)
        self.info = FitInfo()

    @property
    @abstractmethod
    def is_fitted(self) -> bool:
        """True once fit() or load() gave the model its parameters."""

    def check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(f"{self.name} is not fitted yet: call fit() (or load a saved model) before predict()")

    @abstractmethod
    def fit(self, data: Dataset, fit_rows: Rows, early_stop_rows: Rows) -> "Model":
        """Train on ``fit_rows``; stop early / choose the best epoch on ``early_stop_rows``."""

    @abstractmethod
    def predict(self, data: Dataset, rows: Rows) -> np.ndarray:
        """Probabilities, shape (len(rows), len(horizons))."""

    @abstractmethod
    def save(self, folder: Path) -> list[Path]:
        """Write the model to ``folder`` without pickle; return the files written."""

    @classmethod
    @abstractmethod
    def load(cls, folder: Path) -> "Model": ...

    def describe(self) -> dict[str, Any]:
        """Everything that defines the fitted model (saved beside it, so no wall-clock times here: the same
        data and parameters must give byte-identical model files)."""
        return {
            "name": self.name,
            "params": self.params.model_dump(mode="json"),
            "n_features": len(self.feature_names),
            "feature_names": self.feature_names,
            "horizons": self.horizons,
            "device": self.info.device,
            "best_iteration": self.info.best_iteration,
            **self.info.extra,
        }


# --------------------------------------------------------------------------------------------- helpers


def labelled(data: Dataset, rows: Rows, h_index: int) -> np.ndarray:
    """The subset of ``rows`` whose label at horizon ``h_index`` is defined."""
    y = data.labels[rows.idx, h_index]
    return rows.idx[~np.isnan(y)]


def files_digest(paths: list[Path]) -> str:
    """sha256 over files' names and bytes, in name order: one fingerprint of a saved model."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted(paths, key=lambda p: p.name):
        data = p.read_bytes()
        h.update(f"{p.name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def fitted_digest(model: Model) -> str:
    """The fingerprint of everything a fit chose (trees, weights, epoch, head, normaliser): the sha256 of the files
    :meth:`Model.save` writes. Fold models are never kept, so this is how a run records what each fold fitted and
    how the holdout-blindness tests prove a fit did not move (docs/leakage.md)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix=f"macd-ml-{model.name}-digest-") as scratch:
        return files_digest(model.save(Path(scratch)))
