"""The run catalog: every file of a run folder (and of a bundle) and every column of its tables, named once
(docs/run-folder.md). Code reads and writes ``catalog.SHIPPED_HOLDOUT`` or ``catalog.shipped_column(h)``,
never the literal, so a renamed file or column is one edit here, and a reader finds every user of a file by
searching for its constant."""

from __future__ import annotations

# ------------------------------------------------------------------------------------------------- run files

FLEET = "fleet"  # OUT/fleet/TARGET: a fleet target's home (runs/, current, bundles/; flows/fleet.py)
MANIFEST = "manifest.json"  # every file below with its sha256, signed (artifacts/store.py)
CONFIG = "config.json"  # the run's config as it ran (the CLI's `resume` reads it back)
METRICS = "metrics.json"  # the figures of the run (models/evaluation/metrics.py)
METRICS_SCHEMA = "metrics.schema.json"
TIMINGS = "timings.json"  # wall-clock fit seconds per task (never part of a cache key)
PROMOTION = "promotion.json"  # the champion / challenger decision

FEATURES = "features.parquet"  # the feature table: timestamp + features, one row per bar
FEATURES_META = "features.json"  # its names, spec, fingerprint and code version
LABELS = "labels.parquet"  # y_{h} per feature row, same order
FOLDS = "folds.json"  # the purged walk-forward folds and the holdout

OOF = "oof.parquet"  # every model's out-of-fold probabilities + labels
HOLDOUT_PREDICTIONS = "holdout_predictions.parquet"  # every refit's holdout probabilities + labels
SHIPPED_HOLDOUT = "shipped_holdout.parquet"  # the shipped predictor's holdout probabilities
SHIPPED_OOF = "shipped_oof.parquet"  # the shipped predictor's out-of-fold probabilities (calibrated)
META = "meta.json"  # the shipped predictor per horizon (models/ensemble/predictor.py)
STACK = "stack.json"  # the stacking choice, candidates and diversity

ENSEMBLE_ONNX = "onnx/ensemble.onnx"  # features -> every horizon's shipped probability (what the bot runs)
META_ONNX = "onnx/meta.onnx"  # base-model probabilities -> shipped probability
PARITY = "parity.json"  # ONNX against native, per model and horizon
GATE_ONNX = "onnx/gate.onnx"  # a signal bar's inputs -> P(the MACD trade makes money) (models/gate/graph.py)
TRADE_GATE = "trade_gate.json"  # the trade gate: what ships (kind, thresholds, model), its figures (models/gate/)
GATE_TRADES = "gate_trades.parquet"  # every signal row with its trade label and the gate's probabilities

TRAINING_PROFILE = "training_profile.json"  # the end of the run's data; how unlike the training rows a bar is
TRAINING_REFERENCE = "training_reference.parquet"  # the training rows a bar's dissimilarity is measured against

BACKTEST = "backtest.json"
EQUITY_PLOT = "plots/equity.png"
HEALTH = "health.json"  # the health gate's checks
REPORT = "report.md"

BUNDLE_INDEX = "bundle.json"  # a bundle's index of its members (serving/bundle.py)


def model_file(model: str, name: str) -> str:
    """A file of one model's refit inside the run folder: ``models/{model}/{name}``."""
    return f"models/{model}/{name}"


def importance_file(model: str) -> str:
    return f"{model}_importance.json"


# ------------------------------------------------------------------------------------------------- columns

TIMESTAMP = "timestamp"  # a bar's open time, UTC (every table)
ROW = "row"  # a feature row's index in the feature table (OOF and holdout tables)
FOLD = "fold"  # the fold that predicted an OOF row


def label_column(h: int | str) -> str:
    """The direction label for horizon ``h`` hours: 1 up, 0 down, null undefined (features/labels.py)."""
    return f"y_{h}"


def prediction_column(model: str, h: int | str) -> str:
    """A base model's probability for horizon ``h`` (OOF and holdout tables)."""
    return f"{model}_h{h}"


def shipped_column(h: int | str) -> str:
    """The shipped predictor's probability for horizon ``h`` (shipped tables, the scorer's output)."""
    return f"shipped_h{h}"


def out_of_sample_column(h: int | str) -> str:
    """The shipped predictor's probability on an OOF row where it is out of sample (null where its fitted
    weights saw the row): what the trade gate learns from (shipped OOF table)."""
    return f"oos_h{h}"
