"""The base learners' parameter models, importable without LightGBM, XGBoost or torch: the run config, the UI form
and the CLI validate them before any training library is loaded (an unchanged run pays no import)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from macd_ml.features.form import OptionalRows, optional_field


class BoostingParams(BaseModel):
    """What both boosters share: step size, the round budget, early stopping on the inner slice, the seed."""

    model_config = ConfigDict(extra="forbid")

    learning_rate: float = Field(
        default=0.03, gt=0, le=1, title="Learning rate (boosting)", description="shrinkage per boosting round"
    )
    max_rounds: int = Field(default=600, ge=1, title="Most boosting rounds", description="most boosting rounds")
    early_stopping_rounds: int = Field(
        default=50,
        ge=1,
        title="Early-stopping patience (rounds)",
        description="stop after this many rounds without a better inner-slice loss",
    )
    # 50: at learning_rate 0.03 that is 1 - 0.97**50 ~ 78 % of a full step, enough to move off the base rate;
    # on the synthetic market at 3,000-6,000 h a floor of 50 scored best per fold (100 and 200 slightly worse).
    min_rounds: int = Field(
        default=50,
        ge=1,
        title="Fewest boosting rounds",
        description="fewest boosting rounds kept (capped at max_rounds): early stopping only looks for the best "
        "inner-slice loss from this round on, so a small, noisy inner slice cannot stop at a handful of trees",
    )
    seed: int = Field(default=0, title="Boosting seed", description="random seed (bagging, feature sampling)")


class LGBParams(BoostingParams):
    num_leaves: int = Field(default=15, ge=2, title="Leaves per tree", description="leaves per tree")
    min_data_in_leaf: int = Field(default=100, ge=1, title="Fewest rows per leaf", description="fewest rows in a leaf")
    feature_fraction: float = Field(
        default=0.7, gt=0, le=1, title="Feature share per tree", description="share of features each tree sees"
    )
    bagging_fraction: float = Field(
        default=0.8, gt=0, le=1, title="Row share per tree", description="share of rows each tree sees"
    )
    lambda_l2: float = Field(default=1.0, ge=0, title="L2 on leaf values", description="L2 penalty on leaf values")

    def min_fit_rows(self, name: str) -> tuple[int, str]:
        """Fewest labelled fitting rows with which the model can learn more than a constant, and why."""
        return 2 * self.min_data_in_leaf, f"two leaves of models.{name}.min_data_in_leaf={self.min_data_in_leaf}"


class PlainLGBParams(LGBParams):
    """The plain LightGBM's defaults: smaller, more regularised trees than ``LGBParams``'. Out of fold on all five
    real symbols they scored +0.004 ± 0.002 (5 h) and +0.005 ± 0.002 (12 h) AUC (bench/bench_defaults.py); the same
    change did nothing beyond noise for lgb_cross or (as depth 3) for XGBoost, which keep theirs."""

    num_leaves: int = Field(default=7, ge=2, title="Leaves per tree", description="leaves per tree")
    min_data_in_leaf: int = Field(default=200, ge=1, title="Fewest rows per leaf", description="fewest rows in a leaf")
    lambda_l2: float = Field(default=5.0, ge=0, title="L2 on leaf values", description="L2 penalty on leaf values")


class XGBParams(BoostingParams):
    max_depth: int = Field(default=4, ge=1, title="Deepest tree", description="deepest tree")
    min_child_weight: float = Field(
        default=20.0, ge=0, title="Smallest child hessian sum", description="smallest hessian sum in a child"
    )
    subsample: float = Field(
        default=0.8, gt=0, le=1, title="Row sample per tree", description="share of rows each tree sees"
    )
    colsample_bytree: float = Field(
        default=0.7, gt=0, le=1, title="Feature sample per tree", description="share of features each tree sees"
    )
    reg_lambda: float = Field(default=1.0, ge=0, title="L2 on leaf weights", description="L2 penalty on leaf weights")

    def min_fit_rows(self, name: str) -> tuple[int, str]:
        # a leaf needs a hessian sum >= min_child_weight; p(1-p) <= 1/4, so >= 4 * min_child_weight rows a leaf
        need = max(2, int(8 * self.min_child_weight))
        return need, f"two leaves of models.{name}.min_child_weight={self.min_child_weight} (4 rows per unit of weight)"


class SequenceParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    window: int = Field(default=48, ge=2, title="Input window (bars)", description="bars per input window")
    hidden: int = Field(default=32, ge=2, title="Hidden units", description="hidden units")
    dropout: float = Field(default=0.1, ge=0, lt=1, title="Dropout", description="dropout rate while training")
    lr: float = Field(default=1e-3, gt=0, title="Learning rate (AdamW)", description="AdamW learning rate")
    weight_decay: float = Field(default=1e-4, ge=0, title="Weight decay (AdamW)", description="AdamW weight decay")
    batch_size: int = Field(default=256, ge=8, title="Batch size (windows)", description="windows per training batch")
    max_epochs: int = Field(default=20, ge=1, title="Most epochs", description="most passes over the training rows")
    patience: int = Field(
        default=4,
        ge=1,
        title="Early-stopping patience (epochs)",
        description="stop after this many epochs without a better inner-slice score",
    )
    min_epochs: int = Field(
        default=1,
        ge=1,
        title="Fewest epochs",
        description="epochs always run before early stopping may end the fit",
    )
    early_stop_metric: Literal["loss", "auc"] = Field(
        default="loss",
        title="Early-stopping metric",
        description="what picks the best epoch on the inner slice: its BCE loss, or its AUC (mean over horizons, "
        "scored within the slice): a net whose ranking still improves while its loss rises keeps training",
    )
    grad_clip: float = Field(default=1.0, gt=0, title="Gradient norm clip", description="gradient norm clip")
    loss: Literal["bce", "focal"] = Field(
        default="bce", title="Training loss", description="training loss: binary cross-entropy or focal"
    )
    focal_gamma: float = Field(
        default=2.0, ge=0, title="Focal loss gamma", description="focal loss gamma (loss = focal only)"
    )
    augment_noise: float = Field(
        default=0.0,
        ge=0,
        title="Input noise (augmentation)",
        description="Gaussian noise std on normalised inputs (0 = off)",
    )
    augment_time_warp: float = Field(
        default=0.0, ge=0, lt=0.5, title="Time warp (augmentation)", description="max time-warp stretch (0 = off)"
    )
    max_train_rows: Annotated[OptionalRows, Field(title="Latest training rows only")] = optional_field(
        "fit on only the latest N rows of each training span; empty = all"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", title="Device", description="auto = CUDA (bf16 autocast) when a GPU answers, else CPU"
    )
    seed: int = Field(
        default=0, title="Network seed", description="random seed (initial weights, dropout, batch order)"
    )

    def min_fit_rows(self, name: str) -> tuple[int, str]:
        return max(100, 2 * self.window), "a few batches of windows"


class TFTParams(SequenceParams):
    # 24 bars, not the LSTM's 48: chosen out of fold on every real symbol (bench/bench_defaults.py): OOF AUC 24 vs
    # 48 bars +0.0001 ± 0.0024 at 5 h, -0.0014 ± 0.0034 at 12 h, -0.0044 ± 0.0065 at 24 h (mean over five symbols
    # ± SE), for about half the fit time: its per-bar variable selection is most of it.
    window: int = Field(default=24, ge=2, title="Input window (bars)", description="bars per input window")
    hidden: int = Field(default=16, ge=4, title="Model width (d_model)", description="model width (d_model)")
    heads: int = Field(default=4, ge=1, title="Attention heads", description="attention heads")
    # chosen out of fold on every real symbol (bench/bench_defaults.py): stopping on the inner
    # slice's loss ended the TFT at epoch 2 while its ranking still improved; on AUC, after at least 3 epochs,
    # its OOF AUC at 5 h rose on all five symbols (+0.010 ± 0.004 on average). The LSTM showed no such gain.
    min_epochs: int = Field(
        default=3, ge=1, title="Fewest epochs", description="epochs always run before early stopping may end the fit"
    )
    early_stop_metric: Literal["loss", "auc"] = Field(
        default="auc",
        title="Early-stopping metric",
        description="what picks the best epoch on the inner slice: its BCE loss, or its AUC (mean over horizons)",
    )
