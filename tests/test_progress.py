"""Per-epoch progress of the sequence models: the model's callback (observes only: results bit-identical), the
console lines / terminal bar, the Prefect progress artifact, and errors that never fail a fit."""

from __future__ import annotations

import io
import logging
import re
import threading
from uuid import UUID, uuid4

import numpy as np
import pytest
import torch

from macd_ml.models.learners.base import Rows
from macd_ml.models.learners.registry import make_model, select_features
from macd_ml.models.learners.sequence import EpochInfo
from macd_ml.models.learners.train import train_fold
from macd_ml.tasks import progress as progress_mod
from macd_ml.tasks.progress import EpochProgress, artifact_key, attach_progress, epoch_line
from tests.modelutil import HORIZONS, fast_config, synthetic_dataset

TINY = {"max_epochs": 3, "max_train_rows": 1_500, "hidden": 8, "window": 16}


def _lstm(data, **params):
    cfg = fast_config(lstm={**TINY, **params})
    names = select_features(data.feature_names, cfg.feature_set("lstm"))
    return make_model("lstm", cfg.params_for("lstm"), names, HORIZONS), cfg


def _fit_predict(callback=None, **params):
    _, data, folds = synthetic_dataset()
    model, cfg = _lstm(data, **params)
    model.on_epoch = callback
    train_fold(model, data, folds.folds[0], collapse_std=cfg.collapse_std)
    rows = Rows.span(folds.holdout.start, folds.holdout.start + 300)
    return model, model.predict(data, rows)


def _info(epoch: int, max_epochs: int = 4, *, stopped: bool = False, last: bool | None = None) -> EpochInfo:
    return EpochInfo(
        epoch=epoch,
        max_epochs=max_epochs,
        train_loss=0.69123,
        early_stop_loss=0.693,
        best_epoch=max(epoch - 1, 1),
        best_loss=0.6925,
        stopped_early=stopped,
        last=stopped or epoch == max_epochs if last is None else last,
    )


# ------------------------------------------------------------------------------------------------- model


def test_callback_observes_only_results_bit_identical():
    calls: list[EpochInfo] = []
    plain, p0 = _fit_predict()
    observed, p1 = _fit_predict(calls.append)
    np.testing.assert_array_equal(p0, p1)
    s0, s1 = plain._module().state_dict(), observed._module().state_dict()
    assert all(torch.equal(s0[k], s1[k]) for k in s0)
    assert plain.info.extra["history"] == observed.info.extra["history"]
    assert "on_epoch" not in plain.describe() and "on_epoch" not in plain.describe()["params"]

    epochs = [c.epoch for c in calls]
    assert epochs == list(range(1, len(calls) + 1)) and len(calls) == observed.epochs_run
    assert all(c.max_epochs == TINY["max_epochs"] and c.epoch <= c.max_epochs for c in calls)
    assert [c.last for c in calls] == [False] * (len(calls) - 1) + [True]
    last = calls[-1]
    assert last.epoch == observed.epochs_run and last.best_epoch == observed.info.extra["best_epoch"]
    assert last.stopped_early == (last.epoch < last.max_epochs)
    history = observed.info.extra["history"]
    assert [c.train_loss for c in calls] == [h["train_loss"] for h in history]
    assert [c.early_stop_loss for c in calls] == [h["early_stop_loss"] for h in history]


def test_early_stop_marks_the_last_call():
    """A learning rate too small to move the early-stop loss: patience 1 ends the fit after epoch 2."""
    calls: list[EpochInfo] = []
    model, _ = _fit_predict(calls.append, max_epochs=5, patience=1, lr=1e-12)
    assert [c.epoch for c in calls] == [1, 2] == list(range(1, model.epochs_run + 1))
    assert [(c.last, c.stopped_early) for c in calls] == [(False, False), (True, True)]
    assert calls[-1].best_epoch == 1


