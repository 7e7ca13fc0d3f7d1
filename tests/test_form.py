"""The run form: the JSON Schema the Prefect UI draws from the retrain flow's signature, and what it refuses.

- every rule of the config's validators that JSON Schema can express is in that schema (bounds, list lengths,
  uniqueness, enums, patterns), so the UI refuses a bad value at Submit; the API refuses the same at
  ``create_flow_run`` (Prefect enforces a deployment's parameter schema);
- the schema and pydantic agree: walked over every bound, enum, length and pattern of the form (a value the
  schema refuses, the config refuses too; in both shapes, the form's and the flat one of config files), and over
  every hand-written validator (each one is listed below, with what the schema does about it);
- the form is short: the fields a run changes on top, everything else folded under "Advanced settings", and no
  two fields share a title.

The browser half (the UI refusing at Submit, the form as a person sees it) is in tests/test_e2e_ui.py.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools.validation import validate as schema_errors

from macd_ml.errors import ConfigError
from macd_ml.flows.config import ADVANCED, FORM_TOP, RetrainConfig, _model_in, form_values, validate_config


def _schema() -> dict:
    from macd_ml.flows.retrain import retrain

    return parameter_schema(retrain).model_dump_for_openapi()


SCHEMA = _schema()
CONFIG = SCHEMA["definitions"]["RetrainConfig"]


def refused_by_schema(config: Any) -> list[str]:
    """The errors Prefect's validator finds in ``{"config": config}`` (the UI's Submit and the API's
    create_flow_run run this same function on the deployment's schema)."""
    return [e.message for e in schema_errors({"config": config}, SCHEMA)]


def refused_by_config(config: Any) -> str | None:
    try:
        validate_config(copy.deepcopy(config))
    except ConfigError as exc:
        return str(exc)
    return None


def _set(path: list[str], value: Any) -> dict:
    out: dict = {}
    cur = out
    for p in path[:-1]:
        cur = cur.setdefault(p, {})
    cur[path[-1]] = value
    return out


def _form_fields(props: dict, path: list[str]):
    """(path in the form's shape, field schema) of every field the form draws, folded sections opened."""
    for name, field in props.items():
        if "properties" in field:  # a folded section
            yield from _form_fields(field["properties"], [*path, name])
        else:
            yield [*path, name], field


FIELDS = list(_form_fields(CONFIG["properties"], []))


def _flat(path: list[str]) -> list[str]:
    return [p for p in path if p != ADVANCED]


# --------------------------------------------------------------------------------------------- the schema


def test_the_schema_carries_the_validators_rules():
    fields = {".".join(_flat(p)): f for p, f in FIELDS}
    h = fields["horizons"]
    assert (h["minItems"], h["uniqueItems"], h["items"]) == (1, True, {"type": "integer", "minimum": 1})
    assert fields["target"]["pattern"] == r"\S"
    assert fields["targets"]["uniqueItems"] is True
    assert "if" in fields["cross"] and "then" in fields["cross"]
    assert fields["features.return_windows"]["contains"] == {"const": 1}
    for w in ("rsi_windows", "vol_windows", "volume_z_windows", "hl_windows", "corr_windows", "beta_windows"):
        assert fields[f"features.{w}"]["items"]["minimum"] == 1, w
    enabled = fields["models.enabled"]
    assert (enabled["minItems"], enabled["uniqueItems"]) == (1, True)
    assert "reference" not in enabled["items"]["enum"]
    skip = fields["gate.skip_shares"]["items"]
    assert (skip["exclusiveMinimum"], skip["exclusiveMaximum"]) == (0, 1)
    for key in ("stacking.c_grid", "gate.c_grid"):
        assert fields[key]["items"]["exclusiveMinimum"] == 0 and fields[key]["minItems"] == 1, key
    assert fields["scale.dask_address"]["pattern"] == r"^\s*\S*\s*$"
    assert fields["folds.n_folds"]["minimum"] == 2 and fields["folds.n_folds"]["maximum"] == 50
    assert fields["folds.scheme"]["enum"] == ["expanding", "sliding"]


# --------------------------------------------------------------------------------------------- agreement


def _outside(field: dict) -> list[Any]:
    """Values just outside each rule of one field."""
    values: list[Any] = []
    kind = field.get("type")
    step = 1 if kind == "integer" else 1e-6
    if "minimum" in field:
        values.append(field["minimum"] - step)
    if "maximum" in field:
        values.append(field["maximum"] + step)
    if "exclusiveMinimum" in field:
        values.append(field["exclusiveMinimum"])
    if "exclusiveMaximum" in field:
        values.append(field["exclusiveMaximum"])
    if "enum" in field:
        values.append("bogus")
    if kind == "array":
        items = field.get("items", {})
        values += [[v] for v in _outside(items)]
        if field.get("minItems", 0) >= 1:
            values.append([])
        if field.get("uniqueItems") and items.get("enum"):
            values.append([items["enum"][0]] * 2)
    return values


