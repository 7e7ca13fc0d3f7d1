"""What the Scorer refuses to answer for, bar by bar (docs/bot-contract.md): a candle still forming, a model past
its age, a bar unlike anything the model was trained on.

- **Open candles.** Features at bar t are computed at its close; the exchange's newest row is usually the candle
  still forming. Only bars whose close (open time + 1 h) is at or before ``now`` are scored; the others are
  dropped, and the Scorer says which (``Scorer.last_dropped``).
- **Expired models.** A bundle carries the end of its run's data (``training_profile.json``, ``data_end``). A bar
  whose close is more than ``max_model_age_hours`` after that bar's close carries the flag ``expired`` and, with
  ``on_expired = "fallback"``, no probability (path ``none``, reason "model expired ..."). The age is measured at
  the bar, so a replay sees what the bot saw then. FreqAI calls this ``expiration_hours``; 0 turns it off.
- **Unfamiliar bars.** The bar's dissimilarity to the training rows (models/release/familiarity.py) above the
  bundle's threshold carries the flag ``unfamiliar`` and, with ``on_unfamiliar = "fallback"``, no probability.

Defaults come from the run's config (key ``serving``); a bot overrides them (``Scorer(..., serving={...})``,
``macd-ml predict --max-model-age ...``). Backtests of a bundle (serving/backtest.py, the walk-forward's track
record) only flag: they measure the model as it is, not the bot's fallbacks.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from macd_ml.artifacts import catalog
from macd_ml.models.release.familiarity import Familiarity, FamiliaritySpec

BAR = timedelta(hours=1)  # the candles' interval: a bar opened at t closes at t + BAR
EXPIRED = "expired"
UNFAMILIAR = "unfamiliar"
FLAGS = (EXPIRED, UNFAMILIAR)


class ServingSpec(BaseModel):
    """What the bot does with an old model and with a bar unlike the training data (config key ``serving``)."""

    model_config = ConfigDict(extra="forbid")

    max_model_age_hours: float = Field(
        default=72.0,
        ge=0.0,
        title="Model expires after (hours)",
        description="a bar scored more than this many hours after the end of the run's data is 'expired' "
        "(FreqAI's expiration_hours); 0 = never",
    )
    on_expired: Literal["fallback", "flag"] = Field(
        default="fallback",
        title="When the model has expired",
        description="fallback: an expired bar gets no probability (path none, reason 'model expired'); flag: it "
        "keeps its probability and carries the flag",
    )
    on_unfamiliar: Literal["flag", "fallback", "off"] = Field(
        default="flag",
        title="When a bar is unlike the training data",
        description="a bar more unlike the training rows than the threshold: flag it, give it no probability "
        "(fallback), or do not measure (off)",
    )
    unfamiliar: FamiliaritySpec = Field(
        default_factory=FamiliaritySpec,
        title="Measuring unlike the training data",
        description="how the run measures how unlike its training rows a bar is",
    )


ONLY_FLAG = ServingSpec(max_model_age_hours=0.0, on_expired="flag", on_unfamiliar="flag")


def split_open(frame: pl.DataFrame, now: datetime) -> tuple[pl.DataFrame, list[datetime]]:
    """The closed bars of a candle frame, and the open times of those still forming at ``now``."""
    closes = pl.col(catalog.TIMESTAMP) + pl.duration(hours=1)
    return frame.filter(closes <= now), frame.filter(closes > now)[catalog.TIMESTAMP].to_list()


class Guards:
    """A bundle's end of data and familiarity profile, with the serving policy."""

    def __init__(self, spec: ServingSpec, data_end: datetime | None, familiarity: Familiarity | None):
        self.spec = spec
        self.data_end = data_end
        self.familiarity = familiarity if spec.on_unfamiliar != "off" else None

    @classmethod
    def from_bundle(cls, bundle, spec: ServingSpec) -> Guards:
        """A bundle made before its run wrote a training profile has neither an age nor a familiarity profile:
        its bars carry no flag (``model_age_hours`` and ``dissimilarity`` are null)."""
        if catalog.TRAINING_PROFILE not in bundle.members:
            return cls(spec, None, None)
        doc = bundle.json(catalog.TRAINING_PROFILE)
        fam = None
        if catalog.TRAINING_REFERENCE in bundle.members:
            ref = bundle.frame(catalog.TRAINING_REFERENCE)  # verified with the bundle
            fam = Familiarity.from_json(
                doc,
                ref.select(doc["names"]).to_numpy().astype(np.float32),
                ref[catalog.TIMESTAMP].dt.epoch("us").to_numpy(),
            )
        return cls(spec, datetime.fromisoformat(doc["data_end"]), fam)

    def age_hours(self, bar: datetime) -> float | None:
        """Hours from the close of the run's newest bar to this bar's close (0 for that bar itself)."""
        if self.data_end is None:
            return None
        return round((bar - self.data_end).total_seconds() / 3600.0, 3)

    def dissimilarity(self, complete: pl.DataFrame, times: list[datetime]) -> dict[datetime, float]:
        """Each bar's dissimilarity (bars with a complete feature row; others have none)."""
        if self.familiarity is None or not complete.height:
            return {}
        rows = complete.filter(pl.col(catalog.TIMESTAMP).is_in(times))
        if not rows.height:
            return {}
        scores = self.familiarity.score(rows.select(self.familiarity.names).to_numpy())
        return {t: float(s) for t, s in zip(rows[catalog.TIMESTAMP].to_list(), scores) if np.isfinite(s)}

    def apply(self, bar, dissimilarity: float | None) -> None:
        """Set the bar's age, dissimilarity and flags; withhold its probability where the policy says fallback."""
        bar.model_age_hours = self.age_hours(bar.timestamp)
        bar.dissimilarity = None if dissimilarity is None else round(dissimilarity, 4)
        limit = self.spec.max_model_age_hours
        why = []
        if limit > 0 and bar.model_age_hours is not None and bar.model_age_hours > limit:
            bar.flags.append(EXPIRED)
            if self.spec.on_expired == "fallback":
                why.append(
                    f"model expired: its newest bar opened {self.data_end:%Y-%m-%d %H:%M} UTC, "
                    f"{bar.model_age_hours:g} h before this one (max_model_age_hours {limit:g})"
                )
        fam = self.familiarity
        if fam is not None and dissimilarity is not None and dissimilarity > fam.threshold:
            bar.flags.append(UNFAMILIAR)
            if self.spec.on_unfamiliar == "fallback":
                why.append(
                    f"bar unlike the training data: dissimilarity {dissimilarity:.3f} > threshold {fam.threshold:.3f}"
                )
        if why and bar.probabilities is not None:
            bar.probabilities, bar.path, bar.models, bar.base = None, "none", [], {}
            bar.reason = "; ".join(why) + "; its probabilities are withheld"
