"""Scoring for the bot: load a bundle once, then score candles (docs/bot-contract.md).

    from macd_ml.serving import Scorer
    scorer = Scorer.load("bundle.tar.gz")                  # verified; nothing imported under `models`/`features`
    for bar in scorer.score({"ETHUSDT": eth, "BTCUSDT": btc}, last=1):   # or scorer.score("path/to/candles")
        bar.probabilities    # {"5": 0.53, "12": 0.51, "24": 0.49}, None when no model could score
        bar.path             # "stacked" | "mean" | "single" | "none"

Features come from the training code (``features.build``) on only the tail it needs: the newest
``history_bars + lookback + last`` bars per symbol. Recursive indicators forget older bars geometrically; with
800 bars of history the features of the newest bars equal the full-history ones to ~1e-9 (measured on the real
candles), so the probabilities equal the run's own.

Fallbacks, in this order, per bar:

1. ``stacked``: the shipped predictor (``ensemble.onnx``) when every feature of the bar is there and stacking is on;
2. ``mean``: the mean of the base models that could score (a model cannot when a feature it reads is missing or
   not finite for this bar, e.g. a missing reference-symbol bar, or when its ONNX graph fails), also the path
   when stacking is off (``stacking=False``, or ``MACD_ML_STACKING=0``, the old ``ML_ENABLE_STACKING=0``);
3. ``single``: the one model that could score;
4. ``none``: no probability, with the reason.

Too little data for any model (fewer bars than the feature warm-up) is an error naming how many bars are needed.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import polars as pl

from macd_ml.artifacts import catalog
from macd_ml.errors import DataError
from macd_ml.features.build import build_features
from macd_ml.features.ingest import Candles, Market, candles_from_frame, load_market
from macd_ml.features.segments import segment_starts
from macd_ml.features.spec import FeatureSpec
from macd_ml.models.ensemble.predictor import Predictor
from macd_ml.models.release.onnx_export import EnsembleSpec, ensemble_spec
from macd_ml.models.release.scoring import session, windows
from macd_ml.serving.bundle import Bundle, open_bundle
from macd_ml.serving.contract import CONTRACT_VERSION
from macd_ml.serving.guards import Guards, ServingSpec, split_open
from macd_ml.serving.trade_gate import TradeGate

HISTORY_BARS = 800
Path_ = Literal["stacked", "mean", "single", "none"]


@dataclass
class BarScore:
    """One bar's scores, in the shape ``predict`` prints and ``shadow`` logs."""

    timestamp: datetime
    probabilities: dict[str, float] | None
    path: Path_
    models: list[str]
    base: dict[str, dict[str, float]] = field(default_factory=dict)
    reason: str | None = None
    latency_ms: float | None = None
    gate: dict | None = None  # the trade gate's answer for this bar (serving/trade_gate.py); None: no gate shipped
    flags: list[str] = field(default_factory=list)  # "expired", "unfamiliar" (serving/guards.py)
    dissimilarity: float | None = None  # how unlike the training rows the bar is (None: not measured)
    model_age_hours: float | None = None  # hours from the end of the run's data to this bar's close

    def to_json(self) -> dict:
        return {
            "contract_version": CONTRACT_VERSION,
            "time": self.timestamp.isoformat(),
            "probabilities": self.probabilities,
            "path": self.path,
            "models": self.models,
            "base": self.base,
            "reason": self.reason,
            "latency_ms": self.latency_ms,
            "gate": self.gate,
            "flags": list(self.flags),
            "dissimilarity": self.dissimilarity,
            "model_age_hours": self.model_age_hours,
        }


class InsufficientData(DataError):
    """Too few bars for any model to score."""


STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml"}