@pytest.mark.parametrize("path, field", FIELDS, ids=[".".join(p) for p, _ in FIELDS])
def test_what_the_schema_refuses_the_config_refuses_too(path, field):
    """Every bound, enum, list length and repeat the form can refuse: just outside it, the schema refuses and so
    does the config, in the form's shape and in the flat shape of config files (which the schema also checks)."""
    for value in _outside(field):
        for shape in (path, _flat(path)):
            config = _set(shape, value)
            assert refused_by_schema(config), (shape, value)
            assert refused_by_config(config), (shape, value)


def _inside(field: dict) -> list[Any]:
    values: list[Any] = []
    if "minimum" in field:
        values.append(field["minimum"])
    if "maximum" in field:
        values.append(field["maximum"])
    if "exclusiveMinimum" in field:
        values.append(field["exclusiveMinimum"] + (1 if field.get("type") == "integer" else 1e-6))
    if "exclusiveMaximum" in field:
        values.append(field["exclusiveMaximum"] - (1 if field.get("type") == "integer" else 1e-6))
    values += list(field.get("enum", []))
    return values


# at a bound the schema accepts, a rule across keys may still refuse (it is listed in ACROSS_KEYS below)
AT_A_BOUND_ACROSS_KEYS = {
    "features.warmup_bars": "must be >= the longest rolling window",
    "gate.max_size": "is above gate.max_size",
    "folds.embargo_hours": "must be >= the longest horizon",
    "health.primary_horizon": "is not one of the horizons",
    "scale.runner": "needs prefect-dask",  # where prefect-dask is not installed
    "fan_out.runner": "needs prefect-dask",
}


@pytest.mark.parametrize("path, field", FIELDS, ids=[".".join(p) for p, _ in FIELDS])
def test_what_the_schema_accepts_the_config_accepts(path, field):
    """The reverse, where the rule is the field's own: at each bound and for each choice both accept."""
    for value in _inside(field):
        config = _set(path, value)
        assert not refused_by_schema(config), (path, value, refused_by_schema(config))
        why = refused_by_config(config)
        across = AT_A_BOUND_ACROSS_KEYS.get(".".join(_flat(path)))
        assert why is None or (across is not None and across in why), (path, value, why)


def A(**section: Any) -> dict:  # noqa: N802 - reads as the form's "Advanced settings"
    return {ADVANCED: section}


# The hand-written rules (field and model validators), each once: what the schema does with it. (name, config in
# the form's shape, refused?) rows are checked on both sides alike.
EXPRESSED = {
    "RetrainConfig._upper": [("blank target", {"target": "  "}, True), ("lower case", {"target": "btcusdt"}, False)],
    "RetrainConfig._upper_targets": [
        ("a symbol twice", A(targets=["BTCUSDT", "BTCUSDT"]), True),
        ("two symbols", A(targets=["BTCUSDT", "ETHUSDT"]), False),
    ],
    "RetrainConfig._none_alone": [
        ("none with a symbol", A(cross=["none", "BTCUSDT"]), True),
        ("NONE with a symbol", A(cross=["BTCUSDT", " NONE "]), True),
        ("none alone", A(cross=["none"]), False),
        ("none with a blank entry", A(cross=["none", " "]), False),
        ("symbols", A(cross=["BTCUSDT", "SOLUSDT"]), False),
    ],
    "RetrainConfig._horizons": [
        ("a zero", {"horizons": [0]}, True),
        ("a negative", {"horizons": [-5, 12]}, True),
        ("a repeat", {"horizons": [5, 12, 5]}, True),
        ("none", {"horizons": []}, True),
        ("unsorted, positive", {"horizons": [24, 1]}, False),
    ],
    "RetrainConfig._form_and_no_booleans_for_numbers": [
        ("true as an hour", {"horizons": [True]}, True),
        ("true as a number", A(dead_zone_bps=True), True),
        ("true as a number, flat", {"dead_zone_bps": True}, True),
        ("advanced not a table", {ADVANCED: 3}, True),
        ("a section at its defaults", A(folds=None, models=None), False),
        ("an unknown key", A(bogus=1), True),
        ("an unknown key, flat", {"bogus": 1}, True),
    ],
    "FeatureSpec._sorted": [
        ("a zero window", A(features={"rsi_windows": [0, 14]}), True),
        ("a repeated window (kept once)", A(features={"rsi_windows": [14, 14]}), False),
    ],
    "FeatureSpec._warmup_covers_windows (return_windows has 1)": [
        ("no 1-bar return", A(features={"return_windows": [2, 3]}), True),
        ("with it", A(features={"return_windows": [3, 1]}), False),
    ],
    "ModelsConfig._known": [
        ("no model", A(models={"enabled": []}), True),
        ("a model twice", A(models={"enabled": ["lgb", "lgb"]}), True),
        ("the reference", A(models={"enabled": ["reference"]}), True),
        ("an unknown model", A(models={"enabled": ["gbm"]}), True),
        ("pooled twice", A(models={"pooled": ["lgb", "lgb"]}), True),
        ("two models", A(models={"enabled": ["xgb", "lgb"]}), False),
    ],
    "ScaleOut._address": [
        ("a space inside", A(scale={"dask_address": "tcp://a b:8786"}), True),
        ("spaces around", A(scale={"dask_address": " tcp://10.0.0.5:8786 "}), False),
    ],
    "GateSpec._sizes_in_order (skip_shares between 0 and 1)": [
        ("a share of 1", A(gate={"skip_shares": [0.2, 1.0]}), True),
        ("a share of 0", A(gate={"skip_shares": [0.0]}), True),
        ("shares inside", A(gate={"skip_shares": [0.1, 0.9]}), False),
    ],
}

