"""Walk-forward: retrain the way a nightly schedule would have, one child per cutoff, trade each model only on the
bars after its data, and stitch the segments into one out-of-sample track record (docs/walkforward.md).

    cutoffs (every ``every`` from ``start``) ─► one child retrain per (target, cutoff) (flows/children.py:
    features built once per target, each cutoff slices them, labels end at the cutoff) ─► per target: segment i =
    the bars after cutoff i up to cutoff i+1, traded by the newest child that shipped by then (a refused child
    leaves the bot on its predecessor), scored from raw candles through its bundle ─► stitched track record with
    moving-block intervals (serving/track_record.py), pooled over the targets ─► report files + UI artifact.

A child's home is ``OUT/walkforward/TARGET/SETTINGS/CUTOFF`` (SETTINGS: a digest of the child's config without
its target and cutoff), so the same walk-forward run again finds every child (Cached), one extended by a month
trains only the new cutoff, and other settings never meet these runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, ConfigDict, Field, field_validator

from macd_ml.artifacts import catalog
from macd_ml.artifacts.store import write_bytes, write_json
from macd_ml.errors import ConfigError
from macd_ml.features.form import OptionalTime, optional_field
from macd_ml.flows.children import (
    Child,
    ChildResult,
    cross_for,
    finish,
    remember_parent,
    run_children,
    table,
    write_children,
)
from macd_ml.flows.config import RetrainConfig, config_parameter, given
from macd_ml.flows.locations import resolve as resolve_locations
from macd_ml.flows.unchanged import published_config
from macd_ml.tasks.results import SafeJSONSerializer

log = logging.getLogger(__name__)

LIGHT_MODELS = ["lgb", "xgb"]  # with the reference, which trains in every run
_EVERY = re.compile(r"^\s*(\d+)\s*([hdw])\s*$")


class WalkForwardSpec(BaseModel):
    """Which cutoffs, which targets, which models."""

    model_config = ConfigDict(extra="forbid")

    every: str = Field(default="30d", description="time between cutoffs: N h, N d or N w (e.g. 30d)")
    start: OptionalTime = optional_field(
        "the first cutoff (ISO time, UTC); empty = 12 cutoffs back from the newest bar"
    )
    end: OptionalTime = optional_field("no cutoff after this (ISO time, UTC); empty = none")
    targets: list[str] = Field(default=[], description="symbols, pooled in one record; empty = the config's target")
    profile: Literal["light", "full"] = Field(
        default="light",
        description="'light' = LightGBM + XGBoost (+ the reference), no report plots: long histories; 'full' = the "
        "config's models as they are",
    )

    @field_validator("every")
    @classmethod
    def _every(cls, v: str) -> str:
        if _EVERY.match(v) is None or int(_EVERY.match(v).group(1)) == 0:  # type: ignore[union-attr]
            raise ValueError(f"every {v!r}: expected a positive N h, N d or N w (e.g. 30d)")
        return v.strip()

    @field_validator("start", "end")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        from datetime import UTC

        return None if v is None else (v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC))

    @field_validator("targets", mode="before")
    @classmethod
    def _upper(cls, v):
        if isinstance(v, str):
            v = v.split(",")
        return [s.strip().upper() for s in v if isinstance(s, str) and s.strip()] if isinstance(v, list) else v

    def step(self) -> timedelta:
        n, unit = _EVERY.match(self.every).groups()  # type: ignore[union-attr]
        return timedelta(hours=int(n) * {"h": 1, "d": 24, "w": 24 * 7}[unit])


def cutoffs(spec: WalkForwardSpec, first_bar: datetime, last_bar: datetime) -> list[datetime]:
    """Every ``every`` from ``start`` while a bar is left after the cutoff (and up to ``end``)."""
    step = spec.step()
    start = spec.start or last_bar - 12 * step
    if start <= first_bar:
        raise ConfigError(f"walk-forward start {start.isoformat()} is not after the first bar {first_bar.isoformat()}")
    stop = min(last_bar, spec.end + timedelta(microseconds=1)) if spec.end else last_bar
    out, t = [], start
    while t < stop:
        out.append(t)
        t += step
    if not out:
        raise ConfigError(
            f"walk-forward: no cutoff between {start.isoformat()} and the newest bar {last_bar.isoformat()}"
        )
    return out


def child_config(
    config: RetrainConfig, spec: WalkForwardSpec, target: str, until: datetime, out: Path
) -> RetrainConfig:
    """The retrain one cutoff runs: the walk-forward's config for ``target``, cut at ``until``, published under
    a home of its own (module docstring)."""
    update: dict = {
        "target": target,
        "targets": [],
        "cross": cross_for(config, target),
        "until": until,
        "out_dir": str(out),
    }
    if spec.profile == "light":
        update["models"] = config.models.model_copy(update={"enabled": LIGHT_MODELS, "pooled": []})
        update["report"] = config.report.model_copy(update={"plots": False})
    child = config.model_copy(update=update)
    settings = {k: v for k, v in published_config(child).items() if k not in ("until", "run_home", "target", "out_dir")}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    home = out / "walkforward" / target / digest / f"{until:%Y%m%dT%H%MZ}"
    return RetrainConfig.model_validate({**child.model_dump(), "run_home": str(home)})


def plan(config: RetrainConfig, spec: WalkForwardSpec, data_dir: str, out: Path) -> list[Child]:
    """The children: one per (target, cutoff), cutoffs from each target's own candles."""
    from macd_ml.features.ingest import find_symbol_file
    from macd_ml.tasks.candles import candle_reader

    children = []
    for target in spec.targets or [config.target]:
        ts = candle_reader(out)(find_symbol_file(Path(data_dir), target), target).frame[catalog.TIMESTAMP]
        for t in cutoffs(spec, ts[0], ts[-1]):
            children.append(
                Child(name=f"{target}@{t:%Y-%m-%dT%H:%M}", config=child_config(config, spec, target, t, out))
            )
    return children


