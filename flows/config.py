"""The pipeline's one configuration object: what a user sets, validated once.

The Prefect UI renders :class:`RetrainConfig` as the run form; the CLI builds the same object from
``--config FILE`` (JSON or TOML) and ``--set key=value`` overrides (dotted keys, values parsed as JSON when
possible). Every error names the key at fault.

The form (the JSON Schema Prefect builds from the flow's signature) is short: the few fields a run changes
(:data:`FORM_TOP`) on top, everything else under one "Advanced settings" section, each of its sections folded to
"Defaults" until opened (:meth:`RetrainConfig.__get_pydantic_json_schema__`). The form sends that shape
(``{"target": ..., "advanced": {"folds": {...}}}``); :func:`from_form` flattens it back to the keys config files and
``--set`` use, which every entry point still accepts. Every rule JSON Schema can express is in the schema, so the
UI refuses a bad value at Submit; the rest (a rule across keys) refuses the run before it waits for anything.
"""

from __future__ import annotations

import copy
import json
import math
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from macd_ml.errors import ConfigError
from macd_ml.features.form import OptionalTime, optional_field
from macd_ml.features.spec import FeatureSpec
from macd_ml.features.splits import FoldSpec
from macd_ml.features.synth import SynthSpec
from macd_ml.flows.scale import ScaleOut
from macd_ml.models.ensemble.stacking import StackSpec
from macd_ml.models.evaluation.backtest import BacktestSpec
from macd_ml.models.gate.secondary import GateSpec
from macd_ml.models.learners.registry import ModelsConfig
from macd_ml.models.release.health import HealthSpec
from macd_ml.models.release.promotion import PromotionSpec
from macd_ml.serving.guards import ServingSpec
from macd_ml.serving.shadow import Targets as ShadowTargets

# The run form (module docstring): these fields on top, in this order; every other one under ADVANCED.
FORM_TOP = ("target", "data_dir", "horizons", "until", "force", "out_dir")
ADVANCED = "advanced"
DEFAULTS_LABEL, EDIT_LABEL = "Defaults", "Edit"  # the two buttons of a folded section