# Rules across keys: JSON Schema cannot compare one value with another, so the form accepts them; the flow refuses
# them before it waits for anything (tests/test_deployment.py), one line naming the key.
ACROSS_KEYS = {
    "RetrainConfig._embargo_covers_horizons": (
        {"horizons": [5, 24], **A(folds={"embargo_hours": 6})},
        "config key 'folds.embargo_hours'",
    ),
    "RetrainConfig._primary_horizon_is_a_horizon": (
        {"horizons": [5, 12], **A(health={"primary_horizon": 24})},
        "config key 'health.primary_horizon'",
    ),
    "RetrainConfig._cross_not_target": ({"target": "BTCUSDT", **A(cross=["btcusdt"])}, "config key 'cross'"),
    "RetrainConfig._upper_targets (case)": (A(targets=["btcusdt", "BTCUSDT"]), "config key 'targets'"),
    "MacdParams._fast_below_slow": (
        A(features={"macd": [{"fast": 26, "slow": 12, "signal": 9}]}),
        "config key 'features.macd.0'",
    ),
    "FeatureSpec._warmup_covers_windows": (A(features={"warmup_bars": 10}), "config key 'features'"),
    "ModelsConfig._pooled_are_enabled": (A(models={"enabled": ["lgb"], "pooled": ["xgb"]}), "config key 'models'"),
    "GateSpec._sizes_in_order": (A(gate={"min_size": 0.9, "max_size": 0.5}), "config key 'gate'"),
    "ScaleOut._dask_installed": (None, "depends on what the worker has installed, not on the value"),
}

# Shaping, not rules: they turn what a form or a file holds into the config's values.
SHAPING = {"RetrainConfig._utc", "RetrainConfig._null_is_empty", "RetrainConfig._upper_list"}

# Where the schema is stricter than the config (the only place): two blank watchlist entries. The config drops
# blank entries (a trailing comma in `--set targets=A,B,`) before it looks for repeats; the form refuses them as a
# repeat, which costs a user nothing.
SCHEMA_STRICTER = [A(targets=["", ""])]


@pytest.mark.parametrize("rule", sorted(EXPRESSED))
def test_each_rule_in_the_schema_refuses_what_the_config_refuses(rule):
    for name, config, refused in EXPRESSED[rule]:
        schema_says, config_says = refused_by_schema(config), refused_by_config(config)
        assert bool(schema_says) == refused, (rule, name, schema_says)
        assert bool(config_says) == refused, (rule, name, config_says)
        if isinstance(config.get(ADVANCED, {}), dict):  # the flat shape of a config file: the same answers
            flat = {**{k: v for k, v in config.items() if k != ADVANCED}, **config.get(ADVANCED, {})}
            assert bool(refused_by_schema(flat)) == refused and bool(refused_by_config(flat)) == refused, name


@pytest.mark.parametrize("rule", sorted(k for k, (c, _) in ACROSS_KEYS.items() if c is not None))
def test_rules_across_keys_pass_the_form_and_the_config_names_the_key(rule):
    config, named = ACROSS_KEYS[rule]
    assert refused_by_schema(config) == [], rule
    why = refused_by_config(config)
    assert why is not None and why.startswith(named) and "\n" not in why, why


