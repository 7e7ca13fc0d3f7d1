"""A position size from the secondary model's probability (docs/trade-gate.md, "Sizing").

López de Prado's bet size from a probability: ``z = (q - 0.5) / sqrt(q (1 - q))``, size ``2 Phi(z) - 1`` (0 at
q = 0.5, rising towards 1), here mapped onto ``[min_size, max_size]``: every trade the gate takes gets at least
``min_size`` of a unit position, and never more than ``max_size``."""

from __future__ import annotations

import math

import numpy as np


def bet_size(q: np.ndarray, min_size: float, max_size: float) -> np.ndarray:
    q = np.clip(np.asarray(q, dtype=np.float64), 1e-6, 1 - 1e-6)
    z = (q - 0.5) / np.sqrt(q * (1 - q))
    phi = 0.5 * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2.0))) if z.size else z
    raw = np.clip(2.0 * phi - 1.0, 0.0, 1.0)
    return np.clip(min_size + (max_size - min_size) * raw, min_size, max_size)
