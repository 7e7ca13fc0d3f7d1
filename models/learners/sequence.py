"""What the sequence models (LSTM, TFT) share: windows, train-only normalisation, the training loop, the
safetensors + ``{name}_meta.json`` format.

- A row's window is the last ``window`` feature rows up to and including it, never crossing the start of its
  contiguous stretch (``Dataset.segment_start``); shorter windows are left-padded with their first row.
  Windows read features of earlier rows only, never labels.
- Normalisation (mean/std per feature) is fitted on the fitting rows only and stored in the meta file.
- Training: AdamW, gradient clipping, masked BCE (or focal) over all
  horizons, early stopping on the inner slice's loss or AUC (``early_stop_metric``) with patience, a minimum
  number of epochs and best-epoch restore; the head with the best inner-slice AUC is recorded.
- CUDA with bf16 autocast when a GPU answers, the normalised features and labels held on the device for the fit
  (pinned host batches where augmentations draw on the CPU); CPU otherwise. Seeds fixed.
- A net with a per-bar encoder (``encode_bars`` / ``from_bars``: the TFT's variable selection) gets each batch as
  its distinct bars plus their positions in the windows, so a bar shared by many windows is encoded once (the
  same numbers as whole windows in eval mode, which the ONNX export keeps; in training a bar's dropout mask is
  then shared by its windows). Measured on one real fold: about 12 % of a TFT fit on CPU.
- Progress: ``model.on_epoch`` (an optional plain attribute, never a parameter: it enters no cache key and no
  saved model) is called after every epoch with an :class:`EpochInfo`; its last call has ``last=True``. It only
  observes (it draws no random numbers of the fit), so a fit gives the same model with or without it; an error
  it raises is logged once and the fit goes on without it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from sklearn.metrics import roc_auc_score
from torch import nn

from macd_ml.artifacts.store import read_json, write_json
from macd_ml.features.segments import window_index
from macd_ml.models.learners.base import Dataset, Model, Rows
from macd_ml.models.learners.device import configure_torch_threads, torch_device
from macd_ml.models.learners.params import SequenceParams

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- data


def fit_normaliser(X: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = X[rows].mean(axis=0, dtype=np.float64)
    std = X[rows].std(axis=0, dtype=np.float64)
    std = np.where(std > 1e-12, std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


def normalise(X: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return np.clip((X - mean) / std, -8.0, 8.0).astype(np.float32)


def _time_warp(x: torch.Tensor, max_stretch: float, gen: torch.Generator) -> torch.Tensor:
    """Resample each window on a randomly stretched time axis that still ends at the current bar."""
    b, length, _ = x.shape
    s = 1.0 + (torch.rand(b, 1, generator=gen, device="cpu") * 2 - 1) * max_stretch
    pos = torch.arange(length, dtype=torch.float32)[None, :]
    src = (length - 1) - (length - 1 - pos) * s  # last position stays at length-1
    src = src.clamp(0, length - 1)
    lo = src.floor().long()
    hi = (lo + 1).clamp(max=length - 1)
    w = (src - lo.float()).unsqueeze(-1).to(x.device)
    lo, hi = lo.to(x.device), hi.to(x.device)
    gather = lambda i: torch.gather(x, 1, i.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # noqa: E731
    return gather(lo) * (1 - w) + gather(hi) * w


def masked_loss(logits: torch.Tensor, y: torch.Tensor, kind: str, gamma: float) -> torch.Tensor:
    mask = ~torch.isnan(y)
    target = torch.nan_to_num(y, nan=0.0)
    bce = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if kind == "focal":
        p = torch.sigmoid(logits)
        pt = torch.where(target > 0.5, p, 1 - p)
        bce = bce * (1 - pt).pow(gamma)
    return (bce * mask).sum() / mask.sum().clamp(min=1)


def head_aucs(y: np.ndarray, p: np.ndarray) -> list[float]:
    """Per horizon (column): the AUC on rows with a defined label; 0.5 for a horizon with one class."""
    scores = []
    for j in range(y.shape[1]):
        ok = ~np.isnan(y[:, j])
        yj = y[ok, j]
        scores.append(float(roc_auc_score(yj, p[ok, j])) if ok.sum() > 1 and 0 < yj.mean() < 1 else 0.5)
    return scores


@dataclass(frozen=True)
class EpochInfo:
    """What ``SequenceModel.on_epoch`` receives after each epoch (1-based, at most ``max_epochs``)."""

    epoch: int
    max_epochs: int
    train_loss: float  # mean training loss over the epoch's batches
    early_stop_loss: float  # BCE on the inner (early-stopping) slice after the epoch
    best_epoch: int  # the best epoch so far (the one restored at the end)
    best_loss: float  # its early-stop loss
    early_stop_auc: float | None = None  # mean AUC on the inner slice (early_stop_metric = "auc")
    stopped_early: bool = False  # early stopping ends the fit after this epoch
    last: bool = False  # no epoch follows (``epoch == max_epochs`` or ``stopped_early``)


EpochCallback = Callable[[EpochInfo], None]


# --------------------------------------------------------------------------------------------- model


# torch's RNG is process-global: two fits in two threads drawing from it would interleave in an order that changes
# run to run. So a fit draws its initial weights under this lock (a few ms), and everything random afterwards
# (dropout masks, batch order, augmentation) from its own generators: fits run side by side, each reproducible.
_INIT_LOCK = threading.Lock()


class SeededDropout(nn.Module):
    """``nn.Dropout`` whose masks come from ``generator`` (the fit's own) instead of torch's process-global RNG.
    With no generator it uses the global one; in eval mode it is the identity (and exports to ONNX as nothing)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.generator: torch.Generator | None = None  # set by SequenceModel._build; not part of the state dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        # rand < keep: the same Bernoulli draw as ``bernoulli_``, about twice as fast on CPU
        keep = torch.rand(x.shape, generator=self.generator, device=x.device, dtype=x.dtype) < 1 - self.p
        return x * keep / (1 - self.p)


class SequenceModel(Model):
    """Base for torch sequence classifiers; subclasses provide ``build_net``."""

    name: ClassVar[str]
    Params: ClassVar[type[SequenceParams]] = SequenceParams
    params: SequenceParams

    def __init__(self, params: SequenceParams, feature_names: list[str], horizons: list[int]):
        super().__init__(params, feature_names, horizons)
        self.net: nn.Module | None = None
        self.mean = np.zeros(len(feature_names), np.float32)
        self.std = np.ones(len(feature_names), np.float32)
        self.best_head: int | None = None
        self.epochs_run = 0
        self.on_epoch: EpochCallback | None = None  # progress only: not a parameter, never saved

    def build_net(self) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def is_fitted(self) -> bool:
        return self.net is not None

    # -- training

    def _shares_bars(self, training: bool) -> bool:
        """Whether a batch goes in as its distinct bars plus an index (the net encodes each bar once, see
        ``encode_bars``) rather than as windows. Not with augmentations: they change a bar per window."""
        if not hasattr(self._module(), "encode_bars"):
            return False
        p = self.params
        return not training or (p.augment_time_warp == 0 and p.augment_noise == 0)

    def _batches(
        self, Xn: np.ndarray | torch.Tensor, rows: np.ndarray, seg: np.ndarray, order: np.ndarray, share: bool
    ):
        """``(rows, input)`` per batch of ``order``: input is the (B, L, F) windows, or with ``share`` a pair
        (distinct bars (U, F), their (B, L) positions in the windows): the same windows, each bar once.

        ``Xn`` is the normalised feature matrix: a numpy array (windows gathered on the CPU), or a tensor already
        on the GPU (:meth:`_on_device`): then only the batch's row indices travel and the gather runs there, instead
        of copying every bar ``window`` times per batch from host memory."""
        bs = self.params.batch_size
        if isinstance(Xn, torch.Tensor):
            dev = Xn.device

            def gather(i: np.ndarray) -> torch.Tensor:
                return Xn[torch.from_numpy(i).to(dev, non_blocking=True)]

            def index(i: np.ndarray) -> torch.Tensor:
                return torch.from_numpy(i).to(dev, non_blocking=True)
        else:

            def gather(i: np.ndarray) -> torch.Tensor:
                return torch.from_numpy(Xn[i])

            def index(i: np.ndarray) -> torch.Tensor:
                return torch.from_numpy(i)

        for k in range(0, len(order), bs):
            r = rows[order[k : k + bs]]
            idx = window_index(r, seg, self.params.window)
            if share:
                bars, where = np.unique(idx, return_inverse=True)
                yield r, (gather(bars), index(where.reshape(idx.shape)))
            else:
                yield r, gather(idx)

    @staticmethod
    def _on_device(Xn: np.ndarray, device: str) -> np.ndarray | torch.Tensor:
        """The feature matrix where the batches are gathered: kept on the GPU for a CUDA fit (a few MB), as is on
        the CPU."""
        return Xn if device == "cpu" else torch.from_numpy(Xn).to(device)

    def _module(self) -> nn.Module:
        if self.net is None:
            self.check_fitted()
        assert self.net is not None
        return self.net

    def _forward(self, xb, device: str) -> torch.Tensor:
        net = self._module()

        def run() -> torch.Tensor:
            if isinstance(xb, tuple):  # distinct bars + where they sit in the windows (``_batches``)
                bars, where = xb
                encoder: Any = net  # a net with encode_bars / from_bars (``_shares_bars``)
                return encoder.from_bars(encoder.encode_bars(bars)[where])
            return net(xb)

        if device == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return run().float()
        return run()

    @staticmethod
    def _to(xb, device: str, pin: bool = False):
        if device == "cpu":
            return xb
        if isinstance(xb, torch.Tensor) and xb.device.type != "cpu":  # gathered on the device already
            return xb
        if isinstance(xb, tuple):
            return tuple(SequenceModel._to(t, device, pin) for t in xb)
        return (xb.pin_memory() if pin else xb).to(device, non_blocking=True)

    def predict_logits(
        self, Xn: np.ndarray | torch.Tensor, rows: np.ndarray, seg: np.ndarray, device: str
    ) -> np.ndarray:
        self._module().eval()
        out = []
        with torch.no_grad():
            for _, xb in self._batches(Xn, rows, seg, np.arange(len(rows)), self._shares_bars(training=False)):
                xb = self._to(xb, device)
                out.append(self._forward(xb, device).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.horizons)), np.float32)

    def _build(self, device: str) -> nn.Module:
        """The initial net for this seed, its dropout wired to a generator of its own (see ``_INIT_LOCK``)."""
        with _INIT_LOCK:
            torch.manual_seed(self.params.seed)
            net = self.build_net()
        dropout_gen = torch.Generator(device=device).manual_seed(self.params.seed + 1)
        for module in net.modules():
            if isinstance(module, SeededDropout):
                module.generator = dropout_gen
        return net.to(device)

    def fit(self, data: Dataset, fit_rows: Rows, early_stop_rows: Rows) -> "SequenceModel":
        p: SequenceParams = self.params
        t0 = time.perf_counter()
        configure_torch_threads()
        device = torch_device(p.device)
        np_rng = np.random.default_rng(p.seed)
        gen = torch.Generator().manual_seed(p.seed)

        X = data.columns(self.feature_names)
        fit_idx = fit_rows.idx
        if p.max_train_rows and len(fit_idx) > p.max_train_rows:  # the latest rows by time (pooled rows too)
            ts = data.timestamps if data.timestamps is not None else np.arange(data.n_rows)
            fit_idx = np.sort(fit_idx[np.argsort(ts[fit_idx], kind="stable")[-p.max_train_rows :]])
        # rows with at least one defined label
        fit_idx = fit_idx[~np.isnan(data.labels[fit_idx]).all(axis=1)]
        es_idx = early_stop_rows.idx[~np.isnan(data.labels[early_stop_rows.idx]).all(axis=1)]
        self.mean, self.std = fit_normaliser(X, fit_idx)
        Xn = normalise(X, self.mean, self.std)
        seg = data.segment_start
        Y = torch.from_numpy(data.labels.astype(np.float32))
        # on a GPU without augmentations (they draw on the CPU) features and labels live on the device for the fit
        augment = p.augment_time_warp > 0 or p.augment_noise > 0
        X_dev = Xn if augment else self._on_device(Xn, device)
        Y_dev = Y if augment or device == "cpu" else Y.to(device)

        self.net = self._build(device)
        # fused: one kernel per step instead of a dozen small ops per parameter (same update rule)
        opt = torch.optim.AdamW(self.net.parameters(), lr=p.lr, weight_decay=p.weight_decay, fused=True)
        share = self._shares_bars(training=True)
        es_y = data.labels[es_idx]
        # higher is better for both: the negated loss, or the AUC
        best_score, best_loss, best_state, best_epoch, bad = -np.inf, float("inf"), None, 0, 0
        history = []
        on_epoch = self.on_epoch
        for epoch in range(1, p.max_epochs + 1):
            self.net.train()
            order = np_rng.permutation(len(fit_idx))
            # summed on the device: no sync per batch
            total, count = torch.zeros((), dtype=torch.float64, device=device), 0
            for r, xb in self._batches(X_dev, fit_idx, seg, order, share):
                if p.augment_time_warp > 0:
                    xb = _time_warp(xb, p.augment_time_warp, gen)
                if p.augment_noise > 0:
                    xb = xb + torch.randn(xb.shape, generator=gen) * p.augment_noise
                xb = self._to(xb, device, pin=True)
                yb = Y_dev[r if Y_dev.device.type == "cpu" else torch.from_numpy(r).to(device)].to(device)
                loss = masked_loss(self._forward(xb, device), yb, p.loss, p.focal_gamma)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(self.net.parameters(), p.grad_clip, foreach=True)
                opt.step()
                total += loss.detach() * len(r)
                count += len(r)
            es_logits = self.predict_logits(X_dev, es_idx, seg, device)
            es_loss = float(masked_loss(torch.from_numpy(es_logits), Y[es_idx], "bce", 0.0))
            es_auc = float(np.mean(head_aucs(es_y, es_logits))) if p.early_stop_metric == "auc" else None
            score = -es_loss if es_auc is None else es_auc
            history.append({"epoch": epoch, "train_loss": total.item() / max(count, 1), "early_stop_loss": es_loss})
            if es_auc is not None:
                history[-1]["early_stop_auc"] = es_auc
            if score > best_score + 1e-6:
                best_score, best_loss, best_epoch, bad = score, es_loss, epoch, 0
                best_state = {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}
            else:
                bad += 1
            stop = bad >= p.patience and epoch >= p.min_epochs
            if on_epoch is not None:
                info = EpochInfo(
                    epoch=epoch,
                    max_epochs=p.max_epochs,
                    train_loss=history[-1]["train_loss"],
                    early_stop_loss=es_loss,
                    best_epoch=best_epoch,
                    best_loss=best_loss,
                    early_stop_auc=es_auc,
                    stopped_early=stop,
                    last=stop or epoch == p.max_epochs,
                )
                try:
                    on_epoch(info)
                except Exception:  # progress must never fail a fit
                    log.warning(
                        "%s: the per-epoch progress callback failed; going on without it", self.name, exc_info=True
                    )
                    on_epoch = None
            if stop:
                break
        self.epochs_run = len(history)
        assert best_state is not None  # the first epoch always improves on -inf
        self.net.load_state_dict(best_state)  # best-epoch restore
        self.net.to("cpu").eval()
        es_prob = 1 / (1 + np.exp(-self.predict_logits(Xn, es_idx, seg, "cpu")))
        head_auc = {str(h): a for h, a in zip(self.horizons, head_aucs(es_y, es_prob))}
        self.best_head = int(max(self.horizons, key=lambda h: head_auc[str(h)]))
        self.info.best_iteration = {str(h): best_epoch for h in self.horizons}
        self.info.device = device
        self.info.seconds = time.perf_counter() - t0
        self.info.extra = {
            "epochs_run": self.epochs_run,
            "best_epoch": best_epoch,
            "early_stop_loss": best_loss,
            "head_auc_early_stop": head_auc,
            "best_head": self.best_head,
            "history": history,
            "precision": "bf16-autocast" if device == "cuda" else "fp32",
        }
        return self

    def predict(self, data: Dataset, rows: Rows) -> np.ndarray:
        self.check_fitted()
        Xn = normalise(data.columns(self.feature_names), self.mean, self.std)
        logits = self.predict_logits(Xn, rows.idx, data.segment_start, "cpu")
        return 1 / (1 + np.exp(-logits.astype(np.float64)))

    # -- persistence

    def describe(self) -> dict:
        d = super().describe()
        d.update(
            {
                "window": self.params.window,
                "normalisation": {"mean": self.mean.tolist(), "std": self.std.tolist(), "fitted_on": "fit rows only"},
                "best_head": self.best_head,
                "epochs": self.epochs_run,
            }
        )
        return d

    def save(self, folder: Path) -> list[Path]:
        self.check_fitted()
        folder.mkdir(parents=True, exist_ok=True)
        weights = folder / f"{self.name}.safetensors"
        save_file({k: v.contiguous() for k, v in self._module().state_dict().items()}, str(weights))
        meta = folder / f"{self.name}_meta.json"
        write_json(meta, self.describe())
        return [weights, meta]

    @classmethod
    def load(cls, folder: Path) -> "SequenceModel":
        meta = read_json(folder / f"{cls.name}_meta.json")
        m = cls(cls.Params.model_validate(meta["params"]), meta["feature_names"], meta["horizons"])
        m.mean = np.asarray(meta["normalisation"]["mean"], np.float32)
        m.std = np.asarray(meta["normalisation"]["std"], np.float32)
        m.best_head = meta["best_head"]
        m.epochs_run = meta["epochs"]
        m.info.best_iteration = meta["best_iteration"]
        m.info.device = meta["device"]
        m.net = m.build_net()
        m.net.load_state_dict(load_file(str(folder / f"{cls.name}.safetensors")))
        m.net.eval()
        return m