def test_every_validator_is_accounted_for():
    """A new validator must say here whether the form can carry its rule."""
    classes: list[type] = []

    def walk(model: type) -> None:
        if model in classes:
            return
        classes.append(model)
        for f in model.model_fields.values():
            if (sub := _model_in(f.annotation)) is not None:
                walk(sub)

    walk(RetrainConfig)
    found = set()
    for model in classes:
        d = model.__pydantic_decorators__
        found |= {f"{model.__name__}.{name}" for name in [*d.field_validators, *d.model_validators]}
    listed = {k.split(" ")[0] for k in [*EXPRESSED, *ACROSS_KEYS, *SHAPING]}
    assert found == listed, f"unlisted: {sorted(found - listed)}; gone: {sorted(listed - found)}"


def test_the_one_place_the_schema_is_stricter():
    for config in SCHEMA_STRICTER:
        assert refused_by_schema(config) and refused_by_config(config) is None


def test_the_form_shape_and_the_flat_shape_are_one_config():
    flat = {"target": "btcusdt", "horizons": [12, 5], "folds": {"n_folds": 3}, "models": {"enabled": ["lgb"]}}
    form = {
        "target": "btcusdt",
        "horizons": [12, 5],
        ADVANCED: {"folds": {"n_folds": 3}, "models": {"enabled": ["lgb"]}},
    }
    assert validate_config(flat) == validate_config(form) == RetrainConfig.model_validate(form)
    config = validate_config(form)
    assert form_values(config) == {
        "target": "BTCUSDT",
        "horizons": [5, 12],
        ADVANCED: {"folds": {"n_folds": 3}, "models": {"enabled": ["lgb"]}},
    }
    assert validate_config(form_values(config)) == config
    assert form_values(RetrainConfig()) == {}  # the form opens on the defaults
    # a key under "advanced" wins over the same key beside it: a form whose default is a flat config (the fleet's
    # and the walk-forward's) carries that default next to what the user edited
    both = {"folds": {"n_folds": 5}, ADVANCED: {"folds": {"n_folds": 3}}}
    assert validate_config(both).folds.n_folds == 3
    # what the form sends when a section stays at "Defaults", with its other values at their defaults
    sent = {**{k: RetrainConfig.model_fields[k].default for k in ("target", "data_dir", "horizons", "force")}}
    assert (
        validate_config({**sent, ADVANCED: {"folds": None, "models": {"lgb": None, "enabled": ["lgb"]}}}).folds.n_folds
        == 5
    )
    for values in (flat, form, form_values(config), {}):
        assert refused_by_schema(values) == [], values


# --------------------------------------------------------------------------------------------- a short form


def test_the_top_of_the_form_is_the_few_fields_a_run_changes():
    props = SCHEMA["properties"]
    assert sorted(props, key=lambda k: props[k]["position"]) == ["config", "run_id", "require_data", "skip_unchanged"]
    top = CONFIG["properties"]
    order = sorted(top, key=lambda k: top[k]["position"])  # the UI's order (PostgreSQL keeps no key order)
    assert order == [*FORM_TOP, ADVANCED]
    assert [top[k]["title"] for k in order] == [
        "Symbol to predict",
        "Candle folder",
        "Horizons (hours ahead)",
        "Train as of (UTC)",
        "Recompute every stage (ignore the cache)",
        "Output folder (OUT)",
        "Advanced settings",
    ]
    advanced = top[ADVANCED]
    assert [o["title"] for o in advanced["anyOf"]] == ["Defaults", "Edit"] and advanced["default"] is None
    # folded: every section under it shows two buttons until opened
    sections = [f for f in advanced["properties"].values() if "properties" in f]
    assert len(sections) >= 14 and all(f["default"] is None for f in sections)
    # the form opens on its defaults in its own shape: nothing hidden that the fields do not show
    assert props["config"]["default"] == {}
    # drawn before anything is opened: the config's 6 fields, "Advanced settings" and the flow's 3 other
    # parameters, of the 170-odd the form still validates at Submit (the browser test counts the labels drawn)
    assert len(top) + len(props) - 1 == 10 and len(FIELDS) > 170


def _declared_in(model: type, name: str) -> type:
    """The highest class in ``model``'s hierarchy that declares field ``name`` (one setting, however inherited)."""
    return next(c for c in reversed(model.__mro__) if name in getattr(c, "__annotations__", {}))


