"""Which gate the bot runs, chosen on out-of-fold trades only (docs/trade-gate.md, "The choice").

Four kinds, each a rule over the MACD signals of a span:

- ``none``: take every signal;
- ``direction``: take a signal when the primary ensemble's probability for its direction, at the primary horizon,
  clears a threshold (the gate the bot ran before the trade gate existed);
- ``meta``: take it when the secondary model's probability that the trade makes money clears a threshold;
- ``meta_sized``: the same trades, each sized from that probability (models/gate/sizing.py).

The thresholds and the kind come from the out-of-fold span only: the primary's out-of-fold probabilities and the
secondary's inner walk-forward ones. A gate ships only if its mean Sharpe (over long/flat and long/short) beats no
gate with a moving-block bootstrap interval above zero there (``beyond_noise``); otherwise ``none`` ships, and the
product says so: a gate whose benefit is noise is a brake on the bot.
"""

from __future__ import annotations

import numpy as np

from macd_ml.models.evaluation.backtest import (
    MODES,
    BacktestSpec,
    block_indices,
    compare_gates,
    gate,
    sharpe,
    simulate,
)
from macd_ml.models.gate.secondary import KINDS, GateKind, GateSpec
from macd_ml.models.gate.sizing import bet_size


def decide(
    kind: GateKind,
    signals: np.ndarray,
    p: np.ndarray,
    q: np.ndarray,
    direction_threshold: float | np.ndarray,
    meta_threshold: float | np.ndarray,
    spec: GateSpec,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Which signals ``kind`` takes (bool per bar) and their sizes (or None: one unit each). ``p``: the primary
    probability (up) per bar; ``q``: the secondary probability per bar (NaN where none); no probability, no trade."""
    if kind == "none":
        return signals != 0, None
    if kind == "direction":
        return gate(signals, p, direction_threshold), None
    q = np.asarray(q, dtype=np.float64)
    ok = np.isfinite(q)
    take = (signals != 0) & ok & (np.where(ok, q, 0.0) >= meta_threshold)
    if kind == "meta":
        return take, None
    return take, np.where(ok, bet_size(np.where(ok, q, 0.5), spec.min_size, spec.max_size), 0.0)


def meta_threshold(
    open_: np.ndarray, signals: np.ndarray, q: np.ndarray, horizon: int, bt: BacktestSpec, spec: GateSpec
) -> dict:
    """The meta gate's threshold: the candidate (a quantile of ``q`` over the span's signals, one per
    ``skip_shares``) with the best mean Sharpe over the two position styles, among those that keep at least
    ``bt.min_trade_share`` of the ungated trades."""
    qs = q[(signals != 0) & np.isfinite(q)]
    if not len(qs):
        return {"threshold": None, "scores": {}}
    everything = np.ones(len(signals), bool)
    base = {m: len(simulate(open_, signals, everything, horizon, m, bt.cost).trades) for m in MODES}
    scores: dict[str, float | None] = {}
    for share in spec.skip_shares:
        thr = float(np.quantile(qs, share))
        take, _ = decide("meta", signals, q, q, thr, thr, spec)  # the meta kind reads q only
        runs = {m: simulate(open_, signals, take, horizon, m, bt.cost) for m in MODES}
        enough = all(len(runs[m].trades) >= max(5, bt.min_trade_share * base[m]) for m in MODES)
        scores[f"{thr:.6f}"] = float(np.mean([sharpe(runs[m].returns) for m in MODES])) if enough else None
    valid = {t: s for t, s in scores.items() if s is not None}
    best = float(max(valid, key=lambda t: (valid[t], -float(t)))) if valid else None
    return {"threshold": best, "scores": scores}


def choose(
    open_: np.ndarray,
    signals: np.ndarray,
    p: np.ndarray,
    q: np.ndarray,
    direction_threshold: float,
    horizon: int,
    bt: BacktestSpec,
    spec: GateSpec,
) -> dict:
    """The choice on one out-of-fold span (arrays cover that span only). ``q`` is NaN where the secondary model
    has no out-of-fold probability (then the meta kinds are not candidates)."""
    meta = meta_threshold(open_, signals, q, horizon, bt, spec)
    gates: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    thresholds = {"direction": direction_threshold, "meta": meta["threshold"]}
    for kind in KINDS:
        if kind.startswith("meta") and meta["threshold"] is None:
            continue
        gates[kind] = decide(kind, signals, p, q, direction_threshold, meta["threshold"] or 1.0, spec)
    idx = block_indices(len(open_), bt.block_hours or max(horizon, 24), bt.bootstrap, bt.seed)
    cmp = compare_gates(open_, signals, horizon, bt, gates, idx)
    kinds = cmp["kinds"]
    tried = len(bt.thresholds) + (2 * len(spec.skip_shares) if meta["threshold"] is not None else 0)
    alpha = 0.05 / max(tried, 1)
    lower = {k: float(np.quantile(cmp["draws"][k], alpha / 2)) for k in kinds if k != "none"}
    eligible = {
        k: v["mean"]["sharpe"]
        for k, v in kinds.items()
        if k != "none" and (lower[k] > 0 if spec.beyond_noise else v["mean"]["minus_none"] > 0)
    }
    if eligible:
        chosen = max(eligible, key=lambda k: eligible[k])
        reason = (
            f"{chosen} beat taking every trade on the out-of-fold trades by {kinds[chosen]['mean']['minus_none']:+.2f} "
            f"Sharpe (95 % interval {_fmt(kinds[chosen]['mean']['minus_none_interval'])}; lower bound "
            f"{lower[chosen]:+.2f} at {100 * (1 - alpha):.2f} % for {tried} candidates)"
        )
    else:
        chosen = "none"
        best = max((k for k in kinds if k != "none"), key=lambda k: kinds[k]["mean"]["minus_none"], default=None)
        reason = "no gate beat taking every trade beyond noise on the out-of-fold trades" + (
            f" (best: {best}, {kinds[best]['mean']['minus_none']:+.2f} Sharpe, 95 % interval "
            f"{_fmt(kinds[best]['mean']['minus_none_interval'])}, lower bound {lower[best]:+.2f} at "
            f"{100 * (1 - alpha):.2f} % for {tried} candidates)"
            if best
            else ""
        )
    return {
        "kind": chosen,
        "reason": reason,
        "thresholds": thresholds,
        "meta_threshold_scores": meta["scores"],
        "oof": {k: summary_of(v) for k, v in kinds.items()},
        "candidates": tried,
        "lower_bounds": lower,
        "oof_bars": len(open_),
        "oof_signals": int((signals != 0).sum()),
    }


def _fmt(iv: list[float]) -> str:
    return f"{iv[0]:+.2f} .. {iv[1]:+.2f}"


def summary_of(kind: dict) -> dict:
    """A kind's figures without the per-trade detail (what gate.json keeps)."""
    return {m: kind[m] for m in [*MODES, "mean"]}
