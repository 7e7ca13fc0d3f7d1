"""The health gate: what must hold before a run may become ``current`` (and what a bundle must pass to be used).

Checks (severity ``error`` refuses promotion; ``warning`` is reported only):

- ``artifacts``: every file the run lists is there and matches its sha256; nothing required is missing;
- ``models-load``: every base model loads natively; ``onnx-load``: every ONNX file opens in onnxruntime;
- ``outputs``: ``ensemble.onnx`` scores the holdout with finite probabilities in [0, 1];
- ``not-collapsed``: nothing that ships is constant (a TFT stuck at 0.0, a meta-learner whose weights are all
  zero, a model whose holdout outputs do not vary);
- ``onnx-parity``: the export's parity report passed, and the ensemble re-scored here matches the native holdout
  probabilities;
- ``holdout-auc``: the shipped holdout AUC at the primary horizon is at least ``min_test_auc`` and above 0.5 by
  ``min_auc_se`` standard errors (SE = sqrt(h / 3n));
- ``trade-gate``: the trade gate's ``gate.onnx`` matches its native probabilities on the holdout signals
  (docs/trade-gate.md); ``trade-gate-figures``: no gate kind's holdout trades look too good to be true (a warning);
- ``val-holdout-drop``: validation -> holdout AUC falls by less than ``max_drop_rel`` (relative);
- ``oof-rows``: at least ``min_oof_rows`` out-of-fold rows (a warning);
- ``live``: the bot's own path (serving/live_check.py: a ``Scorer`` over the run's files, candles in) scores the
  newest bars of the run's validated candles and matches the run's own predictions for those bars.

Each check is a function of the run under check (:class:`RunUnderCheck`, whose shared parts are computed on
first use), listed in :data:`CHECKS`; one failing never stops or breaks another.

With ``auc_gates`` off (tiny test markets) the two AUC gates are reported as warnings.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Annotated, Any, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from macd_ml.artifacts import catalog
from macd_ml.artifacts.store import ArtifactRef, IntegrityError, read_json, read_parquet, verify
from macd_ml.features.form import OptionalPositiveInt, optional_field
from macd_ml.models.ensemble.predictor import load_predictors
from macd_ml.models.evaluation.metrics import Check, HealthReport, Metrics
from macd_ml.models.evaluation.stats import auc_se
from macd_ml.models.learners.registry import load_model
from macd_ml.models.release.onnx_export import ensemble_spec
from macd_ml.models.release.scoring import score_features, session


class HealthSpec(BaseModel):
    """Gates a run must pass before it is promoted (defaults: the replaced system's deploy criteria)."""

    model_config = ConfigDict(extra="forbid")

    primary_horizon: Annotated[OptionalPositiveInt, Field(title="Primary horizon (hours)")] = optional_field(
        "horizon (hours) the AUC gates read (one of the horizons); empty = the first horizon"
    )
    min_test_auc: float = Field(
        default=0.52,
        ge=0,
        le=1,
        title="Least holdout AUC",
        description="shipped holdout AUC at the primary horizon",
    )
    min_auc_se: float = Field(
        default=2.0, title="AUC above 0.5 by (SE)", description="... and above 0.5 by this many standard errors"
    )
    max_drop_rel: float = Field(
        default=0.10,
        ge=0,
        title="Largest validation-to-holdout drop",
        description="largest relative validation -> holdout AUC drop",
    )
    min_oof_rows: int = Field(
        default=10_000, ge=0, title="Fewest OOF rows (warning)", description="fewer out-of-fold rows is a warning"
    )
    auc_gates: bool = Field(
        default=True,
        title="AUC gates refuse",
        description="off: the AUC gates warn instead of refusing (test markets)",
    )
    live_check: bool = Field(
        default=True, title="Live check", description="score the newest bars in a fresh process and compare"
    )
    live_bars: int = Field(default=48, ge=1, title="Live check bars", description="bars the live check scores")
    live_tolerance: float = Field(
        default=1e-3, gt=0, title="Live check tolerance", description="largest difference the live check accepts"
    )
    max_feature_psi: float = Field(
        default=0.25,
        gt=0,
        title="Feature drift PSI limit",
        description="drift: a feature whose newest window has a PSI above this has drifted",
    )
    max_drifted_share: float = Field(
        default=0.2,
        ge=0,
        le=1,
        title="Drifted feature share (warning)",
        description="drift: largest share of drifted features before the drift warning",
    )


REQUIRED = (
    catalog.FEATURES,
    catalog.FEATURES_META,
    catalog.LABELS,
    catalog.FOLDS,
    catalog.HOLDOUT_PREDICTIONS,
    catalog.SHIPPED_HOLDOUT,
    catalog.META,
    catalog.PARITY,
    catalog.ENSEMBLE_ONNX,
    catalog.META_ONNX,
)


def _check(name: str, fn, severity: Literal["error", "warning"] = "error") -> Check:
    try:
        passed, detail = fn()
    except Exception as exc:  # a check that cannot run has failed; say why in one line
        passed, detail = False, f"{type(exc).__name__}: {next(iter(str(exc).splitlines()), '')}"
    return Check(name=name, passed=bool(passed), severity=severity, detail=detail)


class RunUnderCheck:
    """What the checks read, each part computed on first use and kept. A part that cannot be computed raises in
    every check that needs it, with its own cause (``onnx-load`` failing makes ``outputs`` fail saying why, never
    a ``KeyError``): each check is independent of the others' order and outcome."""

    def __init__(
        self,
        files: dict[str, ArtifactRef],
        metrics: Metrics,
        config: dict,
        spec: HealthSpec,
        collapse_std: float,
        live: Callable[[RunUnderCheck], tuple[bool, str]] | None = None,
    ):
        self.files, self.metrics, self.config, self.spec = files, metrics, config, spec
        self.collapse_std, self.live = collapse_std, live
        self.horizon = spec.primary_horizon or metrics.horizons[0]
        self.provider = "?"

    def file(self, rel: str) -> ArtifactRef:
        """A file of the run; a check that needs one the run lacks fails saying which."""
        if rel not in self.files:
            raise FileNotFoundError(f"the run has no {rel}")
        return self.files[rel]

    @functools.cached_property
    def sessions(self) -> dict[str, Any]:
        out = {}
        for rel in (r for r in self.files if r.startswith("onnx/")):
            out[rel], self.provider = session(verify(self.files[rel]))
        return out

    @functools.cached_property
    def scored(self) -> pl.DataFrame:
        """``ensemble.onnx`` re-scoring the holdout rows of the run's feature table."""
        if catalog.ENSEMBLE_ONNX not in self.sessions:
            raise ValueError(f"no {catalog.ENSEMBLE_ONNX} to score with")
        return score_features(
            self.sessions[catalog.ENSEMBLE_ONNX],
            ensemble_spec(_load_onnx(self.file(catalog.ENSEMBLE_ONNX))),
            read_parquet(self.file(catalog.FEATURES)),
            read_parquet(self.file(catalog.HOLDOUT_PREDICTIONS))[catalog.ROW].to_numpy(),
            int(self.config.get("gap_tolerance_hours", 1)),
        )


Outcome = tuple[bool, str]


def check_artifacts(run: RunUnderCheck) -> Outcome:
    missing = [r for r in REQUIRED if r not in run.files]
    missing += [f"onnx/{m}.onnx" for m in run.metrics.models if f"onnx/{m}.onnx" not in run.files]
    bad = []
    for rel, ref in run.files.items():
        try:
            verify(ref)
        except IntegrityError as exc:
            bad.append(f"{rel} ({'missing' if 'missing' in str(exc) else 'sha256 mismatch'})")
    problems = [f"missing {m}" for m in missing] + bad
    return not problems, "; ".join(problems) or f"{len(run.files)} files, all sha256 match"


def check_models_load(run: RunUnderCheck) -> Outcome:
    loaded = []
    for m in run.metrics.models:
        # a library's native loader is not written for hostile input (a damaged LightGBM file aborts the
        # process): load only files that match their sha256
        folder = {verify(ref).parent for rel, ref in run.files.items() if rel.startswith(f"models/{m}/")}
        if len(folder) != 1:
            return False, f"{m}: model files not found"
        load_model(m, folder.pop())
        loaded.append(m)
    return True, ", ".join(loaded)


def check_onnx_load(run: RunUnderCheck) -> Outcome:
    names = list(run.sessions)
    return bool(names), f"{len(names)} graphs on {run.provider}"


def check_outputs(run: RunUnderCheck) -> Outcome:
    values = run.scored.drop(catalog.TIMESTAMP).to_numpy()
    finite = bool(np.isfinite(values).all())
    inside = bool(((values >= 0) & (values <= 1)).all()) if finite else False
    return finite and inside, f"{values.shape[0]} holdout rows x {values.shape[1]} outputs; " + (
        "finite, in [0, 1]" if finite and inside else "non-finite or outside [0, 1]"
    )


def check_not_collapsed(run: RunUnderCheck) -> Outcome:
    predictors = load_predictors(verify(run.file(catalog.META)))
    scored, collapse_std = run.scored, run.collapse_std
    problems = []
    for hz, pred in predictors.items():
        col = scored[catalog.shipped_column(hz)].to_numpy()
        if np.std(col) < collapse_std or np.unique(np.round(col, 9)).size < 2:
            problems.append(f"shipped h={hz} is constant (std {np.std(col):.2g})")
        if pred.kind == "meta" and not np.any(np.abs(pred.weights) > 0):
            problems.append(f"meta h={hz} has all weights zero")
        for m in pred.models:
            std = float(np.std(scored[catalog.prediction_column(m, hz)].to_numpy()))
            if std < collapse_std:
                problems.append(f"{m} h={hz} ships but is constant (std {std:.2g})")
    return not problems, "; ".join(problems) or "every shipped output varies"


def check_parity(run: RunUnderCheck) -> Outcome:
    report = read_json(run.file(catalog.PARITY))
    scored, shipped = run.scored, read_parquet(run.file(catalog.SHIPPED_HOLDOUT))
    worst = max(
        float(
            np.max(np.abs(scored[catalog.shipped_column(x)].to_numpy() - shipped[catalog.shipped_column(x)].to_numpy()))
        )
        for x in run.metrics.horizons
    )
    ok = bool(report.get("passed")) and worst <= report["ensemble"]["tolerance"]
    return (
        ok,
        f"export parity {'passed' if report.get('passed') else 'FAILED'}; shipped max |onnx - native| {worst:.2g}",
    )


def check_trade_gate(run: RunUnderCheck) -> Outcome:
    """The trade gate (models/gate/): ``onnx/gate.onnx`` re-scored here matches the native probabilities of the
    holdout's signals (what the bot runs is what was evaluated)."""
    if catalog.TRADE_GATE not in run.files:
        return True, "no trade gate in this run (gate.enabled is off)"
    doc = read_json(run.file(catalog.TRADE_GATE))
    if catalog.GATE_ONNX not in run.files:
        return doc.get("model") is None, f"ships {doc['kind']}; no secondary model (too few signals), no gate.onnx"
    trades = read_parquet(run.file(catalog.GATE_TRADES)).filter(pl.col("q_holdout").is_not_null())
    X = trades.select(doc["model"]["inputs"]).cast(pl.Float64).to_numpy().astype(np.float32)
    q = run.sessions[catalog.GATE_ONNX].run(None, {"x": X})[0][:, 0] if len(X) else np.zeros(0)
    worst = float(np.max(np.abs(q - trades["q_holdout"].to_numpy()))) if len(X) else 0.0
    parity = doc.get("parity") or {}
    tol = parity.get("tolerance", 1e-4)
    ok = worst <= tol and bool(parity.get("passed"))
    return ok, (
        f"ships {doc['kind']}; gate.onnx max |onnx - native| {worst:.2g} on {len(X)} holdout signals "
        f"(export parity {'passed' if parity.get('passed') else 'FAILED'}, tolerance {tol:g})"
    )


def check_trade_gate_figures(run: RunUnderCheck) -> Outcome:
    """A warning when a gate kind's holdout trades look too good for an hourly MACD gate (Sharpe above 5, or a hit
    rate of 80 % over 20 trades or more): a leak, not an edge, unless the holdout is tiny. Only the holdout: the
    out-of-fold figures are the best of a choice, optimistic by construction."""
    from macd_ml.models.evaluation.backtest import too_good

    if catalog.TRADE_GATE not in run.files:
        return True, "no trade gate in this run"
    kinds = (read_json(run.file(catalog.TRADE_GATE)).get("holdout") or {}).get("kinds", {})
    problems = [
        f"{kind} {mode}: Sharpe {v['sharpe']:.1f}, hit rate {v['hit_rate'] or 0:.0%} over {v['trades']} trades"
        for kind, figures in kinds.items()
        if kind != "none"
        for mode, v in figures.items()
        if mode != "mean" and too_good(v)
    ]
    return not problems, (
        "too good for hourly crypto (look-ahead?): " + "; ".join(problems)
        if problems
        else "no gate kind looks too good"
    )


def check_holdout_auc(run: RunUnderCheck) -> Outcome:
    h, spec = run.horizon, run.spec
    shipped = run.metrics.meta[str(h)]
    se = auc_se(shipped.n_test, h)
    floor = max(spec.min_test_auc, 0.5 + spec.min_auc_se * se)
    test = shipped.test_auc
    ok = test is not None and test >= floor
    return ok, (
        f"h={h}: {shipped.shipped} holdout AUC {_f(test)} vs needed {floor:.3f} "
        f"(min {spec.min_test_auc}, 0.5 + {spec.min_auc_se} SE, SE {se:.3f}, n {shipped.n_test})"
    )


def check_drop(run: RunUnderCheck) -> Outcome:
    h = run.horizon
    shipped = run.metrics.meta[str(h)]
    val, test = shipped.val_auc, shipped.test_auc
    if val is None or test is None or val <= 0:
        return False, f"h={h}: validation or holdout AUC missing"
    rel = (val - test) / val
    return (
        rel < run.spec.max_drop_rel,
        f"h={h}: validation {val:.3f} -> holdout {test:.3f} ({rel:+.1%} drop; limit {run.spec.max_drop_rel:.0%})",
    )


def check_oof_rows(run: RunUnderCheck) -> Outcome:
    n, want = run.metrics.n_oof, run.spec.min_oof_rows
    return n >= want, f"{n} OOF rows (want >= {want})"


def check_drift(run: RunUnderCheck) -> Outcome:
    d, spec = run.metrics.drift, run.spec
    if d is None:
        return True, "not measured"
    f, parts, ok = d.get("features") or {}, [], True
    if f:
        share = f.get("drifted_share", 0.0)
        ok = ok and share <= spec.max_drifted_share
        top = ", ".join(f"{t['feature']} {t['psi']:.2f}" for t in f.get("top", [])[:3])
        parts.append(
            f"{len(f.get('drifted', []))} features with PSI > {spec.max_feature_psi:g} ({share:.0%}; limit "
            f"{spec.max_drifted_share:.0%}); top {top}"
        )
    return ok, "; ".join(parts) or "not measured"


def check_live(run: RunUnderCheck) -> Outcome:
    if not run.spec.live_check:
        return True, "skipped (health.live_check = false)"
    if run.live is None:
        return True, "skipped: no candles to score (a published run checked without its data, or a synthetic market)"
    return run.live(run)


Severity = Literal["error", "warning", "auc"]  # "auc": error, or a warning with health.auc_gates off

# (name, check, severity), in the order the report lists them; each runs whatever the others did
CHECKS: list[tuple[str, Callable[[RunUnderCheck], Outcome], Severity]] = [
    ("artifacts", check_artifacts, "error"),
    ("models-load", check_models_load, "error"),
    ("onnx-load", check_onnx_load, "error"),
    ("outputs", check_outputs, "error"),
    ("not-collapsed", check_not_collapsed, "error"),
    ("onnx-parity", check_parity, "error"),
    ("trade-gate", check_trade_gate, "error"),
    ("trade-gate-figures", check_trade_gate_figures, "warning"),
    ("holdout-auc", check_holdout_auc, "auc"),
    ("val-holdout-drop", check_drop, "auc"),
    ("oof-rows", check_oof_rows, "warning"),
    ("drift", check_drift, "warning"),
    ("live", check_live, "error"),
]


def evaluate(
    files: dict[str, ArtifactRef],
    metrics: Metrics,
    config: dict,
    spec: HealthSpec,
    collapse_std: float,
    live: Callable[[RunUnderCheck], Outcome] | None = None,
) -> HealthReport:
    """Run every check on a run's files (relative path -> reference with sha256). ``live`` scores the newest bars
    the way a bot does (serving/live_check.py; None: the live check is skipped and says so)."""
    run = RunUnderCheck(files, metrics, config, spec, collapse_std, live)
    checks = []
    for name, fn, severity in CHECKS:
        level: Literal["error", "warning"] = (
            ("error" if spec.auc_gates else "warning") if severity == "auc" else severity
        )
        checks.append(_check(name, lambda fn=fn: fn(run), level))
    passed = not any(not c.passed and c.severity == "error" for c in checks)
    return HealthReport(passed=passed, primary_horizon=run.horizon, checks=checks)


def _f(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _load_onnx(ref: ArtifactRef):
    import onnx

    return onnx.load(str(verify(ref)))
