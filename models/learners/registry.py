"""The five base learners by their stable short names, their parameter models, and their feature sets, plus the
fixed reference model (models/learners/reference.py) that every run trains beside them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from macd_ml.models.learners.params import LGBParams, SequenceParams, TFTParams, XGBParams
from macd_ml.models.learners.reference import PARAMS as REFERENCE_PARAMS
from macd_ml.models.learners.reference import REFERENCE, reference_features

if TYPE_CHECKING:
    from macd_ml.models.learners.base import Model


def _load_classes() -> "dict[str, type[Model]]":
    # imports here, not at the top: see _ModelClasses. They stay import statements on purpose: the code version
    # of every module that uses the registry (artifacts/codehash.py reads imports, these included) covers them.
    from macd_ml.models.learners.gbdt import LGBCrossModel, LGBModel, ReferenceModel, XGBModel
    from macd_ml.models.learners.lstm import LSTMModel
    from macd_ml.models.learners.tft import TFTModel

    return {
        "lgb": LGBModel,
        "xgb": XGBModel,
        "lgb_cross": LGBCrossModel,
        "lstm": LSTMModel,
        "tft": TFTModel,
        REFERENCE: ReferenceModel,
    }


class _ModelClasses(Mapping[str, "type[Model]"]):
    """name -> model class, the libraries imported on first use: the config, the CLI and an unchanged run
    validate and plan without loading LightGBM, XGBoost or torch (seconds of import each)."""

    NAMES = ("lgb", "xgb", "lgb_cross", "lstm", "tft", REFERENCE)

    def __getitem__(self, name: str) -> "type[Model]":
        if name not in self.NAMES:
            raise KeyError(name)
        return _load_classes()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.NAMES)

    def __len__(self) -> int:
        return len(self.NAMES)


MODEL_CLASSES: Mapping[str, "type[Model]"] = _ModelClasses()


SEQUENCE_MODELS = ("lstm", "tft")
# Rough fit seconds per fold at the defaults, relative (this CPU, real candles, a run's timings.json): only
# the order matters. The flow submits the costliest tasks first so the last task to finish is a short one.
FIT_COST = {"tft": 20.0, "lstm": 5.0, "lgb_cross": 2.0, "xgb": 1.0, "lgb": 1.0, REFERENCE: 0.5}
assert set(FIT_COST) == set(MODEL_CLASSES), "FIT_COST must list MODEL_CLASSES"

FeatureSet = Literal["own", "all"]
# what a training task is told to read: a user's choice for the five, the fixed small set for the reference
FeatureSelection = Literal["own", "all", "reference"]


# the models a user enables; the reference always trains (it is what they are measured against)
ModelName = Literal["lgb", "xgb", "lgb_cross", "lstm", "tft"]
assert set(get_args(ModelName)) | {REFERENCE} == set(MODEL_CLASSES), "ModelName must list MODEL_CLASSES"


class FeatureSets(BaseModel):
    """Which features each model reads: 'own' = the target's own features, 'all' = plus the cross-asset block."""

    model_config = ConfigDict(extra="forbid")

    lgb: FeatureSet = Field(default="own", description="LightGBM")
    xgb: FeatureSet = Field(default="own", description="XGBoost")
    lgb_cross: FeatureSet = Field(default="all", description="cross-asset LightGBM")
    lstm: FeatureSet = Field(default="all", description="LSTM")
    tft: FeatureSet = Field(default="all", description="Temporal Fusion Transformer")


