"""Choosing where to compute, at run time: CUDA when a device really answers, else CPU."""

from __future__ import annotations

import os
from functools import lru_cache


@lru_cache(maxsize=1)
def cuda_available() -> bool:
    """True only if a CUDA device accepts a tensor (a CUDA build of torch without a GPU says no here)."""
    if os.environ.get("MACD_ML_FORCE_CPU"):
        return False
    try:
        import torch

        if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
            return False
        torch.zeros(1, device="cuda").add_(1)
        return True
    except Exception:
        return False


def torch_device(prefer: str = "auto") -> str:
    """'cuda' or 'cpu'. ``prefer`` is 'auto', 'cpu' or 'cuda' (falls back to cpu with no GPU)."""
    if prefer == "cpu":
        return "cpu"
    return "cuda" if cuda_available() else "cpu"


def cores() -> int:
    """The cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def parallel_tasks() -> int:
    """How many training tasks run at once (``MACD_ML_PARALLEL_TASKS``; default: cores, at most 4)."""
    env = os.environ.get("MACD_ML_PARALLEL_TASKS")
    return max(1, int(env)) if env else max(1, min(4, cores()))


def cpu_threads() -> int:
    """Threads one training task may use, so that parallel tasks do not oversubscribe the cores
    (XGBoost and LightGBM slow down several-fold when they do)."""
    return max(1, cores() // parallel_tasks())


def configure_torch_threads() -> int:
    import torch

    n = cpu_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
