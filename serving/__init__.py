"""What a trading bot imports: verified bundles and scoring (``from macd_ml.serving import Scorer``).

Everything lives under ``macd_ml``, so a bot with its own ``models`` or ``features`` package keeps them."""

from macd_ml.serving.bundle import Bundle, BundleError, open_bundle, read_bundle
from macd_ml.serving.scorer import BarScore, InsufficientData, Scorer

__all__ = ["BarScore", "Bundle", "BundleError", "InsufficientData", "Scorer", "open_bundle", "read_bundle"]
