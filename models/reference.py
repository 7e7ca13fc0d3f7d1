"""The reference model every run reports beside the ensemble: a simple fixed-parameter LightGBM on a small, fixed
feature set, trained on the same folds (out of fold) and refitted to score the same holdout.

It answers "what does the ensemble add over a plain model a careful person would write in an afternoon?". Its
parameters are not configurable on purpose: a reference that is tuned with the ensemble stops being one. It does
not ship and is not part of the stack; its numbers go to ``metrics.json`` (``reference``) and the report.

Features: returns at a few lags, MACD(12,26,9) line / signal / histogram (over price), realised volatility, the
volume z-score and the bar's range, as far as the feature table has them.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from macd_ml.features.labels import label_name
from macd_ml.features.splits import Folds
from macd_ml.models.evaluate import auc_se
from macd_ml.models.gbdt import LGBModel, LGBParams
from macd_ml.models.train import auc, auc_within, build_dataset, train_fold

NAME = "reference"
FEATURES = (
    "ret_1",
    "ret_2",
    "ret_3",
    "ret_5",
    "ret_12",
    "ret_24",
    "macd_12_26_9_line",
    "macd_12_26_9_signal",
    "macd_12_26_9_hist",
    "rvol_24",
    "rvol_168",
    "volz_24",
    "range_pct",
)
# small trees, strong leaves, a slow rate and a fixed early-stopping patience: hard to overfit, easy to explain
PARAMS = LGBParams(
    learning_rate=0.03,
    max_rounds=400,
    early_stopping_rounds=100,
    min_rounds=50,
    num_leaves=7,
    min_data_in_leaf=200,
    feature_fraction=0.8,
    bagging_fraction=0.8,
    lambda_l2=5.0,
    seed=0,
)


class ReferenceModel(LGBModel):
    name = NAME


def reference_features(names: list[str]) -> list[str]:
    present = [f for f in FEATURES if f in names]
    if not present:
        raise ValueError(f"the feature table has none of the reference model's features {list(FEATURES)}")
    return present


def reference_predictions(
    features: pl.DataFrame, labels: pl.DataFrame, folds: Folds, horizons: list[int], gap_tolerance_hours: int
) -> pl.DataFrame:
    """OOF predictions on every fold's test span and the refit's holdout predictions, one table:
    ``row, timestamp, fold (-1 = holdout), y_<h>, reference_h<h>``."""
    names = reference_features(features.columns)
    data = build_dataset(features, labels, names, horizons, gap_tolerance_hours)
    parts = []
    for index, fold in [*((f.index, f) for f in folds.folds), (-1, folds.refit)]:
        model = ReferenceModel(PARAMS, names, horizons)
        result = train_fold(model, data, fold, collapse_std=0.0)
        part = {
            "row": result.rows.astype(np.int64),
            "timestamp": features["timestamp"].gather(result.rows),
            "fold": np.full(len(result.rows), index, np.int64),
        }
        for j, h in enumerate(horizons):
            part[label_name(h)] = labels[label_name(h)].gather(result.rows)
            part[f"{NAME}_h{h}"] = result.predictions[:, j].astype(np.float64)
        parts.append(pl.DataFrame(part))
    return pl.concat(parts)


def reference_scores(table: pl.DataFrame, horizons: list[int]) -> dict[str, dict]:
    """Per horizon: OOF AUC scored within each fold (weighted by rows, as the base models' ``oof_auc``), the
    holdout AUC, the row counts and the holdout's SE."""
    out = {}
    for h in horizons:
        y_col, p_col = label_name(h), f"{NAME}_h{h}"
        defined = table.filter(pl.col(y_col).is_not_null())
        oof = defined.filter(pl.col("fold") >= 0)
        y = oof[y_col].cast(pl.Float64).to_numpy()
        hold = defined.filter(pl.col("fold") == -1)
        n_test = hold.height
        out[str(h)] = {
            "oof_auc": auc_within(y, oof[p_col].to_numpy(), oof["fold"].to_numpy()),
            "oof_auc_pooled": auc(y, oof[p_col].to_numpy()),
            "test_auc": auc(hold[y_col].cast(pl.Float64).to_numpy(), hold[p_col].to_numpy()),
            "n_oof": int(oof.height),
            "n_test": int(n_test),
            "test_se": auc_se(n_test, h),
        }
    return out
