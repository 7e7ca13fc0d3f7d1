"""Diagnostic plots for a run: ROC, calibration, correlation, feature importance, meta-learner weights.

Pure (no Prefect). Figures are built with ``matplotlib.figure.Figure`` on an Agg canvas, never through
pyplot's global state, so rendering is safe from the worker threads Prefect runs tasks in.
Every image has a fixed size: 800x600 px (ROC, calibration, correlation, meta weights) and
1000 px wide for importance (500 px tall per model).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_auc_score, roc_curve

from macd_ml.artifacts import catalog
from macd_ml.features.labels import label_name

DPI = 100
SQUARE = (8, 6)  # inches -> 800x600 px at DPI
IMPORTANCE_WIDTH = 10  # inches -> 1000 px
IMPORTANCE_HEIGHT_PER_MODEL = 5  # inches -> 500 px per model
TOP_FEATURES = 20
CALIBRATION_BINS = 10
SHIPPED_COLOR = "black"
RAW_COLOR = "#8c8c8c"  # the shipped predictor before calibration


# ---------------------------------------------------------------- small helpers


def _get(d: dict | None, h: int):
    """Look a horizon up in a dict keyed by str(h) (JSON style) or by the int itself."""
    if not d:
        return None
    return d.get(str(h), d.get(h))


def _colors(models: list[str]) -> dict[str, str]:
    """One stable colour per model, the same in every plot."""
    palette = [f"C{i}" for i in range(10)]
    return {m: palette[i % len(palette)] for i, m in enumerate(models)}


def _new_figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _note(ax, text: str) -> None:
    ax.text(
        0.5,
        0.5,
        text,
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize=12,
        bbox={"boxstyle": "round", "facecolor": "lightyellow", "edgecolor": "grey"},
    )


def _labelled(frame: pl.DataFrame, h: int) -> np.ndarray | None:
    """Mask of rows whose y_h label is defined; None if the frame has no such column."""
    col = label_name(h)
    if col not in frame.columns:
        return None
    return frame[col].is_not_null().to_numpy()


def _curves(
    holdout: pl.DataFrame,
    h: int,
    models: list[str],
    shipped: dict | None,
    shipped_name: dict | None,
    shipped_raw: dict | None = None,
) -> tuple[np.ndarray, list[tuple[str, np.ndarray, str, bool]]] | None:
    """Labels and the prediction series to draw for horizon h on the holdout, label-null rows dropped.

    Returns (y, [(legend name, p, colour, is_shipped), ...]) or None when the holdout has no y_h column.
    Rows where a particular prediction is NaN/null are dropped per series later (see ``_finite``).
    """
    mask = _labelled(holdout, h)
    if mask is None:
        return None
    y = holdout[label_name(h)].cast(pl.Float64).to_numpy()[mask]
    colors = _colors(models)
    series = []
    for m in models:
        col = catalog.prediction_column(m, h)
        if col in holdout.columns:
            series.append((m, holdout[col].cast(pl.Float64).to_numpy()[mask], colors[m], False))
    ship = _get(shipped, h)
    if ship is not None:
        ship = np.asarray(ship, dtype=float)
        if len(ship) != holdout.height:
            raise ValueError(f"shipped predictions for h={h} have {len(ship)} rows, holdout has {holdout.height}")
        name = _get(shipped_name, h) or "ensemble"
        raw = _get(shipped_raw, h)
        if raw is not None:  # calibrated: the shipped predictor before its calibration, for before / after
            series.append(("shipped before calibration", np.asarray(raw, dtype=float)[mask], RAW_COLOR, False))
        series.append((f"shipped: {name}", ship[mask], SHIPPED_COLOR, True))
    return y, series


def _finite(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ok = np.isfinite(p)
    return y[ok], p[ok]


def _two_classes(y: np.ndarray) -> bool:
    return len(y) > 1 and y.min() != y.max()


# ---------------------------------------------------------------- ROC


def plot_roc(path: Path, h: int, y: np.ndarray, series: list) -> Path:
    fig = _new_figure(SQUARE)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance (AUC 0.500)")
    if not _two_classes(y):
        _note(ax, f"holdout has a single class for h={h} (n={len(y):,}):\nno ROC curve can be drawn")
    else:
        for name, p, color, is_shipped in series:
            yy, pp = _finite(y, p)
            if not _two_classes(yy):
                continue
            fpr, tpr, _ = roc_curve(yy, pp)
            auc = roc_auc_score(yy, pp)
            ax.plot(
                fpr,
                tpr,
                color=color,
                lw=3 if is_shipped else 1.3,
                zorder=3 if is_shipped else 2,
                label=f"{name} (AUC {auc:.3f})",
            )
        ax.legend(loc="lower right", fontsize=9, framealpha=0.9)
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        aspect="equal",
        xlabel="false positive rate",
        ylabel="true positive rate",
        title=f"ROC on the holdout, horizon {h} h (n = {len(y):,})",
    )
    ax.grid(alpha=0.3)
    return _save(fig, path)


# ---------------------------------------------------------------- calibration


def _zoom(predictions: list[np.ndarray], points: list[np.ndarray]) -> tuple[float, float]:
    """Axis range for a reliability plot: the bulk (0.5-99.5 %) of the predictions plus every curve point,
    padded, within [0, 1] plus a hair so points on the edge stay visible. Weak classifiers predict in a
    narrow band around the base rate, so the full [0, 1] square would squash every curve into its middle."""
    preds = np.concatenate(predictions) if predictions else np.array([])
    pts = np.concatenate(points) if points else np.array([])
    if preds.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(preds, [0.5, 99.5])
    if pts.size:
        lo, hi = min(lo, pts.min()), max(hi, pts.max())
    pad = max(0.05, 0.1 * (hi - lo))
    return max(-0.02, lo - pad), min(1.02, hi + pad)


def _histograms(ax, series: list, lo: float, hi: float) -> None:
    """Step histograms of the predictions. A near-constant model (one bin holding most of its rows) does not
    set the y range: its spike runs off the top instead of flattening every other distribution."""
    bins = np.linspace(lo, hi, 41)
    peaks = []
    for _name, p, color, is_shipped in series:
        pp = p[np.isfinite(p)]
        if len(pp):
            counts, _, _ = ax.hist(pp, bins=bins, histtype="step", color=color, lw=2 if is_shipped else 1)
            if counts.max() <= 0.5 * len(pp):
                peaks.append(counts.max())
    if peaks:
        ax.set_ylim(0, 1.1 * max(peaks))


def plot_calibration(path: Path, h: int, y: np.ndarray, series: list) -> Path:
    fig = _new_figure(SQUARE)
    ax, ax_hist = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    predictions, points = [], []
    for name, p, color, is_shipped in series:
        yy, pp = _finite(y, p)
        if len(yy) == 0:
            continue
        frac_pos, mean_pred = calibration_curve(yy, pp, n_bins=CALIBRATION_BINS, strategy="quantile")
        ax.plot(
            mean_pred,
            frac_pos,
            marker="o",
            ms=6 if is_shipped else 4,
            color=color,
            lw=3 if is_shipped else 1.3,
            zorder=3 if is_shipped else 2,
            label=name,
        )
        predictions.append(pp)
        points += [mean_pred, frac_pos]
    lo, hi = _zoom(predictions, points)
    ax.plot([lo, hi], [lo, hi], ls="--", color="grey", lw=1, label="perfectly calibrated")
    if len(y):
        ax.axhline(y.mean(), color="grey", lw=0.8, ls=":", label=f"base rate {y.mean():.3f}")
    if not _two_classes(y):
        _note(ax, f"holdout has a single class for h={h} (n={len(y):,})")
    ax.set(
        xlim=(lo, hi),
        ylim=(lo, hi),
        ylabel="observed fraction of ups",
        title=f"Calibration on the holdout, horizon {h} h ({CALIBRATION_BINS} quantile bins, n = {len(y):,})",
    )
    ax.legend(loc="best", fontsize=9, framealpha=0.9)
    ax.grid(alpha=0.3)
    _histograms(ax_hist, series, lo, hi)
    ax_hist.set(xlabel="predicted probability of up", ylabel="rows")
    ax_hist.grid(alpha=0.3)
    return _save(fig, path)


# ---------------------------------------------------------------- correlation


def plot_correlation(path: Path, h: int, names: list[str], matrix) -> Path:
    corr = np.array(matrix, dtype=float).reshape(len(names), len(names))
    fig = _new_figure(SQUARE)
    ax = fig.add_subplot()
    cmap = _diverging()
    im = ax.imshow(np.ma.masked_invalid(corr), cmap=cmap, vmin=-1, vmax=1)
    fontsize = max(6, 12 - len(names) // 2)
    for i in range(len(names)):
        for j in range(len(names)):
            v = corr[i, j]
            text = "–" if np.isnan(v) else f"{v:.2f}"
            color = "white" if np.isfinite(v) and abs(v) > 0.6 else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=fontsize, color=color)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_title(f"Correlation of out-of-fold predictions, horizon {h} h (Pearson)")
    fig.colorbar(im, ax=ax, label="correlation", shrink=0.8)
    return _save(fig, path)


def _diverging():
    return colormaps["RdBu_r"].with_extremes(bad="lightgrey")


# ---------------------------------------------------------------- feature importance


def gain_shares(per_horizon: dict, horizons: list[int]) -> dict[str, float]:
    """Gain summed over the horizons, as a share of the model's total gain; {} when there is none."""
    total: dict[str, float] = {}
    for h in horizons:
        for feature, gain in (_get(per_horizon, h) or {}).items():
            if gain is not None and np.isfinite(gain):
                total[feature] = total.get(feature, 0.0) + float(gain)
    s = sum(total.values())
    return {f: g / s for f, g in total.items()} if s > 0 else {}


