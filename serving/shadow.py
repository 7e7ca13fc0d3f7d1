"""Shadow mode and its report: score every bar as the bot would, log it, and check the log against targets.

**Log format** (one JSON object per line, appended; ``macd-ml shadow``; docs/schemas/shadow-log.v3.schema.json)::

    {"contract_version": 3,
     "time": "2024-01-01T05:00:00+00:00",         # the bar scored (its open time, UTC), once it has closed
     "probabilities": {"5": 0.53, "12": 0.51, "24": 0.49} | null,
     "path": "stacked" | "mean" | "single" | "none",
     "models": ["lgb", "xgb", ...],                # the base models that scored
     "base": {"lgb": {"5": 0.52, ...}, ...},       # every base model's output
     "latency_ms": 18.4,                           # candles -> probabilities for this bar
     "error": null | {"kind": "DataError", "message": "..."},
     "reason": null | "why a fallback path was taken",
     "gate": {...} | null,                         # the trade gate's answer (serving/trade_gate.py)
     "flags": [] | ["expired", "unfamiliar"],      # serving/guards.py
     "dissimilarity": 0.81, "model_age_hours": 5.0,
     "bundle": "3f2a9c1d0b7e", "run_id": "20240101T003000Z-1a2b3c4d"}

**Report** (``macd-ml shadow-report``): ML coverage (bars with a probability / bars), stacking activation (bars
on the stacked path / bars), LSTM normal-output rate (bars whose LSTM output is finite, in (0, 1) and not part of
a run of ``stuck_window`` equal values / bars), bars with an ML error (the old "no serious ML errors"), bars
scored by an expired model, the share of bars unlike the training data, each against :class:`Targets`; errors
by kind and latency p50/p95; with the candles, the realised AUC per horizon for bars whose outcome is known; with
the bundle, the drift (PSI) of the shipped probabilities against the run's holdout (reported, not gated).
Malformed lines are counted and listed with their line numbers, never a crash.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from macd_ml.artifacts import catalog
from macd_ml.errors import DataError
from macd_ml.features.ingest import Candles, Market, load_market
from macd_ml.models.evaluation.drift import psi  # the one PSI (the health gate's feature drift too)
from macd_ml.serving.guards import BAR, EXPIRED, UNFAMILIAR
from macd_ml.serving.scorer import BarScore

# --------------------------------------------------------------------------------------------- shadow


def _truncate(market: Market, t: datetime) -> Market:
    def cut(c: Candles) -> Candles:
        return Candles(c.symbol, c.path, c.sha256, c.frame.filter(pl.col(catalog.TIMESTAMP) <= t))

    return Market(cut(market.target), tuple(cut(c) for c in market.cross))


def shadow_line(scorer, bar) -> dict:
    """The shadow-log line of a scored bar (docs/schemas/shadow-log.v3.schema.json)."""
    return {**bar.to_json(), "error": None, "bundle": scorer.bundle.sha256[:12], "run_id": scorer.bundle.run_id}


def error_line(scorer, t: datetime, exc: BaseException) -> dict:
    """The shadow-log line of a bar whose scoring raised: no probability, the error's kind and first line."""
    return {
        **BarScore(t, None, "none", []).to_json(),  # the score document's fields, every one empty
        "error": {"kind": type(exc).__name__, "message": (str(exc).splitlines() or [""])[0]},
        "bundle": scorer.bundle.sha256[:12],
        "run_id": scorer.bundle.run_id,
    }


def closed(times: list[datetime], now: datetime) -> tuple[list[datetime], list[datetime]]:
    """Bars closed at ``now`` (their close, open time + 1 h, at or before it) and those still open."""
    return [t for t in times if t + BAR <= now], [t for t in times if t + BAR > now]


def score_bars(scorer, market: Market, times: list[datetime], log: Path) -> int:
    """Score each bar with only the candles up to it, at its close (as the bot saw it), append a line per bar."""
    n = 0
    with open(log, "a") as fh:
        for t in times:
            t0 = time.perf_counter()
            try:
                (bar,) = scorer.score(_truncate(market, t), last=1, now=t + BAR)
                line = shadow_line(scorer, bar)
            except Exception as exc:  # noqa: BLE001 - a shadow logs every failure and carries on
                line = error_line(scorer, t, exc)
            line["latency_ms"] = round((time.perf_counter() - t0) * 1000.0, 3)
            fh.write(json.dumps(line) + "\n")
            fh.flush()
            n += 1
    return n


