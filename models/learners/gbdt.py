"""Gradient-boosted trees: LightGBM (``lgb``, own features), cross-asset LightGBM (``lgb_cross``, own + cross
features) and XGBoost (``xgb``). One booster per horizon, early-stopped on the inner slice, but never before
``min_rounds`` trees (a small inner slice's noisy loss otherwise stops it at 1-3 trees: a near-constant model).

Saved as the libraries' own formats: LightGBM text, XGBoost JSON, plus ``{name}_meta.json``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import ClassVar

import lightgbm as lgb
import numpy as np
import xgboost as xgb
from pydantic import BaseModel

from macd_ml.artifacts.store import read_json, write_json
from macd_ml.models.learners.base import Dataset, Model, Rows, labelled
from macd_ml.models.learners.device import cpu_threads, cuda_available
from macd_ml.models.learners.params import BoostingParams, LGBParams, XGBParams

# LightGBM's native library is not safe when two Python threads train or predict at once (a Dataset built in one
# thread while another predicts segfaulted here; LightGBM's own docs warn against concurrent jobs in one process).
# Fold tasks run in threads, so every LightGBM call in this process takes this lock; XGBoost and torch tasks still
# run beside it.
_LGB_LOCK = threading.Lock()


def _floor(params: BoostingParams) -> int:
    """The first round early stopping may pick: ``min_rounds``, never above ``max_rounds``."""
    return max(1, min(params.min_rounds, params.max_rounds))


class _BestFrom:
    """Early stopping that ignores rounds before ``floor``: the best round is the lowest inner-slice loss among
    rounds ``floor..`` (1-based), and training stops ``patience`` rounds after it. Shared by both boosters, so
    LightGBM and XGBoost keep the same number of trees for the same losses."""

    def __init__(self, floor: int, patience: int):
        self.floor, self.patience = floor, patience
        self.best_round, self.best_loss = 0, float("inf")

    def update(self, round_: int, loss: float) -> bool:
        """Record round ``round_``'s loss (1-based); True = stop now."""
        if round_ >= self.floor and loss < self.best_loss:
            self.best_round, self.best_loss = round_, loss
        return round_ >= self.floor and round_ - self.best_round >= self.patience


class _XGBBestFrom(xgb.callback.TrainingCallback):
    def __init__(self, rule: _BestFrom):
        super().__init__()
        self.rule = rule

    def after_iteration(self, model, epoch: int, evals_log) -> bool:
        loss = float(evals_log["early_stop"]["logloss"][-1])
        return self.rule.update(epoch + 1, loss)


class _LGBBestFrom:
    """LightGBM callback (neither library's early stopping has a floor on the rounds it may pick, hence our own)."""

    order = 30  # after LightGBM's own evaluation

    def __init__(self, rule: _BestFrom):
        self.rule = rule

    def __call__(self, env: lgb.callback.CallbackEnv) -> None:
        results = env.evaluation_result_list or []
        loss = float(results[0][2])
        if self.rule.update(env.iteration + 1, loss):
            raise lgb.callback.EarlyStopException(self.rule.best_round - 1, results)


def _lgb_best_from(rule: _BestFrom) -> _LGBBestFrom:
    return _LGBBestFrom(rule)


def float32_thresholds(model_str: str) -> str:
    """Every split threshold t of a LightGBM model text rounded down to the largest float32 <= t.

    LightGBM compares in double, ONNX's TreeEnsemble in float32: a threshold halfway between two adjacent float32
    feature values rounds up to the larger one in float32 and sends that value the other way, which moved ONNX
    probabilities by up to 4e-3 against the native model. Our inputs are float32, and for a float32 x,
    ``x <= t`` exactly when ``x <= floor32(t)``: the native model's decisions stay the same and the ONNX graph
    gets thresholds it represents exactly. (No converter option does this; onnxmltools stores float32.)"""
    out = []
    for line in model_str.splitlines(keepends=True):
        if line.startswith("tree_sizes="):
            continue  # byte sizes of the trees as written; without them LightGBM reads the trees one by one
        if line.startswith("threshold="):
            big = float(np.finfo(np.float32).max)  # beyond float32 every finite float32 input compares the same
            t = np.clip(np.array(line[len("threshold=") :].split(), dtype=np.float64), -big, big)
            f = t.astype(np.float32)
            f = np.where(f.astype(np.float64) > t, np.nextafter(f, np.float32(-np.inf)), f)
            line = "threshold=" + " ".join(repr(float(v)) for v in f) + "\n"
        out.append(line)
    return "".join(out)