def plot_importance(path: Path, shares: dict[str, dict[str, float]], horizons: list[int]) -> Path:
    fig = _new_figure((IMPORTANCE_WIDTH, IMPORTANCE_HEIGHT_PER_MODEL * len(shares)))
    axes = np.atleast_1d(fig.subplots(len(shares), 1, squeeze=False)[:, 0])
    hs = ", ".join(map(str, horizons))
    for ax, (model, share) in zip(axes, shares.items()):
        top = sorted(share.items(), key=lambda kv: kv[1], reverse=True)[:TOP_FEATURES]
        names, values = [f for f, _ in top][::-1], [v for _, v in top][::-1]
        ax.barh(names, values, color="C0")
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:.1%}", va="center", fontsize=8)
        ax.set_xlim(0, max(values) * 1.15)
        ax.xaxis.set_major_formatter(_percent)
        ax.tick_params(axis="y", labelsize=9)
        ax.set(
            xlabel="share of total gain",
            title=f"{model}: top {len(top)} of {len(share)} features by gain, summed over horizons {hs} h",
        )
        ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def _percent(x, _pos=None) -> str:
    return f"{x:.0%}" if x >= 0.1 or x == 0 else f"{x:.1%}"


# ---------------------------------------------------------------- meta-learner weights


def plot_meta_weights(path: Path, weights: dict, horizons: list[int], models: list[str]) -> Path:
    hs = [h for h in horizons if _get(weights, h)]
    seen = {m for h in hs for m in _get(weights, h)}
    names = [m for m in models if m in seen] + sorted(seen - set(models))
    fig = _new_figure(SQUARE)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(hs))
    x = np.arange(len(names))
    shades = colormaps["viridis"](np.linspace(0.15, 0.85, len(hs)))
    for k, h in enumerate(hs):
        w = _get(weights, h)
        values = [w.get(m, np.nan) for m in names]
        ax.bar(x + (k - (len(hs) - 1) / 2) * width, values, width, label=f"{h} h", color=shades[k])
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, names, rotation=30 if len(names) > 5 else 0, ha="right" if len(names) > 5 else "center")
    ax.set(
        xlabel="base model", ylabel="weight on the model's logit", title="Meta-learner weights per model and horizon"
    )
    ax.legend(title="horizon", fontsize=9, loc="best")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


