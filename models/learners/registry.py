"""The base learners, each registered once in :data:`LEARNERS` (name, parameters, cost, feature set; its minimum
rows come from its parameter class), plus the fixed reference model (models/learners/reference.py) that every run
trains beside them."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from macd_ml.models.learners.params import LGBParams, PlainLGBParams, SequenceParams, TFTParams, XGBParams
from macd_ml.models.learners.reference import PARAMS as REFERENCE_PARAMS
from macd_ml.models.learners.reference import REFERENCE, reference_features

if TYPE_CHECKING:
    from macd_ml.models.learners.base import Model

FeatureSet = Literal["own", "all"]
# what a training task is told to read: a user's choice for the five, the fixed small set for the reference
FeatureSelection = Literal["own", "all", "reference"]


@dataclass(frozen=True)
class Learner:
    """A base learner as the pipeline knows it. Adding one is a file (its ``Model`` subclass, with its parameter
    class holding its defaults and ``min_fit_rows``) and one line in :data:`LEARNERS`: the config, the UI form,
    the feature sets, the flow's task order, the GPU slot and preflight all read it from here."""

    name: str
    description: str
    params: type[BaseModel]  # the parameter class, its defaults the learner's defaults
    model: str  # "module:Class", imported when a model is first built or loaded (never by the config or the CLI)
    cost: float  # rough fit seconds per fold, relative (a run's timings.json): the flow submits costly tasks first
    features: FeatureSelection  # default feature set
    sequence: bool = False  # a torch sequence net: takes the ``gpu`` concurrency slot
    title: str = ""  # its label in the UI form (its section, and its feature set)

    def model_class(self) -> type[Model]:
        module, _, name = self.model.partition(":")
        return getattr(importlib.import_module(module), name)


LEARNERS: tuple[Learner, ...] = (
    Learner("lgb", "LightGBM on the target's features", PlainLGBParams, "macd_ml.models.learners.gbdt:LGBModel", 1.0, "own", title="LightGBM"),  # noqa: E501
    Learner("xgb", "XGBoost on the target's features", XGBParams, "macd_ml.models.learners.gbdt:XGBModel", 1.0, "own", title="XGBoost"),  # noqa: E501
    Learner("lgb_cross", "LightGBM with the cross-asset block", LGBParams, "macd_ml.models.learners.gbdt:LGBCrossModel", 2.0, "all", title="LightGBM + cross-asset block"),  # noqa: E501
    Learner("lstm", "multi-horizon LSTM", SequenceParams, "macd_ml.models.learners.lstm:LSTMModel", 5.0, "all", True, title="LSTM"),  # noqa: E501
    Learner("tft", "Temporal Fusion Transformer", TFTParams, "macd_ml.models.learners.tft:TFTModel", 20.0, "all", True, title="Temporal Fusion Transformer"),  # noqa: E501
)  # fmt: skip
# trains in every run beside the enabled ones, with fixed parameters (models/learners/reference.py)
REFERENCE_LEARNER = Learner(
    REFERENCE, "the fixed reference", LGBParams, "macd_ml.models.learners.gbdt:ReferenceModel", 0.5, "reference"
)
BY_NAME: dict[str, Learner] = {lr.name: lr for lr in (*LEARNERS, REFERENCE_LEARNER)}
NAMES: tuple[str, ...] = tuple(lr.name for lr in LEARNERS)  # the models a user enables


class _ModelClasses(Mapping[str, "type[Model]"]):
    """name -> model class, the libraries imported on first use: the config, the CLI and an unchanged run
    validate and plan without loading LightGBM, XGBoost or torch (seconds of import each)."""

    def __getitem__(self, name: str) -> type[Model]:
        return BY_NAME[name].model_class()

    def __iter__(self) -> Iterator[str]:
        return iter(BY_NAME)

    def __len__(self) -> int:
        return len(BY_NAME)