def replay(scorer, data_dir: str, log: Path, last: int | None = None, now: datetime | None = None) -> int:
    """Score the bars the folder has that are closed at ``now`` (default the wall clock): the newest ``last``, or
    every bar that can be scored, one at a time. A bar still open is left out, and said so on stderr."""
    market = load_market(data_dir, scorer.target, scorer.cross)
    times, still_open = closed(market.target.frame[catalog.TIMESTAMP].to_list(), now or datetime.now(timezone.utc))
    _say_open(still_open)
    times = times[scorer.bars_needed - 1 :]
    return score_bars(scorer, market, times[-last:] if last else times, log)


def _say_open(still_open: list[datetime]) -> None:
    for t in still_open:
        print(
            f"shadow: the bar of {t.isoformat()} is still open (closes {(t + BAR).isoformat()}); not scored",
            file=sys.stderr,
        )


def follow(
    scorer,
    data_dir: str,
    log: Path,
    poll_s: float = 30.0,
    max_bars: int | None = None,
    timeout_s: float | None = None,
    clock=None,
) -> int:
    """Watch the folder and score each new bar once it has closed (after the newest one already logged); a bar
    still open is scored at a later poll. ``clock``: the time now (tests inject one; default the wall clock)."""
    clock = clock or (lambda: datetime.now(timezone.utc))
    done = 0
    told: list[datetime] = []
    newest = _newest_logged(log)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        try:
            market = load_market(data_dir, scorer.target, scorer.cross)
        except DataError as exc:  # e.g. a candle file caught mid-write: look again at the next poll
            print(f"shadow: candles not readable now, retrying in {poll_s:g} s: {exc}", file=sys.stderr)
            market = None
        times = (
            []
            if market is None
            else [t for t in market.target.frame[catalog.TIMESTAMP].to_list() if newest is None or t > newest]
        )
        times, still_open = closed(times, clock())
        if still_open and still_open != told:
            _say_open(still_open)
            told = still_open
        if newest is None:
            times = times[-1:]  # starting fresh: the newest closed bar, then every bar after it
        if market is not None and times:
            done += score_bars(scorer, market, times, log)
            newest = times[-1]
        if (max_bars is not None and done >= max_bars) or (deadline is not None and time.monotonic() > deadline):
            return done
        time.sleep(poll_s)


def _newest_logged(log: Path) -> datetime | None:
    if not log.exists():
        return None
    newest = None
    for line in log.read_text().splitlines():
        try:
            t = datetime.fromisoformat(json.loads(line)["time"])
        except (ValueError, KeyError, TypeError):
            continue
        newest = t if newest is None or t > newest else newest
    return newest


# --------------------------------------------------------------------------------------------- report


class Targets(BaseModel):
    """The production targets a shadow log is checked against (config key ``shadow``)."""

    model_config = ConfigDict(extra="forbid")

    coverage: float = Field(
        default=0.80, ge=0, le=1, title="Least ML coverage", description="least share of bars with an ML probability"
    )
    stacking: float = Field(
        default=0.90,
        ge=0,
        le=1,
        title="Least stacked-path share",
        description="least share of bars scored by the stacked path",
    )
    lstm_normal: float = Field(
        default=0.95,
        ge=0,
        le=1,
        title="Least normal LSTM share",
        description="least share of bars with a normal LSTM output (when it ships)",
    )
    max_errors: int = Field(
        default=0,
        ge=0,
        title="Most error bars",
        description="most bars that ended in an error (the old 'no serious ML errors')",
    )
    min_bars: int = Field(default=1, ge=0, title="Fewest logged bars", description="fewer logged bars than this fails")
    stuck_window: int = Field(
        default=24,
        ge=2,
        title="Stuck LSTM window (bars)",
        description="an LSTM output equal over this many bars in a row counts as stuck",
    )
    max_expired: int = Field(
        default=0,
        ge=0,
        title="Most expired bars",
        description="most bars scored by an expired model (older than serving.max_model_age_hours)",
    )
    max_unfamiliar: float = Field(
        default=0.25,
        ge=0,
        le=1,
        title="Most unfamiliar share",
        description="most share of bars unlike the training data (flag 'unfamiliar'; about 1% where the market is "
        "like the training data)",
    )