def check_graph(data: bytes, name: str):
    """The ONNX model of a bundle member, refused (BundleError) when it could make the bot's machine do more than
    arithmetic: a tensor stored as external data (onnxruntime would read that file from the bot's disk), or an
    operator outside the standard domains (a custom op runs native code). Returns the loaded model."""
    from macd_ml.errors import BundleError

    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a refusal
        raise BundleError(f"{name}: not an ONNX model ({exc}); refusing the bundle") from None

    def graphs(g):
        yield g
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    yield from graphs(attr.g)
                for sub in attr.graphs:
                    yield from graphs(sub)

    for fn in model.functions:
        for node in fn.node:
            if node.domain not in STANDARD_DOMAINS:
                raise BundleError(f"{name}: operator {node.domain}.{node.op_type} is not standard ONNX; refusing")
    for g in graphs(model.graph):
        tensors = [*g.initializer, *(s.values for s in g.sparse_initializer)]
        tensors += [a.t for node in g.node for a in node.attribute if a.type == onnx.AttributeProto.TENSOR]
        for t in tensors:
            if t.data_location == onnx.TensorProto.EXTERNAL or t.external_data:
                where = {e.key: e.value for e in t.external_data}.get("location", "?")
                raise BundleError(
                    f"{name}: tensor {t.name!r} is stored as external data ({where!r}); a bundle's graphs hold all "
                    "their data; refusing the bundle"
                )
        for node in g.node:
            if node.domain not in STANDARD_DOMAINS and node.domain not in {f.domain for f in model.functions}:
                raise BundleError(
                    f"{name}: operator {node.domain}.{node.op_type} is not standard ONNX (custom code); refusing"
                )
    return model


def _in_unit(p) -> bool:
    return bool(np.all(np.isfinite(p)) and np.all(p >= 0.0) and np.all(p <= 1.0))


@dataclass
class _ModelGraph:
    name: str
    session: object
    features: list[str]
    window: int