MODEL_CLASSES: Mapping[str, type[Model]] = _ModelClasses()
SEQUENCE_MODELS = tuple(lr.name for lr in BY_NAME.values() if lr.sequence)
FIT_COST = {lr.name: lr.cost for lr in BY_NAME.values()}
ModelName = str  # one of NAMES (ModelsConfig checks it; the form lists them)


FeatureSets = create_model(  # type: ignore[call-overload]
    "FeatureSets",
    __config__=ConfigDict(extra="forbid"),
    __doc__="Which features each model reads: 'own' = the target's own features, 'all' = plus the cross-asset block.",
    __module__=__name__,
    **{
        lr.name: (FeatureSet, Field(default=lr.features, title=f"Features for {lr.title}", description=lr.description))
        for lr in LEARNERS
    },
)


class _ModelsConfig(BaseModel):
    """Which models train, with which parameters and feature sets ('own' = the target's features only,
    'all' = plus the cross-asset block). One field per learner of :data:`LEARNERS` (its parameters) besides these."""

    model_config = ConfigDict(extra="forbid")

    enabled: list[ModelName] = Field(
        default=list(NAMES),
        title="Models to train",
        description="models to train (at least one, each once)",
        json_schema_extra={"minItems": 1, "uniqueItems": True, "items": {"type": "string", "enum": list(NAMES)}},
    )
    feature_sets: FeatureSets = Field(  # type: ignore[valid-type]
        default_factory=FeatureSets, title="Feature set per model", description="which features each model reads"
    )
    pooled: list[ModelName] = Field(
        default=[],
        title="Models trained on the pooled panel",
        description="models fitted on the panel: the target's rows plus every other symbol in the data folder "
        "(not the cross symbols), each with the target's features and cross, rows up to each fold's end; scored "
        "on the target's folds and holdout only",
        json_schema_extra={"uniqueItems": True, "items": {"type": "string", "enum": list(NAMES)}},
    )
    collapse_std: float = Field(
        default=1e-3,
        ge=0,
        title="Collapse threshold (prediction std)",
        description="a model whose inner-slice predictions vary less than this is collapsed",
    )

    @field_validator("enabled", "pooled", mode="before")
    @classmethod
    def _known(cls, v: list[str], info) -> list[str]:
        if not isinstance(v, list):
            return v  # pydantic names the type error
        if REFERENCE in v:
            raise ValueError(f"'{REFERENCE}' trains in every run and is not enabled here (stacking.include_reference)")
        unknown = [m for m in v if m not in NAMES]
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; known: {list(NAMES)}")
        if not v and info.field_name == "enabled":
            raise ValueError("enable at least one model")
        repeated = sorted({m for m in v if v.count(m) > 1})
        if repeated:
            raise ValueError(f"model(s) {repeated} listed twice; list each model once")
        return list(v)

    @model_validator(mode="after")
    def _pooled_are_enabled(self) -> "_ModelsConfig":
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


ModelsConfig = create_model(  # type: ignore[call-overload]
    "ModelsConfig",
    __base__=_ModelsConfig,
    __doc__=_ModelsConfig.__doc__,
    __module__=__name__,
    **{
        lr.name: (lr.params, Field(default_factory=lr.params, title=lr.title, description=lr.description))
        for lr in LEARNERS
    },
)


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
    """Fewest labelled fitting rows with which a model can learn more than a constant, and why (its parameter
    class says: ``min_fit_rows``)."""
    how = getattr(params, "min_fit_rows", None)
    if how is None:
        raise TypeError(f"no minimum known for {name} ({type(params).__name__} has no min_fit_rows)")
    return how(name)


def load_run_model(run_path, name: str) -> "Model":
    """Load one model of a published run, after verifying the whole run against its signed manifest."""
    from pathlib import Path

    from macd_ml.artifacts.store import verify_run

    verify_run(run_path)
    return load_model(name, Path(run_path) / "models" / name)


def load_model(name: str, folder) -> "Model":
    return MODEL_CLASSES[name].load(folder)