def test_a_failing_callback_never_fails_the_fit(caplog):
    n = 0

    def boom(info: EpochInfo) -> None:
        nonlocal n
        n += 1
        raise RuntimeError("progress API down")

    _, p0 = _fit_predict()
    with caplog.at_level("WARNING"):
        _, p1 = _fit_predict(boom)
    np.testing.assert_array_equal(p0, p1)
    assert n == 1  # dropped after its first error
    assert caplog.text.count("progress callback failed") == 1


def test_attach_progress_only_for_sequence_models():
    _, data, _ = synthetic_dataset()
    model, _ = _lstm(data)
    assert isinstance(attach_progress(model, "lstm fold 0"), EpochProgress) and model.on_epoch is not None
    lgb = make_model("lgb", fast_config().params_for("lgb"), data.feature_names, HORIZONS)
    assert attach_progress(lgb, "lgb fold 0") is None


# ------------------------------------------------------------------------------------------------- console


def test_plain_lines_when_stderr_is_not_a_terminal(capsys):
    progress = EpochProgress("lstm fold 2", artifact=False)
    for e in (1, 2, 3):
        progress(_info(e, 20, stopped=e == 3))
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    assert err.splitlines() == [
        "lstm fold 2: epoch 1/20 train 0.6912 early-stop 0.6930",
        "lstm fold 2: epoch 2/20 train 0.6912 early-stop 0.6930",
        "lstm fold 2: epoch 3/20 train 0.6912 early-stop 0.6930 stopped early (best epoch 2)",
    ]
    progress = EpochProgress("tft refit", artifact=False)
    progress(_info(4, 4))
    assert capsys.readouterr().err == "tft refit: epoch 4/4 train 0.6912 early-stop 0.6930 done (best epoch 3)\n"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_one_redrawn_bar_on_a_terminal():
    out = _Terminal()
    progress = EpochProgress("lstm fold 2", artifact=False, stream=out)
    for e in (1, 2):
        progress(_info(e, 4))
    assert "\n" not in out.getvalue() and out.getvalue().count("\r") == 2
    progress(_info(4, 4))
    text = out.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1
    frames = [f.removeprefix("\x1b[2K") for f in text.rstrip("\n").split("\r")[1:]]
    assert frames[0] == "lstm fold 2 [#####---------------] epoch 1/4 train 0.6912 early-stop 0.6930"
    assert frames[-1].startswith("lstm fold 2 [####################] epoch 4/4 ") and "done" in frames[-1]


