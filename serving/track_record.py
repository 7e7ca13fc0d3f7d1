"""A stitched out-of-sample track record (docs/walkforward.md, "Track record"): a list of segments, each a run
that trades only bars after the data it trained on, scored from raw candles through its bundle (the bot's path:
:class:`~macd_ml.serving.scorer.Scorer`) and gated with its own threshold (chosen on its OOF rows), joined into one
span and traded by the bot's MACD strategy always, gated, and as buy-and-hold (models/evaluation/backtest.py:
moving-block bootstrap intervals). Beside the whole span: one row per segment (its own figures on its bars, as
``macd-ml backtest RUN --since --until`` gives them, and the AUC of its probabilities against the realised moves),
and, for several targets, the equal-weight pool of their hourly returns with intervals from blocks drawn at the
same hours for every target.

``macd-ml backtest --chain`` (the promoted runs of a real nightly history) and the walk-forward (one run per
cutoff) are both a list of segments.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

from macd_ml.artifacts import catalog
from macd_ml.errors import DataError
from macd_ml.features.ingest import load_market
from macd_ml.features.labels import label_name, make_labels
from macd_ml.models.evaluation.backtest import (
    MODES,
    _sharpes,
    bars_with_probability,
    block_indices,
    compare_gates,
    difference,
    evaluate,
    interval,
    macd_signals,
    sharpe,
)
from macd_ml.models.evaluation.stats import auc
from macd_ml.serving.backtest import Source, scores, span_time
from macd_ml.serving.guards import ONLY_FLAG
from macd_ml.serving.scorer import Scorer

RANDOM_DRAWS = 200  # random skips at each gate's own rate (models/evaluation/backtest.py: random_skips)


@dataclass(frozen=True)
class Segment:
    """A run trading the bars after ``after`` (the newest bar it trained on, or a later cutoff) up to and
    including ``last``."""

    source: Source
    after: datetime
    last: datetime
    label: str


def stitch(segments: list[Segment], data_dir: str, read=None) -> dict:
    """The track record of ``segments`` (in time order, not overlapping) on the candles in ``data_dir``."""
    sources = [s.source for s in segments]
    if not sources:
        raise DataError(data_dir, "no segment to trade")
    first = sources[0]
    for src in sources:
        if src.horizon != first.horizon:
            raise DataError(
                data_dir, f"run {src.bundle.run_id} gates at h={src.horizon}, the record at {first.horizon}"
            )
    scorer0 = Scorer(first.bundle, serving=ONLY_FLAG)
    market = load_market(data_dir, scorer0.target, scorer0.cross, read=read)
    candles = market.target.frame
    ts = candles[catalog.TIMESTAMP]
    pieces, rows = [], []
    for seg in segments:
        after = ts.filter(ts > seg.after)
        if not after.len() or after[0] > seg.last:
            continue
        first_bar = after[0]
        last_bar = ts.filter(ts <= seg.last)[-1]
        probs = scores(Scorer(seg.source.bundle, serving=ONLY_FLAG), market, first_bar, last_bar, seg.source.horizon)
        gate = seg.source.gate or {}
        thr = gate.get("thresholds") or {}
        probs = probs.with_columns(  # each run gates with its own thresholds and its own choice of gate
            pl.lit(seg.source.threshold).alias("thr"),
            pl.lit(thr.get("direction"), dtype=pl.Float64).alias("thr_direction"),
            pl.lit(thr.get("meta"), dtype=pl.Float64).alias("thr_meta"),
            pl.lit(gate.get("kind")).alias("kind"),
        )
        pieces.append(probs)
        rows.append(
            {
                "segment": seg.label,
                "run_id": seg.source.bundle.run_id,
                "first": first_bar.isoformat(),
                "last": last_bar.isoformat(),
                "threshold": seg.source.threshold,
                "gate": gate.get("kind"),
                "bars": probs.height,
            }
        )
    if not pieces:
        raise DataError(data_dir, "no bar comes after the data of any segment's run: nothing to trade")
    h, spec = first.horizon, first.spec
    bars = bars_with_probability(candles, pl.concat(pieces))
    signals = macd_signals(bars["close"], spec)
    thr = bars["thr"].fill_null(1.0).to_numpy()  # bars no run scored have no probability: never taken gated
    span = (datetime.fromisoformat(rows[0]["first"]), datetime.fromisoformat(rows[-1]["last"]))
    out = evaluate(bars, signals, h, thr, spec, span)
    out["threshold"] = None
    labels = make_labels(candles, [h])[label_name(h)].cast(pl.Float64).to_numpy()
    p = bars["p"].cast(pl.Float64).fill_null(float("nan")).to_numpy()
    for row in rows:
        a, b = _index(ts, row["first"]), _index(ts, row["last"]) + 1
        seg_eval = evaluate(bars, signals, h, thr, spec, (ts[a], ts[b - 1])) if b - a >= 2 else None
        scored = ~np.isnan(p[a:b])
        row["auc"] = auc(labels[a:b][scored], p[a:b][scored]) if scored.any() else None
        if seg_eval is not None:
            v = seg_eval["variants"]
            row.update(
                {
                    "trades_ungated": v["ungated_long_flat"]["trades"],
                    "trades_gated": v["gated_long_flat"]["trades"],
                    "sharpe_ungated": v["ungated_long_flat"]["sharpe"],
                    "sharpe_gated": v["gated_long_flat"]["sharpe"],
                    "return_buy_and_hold": v["buy_and_hold"]["cumulative_return"],
                }
            )
    out["segments"] = rows
    out["target"] = scorer0.target
    a, b = _index(ts, rows[0]["first"]), _index(ts, rows[-1]["last"]) + 1
    out.update(_gate_kinds(bars[a:b], signals[a:b], h, spec, first.gate_spec))
    return out


def _gate_kinds(bars: pl.DataFrame, signals: np.ndarray, h: int, spec, gate_spec) -> dict:
    """Each trade gate kind over the stitched span against taking every signal, every segment deciding with its
    own thresholds; ``shipped``: each segment's own choice (a run without a trade gate trades by the direction
    gate, as before the trade gate existed)."""
    from macd_ml.models.gate.choice import decide, summary_of
    from macd_ml.models.gate.secondary import KINDS

    if "kind" not in bars.columns or bars["kind"].drop_nulls().len() == 0:
        return {}
    p = bars["p"].cast(pl.Float64).fill_null(float("nan")).to_numpy()
    q = bars["q"].cast(pl.Float64).fill_null(float("nan")).to_numpy()
    thr_d = bars["thr_direction"].cast(pl.Float64).fill_null(bars["thr"]).fill_null(1.0).to_numpy()
    thr_m = bars["thr_meta"].cast(pl.Float64).fill_null(2.0).to_numpy()  # none: the meta kinds take nothing
    kinds = bars["kind"].fill_null("direction").to_numpy()
    gates: dict[str, tuple[np.ndarray, np.ndarray | None]] = {
        k: decide(k, signals, p, q, thr_d, thr_m, gate_spec) for k in KINDS
    }
    take = np.zeros(len(signals), bool)
    size = np.ones(len(signals))
    for k, (tk, sz) in gates.items():
        mine = kinds == k
        take[mine] = tk[mine]
        if sz is not None:
            size[mine] = sz[mine]
    gates["shipped"] = (take, size)
    open_ = bars["open"].cast(pl.Float64).to_numpy()
    idx = block_indices(len(open_), spec.block_hours or max(h, 24), spec.bootstrap, spec.seed)
    cmp = compare_gates(open_, signals, h, spec, gates, idx, random_draws=RANDOM_DRAWS, seed=spec.seed)
    return {
        "gate_kinds": {k: summary_of(v) for k, v in cmp["kinds"].items()},
        "gate_returns": {k: v.tolist() for k, v in cmp["returns"].items()},
    }


def _index(ts: pl.Series, iso: str) -> int:
    return int(ts.search_sorted(datetime.fromisoformat(iso), side="left"))


def pool(records: dict[str, dict], block_hours: int, draws: int, seed: int) -> dict:
    """The equal-weight pool of several targets' track records (``stitch`` results) over the hours they all
    cover: per variant the pooled hourly return is the mean of the targets' returns; Sharpe with moving-block
    intervals whose blocks are drawn at the same hours for every target (their co-movement kept), and the
    gated - ungated difference the same way."""
    if not records:
        raise ValueError("nothing to pool")
    common: set[str] | None = None
    for r in records.values():
        common = set(r["timestamps"]) if common is None else common & set(r["timestamps"])
    hours = sorted(common or ())
    if len(hours) < 2:
        raise ValueError("the track records share fewer than 2 hours: nothing to pool")
    variants = list(next(iter(records.values()))["equity"])
    returns = {
        name: _mean_at([(r["timestamps"], _from_equity(r["equity"][name])) for r in records.values()], hours)
        for name in variants
    }
    idx = block_indices(len(hours), block_hours, draws, seed)
    out: dict = {"targets": sorted(records), "first": hours[0], "last": hours[-1], "bars": len(hours), "variants": {}}
    for name, ret in returns.items():
        out["variants"][name] = {
            "sharpe": sharpe(ret),
            "sharpe_interval": interval(_sharpes(ret, idx)),
            "cumulative_return": float(np.prod(1 + ret) - 1),
        }
    out["gated_minus_ungated"] = {
        mode: difference(returns[f"gated_{mode}"], returns[f"ungated_{mode}"], idx)[0]
        for mode in MODES
        if f"gated_{mode}" in returns and f"ungated_{mode}" in returns
    }
    out["equity"] = {n: np.cumprod(1 + ret).tolist() for n, ret in returns.items()}
    out["timestamps"] = hours
    if all("gate_returns" in r for r in records.values()):
        out["gate_kinds"] = _pool_gates(records, hours, idx)
    return out


def _from_equity(equity: list[float]) -> np.ndarray:
    eq = np.asarray(equity)
    return np.diff(np.concatenate([[1.0], eq])) / np.concatenate([[1.0], eq[:-1]])


def _mean_at(series: list[tuple[list[str], np.ndarray]], hours: list[str]) -> np.ndarray:
    """The mean over targets of each one's hourly returns (its timestamps, its returns) at ``hours``."""
    picked = []
    for stamps, ret in series:
        at = {t: i for i, t in enumerate(stamps)}
        picked.append(np.asarray(ret)[[at[t] for t in hours]])
    return np.mean(picked, axis=0)