def test_no_two_fields_share_a_title():
    """Across the whole form (every section opened): two fields may share a title only when they are one setting,
    the same field of one parameter class shown for two models or runners (the learners' common boosting
    settings, ``scale`` and ``fan_out``); their sections' titles tell them apart. Every field is titled."""
    models: dict[str, type] = {}

    def walk(model: type) -> None:
        if model.__name__ in models:
            return
        models[model.__name__] = model
        for f in model.model_fields.values():
            if (sub := _model_in(f.annotation)) is not None:
                walk(sub)

    walk(RetrainConfig)
    owner: dict[str, set] = {}
    untitled = []
    for model in models.values():
        for name, field in model.model_fields.items():
            if field.title is None:
                untitled.append(f"{model.__name__}.{name}")
                continue
            owner.setdefault(field.title, set()).add((_declared_in(model, name), name))
    shared = {
        title: sorted(f"{c.__name__}.{n}" for c, n in fields) for title, fields in owner.items() if len(fields) > 1
    }
    assert shared == {}, f"titles shared by different settings: {shared}"
    assert untitled == [], untitled
    # the form as drawn: the titles the UI shows (sections included) are those titles
    drawn = [f.get("title") for _, f in FIELDS]
    assert "Force" not in drawn and "Stacking" not in drawn
    titles = {".".join(_flat(p)): f.get("title") for p, f in FIELDS}
    assert (
        titles["force"] != titles["promotion.force"]
        and titles["shadow.stacking"] != CONFIG["properties"][ADVANCED]["properties"]["stacking"]["title"]
    )


def test_numbers_in_the_form_are_finite():
    for path, field in FIELDS:
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if key in field:
                assert math.isfinite(field[key]), path


# --------------------------------------------------------------------------------------------- the API


@pytest.fixture(scope="module")
def deployment(prefect_server):
    """The retrain flow registered as a deployment on the test API (no worker: nothing runs)."""
    from macd_ml.flows.retrain import retrain

    return retrain.to_deployment(name="form-test").apply()


@pytest.mark.parametrize(
    "config, named",
    [
        ({"horizons": [0]}, "minimum"),
        ({"horizons": [5, 5]}, "non-unique"),
        ({ADVANCED: {"folds": {"n_folds": 1}}}, "minimum"),
        ({"folds": {"n_folds": 1}}, "minimum"),  # the flat shape is checked too
        ({"bogus": 1}, "bogus"),
    ],
)
def test_create_flow_run_refuses_what_the_schema_refuses(deployment, config, named):
    """Prefect checks a deployment's parameters against its schema when a run is created (HTTP 409): a bad
    value never becomes a flow run, from the UI or from `prefect deployment run`."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError

    with get_client(sync_client=True) as client:
        with pytest.raises(PrefectHTTPStatusError) as err:
            client.create_flow_run_from_deployment(deployment, parameters={"config": config})
        assert err.value.response.status_code == 409 and named in err.value.response.text
        ok = client.create_flow_run_from_deployment(deployment, parameters={"config": {"horizons": [1, 5]}})
        client.delete_flow_run(ok.id)


@pytest.mark.parametrize("entry", ["macd_ml.flows.fleet:fleet", "macd_ml.flows.walkforward:walkforward"])
def test_the_fleet_and_walkforward_forms_have_the_retrains_shape(entry):
    """The fleet's and the walk-forward's run forms open like the retrain's: the config in the form's shape (its
    defaults, nothing flat hidden in the values), every parameter titled; a parameter a run leaves out takes its
    default (a worker hands the flow the ``Field``)."""
    import importlib

    from macd_ml.flows.config import given

    module, name = entry.split(":")
    flow = getattr(importlib.import_module(module), name)
    schema = parameter_schema(flow).model_dump_for_openapi()
    props = schema["properties"]
    assert props["config"]["default"] == {} and props["config"]["$ref"].endswith("/RetrainConfig")
    assert all(p.get("title") and p["title"] != key for key, p in props.items()), props
    assert schema["definitions"]["RetrainConfig"] == CONFIG  # the same folded form as the retrain's
    bound = flow.validate_parameters({})
    assert set(bound) == set(props)
    defaults = {k: given(v) for k, v in bound.items()}
    assert defaults["config"] == RetrainConfig()
    assert all(not hasattr(v, "get_default") for v in defaults.values()), defaults
    sent = flow.validate_parameters({"config": {"target": "BTCUSDT", ADVANCED: {"targets": ["BTCUSDT", "SOLUSDT"]}}})
    assert given(sent["config"]).targets == ["BTCUSDT", "SOLUSDT"]
