"""``metrics.json`` as a typed, versioned document (docs/run-folder.md): what the flow writes and what the report,
the health gate and users read. Its JSON Schema is written beside it in every run folder
(``metrics.schema.json``); ``schema_version`` changes when a field changes meaning or goes away.

Horizons are string keys ("5") everywhere, as JSON needs. Model names keep the run's order (lists and dicts
here are ordered; readers should not assume alphabetical order).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelScore(_Doc):
    """One base model at one horizon: AUC out of fold and on the holdout, with their row counts."""

    oof_auc: float | None = Field(
        description="out-of-fold AUC scored within each fold's test span, averaged weighted by rows"
    )
    oof_auc_pooled: float | None = Field(
        default=None, description="the same rows pooled across folds (also scores each fold's intercept)"
    )
    test_auc: float | None
    n_oof: int
    n_test: int


class ReferenceScore(ModelScore):
    """The fixed simple LightGBM (models/learners/reference.py) on the same folds and holdout."""

    test_se: float = Field(description="SE of the holdout AUC, sqrt(h / 3n)")


class Candidate(_Doc):
    val_auc: float | None = Field(description="inner walk-forward AUC over OOF rows (the choice is made on it)")
    test_auc: float | None = Field(default=None, description="holdout AUC (reported only)")
    C: float | None = Field(default=None, description="regularisation chosen for the meta-learner")
    vs_reference: float | None = Field(
        default=None, description="inner-CV AUC minus the reference model's on the same rows (paired, chunked)"
    )
    vs_reference_se: float | None = Field(default=None, description="standard error of vs_reference")
    note: str | None = None


class Calibration(_Doc):
    """How the shipped probability is calibrated (models/ensemble/calibration.py): chosen and fitted on OOF rows
    only."""

    kind: str = Field(description="'none', 'platt' or 'isotonic': the lowest inner walk-forward Brier score")
    inner_brier: dict[str, float] = Field(description="size-weighted Brier score over the inner blocks, per kind")
    holdout_brier_raw: float | None = Field(description="holdout Brier score before calibration (reporting only)")
    holdout_brier: float | None = Field(description="holdout Brier score of the shipped (calibrated) probability")
    reliability_raw: list[dict] = Field(description="holdout reliability bins before calibration")
    reliability: list[dict] = Field(description="holdout reliability bins after calibration")


class Shipped(_Doc):
    """What ships at one horizon and how it was chosen."""

    shipped: str = Field(description="'meta', 'mean' or 'best:<model>'")
    oof_auc: float | None = Field(description="in-sample AUC of the shipped predictor refitted on all OOF rows")
    val_auc: float | None
    test_auc: float | None
    gap_abs: float | None = Field(description="val_auc - test_auc")
    gap_rel: float | None
    gap_combined_se: float
    candidates: dict[str, Candidate]
    c_scores: dict[str, float | None]
    weights: dict[str, float] | None
    models: list[str] = Field(description="models the shipped predictor reads, in order")
    dropped: dict[str, str]
    n_train: int
    n_val: int
    n_test: int
    train_last: str | None
    holdout_first: str | None
    calibration: Calibration | None = None


class Diversity(_Doc):
    models: list[str]
    matrix: list[list[float | None]]
    std: dict[str, float]
    redundant_pairs: list[dict]
    collapsed: list[str]


class Training(_Doc):
    folds: dict[str, dict] = Field(description="fold index -> what the fit chose (best iteration, device, ...)")
    refit: dict = Field(default_factory=dict)
    collapsed: bool = False


class AucNoise(_Doc):
    oof: float
    test: float


class LabelBalance(_Doc):
    defined: int
    up_share: float


class FoldSize(_Doc):
    fold: int
    fit: int
    early_stop: int
    test: int
    test_first: datetime | None
    test_last: datetime | None


class HoldoutSpan(_Doc):
    rows: int
    first: datetime | None
    last: datetime | None


class InputSummary(_Doc):
    data_dir: str | None = Field(default=None, description="the candle folder the run read (health's live check)")
    rows: dict[str, int]
    span: dict[str, list[str]]
    gaps: dict[str, dict]


class CrossFeatures(_Doc):
    auc_gain: dict[str, dict[str, float | None]]
    importance: dict


class Check(BaseModel):
    """One health check (models/release/health.py)."""

    name: str
    passed: bool
    severity: Literal["error", "warning"] = "error"
    detail: str


class HealthReport(BaseModel):
    """The health gate's verdict: passed unless an ``error`` check failed."""

    passed: bool
    primary_horizon: int
    checks: list[Check]

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed and c.severity == "error"]

    def table(self) -> str:
        width = max(len(c.name) for c in self.checks)
        lines = [f"{'check':{width}s}  result  detail", f"{'-' * width}  ------  ------"]
        for c in self.checks:
            result = "ok" if c.passed else ("FAIL" if c.severity == "error" else "warn")
            lines.append(f"{c.name:{width}s}  {result:6s}  {c.detail}")
        lines.append(f"health: {'PASSED' if self.passed else 'REFUSED'}")
        return "\n".join(lines)


class Decision(BaseModel):
    """Champion / challenger (models/release/promotion.py): promote or not, why, and both scores on the window."""

    promote: bool
    reason: str
    forced: bool = False
    champion: str | None = None
    challenger: str | None = None
    horizon: int
    window_first: datetime | None = None
    window_last: datetime | None = None
    n_rows: int = 0
    challenger_auc: float | None = None
    champion_auc: float | None = None
    se: float | None = None
    margin_se: float
    prediction_shift: dict | None = Field(
        default=None,
        description="drift: the shipped probability of champion and challenger on the same bars (PSI, mean, std)",
    )


class Metrics(_Doc):
    """The run's numbers. ``models.{name}.{h}.{oof_auc,test_auc}``, ``meta.{h}.{oof_auc,val_auc,test_auc}``,
    ``n_oof``, ``n_test`` are the contract; the rest is what the report shows."""

    schema_version: Literal[1] = 1
    run_id: str | None = None
    target: str
    cross: list[str]
    horizons: list[int]
    n_features: int
    n_rows: int
    n_oof: int
    n_test: int
    labels: dict[str, LabelBalance]
    input: InputSummary
    folds: list[FoldSize]
    holdout: HoldoutSpan
    models: dict[str, dict[str, ModelScore]]
    meta: dict[str, Shipped]
    diversity: dict[str, Diversity]
    training: dict[str, Training]
    auc_se: dict[str, AucNoise]
    cross_features: CrossFeatures | None = None
    reference: dict[str, ReferenceScore] | None = Field(
        default=None, description="the reference model per horizon: what the ensemble adds over a simple model"
    )
    backtest: dict | None = Field(
        default=None, description="the MACD strategy on the holdout, always and gated (models/evaluation/backtest.py)"
    )
    drift: dict | None = Field(
        default=None, description="feature PSI and prediction shift (models/evaluation/drift.py)"
    )
    parity: dict | None = Field(default=None, description="ONNX parity on the holdout (models/release/export.py)")
    trade_gate: dict | None = Field(
        default=None,
        description="the trade gate: the kind that ships, its thresholds and figures on OOF trades and the holdout "
        "(models/gate/, docs/trade-gate.md)",
    )
    familiarity: dict | None = Field(
        default=None,
        description="how unlike the training rows a bar may be before the bot flags it: the threshold, and the share "
        "of holdout bars above it (models/release/familiarity.py)",
    )
    health: HealthReport | None = None

    def model_order(self) -> list[str]:
        return list(self.models)


def metrics_schema() -> dict:
    return Metrics.model_json_schema()
