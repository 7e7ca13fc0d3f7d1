"""The learner registry (models/learners/registry.py): one line per learner, and everything else read from it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from macd_ml.models.learners.reference import REFERENCE
from macd_ml.models.learners.registry import (
    BY_NAME,
    FIT_COST,
    LEARNERS,
    NAMES,
    SEQUENCE_MODELS,
    FeatureSets,
    ModelsConfig,
    min_fit_rows,
)


@pytest.mark.parametrize("learner", LEARNERS, ids=lambda lr: lr.name)
def test_each_learner_is_complete_from_its_one_line(learner):
    cls = learner.model_class()
    # the model class reads the registry's parameter class (defaults included) back without loss
    params = learner.params()
    assert cls.Params.model_validate(params.model_dump()).model_dump() == params.model_dump()
    need, why = min_fit_rows(learner.name, params)
    assert need >= 2 and why
    assert learner.features in ("own", "all")


def test_config_form_order_and_gpu_slot_come_from_the_registry():
    config = ModelsConfig()
    assert list(config.enabled) == list(NAMES) == [lr.name for lr in LEARNERS]
    for lr in LEARNERS:
        assert isinstance(getattr(config, lr.name), lr.params)  # its defaults, from its parameter class
        assert getattr(FeatureSets(), lr.name) == lr.features
    assert set(FIT_COST) == set(BY_NAME) == {*NAMES, REFERENCE}
    assert set(SEQUENCE_MODELS) == {lr.name for lr in LEARNERS if lr.sequence} == {"lstm", "tft"}


def test_the_plain_lightgbm_defaults_live_in_its_parameter_class():
    """Not in a lambda of the registry: a reader of PlainLGBParams sees what the plain LightGBM trains with."""
    from macd_ml.models.learners.params import LGBParams, PlainLGBParams

    assert ModelsConfig().lgb == PlainLGBParams()
    assert (PlainLGBParams().num_leaves, PlainLGBParams().min_data_in_leaf) != (LGBParams().num_leaves, 100)


def test_unknown_and_reference_names_are_refused():
    with pytest.raises(ValidationError, match="unknown model"):
        ModelsConfig.model_validate({"enabled": ["lgb", "catboost"]})
    with pytest.raises(ValidationError, match="trains in every run"):
        ModelsConfig.model_validate({"enabled": [REFERENCE]})
    with pytest.raises(ValidationError, match="not enabled"):
        ModelsConfig.model_validate({"enabled": ["lgb"], "pooled": ["xgb"]})