# ---------------------------------------------------------------- entry point


def render_plots(
    folder: Path,
    *,
    horizons: list[int],
    oof: pl.DataFrame,
    holdout: pl.DataFrame,
    models: list[str],
    shipped: dict[str, np.ndarray] | None = None,
    shipped_name: dict[str, str] | None = None,
    correlations: dict[str, dict] | None = None,
    importance: dict[str, dict[str, dict[str, float]]] | None = None,
    meta_weights: dict[str, dict[str, float]] | None = None,
    shipped_raw: dict[str, np.ndarray] | None = None,
) -> dict[str, Path]:
    """Write the run's diagnostic PNGs into ``folder``; returns file name -> path for those written.

    ``oof`` is accepted for symmetry with the rest of the pipeline; the OOF view enters through
    ``correlations`` (already computed on it). Plots whose inputs are missing are skipped.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}

    def put(name: str, draw, *args) -> None:
        out[name] = draw(folder / name, *args)

    for h in horizons:
        drawn = _curves(holdout, h, models, shipped, shipped_name, shipped_raw)
        if drawn is not None and drawn[1]:
            y, series = drawn
            put(f"roc_h{h}.png", plot_roc, h, y, series)
            put(f"calibration_h{h}.png", plot_calibration, h, y, series)
        corr = _get(correlations, h)
        if corr and corr.get("models"):
            put(f"correlation_h{h}.png", plot_correlation, h, list(corr["models"]), corr["matrix"])

    shares = {m: s for m, per_h in (importance or {}).items() if (s := gain_shares(per_h, horizons))}
    if shares:
        put("importance.png", plot_importance, shares, horizons)
    if meta_weights and any(_get(meta_weights, h) for h in horizons):
        put("meta_weights.png", plot_meta_weights, meta_weights, horizons, models)
    return out


def plot_equity(path: Path, timestamps: list[str], equity: dict[str, list[float]], result: dict) -> Path:
    """Equity curves of the backtest (models/evaluation/backtest.py): gated and ungated variants and buy-and-hold."""
    import datetime as _dt

    fig = _new_figure((10, 5))
    ax = fig.add_subplot(1, 1, 1)
    # UTC times as naive datetime64 (numpy keeps no time zone)
    t = np.array([_dt.datetime.fromisoformat(s).replace(tzinfo=None) for s in timestamps], dtype="datetime64[us]")
    styles = {
        "buy_and_hold": ("black", "-"),
        "ungated_long_flat": ("tab:blue", "--"),
        "gated_long_flat": ("tab:blue", "-"),
        "ungated_long_short": ("tab:orange", "--"),
        "gated_long_short": ("tab:orange", "-"),
    }
    for name, curve in equity.items():
        color, ls = styles.get(name, ("gray", ":"))
        ax.plot(t, curve, color=color, linestyle=ls, linewidth=1.2, label=name.replace("_", " "))
    ax.axhline(1.0, color="gray", linewidth=0.6)
    ax.set_ylabel("equity (start = 1, after costs)")
    thr = "per run" if result["threshold"] is None else f"{result['threshold']:.2f}"
    ax.set_title(
        f"MACD, h={result['horizon']}: gate threshold {thr} (chosen on OOF rows), costs {result['cost_bps']:g} bps "
        "per side"
    )
    ax.legend(loc="best", fontsize=8)
    fig.autofmt_xdate()
    return _save(fig, path)


def plot_fleet(path: Path, rows: list[dict], horizon: int) -> Path:
    """A fleet at a glance (flows/fleet.py): per target, the shipped holdout AUC beside the reference's at
    ``horizon``, and the gate's holdout effect (gated - ungated long/flat Sharpe). Targets without a run are
    left empty."""
    fig = _new_figure((max(6.0, 0.9 * len(rows) + 2), 6))
    ax, bx = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
    names = [r["name"] for r in rows]
    x = np.arange(len(rows))
    h = str(horizon)
    shipped = [(r.get("holdout_auc") or {}).get(h, np.nan) for r in rows]
    ref = [(r.get("reference_auc") or {}).get(h, np.nan) for r in rows]
    ax.bar(x - 0.2, shipped, 0.4, label="shipped", color="tab:blue")
    ax.bar(x + 0.2, ref, 0.4, label="reference", color="tab:gray")
    ax.axhline(0.5, color="black", linewidth=0.6)
    ax.set_ylim(0.4, max(0.7, np.nanmax([*shipped, *ref, 0.6]) + 0.02))
    ax.set_ylabel(f"holdout AUC, h={horizon}")
    ax.legend(fontsize=8)
    gate = np.array([np.nan if r.get("gate_sharpe_diff") is None else r["gate_sharpe_diff"] for r in rows], float)
    bx.bar(x, gate, 0.5, color=["tab:green" if g > 0 else "tab:red" for g in gate])
    bx.axhline(0.0, color="black", linewidth=0.6)
    bx.set_ylabel("gated - ungated Sharpe\n(long/flat, holdout)")
    for a in (ax, bx):
        a.set_xticks(x, names, fontsize=8)
    ax.set_title("fleet: what shipped against the reference, and what the gate did on each holdout")
    return _save(fig, path)
