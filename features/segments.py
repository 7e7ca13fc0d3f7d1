"""Contiguous stretches of an hourly series: the one rule for gaps (docs/data.md, "Running on your own candles", gaps).

A gap of more than ``gap_tolerance_hours`` missing hours starts a new segment; no indicator window, label or
sequence window crosses a segment start. Features and labels use :func:`segment_ids` (polars); sequence models
use :func:`segment_starts`, derived from the same ids, and :func:`window_index` to cut their windows.
"""

from __future__ import annotations

import numpy as np
import polars as pl

HOUR_US = 3_600_000_000  # one hour in microseconds, the unit of every timestamp here


def missing_hours(timestamps: pl.Series) -> pl.Series:
    """Hours missing before each bar (0 for the first bar and after an on-time bar)."""
    us = timestamps.dt.epoch("us")
    return (us.diff() // HOUR_US - 1).fill_null(0)


def segment_ids(timestamps: pl.Series, gap_tolerance_hours: int) -> pl.Series:
    """Number the contiguous stretches: a new segment starts after more than ``gap_tolerance_hours`` missing
    hours. Windows (features) and label look-ahead never cross segments."""
    return (missing_hours(timestamps) > gap_tolerance_hours).cast(pl.Int32).cum_sum().alias("segment")


def segment_starts(timestamps_us: np.ndarray, gap_tolerance_hours: int) -> np.ndarray:
    """For each row, the index of the first row of its segment (same rule as :func:`segment_ids`)."""
    n = len(timestamps_us)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    ts = pl.Series(np.asarray(timestamps_us, dtype=np.int64)).cast(pl.Datetime("us"))
    ids = segment_ids(ts, gap_tolerance_hours).to_numpy()
    new = np.concatenate([[True], ids[1:] != ids[:-1]])
    return np.maximum.accumulate(np.where(new, np.arange(n), 0)).astype(np.int64)


def window_index(rows: np.ndarray, segment_start: np.ndarray, window: int) -> np.ndarray:
    """(len(rows), window) row indices: the window ending at each row, clamped at its segment start."""
    offsets = np.arange(-(window - 1), 1, dtype=np.int64)
    idx = rows[:, None] + offsets[None, :]
    return np.maximum(idx, segment_start[rows][:, None])
