"""The reference model every run trains beside the ensemble: a simple fixed-parameter LightGBM on a small, fixed
feature set, on the same folds (out of fold) and refitted to score the same holdout, by the same training tasks as
the base models.

It answers "what does the ensemble add over a plain model a careful person would write in an afternoon?". Its
parameters are not configurable on purpose: a reference that is tuned with the ensemble stops being one. Its
numbers go to ``metrics.json`` (``reference``, and ``models.reference``) and the report. It is also one more input
of the stack (``stacking.include_reference``, on by default): when the inner walk-forward says it is as good as
anything, it ships, so a run never ships something its own inner CV scores below the reference.

Features: returns at a few lags, MACD(12,26,9) line / signal / histogram (over price), realised volatility, the
volume z-score and the bar's range, as far as the feature table has them.
"""

from __future__ import annotations

from macd_ml.models.evaluation.stats import auc_se
from macd_ml.models.learners.params import LGBParams

REFERENCE = "reference"
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


def reference_features(names: list[str]) -> list[str]:
    present = [f for f in FEATURES if f in names]
    if not present:
        raise ValueError(f"the feature table has none of the reference model's features {list(FEATURES)}")
    return present


def reference_scores(scores: dict[str, dict], horizons: list[int]) -> dict[str, dict] | None:
    """``metrics.reference``: the reference model's entry of the per-model scores, with its holdout SE."""
    if REFERENCE not in scores:
        return None
    return {
        str(h): {**scores[REFERENCE][str(h)], "test_se": auc_se(scores[REFERENCE][str(h)]["n_test"], h)}
        for h in horizons
    }
