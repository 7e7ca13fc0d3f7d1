"""The feature set, as one validated pydantic spec (part of the pipeline config and of the fingerprint)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class MacdParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    fast: int = Field(gt=0, title="MACD fast EMA (bars)", description="fast EMA span (bars)")
    slow: int = Field(gt=0, title="MACD slow EMA (bars)", description="slow EMA span (bars)")
    signal: int = Field(gt=0, title="MACD signal EMA (bars)", description="signal-line EMA span (bars)")

    @model_validator(mode="after")
    def _fast_below_slow(self) -> "MacdParams":
        if self.fast >= self.slow:
            raise ValueError(f"MACD fast ({self.fast}) must be below slow ({self.slow})")
        return self

    @property
    def tag(self) -> str:
        return f"{self.fast}_{self.slow}_{self.signal}"


# what the validators below enforce, in the JSON Schema the Prefect UI's form reads (refused at Submit)
WINDOWS: dict[str, Any] = {"items": {"type": "integer", "minimum": 1}}
RETURN_WINDOWS: dict[str, Any] = {**WINDOWS, "contains": {"const": 1}}


def _positive_sorted(v: list[int]) -> list[int]:
    if any(w <= 0 for w in v):
        raise ValueError("windows must be positive")
    return sorted(set(v))


class FeatureSpec(BaseModel):
    """Which features are built. Windows are in bars (hours)."""

    model_config = ConfigDict(extra="forbid")

    macd: list[MacdParams] = Field(
        default_factory=lambda: [
            MacdParams(fast=12, slow=26, signal=9),
            MacdParams(fast=8, slow=17, signal=9),
            MacdParams(fast=5, slow=35, signal=5),
            MacdParams(fast=24, slow=52, signal=18),
        ],
        title="MACD variants",
        description="MACD parameterisations; each gives line, signal, histogram (over price) and histogram over ATR",
    )
    return_windows: list[int] = Field(
        default=[1, 2, 3, 5, 8, 12, 24, 48, 96, 168],
        title="Return windows (bars)",
        description="log-return windows; must include 1",
        json_schema_extra=RETURN_WINDOWS,
    )
    rsi_windows: list[int] = Field(
        default=[6, 14, 24], title="RSI periods (bars)", description="Wilder RSI periods", json_schema_extra=WINDOWS
    )
    atr_window: int = Field(
        default=14, gt=0, title="ATR period (bars)", description="ATR period (also normalises the MACD histogram)"
    )
    vol_windows: list[int] = Field(
        default=[12, 24, 72, 168],
        title="Volatility windows (bars)",
        description="realised-volatility windows",
        json_schema_extra=WINDOWS,
    )
    volume_z_windows: list[int] = Field(
        default=[24, 168],
        title="Volume z-score windows (bars)",
        description="log-volume z-score windows",
        json_schema_extra=WINDOWS,
    )
    hl_windows: list[int] = Field(
        default=[24, 72, 168],
        title="High/low distance windows (bars)",
        description="distance from rolling high/low windows",
        json_schema_extra=WINDOWS,
    )
    calendar: bool = Field(default=True, title="Calendar features", description="hour-of-day and day-of-week (sin/cos)")
    corr_windows: list[int] = Field(
        default=[24, 168],
        title="Cross correlation windows (bars)",
        description="cross block: rolling return correlation",
        json_schema_extra=WINDOWS,
    )
    beta_windows: list[int] = Field(
        default=[168],
        title="Cross beta windows (bars)",
        description="cross block: rolling beta of target on reference",
        json_schema_extra=WINDOWS,
    )
    rs_windows: list[int] = Field(
        default=[24, 168],
        title="Relative strength windows (bars)",
        description="cross block: relative strength windows",
        json_schema_extra=WINDOWS,
    )
    warmup_bars: int = Field(
        default=200,
        ge=0,
        title="Warm-up bars per stretch",
        description="bars dropped at the start of every contiguous segment so recursive indicators settle",
    )

    _sorted = field_validator(
        "return_windows",
        "rsi_windows",
        "vol_windows",
        "volume_z_windows",
        "hl_windows",
        "corr_windows",
        "beta_windows",
        "rs_windows",
    )(_positive_sorted)

    @model_validator(mode="after")
    def _warmup_covers_windows(self) -> "FeatureSpec":
        longest = self.longest_window()
        if self.warmup_bars < longest:
            raise ValueError(f"warmup_bars ({self.warmup_bars}) must be >= the longest rolling window ({longest})")
        if 1 not in self.return_windows:
            raise ValueError("return_windows must include 1 (the 1-bar return feeds volatility and correlation)")
        return self

    def longest_window(self) -> int:
        groups = [
            self.return_windows,
            self.vol_windows,
            self.volume_z_windows,
            self.hl_windows,
            self.corr_windows,
            self.beta_windows,
            self.rs_windows,
        ]
        return max([max(g) for g in groups if g] + [1])