def _pool_gates(records: dict[str, dict], hours: list[str], idx: np.ndarray) -> dict:
    """The trade gate kinds of several track records, pooled as :func:`pool` pools the variants (a record's gate
    returns cover its timestamps): each kind minus taking every signal, per position style, with intervals from the
    same blocks for every target."""
    names = set.intersection(*(set(r["gate_returns"]) for r in records.values()))
    pooled = {n: _mean_at([(r["timestamps"], r["gate_returns"][n]) for r in records.values()], hours) for n in names}
    out: dict = {}
    for name, ret in pooled.items():
        kind, _, style = name.rpartition("_long_")
        mode = f"long_{style}"
        if name.startswith("none_") or f"none_{mode}" not in pooled:
            continue
        out.setdefault(kind, {})[mode] = {
            "sharpe": sharpe(ret),
            "trades": None,
            "minus_none": difference(ret, pooled[f"none_{mode}"], idx)[0],
        }
    return out


def promoted_runs(out_dir: Path | str) -> list[Path]:
    """Published runs whose promotion record says promoted, verified, oldest data first."""
    from macd_ml.artifacts.store import read_json, verify_run

    runs = []
    for run in sorted((Path(out_dir) / "runs").glob("*")):
        decision = run / catalog.PROMOTION
        if not decision.is_file() or not read_json(decision).get("promote"):
            continue
        verify_run(run)
        runs.append(run)
    if not runs:
        raise DataError(out_dir, "no promoted run to backtest")
    return runs


def backtest_chain(out_dir: Path | str, data_dir: str, last: str | None = None) -> dict:
    """``macd-ml backtest --chain OUT``: each promoted run in OUT/runs (verified), ordered by the last candle it
    trained on, scores the bars after that candle until the next run's last candle (the bot would have switched to
    it then), each with its own threshold, stitched. In a historical replay a run's "promotion time" is the end of
    its data, not the wall clock."""
    sources = sorted((Source.load(r) for r in promoted_runs(out_dir)), key=lambda s: s.data_last)
    tz = sources[0].data_last.tzinfo
    end = span_time(last, datetime.max.replace(tzinfo=tz), tz)  # default: the newest bar (stitch stops there)
    segments = [
        Segment(
            src, src.data_last, min(sources[i + 1].data_last, end) if i + 1 < len(sources) else end, src.bundle.run_id
        )
        for i, src in enumerate(sources)
    ]
    return stitch([s for s in segments if s.last > s.after], data_dir)