class BoosterPerHorizon(Model):
    """One booster per horizon, saved as ``{name}_h{h}.{suffix}`` in the library's own format + meta JSON."""

    suffix: ClassVar[str]

    def __init__(self, params: BaseModel, feature_names: list[str], horizons: list[int]):
        super().__init__(params, feature_names, horizons)
        self.boosters: dict = {}

    @staticmethod
    def _load_booster(path: Path):  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def is_fitted(self) -> bool:
        return bool(self.boosters) and all(h in self.boosters for h in self.horizons)

    def save(self, folder: Path) -> list[Path]:
        self.check_fitted()
        folder.mkdir(parents=True, exist_ok=True)
        files = []
        with _LGB_LOCK:  # (LightGBM's writer is native code too)
            for h, b in self.boosters.items():
                p = folder / f"{self.name}_h{h}.{self.suffix}"
                b.save_model(str(p))
                files.append(p)
        write_json(folder / f"{self.name}_meta.json", self.describe())
        files.append(folder / f"{self.name}_meta.json")
        return files

    @classmethod
    def load(cls, folder: Path) -> "BoosterPerHorizon":
        meta = read_json(folder / f"{cls.name}_meta.json")
        m = cls(cls.Params.model_validate(meta["params"]), meta["feature_names"], meta["horizons"])
        for h in m.horizons:
            m.boosters[h] = cls._load_booster(folder / f"{cls.name}_h{h}.{cls.suffix}")
        m.info.best_iteration = meta["best_iteration"]
        m.info.device = meta["device"]
        return m


class LGBModel(BoosterPerHorizon):
    name: ClassVar[str] = "lgb"
    Params: ClassVar[type[BaseModel]] = LGBParams
    suffix: ClassVar[str] = "txt"
    params: LGBParams

    @staticmethod
    def _load_booster(path: Path) -> lgb.Booster:
        with _LGB_LOCK:
            return lgb.Booster(model_file=str(path))

    def _lgb_params(self) -> dict:
        p = self.params
        return {
            "objective": "binary",
            "metric": "binary_logloss",
            "learning_rate": p.learning_rate,
            "num_leaves": p.num_leaves,
            "min_data_in_leaf": p.min_data_in_leaf,
            "feature_fraction": p.feature_fraction,
            "bagging_fraction": p.bagging_fraction,
            "bagging_freq": 1,
            "lambda_l2": p.lambda_l2,
            "seed": p.seed,
            "deterministic": True,
            # LightGBM picks col- or row-wise histograms by timing both on each Dataset unless told: under load
            # the pick can differ between two runs of the same fit, and so can the trees (its docs: set one of
            # force_col_wise / force_row_wise with deterministic). Col-wise is the one it picks on these tables.
            "force_col_wise": True,
            "num_threads": cpu_threads(),
            "verbosity": -1,
        }

    def fit(self, data: Dataset, fit_rows: Rows, early_stop_rows: Rows) -> "LGBModel":
        with _LGB_LOCK:
            return self._fit(data, fit_rows, early_stop_rows)

    def _fit(self, data: Dataset, fit_rows: Rows, early_stop_rows: Rows) -> "LGBModel":
        t0 = time.perf_counter()
        X = data.columns(self.feature_names)
        for j, h in enumerate(self.horizons):
            tr, es = labelled(data, fit_rows, j), labelled(data, early_stop_rows, j)
            dtrain = lgb.Dataset(X[tr], data.labels[tr, j], feature_name=self.feature_names, free_raw_data=True)
            dval = lgb.Dataset(X[es], data.labels[es, j], reference=dtrain)
            rule = _BestFrom(_floor(self.params), self.params.early_stopping_rounds)
            booster = lgb.train(
                self._lgb_params(),
                dtrain,
                num_boost_round=self.params.max_rounds,
                valid_sets=[dval],
                callbacks=[_lgb_best_from(rule)],
            )
            best = rule.best_round or booster.current_iteration()
            # keep only the trees up to the best iteration, so save/load/predict agree exactly; thresholds as float32
            self.boosters[h] = lgb.Booster(model_str=float32_thresholds(booster.model_to_string(num_iteration=best)))
            self.info.best_iteration[str(h)] = int(best)
        self.info.device = "cpu"
        self.info.seconds = time.perf_counter() - t0
        return self

    def predict(self, data: Dataset, rows: Rows) -> np.ndarray:
        self.check_fitted()
        X = data.columns(self.feature_names)[rows.idx]
        with _LGB_LOCK:
            return np.column_stack([self.boosters[h].predict(X) for h in self.horizons]).astype(np.float64)

    def feature_importance(self) -> dict[str, dict[str, float]]:
        """Gain importance per horizon (for the report)."""
        with _LGB_LOCK:
            return {
                str(h): dict(zip(self.feature_names, b.feature_importance("gain").astype(float).tolist()))
                for h, b in self.boosters.items()
            }