class KeyedError(ValueError):
    """A rule across keys (a model validator has no field to point at): ``key`` is the one to change."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


class ReportSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plots: bool = Field(
        default=True,
        title="Draw report plots",
        description="draw the report's PNG plots (ROC, calibration, correlation, importance, weights, equity); off "
        "saves about a second of CPU per run where nobody reads them (fleets, tests); the figures stay in "
        "metrics.json and report.md",
    )


class RetrainConfig(BaseModel):
    """Nightly retraining run: data, target, horizons, folds and feature set."""

    model_config = ConfigDict(extra="forbid")

    data_dir: str = Field(
        default="",
        title="Candle folder",
        description="folder with one candle file per symbol (CSV or parquet). Empty: in a deployment run, the "
        "Prefect Variable macd_ml_data_dir; otherwise the synthetic market below",
    )
    out_dir: str = Field(
        default="out",
        title="Output folder (OUT)",
        description="where runs/, cache/, bundles/ and current live; a relative path is under the worker's home "
        "(MACD_ML_HOME). In a deployment run the default 'out' gives way to the Prefect Variable macd_ml_out_dir",
    )
    run_home: str = Field(
        default="",
        title="Publish under (empty = OUT)",
        description="where runs/, current and bundles/ live; empty = out_dir. A fleet or walk-forward child "
        "publishes under a home of its own and shares out_dir's cache with the other children",
    )
    target: str = Field(
        default="ETHUSDT",
        title="Symbol to predict",
        description="symbol the ensemble predicts (a file of that name in the candle folder)",
        json_schema_extra={"pattern": r"\S"},  # not blank (the validator below)
    )
    targets: list[str] = Field(
        default=[],
        title="Fleet watchlist (fleet flow only)",
        description="a fleet (a watchlist): one retrain per symbol, each published under OUT/fleet/SYMBOL, with one "
        "fleet report; empty = the target alone",
        json_schema_extra={"uniqueItems": True},  # each symbol once (the validator also ignores case)
    )
    cross: list[str] = Field(
        default=[],
        title="Reference symbols (cross-asset block)",
        description="reference symbols for the cross-asset block; empty = BTCUSDT when the folder has it; "
        "['none'] = no reference symbol",
        # 'none' stands alone (the validator below): with a 'none', no other non-blank entry
        json_schema_extra={
            "if": {"contains": {"pattern": "^\\s*[Nn][Oo][Nn][Ee]\\s*$"}},
            "then": {"not": {"contains": {"pattern": "\\S", "not": {"pattern": "^\\s*[Nn][Oo][Nn][Ee]\\s*$"}}}},
        },
    )
    until: Annotated[OptionalTime, Field(title="Train as of (UTC)")] = optional_field(
        "train as a bot would have on this date: bars after it (ISO time, UTC) are ignored, labels whose horizon "
        "passes it are undefined. Empty = the newest bar. A walk-forward sets one per cutoff"
    )
    horizons: list[int] = Field(
        default=[5, 12, 24],
        title="Horizons (hours ahead)",
        description="label horizons in hours: one or more, each once, each at least 1",
        json_schema_extra={"minItems": 1, "uniqueItems": True, "items": {"type": "integer", "minimum": 1}},
    )
    dead_zone_bps: float = Field(
        default=0.0,
        ge=0.0,
        title="Label dead zone (bps)",
        description="moves smaller than this are left unlabelled",
    )
    gap_tolerance_hours: int = Field(
        default=1,
        ge=0,
        title="Bridged gap (hours)",
        description="missing hours bridged; a longer gap restarts every window and label",
    )
    features: FeatureSpec = Field(
        default_factory=FeatureSpec, title="Features", description="the feature set (MACD variants, windows)"
    )
    folds: FoldSpec = Field(
        default_factory=FoldSpec,
        title="Walk-forward folds and holdout",
        description="purged walk-forward folds and the holdout",
    )
    models: ModelsConfig = Field(
        default_factory=ModelsConfig, title="Base models", description="which base models train, and how"
    )
    scale: ScaleOut = Field(
        default_factory=ScaleOut,
        title="Where training tasks run",
        description="where the training tasks run: the flow's threads or a Dask cluster (in no training cache key)",
    )
    fan_out: ScaleOut = Field(
        default_factory=ScaleOut,
        title="Where fleet and walk-forward children run",
        description="where the children of a fleet or a walk-forward run (docs/walkforward.md): 'threads' = one "
        "after another in the flow's process, 'dask' = side by side on Dask worker processes (dask_workers of a "
        "local cluster, or the workers of the scheduler at dask_address); in no cache key",
    )
    stacking: StackSpec = Field(
        default_factory=StackSpec, title="Stacking (meta-learner)", description="the meta-learner over the base models"
    )
    synthetic: SynthSpec = Field(
        default_factory=SynthSpec,
        title="Synthetic market (no candle folder)",
        description="the generated market used when there is no candle folder",
    )
    health: HealthSpec = Field(
        default_factory=HealthSpec, title="Health gate", description="the gates a run must pass to be promoted"
    )
    backtest: BacktestSpec = Field(
        default_factory=BacktestSpec,
        title="Backtest of the MACD strategy",
        description="the bot's MACD strategy on the holdout, always and gated by the shipped probability",
    )
    gate: GateSpec = Field(
        default_factory=GateSpec,
        title="Trade gate",
        description="the trade gate: meta-labels of the MACD trades, chosen against no gate and the direction gate "
        "on out-of-fold trades (docs/trade-gate.md)",
    )
    report: ReportSpec = Field(default_factory=ReportSpec, title="Report", description="what the run's report draws")
    drift_window_hours: int = Field(
        default=720,
        ge=24,
        title="Drift window (hours)",
        description="drift: the newest bars compared with the training span (PSI per feature)",
    )
    promotion: PromotionSpec = Field(
        default_factory=PromotionSpec,
        title="Champion / challenger promotion",
        description="champion / challenger: when this run replaces the current one",
    )
    shadow: ShadowTargets = Field(
        default_factory=ShadowTargets,
        title="Shadow-report targets",
        description="the production targets shadow-report checks a shadow log against",
    )
    serving: ServingSpec = Field(
        default_factory=ServingSpec,
        title="Bot-side guards (expiry, unfamiliar bars)",
        description="the bot's side: when a model counts as expired, and how unlike the training data a bar may be "
        "(docs/bot-contract.md)",
    )
    result_storage: str = Field(
        default="",
        title="Task result storage",
        description="folder or fsspec URL (e.g. 's3://bucket/macd-ml-results') where task results persist, signed "
        "with the key in MACD_ML_KEY_FILE; empty = OUT/cache/results",
    )
    force: bool = Field(
        default=False,
        title="Recompute every stage (ignore the cache)",
        description="recompute every stage, ignoring the cache (identical results still publish no duplicate run)",
    )

    @model_validator(mode="before")
    @classmethod
    def _form_and_no_booleans_for_numbers(cls, data: Any) -> Any:
        data = from_form(data)  # the run form's shape (module docstring); the CLI's is already flat
        _reject_booleans(cls, data)  # the UI's form and the CLI both pass through here
        return data

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        """The run form's shape (module docstring): :data:`FORM_TOP` on top, the rest in a folded "Advanced
        settings" section whose sections are folded too; the flat keys of config files stay valid
        (``patternProperties``: validated, not drawn)."""
        json_schema = super().__get_pydantic_json_schema__(core_schema, handler)
        _form_shape(handler.resolve_ref_schema(json_schema), handler)
        return json_schema

    @field_validator("target")
    @classmethod
    def _upper(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("target must not be empty")
        return v.strip().upper()

    @field_validator("until")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        if v is None:
            return None
        return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)

    @field_validator("data_dir", "result_storage", mode="before")
    @classmethod
    def _null_is_empty(cls, v: Any) -> Any:
        return "" if v is None else v  # config files written before the form had no nullable fields

    @field_validator("targets", mode="before")
    @classmethod
    def _upper_targets(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.split(",")
        if isinstance(v, list):
            v = [s.strip().upper() for s in v if isinstance(s, str) and s.strip()]
            if len(set(v)) != len(v):
                raise ValueError(f"targets repeat a symbol ({v}); list each once")
        return v

    @field_validator("cross", mode="before")
    @classmethod
    def _upper_list(cls, v: Any) -> Any:
        if v is None:
            return []
        if isinstance(v, str):
            v = v.split(",")
        return [s.strip().upper() for s in v if isinstance(s, str) and s.strip()] if isinstance(v, list) else v

    @field_validator("cross")
    @classmethod
    def _none_alone(cls, v: list[str]) -> list[str]:
        if "NONE" in v and len(v) > 1:
            raise ValueError("'none' (no reference symbol) cannot be listed with symbols")
        return v

    def cross_symbols(self) -> list[str] | None:
        """The reference symbols asked for: None = the default (BTCUSDT when present), [] = none."""
        if not self.cross:
            return None
        return [] if self.cross == ["NONE"] else list(self.cross)

    @field_validator("horizons")
    @classmethod
    def _horizons(cls, v: list[int]) -> list[int]:
        if not v or any(h <= 0 for h in v):
            raise ValueError("horizons must be a non-empty list of positive hours")
        if len(set(v)) != len(v):
            raise ValueError(f"horizons repeat a value ({v}); list each horizon once")
        return sorted(v)

    @model_validator(mode="after")
    def _cross_not_target(self) -> "RetrainConfig":
        if self.cross and self.target in self.cross:
            raise KeyedError("cross", f"cross must not contain the target {self.target}")
        return self

    @model_validator(mode="after")
    def _primary_horizon_is_a_horizon(self) -> "RetrainConfig":
        h = self.health.primary_horizon
        if h is not None and h not in self.horizons:
            raise KeyedError(
                "health.primary_horizon", f"health.primary_horizon ({h}) is not one of the horizons {self.horizons}"
            )
        return self

    def home(self) -> Path:
        """Where this run publishes (runs/, current, bundles/): ``run_home``, else ``out_dir``."""
        return Path(self.run_home or self.out_dir).resolve()

    def stack_models(self) -> list[str]:
        """The base models the stack chooses from: the enabled ones, and the reference unless left out."""
        return self.models.trained() if self.stacking.include_reference else list(self.models.enabled)

    def primary_horizon(self) -> int:
        return self.health.primary_horizon or self.horizons[0]

    @model_validator(mode="after")
    def _embargo_covers_horizons(self) -> "RetrainConfig":
        emb = self.folds.embargo_hours
        if emb is not None and emb < max(self.horizons):
            raise KeyedError(
                "folds.embargo_hours",
                f"folds.embargo_hours ({emb}) must be >= the longest horizon ({max(self.horizons)}): "
                "a shorter embargo lets training labels overlap the test span",
            )
        return self


# --------------------------------------------------------------------------------------------- the run form


def from_form(data: Any) -> Any:
    """The run form's values as config keys: what ``advanced`` holds moves up (a key there wins over the same key
    outside it: a form built from a flat default carries that default beside what the user edited), and a section
    left at "Defaults" (``null``) is left out, so it takes its defaults."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    if ADVANCED in data:
        advanced = data.pop(ADVANCED)
        if advanced is not None and not isinstance(advanced, dict):
            raise KeyedError(ADVANCED, f"expected a table of settings or nothing, got {advanced!r}")
        data.update(advanced or {})
    return _without_null_sections(RetrainConfig, data)