class Scorer:
    """A verified bundle, its ONNX sessions, and the feature spec it was trained with."""

    def __init__(self, bundle: Bundle, stacking: bool | None = None, serving: ServingSpec | dict | None = None):
        """``serving``: the policy for expired models and unfamiliar bars (serving/guards.py): a ServingSpec, or a
        dict of its fields overriding the run's own (config key ``serving``); default the run's."""
        self.bundle = bundle
        self.stacking = stacking if stacking is not None else os.environ.get("MACD_ML_STACKING", "1") != "0"
        meta = bundle.json(catalog.FEATURES_META)
        self.target: str = meta["target"]
        self.cross: list[str] = list(meta["cross"])
        self.spec = FeatureSpec.model_validate(meta["spec"])
        self.gap_tolerance_hours = int(meta.get("gap_tolerance_hours", 1))
        ens_bytes = bundle.members[catalog.ENSEMBLE_ONNX]
        self.ensemble: EnsembleSpec = ensemble_spec(check_graph(ens_bytes, catalog.ENSEMBLE_ONNX))
        self.horizons = [str(h) for h in self.ensemble.horizons]
        self._ensemble, self.provider = session(ens_bytes)
        self._ensemble_error = ""
        self.predictors = {h: Predictor.from_json(d) for h, d in bundle.json(catalog.META)["predictors"].items()}
        self.models: dict[str, _ModelGraph] = {}
        for m in self.ensemble.models:
            data = bundle.members[f"onnx/{m}.onnx"]
            props = {p.key: p.value for p in check_graph(data, f"onnx/{m}.onnx").metadata_props}
            self.models[m] = _ModelGraph(
                m, session(data)[0], json.loads(props["feature_names"]), int(props.get("window", "1"))
            )
        self.trade_gate = TradeGate.from_bundle(bundle, check_graph)
        if not isinstance(serving, ServingSpec):
            run_config = bundle.json(catalog.CONFIG) if catalog.CONFIG in bundle.members else {}
            serving = ServingSpec.model_validate({**(run_config.get("serving") or {}), **(serving or {})})
        self.guards = Guards.from_bundle(bundle, serving)
        self.last_dropped: list[datetime] = []  # the open bars (still forming) the last score() left out

    @classmethod
    def load(
        cls, path: Path | str, stacking: bool | None = None, trust=None, serving: ServingSpec | dict | None = None
    ) -> Scorer:
        """Open, verify (signature against ``trust``, default ``Trust.resolve()``; every member's sha256) and load
        a bundle file."""
        return cls(open_bundle(path, trust), stacking, serving)

    @property
    def bars_needed(self) -> int:
        """The fewest bars of the target with which the newest one can be scored at all."""
        return self.spec.warmup_bars + 1

    # -- inputs

    def market(
        self, candles: Market | Path | str | dict[str, pl.DataFrame], tail: int, now: datetime | None = None
    ) -> Market:
        """The candles this bundle reads (target and cross), validated, without the bars still open at ``now``
        (default: the wall clock; their open times go to ``last_dropped``), each cut to its newest ``tail``
        bars. A bar opening after ``now`` is bad data: an error naming the file."""
        if isinstance(candles, Market):
            market = candles
        elif isinstance(candles, (str, Path)):
            market = load_market(candles, self.target, self.cross)
        else:
            missing = [s for s in [self.target, *self.cross] if s not in candles]
            if missing:
                raise DataError(
                    "candles",
                    f"no candles for {', '.join(missing)} (the bundle reads {self.target} "
                    f"with cross {self.cross or 'none'})",
                )
            market = Market(
                candles_from_frame(self.target, candles[self.target]),
                tuple(candles_from_frame(c, candles[c]) for c in self.cross),
            )

        now = now or datetime.now(timezone.utc)
        for c in (market.target, *market.cross):
            newest = c.frame[catalog.TIMESTAMP].max() if c.frame.height else None
            if isinstance(newest, datetime) and newest > now:
                raise DataError(
                    str(c.path or c.symbol), f"{c.symbol}'s newest bar is dated {newest}, in the future; bad candles"
                )
        self.last_dropped = split_open(market.target.frame, now)[1]

        def cut(c: Candles) -> Candles:
            return Candles(c.symbol, c.path, c.sha256, split_open(c.frame, now)[0].tail(tail))

        return Market(cut(market.target), tuple(cut(c) for c in market.cross))

    # -- scoring

    def score(
        self, candles: Market | Path | str | dict[str, pl.DataFrame], last: int = 1, now: datetime | None = None
    ) -> list[BarScore]:
        """Scores for the newest ``last`` closed bars of the target (oldest first). A bar still open at ``now``
        (default: the wall clock; a replay passes the time it replays) is not scored: ``last_dropped`` names it.
        Each bar carries its model age, dissimilarity and flags (serving/guards.py)."""
        t0 = time.perf_counter()
        market = self.market(candles, HISTORY_BARS + self.ensemble.lookback + last, now)
        n_bars = market.target.frame.height
        if n_bars < self.bars_needed:
            raise InsufficientData(
                "candles",
                f"{self.target} has {n_bars} bars; scoring needs at least "
                f"{self.bars_needed} (the features' warm-up is {self.spec.warmup_bars})",
            )
        complete = build_features(market, self.spec, self.gap_tolerance_hours).frame
        wanted = market.target.frame[catalog.TIMESTAMP].tail(last)
        if wanted.is_in(complete[catalog.TIMESTAMP]).all():
            partial = complete.head(0)
        else:  # some bar has no complete feature row: the models that can still score it need its own features
            partial = build_features(market, self.spec, self.gap_tolerance_hours, keep_incomplete=True).frame
        out = self._score_rows(complete, partial, wanted)
        far = self.guards.dissimilarity(complete, wanted.to_list())
        for bar in out:
            self.guards.apply(bar, far.get(bar.timestamp))
        if self.trade_gate is not None:
            self.trade_gate.answer(market.target.frame, complete, out)
        per_bar = (time.perf_counter() - t0) * 1000.0 / max(1, len(out))
        for b in out:
            b.latency_ms = round(per_bar, 3)
        return out

    def _score_rows(self, complete: pl.DataFrame, partial: pl.DataFrame, wanted: pl.Series) -> list[BarScore]:
        names = self.ensemble.feature_names
        if complete.height and list(complete.columns[1:]) != names:
            raise DataError("features", "the feature code builds other features than the bundle was trained on")
        X = (
            complete.select(names).to_numpy().astype(np.float32)
            if complete.height
            else np.zeros((0, len(names)), np.float32)
        )
        seg = segment_starts(complete[catalog.TIMESTAMP].dt.epoch("us").to_numpy(), self.gap_tolerance_hours)
        pos = {t: i for i, t in enumerate(complete[catalog.TIMESTAMP].to_list())}
        prow = {t: i for i, t in enumerate(partial[catalog.TIMESTAMP].to_list())}
        ts_list = wanted.to_list()
        rows = np.array([pos[t] for t in ts_list if t in pos], dtype=np.int64)
        stacked: dict = {}
        self._ensemble_error = ""
        if self.stacking and len(rows):
            try:
                outs = self._ensemble.run(None, {"bars": windows(X, seg, rows, self.ensemble.lookback)})
                names_out = [o.name for o in self._ensemble.get_outputs()]
                res = dict(zip(names_out, outs))
                stacked = {int(r): {n: v[k] for n, v in res.items()} for k, r in enumerate(rows)}
            except Exception as exc:  # noqa: BLE001 - an ONNX failure falls back to the models one by one
                self._ensemble_error = f"ensemble.onnx failed ({type(exc).__name__})"
                stacked = {}
        scores = []
        for t in ts_list:
            scores.append(self._score_bar(t, pos.get(t), prow.get(t), X, seg, partial, stacked))
        return scores

    def _why_not_stacked(self, row, prow, partial) -> str:
        """Why a bar with a probability did not take the stacked path (every fallback says why)."""
        if not self.stacking:
            return "stacking is off"
        if self._ensemble_error:
            return self._ensemble_error
        if row is None:
            missing = []
            if prow is not None:
                values = partial.row(prow, named=True)
                missing = [n for n in self.ensemble.feature_names if values.get(n) is None]
            what = f" ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''} missing)" if missing else ""
            return f"no complete feature row for this bar{what}: a cross symbol's bar not there yet, or a gap"
        return "ensemble.onnx gave an output outside [0, 1]"

    def _score_bar(self, t, row, prow, X, seg, partial, stacked) -> BarScore:
        if row is not None and row in stacked:
            out = stacked[row]
            if all(_in_unit(out[k]) for k in ["shipped", *self.models] if k in out):
                all_base = {m: {h: float(out[m][j]) for j, h in enumerate(self.horizons)} for m in self.models}
                probs = {h: float(out["shipped"][j]) for j, h in enumerate(self.horizons)}
                return BarScore(t, probs, "stacked", list(self.models), all_base)
        base: dict[str, dict[str, float]] = {}
        failures: dict[str, str] = {}
        for m, g in self.models.items():
            try:
                x = self._model_input(g, row, prow, X, seg, partial)
            except ValueError as exc:
                failures[m] = str(exc)
                continue
            try:
                p = g.session.run(None, {"x": x})[0][0]  # type: ignore[attr-defined]
            except Exception as exc:  # noqa: BLE001 - one model's ONNX error leaves the others
                failures[m] = f"ONNX error: {exc}"
                continue
            if not np.all(np.isfinite(p)):
                failures[m] = "non-finite output"
                continue
            if not _in_unit(p):
                failures[m] = "output outside [0, 1]"
                continue
            base[m] = {h: float(p[j]) for j, h in enumerate(self.horizons)}
        if not base:
            why = "; ".join(f"{m}: {r}" for m, r in failures.items()) or "no feature row for this bar"
            return BarScore(t, None, "none", [], {}, reason=why)
        probs = {h: float(np.mean([b[h] for b in base.values()])) for h in self.horizons}
        path: Path_ = "single" if len(base) == 1 else "mean"
        reasons = [self._why_not_stacked(row, prow, partial), *(f"{m}: {r}" for m, r in failures.items())]
        return BarScore(t, probs, path, list(base), base, reason="; ".join(reasons))

    def _model_input(self, g: _ModelGraph, row, prow, X, seg, partial) -> np.ndarray:
        cols = [self.ensemble.feature_names.index(n) for n in g.features]
        if g.window > 1:
            if row is None:
                raise ValueError("its window needs complete feature rows and this bar has none")
            return windows(X[:, cols], seg, np.array([row]), g.window)
        if row is not None:
            return X[row : row + 1, cols]
        if prow is None:
            raise ValueError("no feature row for this bar (the warm-up after a gap, or too little history)")
        values = partial.row(prow, named=True)
        x = np.array([[values[n] if values[n] is not None else np.nan for n in g.features]], dtype=np.float32)
        if not np.all(np.isfinite(x)):
            bad = [n for n, v in zip(g.features, x[0]) if not np.isfinite(v)]
            raise ValueError(f"feature {bad[0]} is missing or not finite for this bar")
        return x
