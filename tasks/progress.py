"""Per-epoch progress of the sequence models (LSTM, TFT): a Prefect progress artifact and a console line.

The models stay free of Prefect: ``SequenceModel.on_epoch`` takes any callable; :class:`EpochProgress` is the
one the training tasks hand it (:func:`attach_progress`).

- **Prefect UI**: inside a task or flow run, one progress artifact per fit (key ``macd-ml-lstm-fold2-progress``,
  ``macd-ml-tft-refit-progress``; each run adds a version under the key), created at 0 % and moved to
  ``epoch / max_epochs`` after an epoch when the last update is at least ``ARTIFACT_EVERY_S`` old, and always to
  100 % on the last one (early stopping included); its description says the epoch and losses. (Epochs take well
  under a second on small data: an API call for each one cost the run more than it told the UI.) Outside a run
  nothing is sent (no ephemeral API is started for it).
- **Console** (stderr): one plain line per epoch, ``lstm fold 2: epoch 3/20 train 0.6912 early-stop 0.6930``,
  the last one ending with ``done`` or ``stopped early`` and the best epoch; when stderr is a terminal, one
  ``\\r``-redrawn bar per fit instead, ended by a newline after the last epoch. Writes hold a lock, so lines of
  fits in other threads never mix mid-line.

Progress never fails a fit: the first error from the artifact API (no API reachable, ...) is logged once, and
that fit sends no more artifact updates (the console keeps going); later failures of other fits are logged at
debug level. A console error is swallowed the same way.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from typing import TYPE_CHECKING, TextIO, cast
from uuid import UUID

from macd_ml.models.learners.base import Model

if TYPE_CHECKING:  # torch loads only when a sequence model is fitted
    from macd_ml.models.learners.sequence import EpochInfo

log = logging.getLogger("prefect.macd_ml.progress")

_console_lock = threading.Lock()
_warned = threading.Event()  # the artifact API's first failure is a warning, later ones (other fits) debug
_BAR_WIDTH = 20
ARTIFACT_EVERY_S = 2.0  # at most one progress-artifact update per fit this often, besides the last epoch's


def artifact_key(label: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) from a fit's label: ``lstm fold 2`` ->
    ``macd-ml-lstm-fold2-progress`` (the ``macd-ml-`` prefix as the report's artifacts)."""
    key = re.sub(r"fold (\d+)", r"fold\1", label.lower())
    key = re.sub(r"[^a-z0-9]+", "-", key).strip("-")
    return f"macd-ml-{key}-progress"


def epoch_line(label: str, info: EpochInfo) -> str:
    """The plain console line of one epoch."""
    line = (
        f"{label}: epoch {info.epoch}/{info.max_epochs} train {info.train_loss:.4f} "
        f"early-stop {info.early_stop_loss:.4f}"
    )
    if info.last:
        line += f" {'stopped early' if info.stopped_early else 'done'} (best epoch {info.best_epoch})"
    return line


def epoch_bar(label: str, info: EpochInfo, width: int = _BAR_WIDTH) -> str:
    """The one-line terminal bar of one epoch (no ``\\r`` or newline)."""
    fill = width if info.last else round(width * info.epoch / max(info.max_epochs, 1))
    bar = "#" * fill + "-" * (width - fill)
    return f"{label} [{bar}] {epoch_line(label, info)[len(label) + 2 :]}"


def percent(info: EpochInfo) -> float:
    return 100.0 if info.last else round(100.0 * info.epoch / max(info.max_epochs, 1), 2)


def _in_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return TaskRunContext.get() is not None or FlowRunContext.get() is not None


class EpochProgress:
    """An ``on_epoch`` callback: Prefect progress artifact (inside a run) + console output (``stream`` or, by
    default, ``sys.stderr`` as it is at each call)."""

    def __init__(
        self, label: str, *, artifact: bool = True, console: bool = True, stream: TextIO | None = None
    ) -> None:
        self.label = label
        self.key = artifact_key(label)
        self.console = console
        self.stream = stream
        self.artifact_id: UUID | None = None
        self._sent_at = time.monotonic()
        self._artifact_failed = not (artifact and _in_run())
        self._console_failed = False
        self._artifact(self._create)

    # -- Prefect

    def _create(self) -> None:
        from prefect.artifacts import create_progress_artifact

        # _sync: the blocking client even where an event loop runs in this thread (never a coroutine to await)
        created = create_progress_artifact(  # type: ignore[call-arg]
            progress=0.0, key=self.key, description=f"{self.label}: starting", _sync=True
        )
        self.artifact_id = cast(UUID, created)

    def _artifact(self, call) -> None:
        if self._artifact_failed:
            return
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - progress must never fail a fit
            self._artifact_failed = True
            level = logging.DEBUG if _warned.is_set() else logging.WARNING
            _warned.set()
            log.log(
                level,
                "%s: no progress artifact (%s: %s); the fit goes on without one",
                self.label,
                type(exc).__name__,
                exc,
            )

    def _update(self, info: EpochInfo) -> None:
        from prefect.artifacts import update_progress_artifact

        if self.artifact_id is None:
            return
        update_progress_artifact(  # type: ignore[call-arg]
            self.artifact_id, progress=percent(info), description=epoch_line(self.label, info), _sync=True
        )

    # -- console

    def _write(self, info: EpochInfo) -> None:
        stream = self.stream or sys.stderr
        try:
            tty = stream.isatty()
        except Exception:  # noqa: BLE001 - a closed or odd stream is not a terminal
            tty = False
        if tty:
            text = "\r\x1b[2K" + epoch_bar(self.label, info) + ("\n" if info.last else "")
        else:
            text = epoch_line(self.label, info) + "\n"
        with _console_lock:
            stream.write(text)
            stream.flush()

    def __call__(self, info: EpochInfo) -> None:
        now = time.monotonic()
        if info.last or now - self._sent_at >= ARTIFACT_EVERY_S:
            self._sent_at = now
            self._artifact(lambda: self._update(info))
        if self.console and not self._console_failed:
            try:
                self._write(info)
            except Exception:  # noqa: BLE001
                self._console_failed = True
                log.warning("%s: progress not written to the console", self.label, exc_info=True)


def attach_progress(model: Model, label: str) -> EpochProgress | None:
    """Report ``model``'s per-epoch progress as ``label`` (e.g. ``lstm fold 2``) if it is a sequence model;
    other models (GBDT fits take seconds) report nothing."""
    from macd_ml.models.learners.sequence import SequenceModel  # loaded already: ``model`` exists

    if not isinstance(model, SequenceModel):
        return None
    progress = EpochProgress(label)
    model.on_epoch = progress
    return progress