def _without_null_sections(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    out = dict(data)
    for name, field in model.model_fields.items():
        ann = field.annotation
        if name not in out or not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            continue
        if out[name] is None:
            del out[name]
        elif isinstance(out[name], dict):
            out[name] = _without_null_sections(ann, out[name])
    return out


def form_values(config: RetrainConfig) -> dict[str, Any]:
    """``config`` as the run form holds it: what differs from the defaults, the fields of :data:`FORM_TOP` on
    top, everything else under ``advanced`` (a deployment's parameters: the form opens on them)."""
    changed = config.model_dump(mode="json", exclude_defaults=True)
    rest = {k: v for k, v in changed.items() if k not in FORM_TOP}
    return {**{k: v for k, v in changed.items() if k in FORM_TOP}, **({ADVANCED: rest} if rest else {})}


def config_parameter(title: str = "Run settings") -> Any:
    """A flow's ``config`` parameter default for the run form: the config's defaults, the form opening on them in
    its own shape (nothing under "advanced": :func:`form_values`; a flat default would sit in the form's values
    unseen), titled. Prefect merges a ``Field`` default's ``json_schema_extra`` into the parameter's schema; a flow
    that does not validate its parameters gets the ``Field`` itself for a parameter a run leaves out."""
    return Field(RetrainConfig(), json_schema_extra={"title": title, "default": form_values(RetrainConfig())})


def given(value: Any) -> Any:
    """A flow parameter's value: its default where the run did not give it. The defaults of the flows' form
    parameters are ``Field``s (they title the form's fields); a worker calls a flow with the parameters it was given
    and leaves the others at those ``Field`` objects, validated or not."""
    return value.get_default(call_default_factory=True) if isinstance(value, FieldInfo) else value


def _ref_of(schema: dict[str, Any]) -> str | None:
    if "$ref" in schema:
        return schema["$ref"]
    all_of = schema.get("allOf")
    if isinstance(all_of, list) and len(all_of) == 1 and "$ref" in all_of[0]:
        return all_of[0]["$ref"]
    return None


def _folded(title: str, description: str, properties: dict[str, Any]) -> dict[str, Any]:
    """A section the form shows folded: two buttons, "Defaults" (the value ``null``: the section's defaults) and
    "Edit" (its fields). The ``anyOf`` draws the buttons (Prefect's form renders an ``anyOf`` as a choice); the
    fields are validated by this schema's own ``properties``, so a bad value inside is reported at its own path,
    not as "not valid under any of the given schemas". The "Edit" choice lists the field names (no rules) so
    that the form recognises a value as one of its sections."""
    return {
        "title": title,
        "description": description,
        "default": None,
        "anyOf": [
            {"type": "null", "title": DEFAULTS_LABEL},
            {"type": "object", "title": EDIT_LABEL, "properties": {k: {} for k in properties}},
        ],
        "properties": properties,
        "additionalProperties": False,
    }


def _fold_sections(properties: dict[str, Any], handler: GetJsonSchemaHandler) -> dict[str, Any]:
    """``properties`` with every field that is a section (a model) folded (:func:`_folded`), its own sections
    too, and each field's ``position`` (the form's order; PostgreSQL's JSONB keeps no key order)."""
    out: dict[str, Any] = {}
    for i, (name, prop) in enumerate(properties.items()):
        ref = _ref_of(prop)
        if ref is not None:
            section = handler.resolve_ref_schema({"$ref": ref})
            inner = _fold_sections(copy.deepcopy(section.get("properties", {})), handler)
            prop = _folded(prop.get("title", name), prop.get("description", section.get("description", "")), inner)
        out[name] = {**prop, "position": i}
    return out


def _form_shape(schema: dict[str, Any], handler: GetJsonSchemaHandler) -> None:
    """RetrainConfig's JSON Schema, in place, as the run form shows it (module docstring)."""
    properties = schema["properties"]
    flat = {name: copy.deepcopy(prop) for name, prop in properties.items() if name not in FORM_TOP}
    folded = _fold_sections(flat, handler)
    top = {name: properties[name] for name in FORM_TOP}
    top[ADVANCED] = _folded(
        "Advanced settings",
        "everything else, at its defaults unless edited here: the reference symbols, labels, features, folds, "
        "models, stacking, trade gate, backtest, health gate, promotion, report, bot-side guards, where tasks run",
        folded,
    )
    schema["properties"] = {name: {**prop, "position": i} for i, (name, prop) in enumerate(top.items())}
    # the same keys flat, as config files and `--set` write them (and runs started before the form had its
    # sections): accepted and validated, not drawn by the form (it draws ``properties`` only)
    schema["patternProperties"] = {
        f"^{name}$": ({"anyOf": [{"type": "null"}, {"$ref": ref}]} if (ref := _ref_of(prop)) is not None else prop)
        for name, prop in flat.items()
    }


# --------------------------------------------------------------------------------------------- building


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise ConfigError(f"--set value {text[:40]!r}...: nested too deeply") from None
    except json.JSONDecodeError:
        if "," in text and not text.startswith(("[", "{")):
            return [_parse_value(t) for t in text.split(",")]
        return text


def _set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {key}: '{p}' is not a section")
        cur = nxt
    cur[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, **fields: Any) -> RetrainConfig:
    """Config file (JSON or TOML) < keyword fields (CLI flags) < ``key=value`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            text = p.read_bytes().decode("utf-8")
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read config ({exc.strerror})") from None
        except UnicodeDecodeError as exc:
            line = p.read_bytes()[: exc.start].count(b"\n") + 1
            raise ConfigError(f"{p}: not UTF-8 text (invalid byte at line {line})") from None
        try:
            data = tomllib.loads(text) if p.suffix.lower() == ".toml" else json.loads(text)
        except RecursionError:
            raise ConfigError(f"{p}: nested too deeply to be a config") from None
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{p}: not valid {'TOML' if p.suffix.lower() == '.toml' else 'JSON'}: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: the top level must be a table/object")
    for k, v in fields.items():
        if v is not None:
            data[k] = v
    apply_overrides(data, overrides or [])
    return validate_config(data)


def apply_overrides(data: dict[str, Any], overrides: list[str], prefix: str | None = None) -> dict[str, Any]:
    """Apply ``key=value`` items (dotted keys, values parsed as JSON, else a comma list, else text) to ``data``
    in place. With ``prefix``, only keys under it are accepted (a stage that uses one config section)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        k, v = (t.strip() for t in item.split("=", 1))
        if prefix and not k.startswith(prefix + "."):
            raise ConfigError(f"--set {k}: only {prefix}.* keys apply to this stage")
        _set_dotted(data, k, _parse_value(v))
    return data


def _reject_booleans(model: type[BaseModel], data: Any, path: str = "") -> None:
    """pydantic (lax mode) reads ``true`` as 1 for an int field: ``horizons=[true]`` would mean 1 hour.
    A boolean is accepted only where the field is a boolean."""
    if not isinstance(data, dict):
        return
    for name, field in model.model_fields.items():
        if name not in data:
            continue
        key = f"{path}{name}"
        ann = field.annotation
        value = data[name]
        sub = _model_in(ann)
        if sub is not None:
            _reject_booleans(sub, value, key + ".")
            if isinstance(value, list):
                for v in value:
                    _reject_booleans(sub, v, key + ".")
            continue
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, bool) for v in values) and not _allows_bool(ann):
            raise ConfigError(f"config key '{key}': expected a number, got a boolean ({value!r})")
        if ann is bool and not isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ConfigError(f"config key '{key}': expected a finite number, got {value!r}")