@dataclass
class ShadowReport:
    bars: int
    malformed: list[tuple[str, int, str]]
    coverage: float
    stacking: float
    lstm_normal: float | None
    errors: dict[str, int]
    latency_p50: float | None
    latency_p95: float | None
    expired: int = 0  # bars scored by a model older than its max age
    unfamiliar: float | None = None  # share of bars unlike the training data
    realised_auc: dict[str, dict] = field(default_factory=dict)
    drift: dict[str, float] = field(default_factory=dict)
    checks: list[dict] = field(default_factory=list)
    passed: bool = False

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}

    def table(self) -> str:
        lines = [f"{'check':26s} {'value':>10s} {'target':>10s}  result"]
        for c in self.checks:
            val = "n/a" if c["value"] is None else (f"{c['value']:.1%}" if c["unit"] == "%" else f"{c['value']:g}")
            tgt = f"{c['target']:.0%}" if c["unit"] == "%" else f"{c['target']:g}"
            lines.append(f"{c['name']:26s} {val:>10s} {tgt:>10s}  {'PASS' if c['passed'] else 'FAIL'}")
        lines.append(
            f"bars {self.bars}; malformed lines {len(self.malformed)}"
            + ("" if not self.malformed else " (" + ", ".join(f"{f}:{n}" for f, n, _ in self.malformed[:10]) + ")")
        )
        lines.append(
            f"latency p50 {self.latency_p50 or float('nan'):.1f} ms, p95 {self.latency_p95 or float('nan'):.1f} ms; "
            f"errors {self.errors or 'none'}"
        )
        for h, a in self.realised_auc.items():
            lines.append(f"realised AUC h={h}: {a['auc'] if a['auc'] is None else round(a['auc'], 3)} on {a['n']} bars")
        for h, d in self.drift.items():
            lines.append(f"drift (PSI) of shipped h={h} vs the run's holdout: {d:.3f}")
        lines.append(f"shadow report: {'PASS' if self.passed else 'FAIL'}")
        return "\n".join(lines)


_REQUIRED = {"time": str, "path": str, "models": list}
PATHS = ("stacked", "mean", "single", "none")