def record_of(children: list[Child], rows: list, config: RetrainConfig, out: Path) -> dict:
    """Per target the stitched track record; with several targets, their pool. A target's record starts at its
    first cutoff that shipped: before that the bot had no model to gate with, and those cutoffs are listed under
    ``untraded`` (a gate with no model would take no trade: not a figure of the gate)."""
    from macd_ml.serving.backtest import Source
    from macd_ml.serving.track_record import Segment, pool, stitch
    from macd_ml.tasks.candles import candle_reader

    records: dict[str, dict] = {}
    untraded: dict[str, list[str]] = {}
    by_target: dict[str, list[tuple[Child, object]]] = {}
    for child, row in zip(children, rows):
        by_target.setdefault(child.config.target, []).append((child, row))
    for target, pairs in by_target.items():
        pairs.sort(key=lambda cr: _until(cr[0]))
        segments, current = [], None
        for i, (child, row) in enumerate(pairs):
            if isinstance(row, ChildResult) and row.status == "promoted" and row.run is not None:
                current = Source.load(row.run.path)  # a refused or failed cutoff: the bot keeps its model
            if current is None:
                untraded.setdefault(target, []).append(child.name)
                continue
            until = _until(child)
            nxt = _until(pairs[i + 1][0]) if i + 1 < len(pairs) else datetime.max.replace(tzinfo=until.tzinfo)
            status = getattr(row, "status", "?")
            segments.append(
                Segment(current, until, nxt, f"{child.name} ({status}; trades with {current.bundle.run_id})")
            )
        if segments:
            records[target] = stitch(segments, config.data_dir, read=candle_reader(out))
    doc: dict = {"targets": records, "untraded": untraded}
    if len(records) > 1:
        first = next(iter(records.values()))
        spec = config.backtest
        doc["pooled"] = pool(records, spec.block_hours or max(first["horizon"], 24), spec.bootstrap, spec.seed)
    return doc


def _until(child: Child) -> datetime:
    assert child.config.until is not None, f"{child.name}: a walk-forward child has a cutoff"
    return child.config.until


# the UI form: the same shape as the retrain's (flows/config.py)
WALK_CONFIG = config_parameter("Each cutoff's retrain settings")