def _allows_bool(ann: Any) -> bool:
    if ann is bool or ann is Any:
        return True
    return any(_allows_bool(a) for a in get_args(ann))


def _model_in(ann: Any) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for a in get_args(ann):
        found = _model_in(a)
        if found is not None:
            return found
    return None


def validate_config(data: dict[str, Any]) -> RetrainConfig:
    """A config from a file, ``--set`` or the run form (flat or in the form's shape); every error is one line
    naming the key: ``config key 'horizons': ...``."""
    try:
        data = from_form(data)
    except KeyedError as exc:
        raise ConfigError(f"config key '{exc.key}': {exc}") from None
    _reject_booleans(RetrainConfig, data)
    try:
        return RetrainConfig.model_validate(data)
    except ValidationError as exc:
        e = exc.errors()[0]
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        msg = e["msg"].removeprefix("Value error, ")
        cause = (e.get("ctx") or {}).get("error")
        if isinstance(cause, ConfigError):  # already names its key
            raise ConfigError(f"{cause}{more}") from None
        if isinstance(cause, KeyedError):  # a rule across keys: the key to change
            raise ConfigError(f"config key '{cause.key}': {msg}{more}") from None
        if not e["loc"]:  # a check across keys: its message names them
            raise ConfigError(f"config: {msg}{more}") from None
        key = ".".join(str(x) for x in e["loc"])
        raise ConfigError(f"config key '{key}': {msg}{more}") from None
