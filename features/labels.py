"""Multi-horizon direction labels: y_h(t) = 1 if close(t + h hours) > close(t) else 0.

The future bar is looked up by time, not by row, so a missing bar never shifts a label onto the wrong hour.
A label is undefined (null) when the bar at t + h is missing, when it lies past the end of the data, or when a
gap longer than the tolerance lies between t and t + h. With a dead-zone of d bps, rows whose |log return| is
below d bps are left unlabelled for that horizon (too small a move to call).
"""

from __future__ import annotations

import polars as pl

from macd_ml.artifacts import catalog
from macd_ml.features.segments import segment_ids


def label_name(h: int) -> str:
    return catalog.label_column(h)


def fwd_return_name(h: int) -> str:
    return f"fwd_ret_{h}"


def make_labels(
    candles: pl.DataFrame,
    horizons: list[int],
    *,
    dead_zone_bps: float = 0.0,
    gap_tolerance_hours: int = 1,
) -> pl.DataFrame:
    """Return timestamp + ``y_h`` (Int8, null where undefined) + ``fwd_ret_h`` (log return) for each horizon."""
    if dead_zone_bps < 0:
        raise ValueError("dead_zone_bps must be >= 0")
    base = candles.select(catalog.TIMESTAMP, "close").with_columns(
        segment_ids(candles[catalog.TIMESTAMP], gap_tolerance_hours)
    )
    out = base
    for h in horizons:
        fut = base.select(
            (pl.col(catalog.TIMESTAMP) - pl.duration(hours=h)).alias(catalog.TIMESTAMP),
            pl.col("close").alias("_fc"),
            pl.col("segment").alias("_fs"),
        )
        out = out.join(fut, on=catalog.TIMESTAMP, how="left")
        valid = pl.col("_fc").is_not_null() & (pl.col("_fs") == pl.col("segment"))
        r = (pl.col("_fc") / pl.col("close")).log()
        y = pl.when(valid & (r.abs() * 1e4 >= dead_zone_bps))
        out = out.with_columns(
            y.then((r > 0).cast(pl.Int8)).otherwise(None).alias(label_name(h)),
            pl.when(valid).then(r).otherwise(None).alias(fwd_return_name(h)),
        ).drop("_fc", "_fs")
    return out.drop("close", "segment")


def align_labels(features: pl.DataFrame, labels: pl.DataFrame) -> pl.DataFrame:
    """The labels of exactly the feature table's rows, in its order (a row without a label gets nulls)."""
    return features.select(catalog.TIMESTAMP).join(labels, on=catalog.TIMESTAMP, how="left", maintain_order="left")