class ModelsConfig(BaseModel):
    """Which models train, with which parameters and feature sets ('own' = the target's features only,
    'all' = plus the cross-asset block)."""

    model_config = ConfigDict(extra="forbid")

    enabled: list[ModelName] = Field(
        default=list(get_args(ModelName)),
        description="models to train (at least one)",
        json_schema_extra={"uniqueItems": True},
    )
    # smaller, more regularised trees than LGBParams' defaults for the plain LightGBM: out of fold on all five real
    # symbols they scored +0.004 ± 0.002 (5 h) and +0.005 ± 0.002 (12 h) AUC (bench/bench_defaults.py);
    # the same change did nothing beyond noise for lgb_cross or (as depth 3) for XGBoost, which keep theirs
    lgb: LGBParams = Field(
        default_factory=lambda: LGBParams(num_leaves=7, min_data_in_leaf=200, lambda_l2=5.0),
        description="LightGBM on the target's features",
    )
    xgb: XGBParams = Field(default_factory=XGBParams, description="XGBoost on the target's features")
    lgb_cross: LGBParams = Field(default_factory=LGBParams, description="LightGBM with the cross-asset block")
    lstm: SequenceParams = Field(default_factory=SequenceParams, description="multi-horizon LSTM")
    tft: TFTParams = Field(default_factory=TFTParams, description="Temporal Fusion Transformer")
    feature_sets: FeatureSets = Field(default_factory=FeatureSets, description="which features each model reads")
    pooled: list[ModelName] = Field(
        default=[],
        description="models fitted on the panel: the target's rows plus every other symbol in the data folder "
        "(not the cross symbols), each with the target's features and cross, rows up to each fold's end; scored "
        "on the target's folds and holdout only",
        json_schema_extra={"uniqueItems": True},
    )
    collapse_std: float = Field(
        default=1e-3, ge=0, description="a model whose inner-slice predictions vary less than this is collapsed"
    )

    @field_validator("enabled", mode="before")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        if not isinstance(v, list):
            return v  # pydantic names the type error
        if REFERENCE in v:
            raise ValueError(f"'{REFERENCE}' trains in every run and is not enabled here (stacking.include_reference)")
        unknown = [m for m in v if m not in get_args(ModelName)]
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; known: {list(get_args(ModelName))}")
        if not v:
            raise ValueError("enable at least one model")
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _pooled_are_enabled(self) -> "ModelsConfig":
        off = [m for m in self.pooled if m not in self.enabled]
        if off:
            raise ValueError(f"pooled model(s) {off} are not enabled (models.enabled)")
        return self

    def trained(self) -> list[str]:
        """Every model a run trains: the enabled ones, then the reference."""
        return [*self.enabled, REFERENCE]

    def params_for(self, name: str) -> BaseModel:
        return REFERENCE_PARAMS if name == REFERENCE else getattr(self, name)

    def feature_set(self, name: str) -> FeatureSelection:
        return "reference" if name == REFERENCE else getattr(self.feature_sets, name)


def own_features(names: list[str]) -> list[str]:
    """The target's own features (the cross block's columns are prefixed ``SYMBOL__``)."""
    return [n for n in names if "__" not in n]


def select_features(names: list[str], feature_set: FeatureSelection) -> list[str]:
    if feature_set == "reference":
        return reference_features(names)
    return own_features(names) if feature_set == "own" else list(names)


def make_model(name: str, params: BaseModel, feature_names: list[str], horizons: list[int]) -> "Model":
    cls = MODEL_CLASSES[name]
    return cls(cls.Params.model_validate(params.model_dump()), feature_names, horizons)


def min_fit_rows(name: str, params: BaseModel) -> tuple[int, str]:
    """Fewest labelled fitting rows with which a model can learn more than a constant, and why."""
    if isinstance(params, LGBParams):
        return 2 * params.min_data_in_leaf, f"two leaves of models.{name}.min_data_in_leaf={params.min_data_in_leaf}"
    if isinstance(params, XGBParams):
        # a leaf needs a hessian sum >= min_child_weight; p(1-p) <= 1/4, so >= 4 * min_child_weight rows a leaf
        need = max(2, int(8 * params.min_child_weight))
        return need, f"two leaves of models.xgb.min_child_weight={params.min_child_weight} (4 rows per unit of weight)"
    if isinstance(params, SequenceParams):
        return max(100, 2 * params.window), "a few batches of windows"
    raise TypeError(f"no minimum known for {name} ({type(params).__name__})")


def load_run_model(run_path, name: str) -> "Model":
    """Load one model of a published run, after verifying the whole run against its signed manifest."""
    from pathlib import Path

    from macd_ml.artifacts.store import verify_run

    verify_run(run_path)
    return load_model(name, Path(run_path) / "models" / name)


def load_model(name: str, folder) -> "Model":
    return MODEL_CLASSES[name].load(folder)