def _probability(v, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0.0 <= v <= 1.0:
        raise ValueError(f"{what} is {v!r}, not a probability in [0, 1]")
    return float(v)


def check_line(d: dict, now: datetime) -> datetime:
    """A parsed log line against the shadow line's schema (docs/bot-contract.md, "Shadow mode"); returns its bar
    time. Raises ValueError naming the field: a probability outside [0, 1], probabilities missing where the path
    took one (or present where it took none), an unknown path, a time without a zone or in the future, a negative
    latency."""
    for k, kind in _REQUIRED.items():
        if not isinstance(d.get(k), kind):
            raise ValueError(f"'{k}' missing or not a {kind.__name__}")
    t = datetime.fromisoformat(d["time"])
    if t.tzinfo is None:
        raise ValueError(f"'time' {d['time']!r} has no time zone")
    if t > now:
        raise ValueError(f"'time' {d['time']} is in the future")
    if d["path"] not in PATHS:
        raise ValueError(f"'path' {d['path']!r} is not one of {', '.join(PATHS)}")
    probs = d.get("probabilities")
    if probs is None and d["path"] != "none":
        raise ValueError(f"'probabilities' is null where the path says {d['path']}")
    if probs is not None:
        if d["path"] == "none" or not isinstance(probs, dict) or not probs:
            raise ValueError("'probabilities' is not an object of horizon -> probability on a scored path")
        for h, v in probs.items():
            _probability(v, f"probabilities[{h}]")
    for m, per_h in (d.get("base") or {}).items():
        if not isinstance(per_h, dict):
            raise ValueError(f"'base'[{m}] is not an object")
        for h, v in per_h.items():
            _probability(v, f"base[{m}][{h}]")
    flags = d.get("flags", [])
    if not isinstance(flags, list) or any(f not in (EXPIRED, UNFAMILIAR) for f in flags):
        raise ValueError(f"'flags' is {flags!r}, not a list of {EXPIRED!r} / {UNFAMILIAR!r}")
    lat = d.get("latency_ms")
    if lat is not None and (isinstance(lat, bool) or not isinstance(lat, (int, float)) or not lat >= 0):
        raise ValueError(f"'latency_ms' is {lat!r}, not a duration")
    return t


def read_logs(source: Path, now: datetime | None = None) -> tuple[pl.DataFrame, list[tuple[str, int, str]]]:
    """Every well-formed line of a log file (or of every ``*.jsonl``/``*.log`` in a folder), one per bar (a bar
    logged again counts once, as its newest line), and the malformed ones as (file, line number, why)."""
    now = now or datetime.now(timezone.utc)
    if not source.exists():
        raise DataError(str(source), "no such shadow log or folder")
    files = sorted(p for p in source.iterdir() if p.suffix in (".jsonl", ".log")) if source.is_dir() else [source]
    rows, bad = [], []
    for f in files:
        with open(f, encoding="utf-8", errors="replace") as fh:
            for n, text in enumerate(fh, start=1):
                if not text.strip():
                    continue
                try:
                    d = json.loads(text)
                    if not isinstance(d, dict):
                        raise ValueError("not an object")
                    t = check_line(d, now)
                    probs = d.get("probabilities")
                except (ValueError, TypeError) as exc:
                    bad.append((f.name, n, str(exc)))
                    continue
                err = d.get("error")
                flags = d.get("flags")
                flags = flags if isinstance(flags, list) else []  # lines before contract version 3 have none
                lstm = (d.get("base") or {}).get("lstm")
                lstm_first = float(next(iter(lstm.values()))) if isinstance(lstm, dict) and lstm else None
                rows.append(
                    {
                        "time": t,
                        "path": d["path"],
                        "has_p": probs is not None,
                        "probs": json.dumps(probs),
                        "lstm": lstm_first,
                        "has_lstm": isinstance(lstm, dict),
                        "latency": d.get("latency_ms"),
                        "error": err.get("kind") if isinstance(err, dict) else None,
                        "expired": EXPIRED in flags,
                        "unfamiliar": UNFAMILIAR in flags,
                    }
                )
    frame = (
        pl.DataFrame(
            rows,
            schema={
                "time": pl.Datetime("us", "UTC"),
                "path": pl.String,
                "has_p": pl.Boolean,
                "probs": pl.String,
                "lstm": pl.Float64,
                "has_lstm": pl.Boolean,
                "latency": pl.Float64,
                "error": pl.String,
                "expired": pl.Boolean,
                "unfamiliar": pl.Boolean,
            },
            orient="row",
        )
        if rows
        else pl.DataFrame()
    )
    if frame.height:  # a bar logged twice (a restarted replay, two shadows on one log) counts once
        frame = frame.unique(subset="time", keep="last", maintain_order=True)
    return frame, bad


def _lstm_normal_bars(frame: pl.DataFrame, window: int) -> np.ndarray | None:
    """Per bar (in time order): is the LSTM output (first horizon) finite, in (0, 1), and not part of a run of
    ``window`` equal values? None when no line has an LSTM (the bundle ships none); a bar the LSTM did not score
    counts as abnormal."""
    if not frame.height or not frame["has_lstm"].any():
        return None
    x = frame["lstm"].fill_null(math.nan).to_numpy().astype(np.float64)
    ok = np.isfinite(x) & (x > 0) & (x < 1)
    # runs of equal values among the bars it did score (a missing bar does not break a stuck run)
    idx = np.flatnonzero(np.isfinite(x))
    stuck = np.zeros(len(x), bool)
    start = 0
    for k in range(1, len(idx) + 1):
        if k == len(idx) or abs(x[idx[k]] - x[idx[start]]) > 1e-9:
            if k - start >= window:
                stuck[idx[start:k]] = True
            start = k
    return ok & ~stuck


def report(
    source: Path,
    targets: Targets,
    days: float | None = None,
    data_dir: str | None = None,
    holdout: pl.DataFrame | None = None,
    target_symbol: str | None = None,
) -> ShadowReport:
    frame, malformed = read_logs(source)
    if frame.height:
        frame = frame.sort("time", maintain_order=True)
    if frame.height and days is not None:
        frame = frame.filter(pl.col("time") > pl.col("time").max() - timedelta(days=days))
    n = frame.height
    cov = float(frame["has_p"].cast(pl.Float64).to_numpy().mean()) if n else 0.0
    stk = float((frame["path"] == "stacked").cast(pl.Float64).to_numpy().mean()) if n else 0.0
    lstm_bars = _lstm_normal_bars(frame, targets.stuck_window)
    lstm = None if lstm_bars is None else float(lstm_bars.mean())
    errors = dict(frame.filter(pl.col("error").is_not_null())["error"].value_counts().iter_rows()) if n else {}
    n_errors = int(sum(errors.values()))
    lat = frame["latency"].drop_nulls().to_numpy() if n else np.array([])
    rep = ShadowReport(
        bars=n,
        malformed=malformed,
        coverage=cov,
        stacking=stk,
        lstm_normal=lstm,
        errors=errors,
        latency_p50=float(np.percentile(lat, 50)) if len(lat) else None,
        latency_p95=float(np.percentile(lat, 95)) if len(lat) else None,
        expired=int(frame["expired"].sum()) if n else 0,
        unfamiliar=float(frame["unfamiliar"].cast(pl.Float64).mean()) if n else None,  # type: ignore[arg-type]
    )
    probs = [json.loads(p) for p in frame["probs"].to_list()] if n else []
    if data_dir and n:
        from macd_ml.features.labels import label_name, make_labels
        from macd_ml.models.evaluation.stats import auc

        market = load_market(data_dir, target_symbol or "ETHUSDT", [])
        horizons = sorted({int(h) for p in probs if p for h in p})
        labels = make_labels(market.target.frame, horizons)
        joined = (
            frame.select("time")
            .with_row_index("i")
            .join(labels.rename({catalog.TIMESTAMP: "time"}), on="time", how="left")
        )
        for h in horizons:
            y = joined[label_name(h)].cast(pl.Float64).to_numpy()
            p = np.array([probs[i][str(h)] if probs[i] else np.nan for i in joined["i"].to_list()])
            ok = np.isfinite(y) & np.isfinite(p)
            rep.realised_auc[str(h)] = {"auc": auc(y[ok], p[ok]), "n": int(ok.sum())}
    if holdout is not None and n:
        for col in (c for c in holdout.columns if c.startswith("shipped_h")):
            hz = col.removeprefix("shipped_h")
            live = np.array([p[hz] for p in probs if p and hz in p], dtype=np.float64)
            d = psi(holdout[col].to_numpy(), live) if len(live) else None
            if d is not None:  # (fewer logged bars than PSI's bins: no figure rather than a noisy one)
                rep.drift[hz] = d
    rep.checks = [
        {"name": "bars", "value": n, "target": targets.min_bars, "unit": "", "passed": n >= targets.min_bars},
        {
            "name": "ML coverage",
            "value": cov,
            "target": targets.coverage,
            "unit": "%",
            "passed": cov >= targets.coverage,
        },
        {
            "name": "stacking activation",
            "value": stk,
            "target": targets.stacking,
            "unit": "%",
            "passed": stk >= targets.stacking,
        },
        {
            "name": "LSTM normal-output rate",
            "value": lstm,
            "target": targets.lstm_normal,
            "unit": "%",
            "passed": lstm is None or lstm >= targets.lstm_normal,
        },
        {
            "name": "bars with an ML error",
            "value": n_errors,
            "target": targets.max_errors,
            "unit": "",
            "passed": n_errors <= targets.max_errors,
        },
        {
            "name": "bars from an expired model",
            "value": rep.expired,
            "target": targets.max_expired,
            "unit": "",
            "passed": rep.expired <= targets.max_expired,
        },
        {
            "name": "unfamiliar bars",
            "value": rep.unfamiliar,
            "target": targets.max_unfamiliar,
            "unit": "%",
            "passed": rep.unfamiliar is None or rep.unfamiliar <= targets.max_unfamiliar,
        },
    ]
    rep.passed = all(c["passed"] for c in rep.checks)
    return rep


def plot_rates(source: Path, out: Path, targets: Targets) -> Path:
    """Daily ML coverage, stacking activation and LSTM normal-output rate, with their targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame, _ = read_logs(source)
    fig, ax = plt.subplots(figsize=(10, 4), dpi=100)
    if frame.height:
        frame = frame.sort("time", maintain_order=True)
        lstm_bars = _lstm_normal_bars(frame, targets.stuck_window)
        day = frame.with_columns(
            pl.col("time").dt.truncate("1d").alias("day"),
            pl.Series("lstm_ok", lstm_bars if lstm_bars is not None else np.full(frame.height, np.nan)),
        )
        daily = day.group_by("day", maintain_order=True).agg(
            pl.col("has_p").mean().alias("coverage"),
            (pl.col("path") == "stacked").mean().alias("stacking"),
            pl.col("lstm_ok").cast(pl.Float64).mean().alias("lstm"),
        )
        rates = [("coverage", "ML coverage", targets.coverage), ("stacking", "stacking activation", targets.stacking)]
        if lstm_bars is not None:
            rates.append(("lstm", "LSTM normal output", targets.lstm_normal))
        for col, label, target in rates:
            (line,) = ax.plot(daily["day"].to_list(), daily[col].to_list(), marker=".", label=label)
            ax.axhline(target, linestyle=":", linewidth=1, color=line.get_color())
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("share of bars")
    ax.set_title("Shadow rates per day")
    ax.legend(loc="lower left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
