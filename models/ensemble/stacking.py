"""Regularised meta-stacking that cannot see the holdout, and an honest choice of what ships.

Per horizon:

1. Diversity: correlation of the base models' OOF predictions, each model's prediction std, pairs above a
   threshold flagged redundant, collapsed models flagged. Collapsed models are left out (switch), and of a
   redundant pair the one with the lower inner-CV AUC can be dropped (switch).
2. Inner walk-forward over the OOF rows only (time-ordered blocks, expanding, training rows purged so that
   ``t + embargo < block start``) scores three candidates on the same rows:
   - ``meta``: L2-regularised logistic regression on the models' standardised logits, optionally with
     non-negative weights, its regularisation C chosen on these inner folds;
   - ``mean``: the equal-weight mean of the models' probabilities (nothing fitted);
   - ``best:<model>``: the single model with the best inner-CV AUC.
   The meta ships only if it beats the mean there; a single model only if it beats both.
   With the reference model in the stack, that pick still has to beat the reference by more than
   ``reference_margin_se`` standard errors of their paired AUC difference on the same inner rows, otherwise the
   reference ships (:func:`paired_difference`). Picking the best of several noisy candidates overstates it
   (the winner's curse): replayed on later OOF rows of the five real symbols (``bench/bench_choice.py``), the
   plain pick scored below the reference on average, every margin from 1 to 2 SE at or above it. 1.5 rather
   than 2: on a 12,000 h planted market 2 SE kept the reference where the ensemble was 0.03 AUC better.
3. The shipped predictor is refitted on every OOF row. The holdout is a separate argument of
   :func:`evaluate_holdout`, never of the fitting code; it only reports.

Why hand-written logistic regression: scikit-learn's LogisticRegression has no non-negativity constraint;
this is 20 lines of L-BFGS-B (scipy) on the same objective (0.5·|w|² + C·Σ logloss).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field
from scipy.stats import rankdata

from macd_ml.artifacts import catalog
from macd_ml.errors import NothingToShip
from macd_ml.features.labels import label_name
from macd_ml.features.segments import HOUR_US
from macd_ml.models.ensemble import calibration
from macd_ml.models.ensemble.logistic import fit_logistic, logit
from macd_ml.models.ensemble.predictor import Predictor
from macd_ml.models.evaluation.evaluate import prediction_columns
from macd_ml.models.evaluation.metrics import Diversity, Shipped
from macd_ml.models.evaluation.stats import auc, auc_se, auc_within

MIN_INNER_BLOCK = 20
BOOTSTRAP_DRAWS = 200  # the paired difference's SE against the reference (paired_difference)


class StackSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    c_grid: list[Annotated[float, Field(gt=0)]] = Field(
        default=[1e-3, 1e-2, 1e-1, 1.0],
        min_length=1,
        title="Meta-learner L2 grid (C)",
        description="inverse L2 strengths tried (each > 0)",
    )
    nonneg: bool = Field(
        default=True, title="Non-negative weights", description="non-negative weights on the models' logits"
    )
    inner_folds: int = Field(
        default=4,
        ge=2,
        le=20,
        title="Inner folds (stacking)",
        description="inner walk-forward blocks over the OOF rows",
    )
    min_train_fraction: float = Field(
        default=0.4,
        gt=0,
        lt=0.9,
        title="OOF share before the first inner fold",
        description="OOF rows before the first inner block",
    )
    include_reference: bool = Field(
        default=True,
        title="Reference model joins the stack",
        description="the fixed reference model joins the stack as one more base model (it always trains and is "
        "reported; with this on it can also ship when the inner walk-forward prefers it)",
    )
    reference_margin_se: float = Field(
        default=1.5,
        ge=0,
        title="Margin over the reference (SE)",
        description="with the reference in the stack, another candidate ships only if its inner-CV AUC beats the "
        "reference's by more than this many SE of their paired difference (0: the best inner-CV AUC ships)",
    )
    calibrations: list[calibration.Kind] = Field(
        default=["none", "platt"],
        min_length=1,
        title="Calibrations tried",
        description="calibration maps the inner walk-forward chooses among ('none' always is one; 'isotonic' is "
        "off by default, see models/ensemble/calibration.py)",
    )
    drop_collapsed: bool = Field(
        default=True, title="Leave out collapsed models", description="leave collapsed models out of the stack"
    )
    drop_redundant: bool = Field(
        default=False, title="Drop redundant models", description="drop the weaker model of each redundant pair"
    )
    redundancy_threshold: float = Field(
        default=0.9,
        gt=0,
        le=1,
        title="Redundancy correlation",
        description="OOF correlation that marks a pair redundant",
    )


# --------------------------------------------------------------------------------------------- predictors


def fit_meta(P: np.ndarray, y: np.ndarray, models: list[str], C: float, nonneg: bool) -> Predictor:
    L = logit(P)
    mean, std = L.mean(axis=0), L.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    w, b = fit_logistic((L - mean) / std, y, C, nonneg)
    return Predictor("meta", list(models), w.tolist(), b, mean.tolist(), std.tolist(), C)


# --------------------------------------------------------------------------------------------- inner CV


def blockwise_auc(y: np.ndarray, p: np.ndarray, sizes: list[int]) -> float | None:
    """AUC within each of the consecutive inner blocks of ``sizes`` rows (see :func:`auc_within`)."""
    return auc_within(y, p, np.repeat(np.arange(len(sizes)), sizes))


def paired_difference(
    y: np.ndarray, p: np.ndarray, q: np.ndarray, sizes: list[int], h: int, draws: int = BOOTSTRAP_DRAWS
) -> tuple[float, float]:
    """Mean and standard error of AUC(p) - AUC(q) on the same rows, scored within each consecutive inner block of
    ``sizes`` rows and averaged weighted by rows (as the candidates' inner-CV AUCs are). The SE comes from a
    moving-block bootstrap inside each block (blocks of ``max(2 h, 24)`` rows keep overlapping labels together;
    both predictors are resampled on the same rows). Written here because the paired AUC tests in libraries
    (DeLong) assume independent rows."""
    from macd_ml.models.evaluation.backtest import block_indices

    diffs, boots, weights = [], [], []
    start = 0
    for k, size in enumerate(sizes):
        rows = np.arange(start, start + size)
        start += size
        yb = y[rows]
        if size < 2 or yb.min() == yb.max():
            continue
        idx = block_indices(size, max(2 * h, 24), draws, seed=k)
        diffs.append(_auc_rows(yb[None, :], p[rows][None, :])[0] - _auc_rows(yb[None, :], q[rows][None, :])[0])
        boots.append(_auc_rows(yb[idx], p[rows][idx]) - _auc_rows(yb[idx], q[rows][idx]))
        weights.append(size)
    if not diffs:
        return 0.0, float("inf")
    w = np.asarray(weights, np.float64) / sum(weights)
    mean = float(np.dot(w, diffs))
    draws_mean = w @ np.asarray(boots)
    draws_mean = draws_mean[np.isfinite(draws_mean)]  # a draw with one class left in a block has no AUC there
    return mean, float(np.std(draws_mean, ddof=1)) if len(draws_mean) > 1 else float("inf")


def _auc_rows(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """ROC AUC of each row of ``p`` (ties share their average rank) against the same row of 0/1 ``y``: the
    Mann-Whitney statistic, vectorised over bootstrap draws; NaN where a row has one class."""
    r = rankdata(p, axis=1)
    pos = y.sum(axis=1)
    neg = y.shape[1] - pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((r * y).sum(axis=1) - pos * (pos + 1) / 2) / (pos * neg)


def inner_block_size(n_rows: int, n_blocks: int, min_train_fraction: float) -> int:
    return (n_rows - int(n_rows * min_train_fraction)) // n_blocks


def inner_blocks(ts_us: np.ndarray, n_blocks: int, min_train_fraction: float, embargo_hours: int):
    """Yield (train_idx, test_idx) over time-sorted rows: expanding, purged by ``t + embargo < test start``."""
    n = len(ts_us)
    start = int(n * min_train_fraction)
    size = inner_block_size(n, n_blocks, min_train_fraction)
    if size < MIN_INNER_BLOCK:
        raise ValueError(f"{n} OOF rows are too few for {n_blocks} inner folds")
    gap = embargo_hours * HOUR_US
    for k in range(n_blocks):
        a = start + k * size
        b = n if k == n_blocks - 1 else a + size
        train = np.flatnonzero(ts_us[:a] + gap < ts_us[a])
        yield train, np.arange(a, b)


@dataclass
class HorizonStack:
    horizon: int
    shipped: Predictor
    candidates: dict[str, dict]  # label -> {"val_auc", "C"?}
    c_scores: dict[str, float | None]
    diversity: dict
    dropped: dict[str, str]  # model -> reason
    val_auc: float | None
    oof_auc: float | None  # the shipped predictor refitted on all OOF rows, scored in-sample
    train_first: str | None = None
    train_last: str | None = None
    n_train: int = 0
    n_val: int = 0
    calibration_brier: dict[str, float] | None = None  # inner walk-forward Brier per calibration kind
    oof_shipped: np.ndarray | None = None  # the shipped (calibrated) probability on every OOF row, time-sorted
    oof_timestamps: pl.Series | None = None
    oof_honest: np.ndarray | None = None  # the shipped probability on OOF rows where it is out of sample (else NaN)


def diversity(P: np.ndarray, models: list[str], threshold: float, collapsed: dict[str, bool]) -> dict:
    if P.shape[1] > 1:
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = np.corrcoef(P, rowvar=False)
    else:
        corr = np.ones((1, 1))
    pairs = [
        {"a": models[i], "b": models[j], "corr": float(corr[i, j])}
        for i in range(len(models))
        for j in range(i + 1, len(models))
        if np.isfinite(corr[i, j]) and corr[i, j] > threshold
    ]
    return {
        "models": list(models),
        "matrix": [[None if not np.isfinite(v) else round(float(v), 4) for v in row] for row in corr],
        "std": {m: float(P[:, i].std()) for i, m in enumerate(models)},
        "redundant_pairs": pairs,
        "collapsed": [m for m in models if collapsed.get(m)],
    }


def stack_horizon(
    oof: pl.DataFrame,
    models: list[str],
    h: int,
    spec: StackSpec,
    embargo_hours: int,
    collapsed: dict[str, bool] | None = None,
) -> HorizonStack:
    """Choose and fit what ships for horizon ``h`` from OOF rows only."""
    collapsed = collapsed or {}
    y_col = label_name(h)
    rows = oof.filter(pl.col(y_col).is_not_null()).sort(catalog.TIMESTAMP)
    cols = prediction_columns_for(models, h)
    P_all = rows.select(cols).to_numpy().astype(np.float64)
    y = rows[y_col].cast(pl.Float64).to_numpy()
    ts = rows[catalog.TIMESTAMP].dt.epoch("us").to_numpy()
    div = diversity(P_all, models, spec.redundancy_threshold, collapsed)

    # inner walk-forward: every candidate scored on the same inner test blocks, each block on its own (see
    # blockwise_auc: a pooled AUC would reward a constant that only tracks each block's base rate)
    blocks = list(inner_blocks(ts, spec.inner_folds, spec.min_train_fraction, embargo_hours))
    test_idx = np.concatenate([t for _, t in blocks])
    sizes = [len(t) for _, t in blocks]
    single_val = {m: blockwise_auc(y[test_idx], P_all[test_idx, i], sizes) for i, m in enumerate(models)}

    dropped: dict[str, str] = {}
    if spec.drop_collapsed:
        dropped.update({m: "collapsed" for m in models if collapsed.get(m)})
    if spec.drop_redundant:
        for pair in div["redundant_pairs"]:
            a, b = pair["a"], pair["b"]
            if a in dropped or b in dropped:
                continue
            weaker = a if (single_val[a] or 0) < (single_val[b] or 0) else b
            dropped[weaker] = f"redundant with {b if weaker == a else a} (corr {pair['corr']:.3f})"
    kept = [m for m in models if m not in dropped]
    if not kept:
        raise NothingToShip(
            f"h={h}: every model was left out of the stack ({', '.join(f'{m}: {r}' for m, r in dropped.items())}); "
            "nothing can ship. More data or other model parameters can help; rerunning cannot"
        )
    P = P_all[:, [models.index(m) for m in kept]]

    c_scores: dict[str, float | None] = {}
    meta_pred: dict[float, np.ndarray] = {}
    for C in spec.c_grid:
        pred = np.empty(len(test_idx))
        pos = 0
        for train, test in blocks:
            fitted = fit_meta(P[train], y[train], kept, C, spec.nonneg)
            pred[pos : pos + len(test)] = fitted.predict(P[test])
            pos += len(test)
        meta_pred[C] = pred
        c_scores[str(C)] = blockwise_auc(y[test_idx], pred, sizes)
    best_c = max(spec.c_grid, key=lambda c: c_scores[str(c)] or 0.0)
    mean_val = blockwise_auc(y[test_idx], P[test_idx].mean(axis=1), sizes)
    best_model = max(kept, key=lambda m: single_val[m] or 0.0)
    candidates: dict[str, dict[str, Any]] = {
        "meta": {"val_auc": c_scores[str(best_c)], "C": best_c},
        "mean": {"val_auc": mean_val},
        f"best:{best_model}": {"val_auc": single_val[best_model]},
    }
    meta_v, mean_v, single_v = (candidates["meta"]["val_auc"] or 0.0, mean_val or 0.0, single_val[best_model] or 0.0)
    shipped: Predictor | None = None
    if meta_v > mean_v and meta_v >= single_v:
        fitted = fit_meta(P, y, kept, best_c, spec.nonneg)
        if np.any(np.abs(fitted.weights) > 0):  # all-zero weights: a constant, which never ships
            shipped = fitted
        else:
            candidates["meta"]["note"] = "refitted on all OOF rows it has no weight left: a constant, not shipped"
    if shipped is None:
        shipped = Predictor("best", [best_model]) if single_v > mean_v else Predictor("mean", kept)
    if "reference" in kept and shipped.label != "best:reference":
        # the pick replaces the simple model only if it wins beyond noise on the same inner rows
        inner = {
            "meta": meta_pred[best_c],
            "mean": P[test_idx].mean(axis=1),
            f"best:{best_model}": P_all[test_idx, models.index(best_model)],
        }[shipped.label]
        ref = P_all[test_idx, models.index("reference")]
        diff, se = paired_difference(y[test_idx], inner, ref, sizes, h)
        wins = diff > (spec.reference_margin_se * se if spec.reference_margin_se else 0.0)
        candidates[shipped.label].update({"vs_reference": diff, "vs_reference_se": se if np.isfinite(se) else None})
        if not wins:
            candidates[shipped.label]["note"] = (
                f"inner-CV AUC {diff:+.4f} vs the reference, not beyond {spec.reference_margin_se:g} SE ({se:.4f})"
            )
            candidates["best:reference"] = {"val_auc": single_val["reference"]}
            shipped = Predictor("best", ["reference"])
    shipped_val = candidates[shipped.label]["val_auc"]
    P_shipped = rows.select(prediction_columns_for(shipped.models, h)).to_numpy().astype(np.float64)
    # calibration: chosen on the same inner blocks, from the shipped predictor's output on the OOF rows
    cal = calibration.choose(shipped.predict_raw(P_shipped), y, blocks, spec.calibrations)
    shipped.calibration = cal.calibrator
    in_sample = shipped.predict(P_shipped)
    # the shipped probability where it is out of sample: every OOF row for the mean or one model (nothing fitted
    # on the rows but the calibration map), the inner test blocks' predictions for a meta-learner (its weights
    # were fitted on the rest). What the trade gate learns from (models/gate/secondary.py)
    honest = in_sample.copy()
    if shipped.kind == "meta":
        honest = np.full(len(y), np.nan)
        honest[test_idx] = shipped.calibration.apply(meta_pred[best_c])
    return HorizonStack(
        horizon=h,
        shipped=shipped,
        candidates=candidates,
        c_scores=c_scores,
        diversity=div,
        dropped=dropped,
        val_auc=shipped_val,
        oof_auc=auc(y, in_sample),
        train_first=rows[catalog.TIMESTAMP][0].isoformat() if rows.height else None,
        train_last=rows[catalog.TIMESTAMP][-1].isoformat() if rows.height else None,
        n_train=rows.height,
        n_val=len(test_idx),
        calibration_brier=cal.inner_brier,
        oof_shipped=in_sample,
        oof_timestamps=rows[catalog.TIMESTAMP],
        oof_honest=honest,
    )


def prediction_columns_for(models: list[str], h: int) -> list[str]:
    return [prediction_columns(m, [h])[0] for m in models]


# --------------------------------------------------------------------------------------------- holdout


def candidate_predictor(stack: HorizonStack, label: str, oof: pl.DataFrame, spec: StackSpec) -> Predictor:
    """Rebuild any candidate (fitted on OOF rows only) so the holdout can report all three."""
    if label == stack.shipped.label:
        return stack.shipped
    kept = [m for m in stack.diversity["models"] if m not in stack.dropped]
    if label == "mean":
        return Predictor("mean", kept)
    if label.startswith("best:"):
        return Predictor("best", [label.split(":", 1)[1]])
    rows = oof.filter(pl.col(label_name(stack.horizon)).is_not_null())
    P = rows.select(prediction_columns_for(kept, stack.horizon)).to_numpy().astype(np.float64)
    y = rows[label_name(stack.horizon)].cast(pl.Float64).to_numpy()
    return fit_meta(P, y, kept, stack.candidates["meta"]["C"], spec.nonneg)


def evaluate_holdout(predictor: Predictor, holdout: pl.DataFrame, h: int) -> tuple[float | None, np.ndarray]:
    """Score a predictor on the holdout (reporting only). Returns (AUC, probabilities for every holdout row)."""
    P = holdout.select(prediction_columns_for(predictor.models, h)).to_numpy().astype(np.float64)
    p = predictor.predict(P)
    y = holdout[label_name(h)].cast(pl.Float64).to_numpy()
    return auc(y, p), p


@dataclass
class StackOutcome:
    """Per horizon: what ships and how it was chosen, the diversity analysis, the fitted predictors, and the
    shipped predictor's holdout probabilities (``timestamp`` + ``shipped_h{h}``)."""

    metrics: dict[str, Shipped]
    diversity: dict[str, Diversity]
    predictors: dict[str, Predictor]
    shipped: pl.DataFrame
    oof_shipped: pl.DataFrame | None = None  # timestamp + shipped_h{h} on OOF rows (calibrated; null where undefined)


def _calibration_report(st: HorizonStack, raw: np.ndarray, p: np.ndarray, y: np.ndarray) -> dict:
    ok = ~np.isnan(y)
    return {
        "kind": st.shipped.calibration.kind,
        "inner_brier": st.calibration_brier or {},
        "holdout_brier_raw": calibration.brier(raw[ok], y[ok]) if ok.any() else None,
        "holdout_brier": calibration.brier(p[ok], y[ok]) if ok.any() else None,
        "reliability_raw": calibration.reliability(raw[ok], y[ok]),
        "reliability": calibration.reliability(p[ok], y[ok]),
    }


def stack_all(
    oof: pl.DataFrame,
    holdout: pl.DataFrame,
    models: list[str],
    horizons: list[int],
    spec: StackSpec,
    embargo_hours: int,
    collapsed: dict[str, bool],
):
    """Every horizon: choose and fit on OOF rows, then report on the holdout."""
    predictors: dict[str, Predictor] = {}
    metrics: dict[str, Shipped] = {}
    div: dict[str, Diversity] = {}
    shipped_cols: dict[str, object] = {catalog.TIMESTAMP: holdout[catalog.TIMESTAMP]}
    oof_frames: list[pl.DataFrame | None] = []
    for h in horizons:
        # the fitting code is handed the OOF rows only; the holdout appears below, for reporting
        st = stack_horizon(oof, models, h, spec, embargo_hours, collapsed)
        test = {}
        for label in st.candidates:
            test[label] = evaluate_holdout(candidate_predictor(st, label, oof, spec), holdout, h)[0]
        test_auc, p = evaluate_holdout(st.shipped, holdout, h)
        shipped_cols[catalog.shipped_column(h)] = p
        raw = st.shipped.predict_raw(holdout.select(prediction_columns_for(st.shipped.models, h)).to_numpy())
        y_hold = holdout[label_name(h)].cast(pl.Float64).to_numpy()
        oof_frames.append(
            pl.DataFrame(
                {
                    catalog.TIMESTAMP: st.oof_timestamps,
                    catalog.shipped_column(h): st.oof_shipped,
                    catalog.out_of_sample_column(h): pl.Series(st.oof_honest).fill_nan(None),
                }
            )
            if st.oof_timestamps is not None
            else None
        )
        n_test = int(holdout[catalog.label_column(h)].drop_nulls().len())
        se = float(np.hypot(auc_se(st.n_val, h), auc_se(n_test, h)))
        gap = None if st.val_auc is None or test_auc is None else st.val_auc - test_auc
        metrics[str(h)] = Shipped.model_validate(
            {
                "shipped": st.shipped.label,
                "oof_auc": st.oof_auc,
                "val_auc": st.val_auc,
                "test_auc": test_auc,
                "gap_abs": gap,
                "gap_rel": None if gap is None or not st.val_auc else gap / st.val_auc,
                "gap_combined_se": se,
                "candidates": {k: {**v, "test_auc": test[k]} for k, v in st.candidates.items()},
                "c_scores": st.c_scores,
                "weights": dict(zip(st.shipped.models, st.shipped.weights)) if st.shipped.kind == "meta" else None,
                "models": st.shipped.models,
                "dropped": st.dropped,
                "n_train": st.n_train,
                "n_val": st.n_val,
                "n_test": n_test,
                "train_last": st.train_last,
                "holdout_first": holdout[catalog.TIMESTAMP][0].isoformat(),
                "calibration": _calibration_report(st, raw, p, y_hold),
            }
        )
        div[str(h)] = Diversity.model_validate(st.diversity)
        predictors[str(h)] = st.shipped
    oof_shipped = None
    for f in oof_frames:  # one frame per horizon (rows with that horizon's label): outer-joined on time
        if f is not None:
            oof_shipped = (
                f if oof_shipped is None else oof_shipped.join(f, on=catalog.TIMESTAMP, how="full", coalesce=True)
            )
    if oof_shipped is not None:
        oof_shipped = oof_shipped.sort(catalog.TIMESTAMP)
    return StackOutcome(metrics, div, predictors, pl.DataFrame(shipped_cols), oof_shipped)