def test_lines_of_threads_never_mix():
    out = io.StringIO()

    def fit(k: int) -> None:
        p = EpochProgress(f"lstm fold {k}", artifact=False, stream=out)
        for e in range(1, 51):
            p(_info(e, 50))

    threads = [threading.Thread(target=fit, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = out.getvalue().splitlines()
    pattern = re.compile(r"lstm fold \d: epoch \d+/50 train 0\.6912 early-stop 0\.6930( done \(best epoch 49\))?")
    assert len(lines) == 200 and all(pattern.fullmatch(line) for line in lines)


def test_artifact_keys_are_valid():
    assert artifact_key("lstm fold 2") == "macd-ml-lstm-fold2-progress"
    assert artifact_key("tft refit") == "macd-ml-tft-refit-progress"
    assert artifact_key("LGB_cross fold 10") == "macd-ml-lgb-cross-fold10-progress"
    assert epoch_line("x", _info(1, 2)) == "x: epoch 1/2 train 0.6912 early-stop 0.6930"


# ------------------------------------------------------------------------------------------------- Prefect


@pytest.fixture
def fresh_warning(monkeypatch, caplog):
    monkeypatch.setattr(progress_mod, "_warned", threading.Event())
    caplog.set_level(logging.DEBUG, logger="prefect.macd_ml.progress")
    return caplog


def test_artifact_errors_are_logged_once_and_never_raise(monkeypatch, fresh_warning):
    import prefect.artifacts

    def down(*args, **kwargs):
        raise ConnectionError("no API")

    monkeypatch.setattr(progress_mod, "_in_run", lambda: True)
    monkeypatch.setattr(prefect.artifacts, "create_progress_artifact", down)
    out = io.StringIO()
    a = EpochProgress("lstm fold 0", stream=out)
    b = EpochProgress("lstm fold 1", stream=out)
    for e in (1, 2):
        a(_info(e, 2))
        b(_info(e, 2))
    assert len(out.getvalue().splitlines()) == 4  # the console goes on
    warnings = [r for r in fresh_warning.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no API" in warnings[0].getMessage()

    # created, then the updates fail: one message, no more tries
    monkeypatch.setattr(progress_mod, "_warned", threading.Event())
    fresh_warning.clear()
    updates = 0

    def update_down(*args, **kwargs):
        nonlocal updates
        updates += 1
        raise TimeoutError("API gone")

    monkeypatch.setattr(prefect.artifacts, "create_progress_artifact", lambda **kw: uuid4())
    monkeypatch.setattr(prefect.artifacts, "update_progress_artifact", update_down)
    c = EpochProgress("tft refit", stream=out)
    for e in (1, 2, 3):
        c(_info(e, 3))
    assert updates == 1
    assert [r.levelno for r in fresh_warning.records] == [logging.WARNING]


@pytest.mark.parametrize(("every_s", "expected"), [(3600.0, [100.0]), (0.0, [25.0, 50.0, 75.0, 100.0])])
def test_artifact_updates_are_throttled_but_the_last_always_sent(monkeypatch, every_s, expected):
    """Fast epochs send no API call each: at most one update per ``ARTIFACT_EVERY_S``, and always the last."""
    import prefect.artifacts

    sent: list[float] = []
    monkeypatch.setattr(progress_mod, "_in_run", lambda: True)
    monkeypatch.setattr(progress_mod, "ARTIFACT_EVERY_S", every_s)
    monkeypatch.setattr(prefect.artifacts, "create_progress_artifact", lambda **kw: uuid4())
    monkeypatch.setattr(
        prefect.artifacts, "update_progress_artifact", lambda _id, progress, **kw: sent.append(progress)
    )
    p = EpochProgress("tft fold 1", stream=io.StringIO())
    for e in (1, 2, 3, 4):
        p(_info(e, 4))
    assert sent == expected


def test_no_artifact_outside_a_run(monkeypatch):
    import prefect.artifacts

    def never(*args, **kwargs):
        raise AssertionError("no artifact call outside a run")

    monkeypatch.setattr(prefect.artifacts, "create_progress_artifact", never)
    monkeypatch.setattr(prefect.artifacts, "update_progress_artifact", never)
    p = EpochProgress("lstm fold 0", stream=io.StringIO())
    p(_info(1, 1))
    assert p.artifact_id is None


def test_progress_artifact_reaches_100_in_a_task(prefect_server):
    """A real (tiny) LSTM fit inside a task of a flow: its progress artifact ends at 100 %."""
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterId

    calls: list[EpochInfo] = []

    @task(cache_policy=NO_CACHE)
    def fit_lstm() -> str:
        _, data, folds = synthetic_dataset()
        model, cfg = _lstm(data, max_epochs=2)
        progress = attach_progress(model, "lstm fold 0")
        assert progress is not None and progress.artifact_id is not None
        inner = model.on_epoch
        assert inner is not None

        def spy(info: EpochInfo) -> None:
            calls.append(info)
            inner(info)

        model.on_epoch = spy
        train_fold(model, data, folds.folds[0], collapse_std=cfg.collapse_std)
        return str(progress.artifact_id)

    @flow
    def progress_flow() -> str:
        return fit_lstm()

    artifact_id = UUID(progress_flow())
    assert calls and calls[-1].last
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(id=ArtifactFilterId(any_=[artifact_id])))
    assert len(found) == 1
    art = found[0]
    assert art.type == "progress" and art.key == "macd-ml-lstm-fold0-progress"
    assert float(art.data) == 100.0
    assert art.task_run_id is not None and art.flow_run_id is not None
    assert art.description is not None and art.description.startswith(f"lstm fold 0: epoch {calls[-1].epoch}/2 ")