class ReferenceModel(LGBModel):
    """The fixed reference (models/learners/reference.py: its name, features and parameters)."""

    name: ClassVar[str] = "reference"


class LGBCrossModel(LGBModel):
    """Same learner, its own feature set: the target's features plus the cross-asset block."""

    name: ClassVar[str] = "lgb_cross"


class XGBModel(BoosterPerHorizon):
    name: ClassVar[str] = "xgb"
    Params: ClassVar[type[BaseModel]] = XGBParams
    suffix: ClassVar[str] = "json"
    params: XGBParams

    @staticmethod
    def _load_booster(path: Path) -> xgb.Booster:
        b = xgb.Booster()
        b.load_model(str(path))
        return b

    def _xgb_params(self, device: str) -> dict:
        p = self.params
        return {
            "objective": "binary:logistic",
            "eval_metric": "logloss",
            "tree_method": "hist",
            "device": device,
            "learning_rate": p.learning_rate,
            "max_depth": p.max_depth,
            "min_child_weight": p.min_child_weight,
            "subsample": p.subsample,
            "colsample_bytree": p.colsample_bytree,
            "reg_lambda": p.reg_lambda,
            "seed": p.seed,
            "nthread": cpu_threads(),
        }

    def fit(self, data: Dataset, fit_rows: Rows, early_stop_rows: Rows) -> "XGBModel":
        t0 = time.perf_counter()
        device = "cuda" if cuda_available() else "cpu"
        X = data.columns(self.feature_names)
        for j, h in enumerate(self.horizons):
            tr, es = labelled(data, fit_rows, j), labelled(data, early_stop_rows, j)
            dtrain = xgb.DMatrix(X[tr], label=data.labels[tr, j], feature_names=self.feature_names)
            dval = xgb.DMatrix(X[es], label=data.labels[es, j], feature_names=self.feature_names)
            rule = _BestFrom(_floor(self.params), self.params.early_stopping_rounds)
            booster = xgb.train(
                self._xgb_params(device),
                dtrain,
                num_boost_round=self.params.max_rounds,
                evals=[(dval, "early_stop")],
                callbacks=[_XGBBestFrom(rule)],
                verbose_eval=False,
            )
            best = rule.best_round or booster.num_boosted_rounds()
            # keep only the trees up to the best iteration, so save/load/predict agree exactly
            self.boosters[h] = booster[:best]
            self.boosters[h].set_param({"device": "cpu"})
            self.info.best_iteration[str(h)] = best
        self.info.device = device
        self.info.seconds = time.perf_counter() - t0
        return self

    def predict(self, data: Dataset, rows: Rows) -> np.ndarray:
        self.check_fitted()
        X = data.columns(self.feature_names)[rows.idx]
        d = xgb.DMatrix(X, feature_names=self.feature_names)
        return np.column_stack([self.boosters[h].predict(d) for h in self.horizons]).astype(np.float64)

    def feature_importance(self) -> dict[str, dict[str, float]]:
        return {
            str(h): {k: float(v) for k, v in b.get_score(importance_type="gain").items()}
            for h, b in self.boosters.items()
        }
