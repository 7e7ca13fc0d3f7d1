"""The feature set, as one validated pydantic spec (part of the pipeline config and of the fingerprint)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class MacdParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    fast: int = Field(gt=0, description="fast EMA span (bars)")
    slow: int = Field(gt=0, description="slow EMA span (bars)")
    signal: int = Field(gt=0, description="signal-line EMA span (bars)")

    @model_validator(mode="after")
    def _fast_below_slow(self) -> "MacdParams":
        if self.fast >= self.slow:
            raise ValueError(f"MACD fast ({self.fast}) must be below slow ({self.slow})")
        return self

    @property
    def tag(self) -> str:
        return f"{self.fast}_{self.slow}_{self.signal}"


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
        description="MACD parameterisations; each gives line, signal, histogram (over price) and histogram over ATR",
    )
    return_windows: list[int] = Field(default=[1, 2, 3, 5, 8, 12, 24, 48, 96, 168], description="log-return windows")
    rsi_windows: list[int] = Field(default=[6, 14, 24], description="Wilder RSI periods")
    atr_window: int = Field(default=14, gt=0, description="ATR period (also normalises the MACD histogram)")
    vol_windows: list[int] = Field(default=[12, 24, 72, 168], description="realised-volatility windows")
    volume_z_windows: list[int] = Field(default=[24, 168], description="log-volume z-score windows")
    hl_windows: list[int] = Field(default=[24, 72, 168], description="distance from rolling high/low windows")
    calendar: bool = Field(default=True, description="hour-of-day and day-of-week (sin/cos)")
    corr_windows: list[int] = Field(default=[24, 168], description="cross block: rolling return correlation")
    beta_windows: list[int] = Field(default=[168], description="cross block: rolling beta of target on reference")
    rs_windows: list[int] = Field(default=[24, 168], description="cross block: relative strength windows")
    warmup_bars: int = Field(
        default=200,
        ge=0,
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
