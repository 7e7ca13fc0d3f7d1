"""Holdout blindness, tested on the whole flow (docs/leakage.md).

Three runs of the real retrain flow, every model kind (LSTM and TFT at two epochs), on one synthetic market:

- ``A``: the market as generated;
- ``B``: the same market with every candle from the holdout's first bar on mirrored (tests/mirror.py: every
  holdout label flips, the candles stay valid);
- ``C``: the same market mirrored from the last fold's test span on.

A against B: everything fitted, chosen or decided (every model file, every fold's fit, the OOF predictions, what
ships with its weights and calibration, the backtest's threshold and its OOF table, the champion/challenger
window) is byte-identical; only holdout figures move, and they do move. A against C: every fold fitted before the
last fold's test span is byte-identical, and so is that fold's own fit; its OOF predictions move.

These two tests are the contract for every later change that fits or decides anything: a new stage that reads the
holdout (or a fold's test span) where it must not makes one of them fail, naming the file and the key.

They also prove determinism: A and B share no cache (separate output folders, every fit made again) and agree
byte for byte on every fit. LightGBM runs with ``deterministic=True`` and a fixed thread count,
XGBoost with a fixed ``nthread``, torch on the CPU with a fixed thread count and per-fit generators
(models/learners/sequence.py). On CUDA, torch's LSTM and scatter kernels are not bit-reproducible, so these runs pin the
sequence nets to the CPU.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

from macd_ml.artifacts import store
from macd_ml.features.synth import synth_market, write_market
from macd_ml.flows.config import RetrainConfig
from tests.flowutil import run_flow
from tests.mirror import mirror_market

pytestmark = pytest.mark.usefixtures("prefect_server")

SEQUENCE = {"max_epochs": 2, "min_epochs": 1, "patience": 1, "max_train_rows": 1_500, "device": "cpu"}

# What may differ between A and B in metrics.json: figures read on the holdout (or on the newest bars, or on every
# row), and where the data came from. Anything else that moves is a leak (or nondeterminism) and fails the test.
# Patterns are fnmatch globs over "/key/key/..." paths; list indices are "[i]".
HOLDOUT_FIGURES = (
    "/run_id",
    "/input/data_dir",
    "*/test_auc",  # models, reference, meta and its candidates, cross_features
    "/meta/*/gap_abs",  # validation - holdout
    "/meta/*/gap_rel",
    "/meta/*/calibration/holdout_brier*",
    "/meta/*/calibration/reliability*",  # the holdout's reliability tables
    "/labels/*/up_share",  # the label balance over every row, the holdout's included
    "/backtest/signals",  # MACD signals in the holdout
    "/backtest/variants/*",
    "/backtest/gated_minus_ungated/*",
    "/backtest/lookahead_suspect",  # gated variants whose holdout figures look too good
    "/drift/*",  # the newest window (the holdout's end) against the training rows
    "/parity/*",  # ONNX against native, on the holdout rows
    "/health/*",  # the gate reads the holdout
    "/trade_gate/holdout/*",  # the trade gate's holdout figures (reported only)
    "/trade_gate/signals/holdout",
    "/trade_gate/parity/*",  # gate.onnx against native, on the holdout's and the OOF span's signals
    "/familiarity/holdout_unfamiliar_rate",  # the share of holdout bars unlike the training rows (reported only)
)
# trade_gate.json is metrics.json's "trade_gate" plus the model
GATE_FIGURES = tuple(p.removeprefix("/trade_gate") for p in HOLDOUT_FIGURES if p.startswith("/trade_gate/"))
# backtest.json is metrics.json's "backtest"
BACKTEST_FIGURES = tuple(p.removeprefix("/backtest") for p in HOLDOUT_FIGURES if p.startswith("/backtest/"))
# stack.json: the choice and its inner walk-forward scores stay; holdout figures may move
STACK_FIGURES = tuple(p for p in HOLDOUT_FIGURES if p.startswith(("/meta/", "*/")))
# the champion/challenger decision: who is compared, on which bars, with which noise band, are inputs; the AUCs
# the two score on those bars (and what follows from them) are holdout figures
DECISION_INPUTS = ("champion", "horizon", "window_first", "window_last", "n_rows", "se", "margin_se")


def _config(data: Path, out: Path) -> RetrainConfig:
    return RetrainConfig.model_validate(
        {
            "data_dir": str(data),
            "out_dir": str(out),
            "folds": {"n_folds": 3},
            "models": {"lstm": SEQUENCE, "tft": SEQUENCE},
        }
    )


def _first(span) -> datetime:
    return span.first if isinstance(span.first, datetime) else datetime.fromisoformat(str(span.first))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, prefect_server):
    """Runs A, B and C (module docstring). C runs first, in a folder of its own, and is then the champion that A
    and B are both compared with, so that champion/challenger runs in A and B on the same terms."""
    from macd_ml.flows.preflight import preflight

    root = tmp_path_factory.mktemp("blind")
    market = synth_market(hours=3_000, seed=5, gaps=1)
    write_market(market, root / "market")
    folds = preflight(_config(root / "market", root / "unused")).folds  # the flow's own fold code, in memory
    holdout_first, last_test_first = _first(folds.holdout), _first(folds.folds[-1].test)
    write_market(mirror_market(market, holdout_first), root / "mirrored-holdout")
    write_market(mirror_market(market, last_test_first), root / "mirrored-last-fold")

    c, _ = run_flow(_config(root / "mirrored-last-fold", root / "out-c"))
    champion = Path(c).name
    paths = {"C": Path(c)}
    for name, data in (("A", "market"), ("B", "mirrored-holdout")):
        out = root / f"out-{name.lower()}"
        shutil.copytree(c, out / "runs" / champion)
        store.promote(out, champion)
        path, _ = run_flow(_config(root / data, out))
        paths[name] = Path(path)
    return paths, folds


# --------------------------------------------------------------------------------------------- helpers


def _flatten(doc, path: str = "") -> dict[str, object]:
    if isinstance(doc, dict):
        return {k: v for key, value in doc.items() for k, v in _flatten(value, f"{path}/{key}").items()}
    if isinstance(doc, list) and any(isinstance(x, (dict, list)) for x in doc):
        return {k: v for i, x in enumerate(doc) for k, v in _flatten(x, f"{path}[{i}]").items()}
    return {path: doc}


def _moved(a: dict, b: dict) -> set[str]:
    fa, fb = _flatten(a), _flatten(b)
    return {p for p in fa.keys() | fb.keys() if fa.get(p, "<absent>") != fb.get(p, "<absent>")}


def _unexpected(a: dict, b: dict, allowed: tuple[str, ...]) -> list[str]:
    """Paths of ``a`` and ``b`` whose values differ and that no glob of ``allowed`` names."""
    return sorted(
        p for p in _moved(a, b) if not any(fnmatch.fnmatchcase(re.sub(r"\[\d+\]", "[i]", p), g) for g in allowed)
    )


def _json(run: Path, rel: str) -> dict:
    return json.loads((run / rel).read_text())


def _files(run: Path, pattern: str) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.glob(pattern)) if p.is_file()}


def _what_moved(a: Path, b: Path, rel: str) -> str:
    """``rel``, and for a table that differs between runs ``a`` and ``b``: which columns, on how many rows."""
    if not rel.endswith(".parquet") or not (a / rel).is_file() or not (b / rel).is_file():
        return rel
    ta, tb = pl.read_parquet(a / rel), pl.read_parquet(b / rel)
    if ta.columns != tb.columns or ta.height != tb.height:
        return f"{rel} (columns {ta.columns} / {tb.columns}, rows {ta.height} / {tb.height})"
    moved = {
        c: int((ta[c].cast(pl.String).fill_null("-") != tb[c].cast(pl.String).fill_null("-")).sum()) for c in ta.columns
    }
    first = {
        c: ta["row"].filter(ta[c].cast(pl.String).fill_null("-") != tb[c].cast(pl.String).fill_null("-"))[0]
        for c, n in moved.items()
        if n and "row" in ta.columns
    }
    return f"{rel} (rows moved per column: { {c: n for c, n in moved.items() if n} }, first row: {first})"


# --------------------------------------------------------------------------------------------- the two contracts


def test_nothing_fitted_or_decided_reads_the_holdout(runs):
    paths, folds = runs
    a, b = paths["A"], paths["B"]
    hold = folds.holdout.start

    # the mirror did what it says: the holdout's labels flipped, its features and predictions moved
    ya, yb = pl.read_parquet(a / "labels.parquet"), pl.read_parquet(b / "labels.parquet")
    for col in (c for c in ya.columns if c.startswith("y_")):
        both = pl.DataFrame({"a": ya[col][hold:], "b": yb[col][hold:]}).drop_nulls()
        assert both.height > 100 and (both["a"] + both["b"] == 1).all(), f"{col}: holdout labels did not flip"
    fa, fb = pl.read_parquet(a / "features.parquet"), pl.read_parquet(b / "features.parquet")
    assert fa.slice(0, hold).equals(fb.slice(0, hold)), "features before the holdout must not change"
    assert not fa.slice(hold).equals(fb.slice(hold))
    ma, mb = _json(a, "metrics.json"), _json(b, "metrics.json")
    assert any(ma["meta"][h]["test_auc"] != mb["meta"][h]["test_auc"] for h in ma["meta"]), "holdout AUCs moved"

    # every fitted file, the folds, the OOF predictions and what ships: byte-identical
    shipped = ("folds.json", "oof.parquet", "shipped_oof.parquet", "meta.json", "training_profile.json")
    for pattern in ("models/**/*", "onnx/*", *shipped, "training_reference.parquet"):
        fa_, fb_ = _files(a, pattern), _files(b, pattern)
        assert fa_, f"no {pattern} in the run"
        differ = sorted(k for k in fa_.keys() | fb_.keys() if fa_.get(k) != fb_.get(k))
        assert not differ, f"these depend on the holdout: {[_what_moved(a, b, k) for k in differ]}"
    # labels before the holdout's embargo are the same rows' labels
    emb = folds.embargo_hours
    assert ya.slice(0, hold - emb).equals(yb.slice(0, hold - emb))

    # metrics.json: every fold's and refit's fit (fitted_sha256, best iteration, early-stopping std), the choice,
    # its inner walk-forward scores and weights, the OOF scores: identical; only holdout figures move
    assert _unexpected(ma, mb, HOLDOUT_FIGURES) == []
    assert all(t["refit"]["fitted_sha256"] for t in ma["training"].values())
    sa, sb = _json(a, "stack.json"), _json(b, "stack.json")
    assert _unexpected(sa, sb, STACK_FIGURES) == []

    # the backtest's threshold and its OOF table
    ba, bb = _json(a, "backtest.json"), _json(b, "backtest.json")
    assert ba["threshold_choice"] == bb["threshold_choice"] and ba["threshold"] == bb["threshold"]
    assert ba["threshold_choice"]["oof_sharpe"], "the threshold was chosen on an OOF table"
    assert _unexpected(ba, bb, BACKTEST_FIGURES) == []

    # the trade gate: its secondary model (in gate.onnx above), its thresholds and its choice; only holdout figures
    ga, gb = _json(a, "trade_gate.json"), _json(b, "trade_gate.json")
    assert ga["model"] is not None and ga["inner"]["n_test"] > 0, "the gate fitted a secondary model"
    assert _unexpected(ga, gb, GATE_FIGURES) == []
    assert ga["holdout"] != gb["holdout"], "the gate's holdout figures moved"

    # champion/challenger: both compared with the same champion, on the same bars
    pa, pb = _json(a, "promotion.json"), _json(b, "promotion.json")
    assert pa["champion"] == paths["C"].name and pa["n_rows"], pa
    assert {k: pa[k] for k in DECISION_INPUTS} == {k: pb[k] for k in DECISION_INPUTS}
    assert pa["challenger_auc"] != pb["challenger_auc"]


def test_nothing_fitted_before_the_last_fold_reads_its_test_span(runs):
    """The same contract one level down: mirroring the last fold's test span (and everything after it) changes
    that fold's OOF predictions, never a fit made before that span: not the earlier folds, not the last fold's own
    fit (its trees, epoch, head, normaliser: ``fitted_sha256``)."""
    paths, folds = runs
    a, c = paths["A"], paths["C"]
    last = folds.folds[-1]
    assert _json(a, "folds.json") == _json(c, "folds.json")

    ma, mc = _json(a, "metrics.json"), _json(c, "metrics.json")
    for model, training in ma["training"].items():
        for k, fit in training["folds"].items():
            assert fit == mc["training"][model]["folds"][k], f"{model} fold {k} fitted differently"
        assert fit["fitted_sha256"]

    oa, oc = pl.read_parquet(a / "oof.parquet"), pl.read_parquet(c / "oof.parquet")
    pred = ["row", "timestamp", *(col for col in oa.columns if "_h" in col)]  # not the labels: the last rows
    before = pl.col("row") < last.test.start  # of the fold before look into the mirrored span
    assert oa.filter(before).select(pred).equals(oc.filter(before).select(pred)), "OOF rows of earlier folds moved"
    inside = pl.col("row") >= last.test.start
    pred = pred[2:]
    moved = [col for col in pred if not oa.filter(inside)[col].equals(oc.filter(inside)[col])]
    assert moved == pred, f"the last fold's OOF predictions did not move for {sorted(set(pred) - set(moved))}"