@flow(
    name="walkforward",
    log_prints=False,
    task_runner=ThreadPoolTaskRunner(max_workers=1),  # type: ignore[arg-type]  # threads: children in turn
    result_serializer=SafeJSONSerializer(),
    persist_result=False,
)
def walkforward(
    config: RetrainConfig = WALK_CONFIG,
    walk: WalkForwardSpec = Field(WalkForwardSpec(), json_schema_extra={"title": "Cutoffs, targets and profile"}),  # noqa: B008
) -> str:
    """Walk-forward track record: one retrain per cutoff (every ``walk.every`` from ``walk.start``), each trading
    only the bars after its data through its bundle, stitched into one record with bootstrap intervals.
    Returns the report folder. Fails (after writing the report) when a child failed: a Retry then runs only the
    failed children.

    Args:
        config: the retrain each cutoff runs (its target, models, folds ...; until and run_home are set per child).
        walk: the cutoffs, the targets and the model profile.
    """
    from macd_ml.tasks.candles import write_synthetic_market

    logger = get_run_logger()
    config, walk = given(config), given(walk)
    config = resolve_locations(config)
    out = Path(config.out_dir).resolve()
    data_dir = config.data_dir or str(write_synthetic_market(config.synthetic, out))
    config = config.model_copy(update={"data_dir": data_dir})
    children = plan(config, walk, data_dir, out)
    logger.info(
        "walk-forward: %d children (%s every %s)", len(children), ", ".join(walk.targets or [config.target]), walk.every
    )
    folder = report_folder(out, walk, children)
    remember_parent(
        folder, "walkforward", {"config": config.model_dump(mode="json"), "walk": walk.model_dump(mode="json")}
    )
    rows = run_children(children, config.fan_out, out, config.force)
    report = write_report(out, walk, config, children, rows)
    finish(rows, report)
    return str(report)


def report_folder(out: Path, walk: WalkForwardSpec, children: list[Child]) -> Path:
    settings = sorted({Path(c.config.run_home).parent.name for c in children})
    targets = "+".join(walk.targets or sorted({c.config.target for c in children}))
    return out / "walkforward" / "reports" / f"{targets}-every{walk.every}-{'-'.join(settings)}"


def write_report(out: Path, walk: WalkForwardSpec, config: RetrainConfig, children: list[Child], rows: list) -> Path:
    """track_record.json (children, per-target records, pool), track_record.md and the plots; a UI artifact."""
    from macd_ml.models.evaluation.plots import plot_equity
    from macd_ml.models.evaluation.report import track_record_markdown

    folder = report_folder(out, walk, children)
    folder.mkdir(parents=True, exist_ok=True)
    shipped = [r for r in rows if isinstance(r, ChildResult) and r.run is not None]
    doc: dict = {"walk": walk.model_dump(mode="json"), "children": [r.model_dump(mode="json") for r in rows]}
    if shipped:
        doc.update(record_of(children, rows, config, out))
        for target, rec in doc["targets"].items():
            plot_equity(folder / f"equity_{target}.png", rec["timestamps"], rec["equity"], rec)
        if "pooled" in doc:
            pooled = {
                **doc["pooled"],
                "horizon": next(iter(doc["targets"].values()))["horizon"],
                "threshold": None,
                "cost_bps": next(iter(doc["targets"].values()))["cost_bps"],
            }
            plot_equity(folder / "equity_pooled.png", pooled["timestamps"], pooled["equity"], pooled)
    write_children(folder, rows)
    md = track_record_markdown(doc, table(rows))
    write_bytes(folder / "track_record.md", md.encode())
    write_json(folder / "track_record.json", _light(doc))
    _ui_artifact(md, {p.name: p.read_bytes() for p in folder.glob("equity_*.png")})
    return folder


def _light(doc: dict) -> dict:
    """The JSON without the per-bar curves (they are in the plots; the record's figures stay)."""
    keep = json.loads(json.dumps(doc, default=str))
    for rec in [*keep.get("targets", {}).values(), keep.get("pooled") or {}]:
        rec.pop("equity", None)
        rec.pop("timestamps", None)
        rec.pop("gate_returns", None)
    return keep


def _ui_artifact(markdown: str, images: dict[str, bytes]) -> None:
    """The report on the flow run's page, its plots embedded (the UI serves no files)."""
    from macd_ml.tasks.report import embed_images

    try:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(
            markdown=embed_images(markdown, images), key="walkforward-track-record", description="walk-forward"
        )
    except Exception as exc:  # noqa: BLE001 - the files are written; the UI copy is a convenience
        log.warning("could not publish the track record to the UI (%s)", exc)
