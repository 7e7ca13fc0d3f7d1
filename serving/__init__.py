"""What a trading bot imports: verified bundles and scoring (``from macd_ml.serving import Scorer``).

Everything lives under ``macd_ml``, so a bot with its own ``models`` or ``features`` package keeps them. Names
load on first use (PEP 562), so ``macd_ml.serving.bundle`` alone (the CLI's bundle checks) does not import the
scorer's polars/onnx stack."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from macd_ml.serving.bundle import Bundle, BundleError, open_bundle, read_bundle
    from macd_ml.serving.scorer import BarScore, InsufficientData, Scorer

_WHERE = {
    "Bundle": "bundle",
    "BundleError": "bundle",
    "open_bundle": "bundle",
    "read_bundle": "bundle",
    "BarScore": "scorer",
    "InsufficientData": "scorer",
    "Scorer": "scorer",
}
__all__ = ["BarScore", "Bundle", "BundleError", "InsufficientData", "Scorer", "open_bundle", "read_bundle"]
assert sorted(__all__) == sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
