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
- ``val-holdout-drop``: validation -> holdout AUC falls by less than ``max_drop_rel`` (relative);
- ``oof-rows``: at least ``min_oof_rows`` out-of-fold rows (a warning);
- ``live``: ``ensemble.onnx`` loaded in a fresh process scores the newest bars of the data folder, from raw
  candles through the same feature code, and matches the run's own predictions for those bars.

With ``auc_gates`` off (tiny test markets) the two AUC gates are reported as warnings.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Literal

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

    primary_horizon: OptionalPositiveInt = optional_field(
        "horizon (hours) the AUC gates read; empty = the first horizon"
    )
    min_test_auc: float = Field(default=0.52, ge=0, le=1, description="shipped holdout AUC at the primary horizon")
    min_auc_se: float = Field(default=2.0, description="... and above 0.5 by this many standard errors")
    max_drop_rel: float = Field(default=0.10, ge=0, description="largest relative validation -> holdout AUC drop")
    min_oof_rows: int = Field(default=10_000, ge=0, description="fewer out-of-fold rows is a warning")
    auc_gates: bool = Field(default=True, description="off: the AUC gates warn instead of refusing (test markets)")
    live_check: bool = Field(default=True, description="score the newest bars in a fresh process and compare")
    live_bars: int = Field(default=48, ge=1, description="bars the live check scores")
    live_tolerance: float = Field(default=1e-3, gt=0, description="largest difference the live check accepts")
    max_feature_psi: float = Field(
        default=0.25, gt=0, description="drift: a feature whose newest window has a PSI above this has drifted"
    )
    max_drifted_share: float = Field(
        default=0.2, ge=0, le=1, description="drift: largest share of drifted features before the drift warning"
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


def evaluate(
    files: dict[str, ArtifactRef],
    metrics: Metrics,
    config: dict,
    spec: HealthSpec,
    collapse_std: float,
    data_dir: str | None,
    live: bool,
) -> HealthReport:
    """Run every check on a run's files (relative path -> reference with sha256)."""
    h = spec.primary_horizon or metrics.horizons[0]
    checks: list[Check] = []
    state: dict = {}

    def artifacts():
        missing = [r for r in REQUIRED if r not in files]
        missing += [f"onnx/{m}.onnx" for m in metrics.models if f"onnx/{m}.onnx" not in files]
        bad = []
        for rel, ref in files.items():
            try:
                verify(ref)
            except IntegrityError as exc:
                bad.append(f"{rel} ({'missing' if 'missing' in str(exc) else 'sha256 mismatch'})")
        problems = [f"missing {m}" for m in missing] + bad
        return not problems, "; ".join(problems) or f"{len(files)} files, all sha256 match"

    checks.append(_check("artifacts", artifacts))

    def models_load():
        for m in metrics.models:
            # a library's native loader is not written for hostile input (a damaged LightGBM file aborts the
            # process): load only files that match their sha256
            folder = {verify(ref).parent for rel, ref in files.items() if rel.startswith(f"models/{m}/")}
            if len(folder) != 1:
                return False, f"{m}: model files not found"
            state.setdefault("native", {})[m] = load_model(m, folder.pop())
        return True, ", ".join(state["native"])

    checks.append(_check("models-load", models_load))

    def onnx_load():
        names = [rel for rel in files if rel.startswith("onnx/")]
        for rel in names:
            sess, provider = session(verify(files[rel]))
            state.setdefault("sessions", {})[rel] = sess
            state["provider"] = provider
        return bool(names), f"{len(names)} graphs on {state.get('provider', '?')}"

    checks.append(_check("onnx-load", onnx_load))

    def outputs():
        sess = state["sessions"][catalog.ENSEMBLE_ONNX]
        spec_ = ensemble_spec(_load_onnx(files[catalog.ENSEMBLE_ONNX]))
        hold = read_parquet(files[catalog.HOLDOUT_PREDICTIONS])
        scored = score_features(
            sess,
            spec_,
            read_parquet(files[catalog.FEATURES]),
            hold["row"].to_numpy(),
            int(config.get("gap_tolerance_hours", 1)),
        )
        state["scored"], state["holdout"] = scored, hold
        values = scored.drop("timestamp").to_numpy()
        finite = bool(np.isfinite(values).all())
        inside = bool(((values >= 0) & (values <= 1)).all()) if finite else False
        return finite and inside, f"{values.shape[0]} holdout rows x {values.shape[1]} outputs; " + (
            "finite, in [0, 1]" if finite and inside else "non-finite or outside [0, 1]"
        )

    checks.append(_check("outputs", outputs))

    def not_collapsed():
        predictors = load_predictors(verify(files[catalog.META]))
        scored = state["scored"]
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

    checks.append(_check("not-collapsed", not_collapsed))

    def parity():
        report = read_json(files[catalog.PARITY])
        scored, shipped = state["scored"], read_parquet(files[catalog.SHIPPED_HOLDOUT])
        worst = max(
            float(
                np.max(
                    np.abs(scored[catalog.shipped_column(x)].to_numpy() - shipped[catalog.shipped_column(x)].to_numpy())
                )
            )
            for x in metrics.horizons
        )
        ok = bool(report.get("passed")) and worst <= report["ensemble"]["tolerance"]
        return (
            ok,
            f"export parity {'passed' if report.get('passed') else 'FAILED'}; shipped max |onnx - native| {worst:.2g}",
        )

    checks.append(_check("onnx-parity", parity))

    gate: Literal["error", "warning"] = "error" if spec.auc_gates else "warning"
    shipped = metrics.meta[str(h)]

    def holdout_auc():
        se = auc_se(shipped.n_test, h)
        floor = max(spec.min_test_auc, 0.5 + spec.min_auc_se * se)
        test = shipped.test_auc
        ok = test is not None and test >= floor
        return ok, (
            f"h={h}: {shipped.shipped} holdout AUC {_f(test)} vs needed {floor:.3f} "
            f"(min {spec.min_test_auc}, 0.5 + {spec.min_auc_se} SE, SE {se:.3f}, n {shipped.n_test})"
        )

    checks.append(_check("holdout-auc", holdout_auc, gate))

    def drop():
        val, test = shipped.val_auc, shipped.test_auc
        if val is None or test is None or val <= 0:
            return False, f"h={h}: validation or holdout AUC missing"
        rel = (val - test) / val
        return (
            rel < spec.max_drop_rel,
            f"h={h}: validation {val:.3f} -> holdout {test:.3f} ({rel:+.1%} drop; limit {spec.max_drop_rel:.0%})",
        )

    checks.append(_check("val-holdout-drop", drop, gate))
    checks.append(
        _check(
            "oof-rows",
            lambda: (metrics.n_oof >= spec.min_oof_rows, f"{metrics.n_oof} OOF rows (want >= {spec.min_oof_rows})"),
            "warning",
        )
    )

    def drift():
        d = metrics.drift
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

    checks.append(_check("drift", drift, "warning"))

    def live_check():
        if not live or not spec.live_check:
            return True, "skipped"
        if not data_dir:
            return True, "skipped: no data folder (synthetic market)"
        return _live(files, config, data_dir, spec)

    checks.append(_check("live", live_check))
    passed = not any(not c.passed and c.severity == "error" for c in checks)
    return HealthReport(passed=passed, primary_horizon=h, checks=checks)


def _f(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _load_onnx(ref: ArtifactRef):
    import onnx

    return onnx.load(str(verify(ref)))


def _live(files: dict[str, ArtifactRef], config: dict, data_dir: str, spec: HealthSpec) -> tuple[bool, str]:
    """Score the newest bars in a fresh process (``macd_ml.flows.live_check``) and compare with the run's own."""
    with tempfile.TemporaryDirectory(prefix="macd-ml-live-") as tmp:
        job = Path(tmp) / "job.json"
        result = Path(tmp) / "scores.json"
        job.write_text(
            json.dumps(
                {
                    "ensemble": str(verify(files[catalog.ENSEMBLE_ONNX])),
                    "features_json": str(verify(files[catalog.FEATURES_META])),
                    "data_dir": data_dir,
                    "gap_tolerance_hours": config.get("gap_tolerance_hours", 1),
                    "bars": spec.live_bars,
                    "out": str(result),
                }
            )
        )
        proc = subprocess.run(
            [sys.executable, "-m", "macd_ml.flows.live_check", str(job)], capture_output=True, text=True, timeout=600
        )
        if proc.returncode != 0:
            last = next(iter(proc.stderr.strip().splitlines()[-1:]), "no output")
            return False, f"the fresh process failed: {last}"
        live = pl.DataFrame(json.loads(result.read_text())).with_columns(
            pl.col("timestamp").str.to_datetime("%Y-%m-%dT%H:%M:%S%z", time_unit="us", time_zone="UTC")
        )
    own = read_parquet(files[catalog.SHIPPED_HOLDOUT])
    both = live.join(own, on="timestamp", how="inner", suffix="_run")
    if both.height == 0:
        return False, (
            f"none of the {live.height} newest bars of {data_dir} is in the run's holdout "
            "(new candles since the run; check it against the data it was trained on)"
        )
    cols = [c for c in live.columns if c.startswith("shipped_h")]
    worst = max(float(np.max(np.abs(both[c].to_numpy() - both[f"{c}_run"].to_numpy()))) for c in cols)
    ok = worst <= spec.live_tolerance
    return ok, (
        f"{both.height} newest bars scored in a fresh process from raw candles: max |live - run| "
        f"{worst:.2g} (limit {spec.live_tolerance:g})" + ("" if ok else "; the feature code differs from training")
    )
