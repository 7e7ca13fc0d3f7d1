"""Everything knowable from the config and the data's shape, checked before the first write (docs/data.md, "Running
on your own candles").

The CLI calls :func:`preflight` before it starts a Prefect server; the flow calls it first thing too (runs from
the UI or a schedule never pass through the CLI), and finds the CLI's result there: preflight runs once per run.
Bad input ends with one line naming the file, row or key, exit code 2, and nothing written. It runs the same
code the pipeline runs (ingest, features, labels, folds) on the data in memory, then checks what the later
stages will need:

- at least one feature row, and every horizon labelled with both classes in the development rows;
- the walk-forward folds can be built (``make_folds`` raises with the key to change);
- every enabled model has enough fitting rows in the smallest fold to learn anything (a LightGBM with
  ``min_data_in_leaf`` 100 on 150 rows can only predict a constant);
- the stacker's inner walk-forward fits in the out-of-fold rows;
- pooled training (``models.pooled``) has at least one symbol besides the target and its cross symbols.

Only when every check passed does it write, under ``OUT/cache`` (tasks/candles.py, tasks/table.py): the validated
candles and the feature table, which ingest and the features stage then read instead of parsing and building
again, and a signed record of the passed preflight for this config, code and candles. It imports no Prefect.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from macd_ml.artifacts import catalog
from macd_ml.artifacts.codehash import code_version
from macd_ml.artifacts.records import load_signed, save_signed
from macd_ml.artifacts.store import cache_dir, sha256_file
from macd_ml.errors import ConfigError, DataError
from macd_ml.features.build import FeatureTable, feature_fingerprint, table_until
from macd_ml.features.ingest import Candles, Market, default_cross, load_market, panel_symbols
from macd_ml.features.labels import align_labels, label_name, make_labels
from macd_ml.features.splits import Folds, make_folds
from macd_ml.features.synth import synth_market
from macd_ml.flows.config import RetrainConfig
from macd_ml.models.ensemble.stacking import MIN_INNER_BLOCK, inner_block_size
from macd_ml.models.learners.registry import min_fit_rows
from macd_ml.tasks.candles import candle_reader, store_candles, write_synthetic_market
from macd_ml.tasks.keys import make_key
from macd_ml.tasks.table import feature_table, store_table


@dataclass(frozen=True)
class Shape:
    """What preflight learned (the CLI prints nothing of it; tests read it)."""

    bars: int
    feature_rows: int
    folds: Folds
    n_oof: int


def _market(config: RetrainConfig, out_dir: Path | None) -> Market:
    if config.data_dir:
        asked = config.cross_symbols()
        cross = asked if asked is not None else default_cross(config.data_dir, config.target)
        return load_market(config.data_dir, config.target, cross, read=candle_reader(out_dir, store=False))
    spec = config.synthetic
    frames = synth_market(
        spec.symbols, spec.hours, spec.seed, spec.signal, gaps=spec.gaps, trade_signal=spec.trade_signal
    )
    if config.target not in frames:
        raise ConfigError(f"config key 'target': {config.target} is not among synthetic.symbols {spec.symbols}")
    asked = config.cross_symbols()
    cross = asked if asked is not None else (["BTCUSDT"] if "BTCUSDT" in frames and config.target != "BTCUSDT" else [])
    missing = [c for c in cross if c not in frames]
    if missing:
        raise ConfigError(f"config key 'cross': {missing} not among synthetic.symbols {spec.symbols}")

    def candles(sym: str) -> Candles:
        return Candles(symbol=sym, path=Path(f"<synthetic {sym}>"), sha256="synthetic", frame=frames[sym])

    return Market(target=candles(config.target), cross=tuple(candles(c) for c in cross))


def preflight(config: RetrainConfig, out_dir: Path | str | None = None) -> Shape:
    """Check the run ``config`` describes; with ``out_dir``, reuse what an earlier preflight of the same config,
    code and candles stored there, and store this one's inputs and result once every check passed."""
    out = Path(out_dir) if out_dir is not None else None
    record = _record_folder(config, out) if out is not None else None
    if record is not None and (shape := _passed(record)) is not None:
        return shape
    whole = _market(config, out)
    market = whole.until(config.until)
    bars = market.target.frame.height
    whole_table = feature_table(whole, config.features, config.gap_tolerance_hours, out, store=False)
    table = whole_table
    if config.until is not None:  # every cutoff of a walk-forward slices the one whole table
        table = table_until(whole_table, market, config.features, config.gap_tolerance_hours)
    n = table.frame.height
    if n == 0:
        raise ConfigError(
            f"{market.target.symbol}: {bars} bars leave no feature rows after the warm-up of "
            f"features.warmup_bars={config.features.warmup_bars} bars per contiguous stretch; supply more data"
        )
    labels = make_labels(
        market.target.frame,
        config.horizons,
        dead_zone_bps=config.dead_zone_bps,
        gap_tolerance_hours=config.gap_tolerance_hours,
    )
    y = align_labels(table.frame, labels)
    for h in config.horizons:
        if y[label_name(h)].drop_nulls().len() == 0:
            raise ConfigError(
                f"config key 'horizons': h={h} h is longer than any contiguous stretch of the "
                f"{bars} bars of data, so no row has a label; use a shorter horizon or more data"
            )
    folds = make_folds(table.frame[catalog.TIMESTAMP], config.horizons, config.folds)
    dev = y.slice(0, folds.holdout.start)
    for h in config.horizons:
        col = dev[label_name(h)].drop_nulls()
        if col.len() == 0 or col.n_unique() < 2:
            raise ConfigError(
                f"config key 'horizons': h={h} h leaves {col.len()} labelled development rows "
                f"{'of one class only ' if col.len() else ''}in {bars} bars of data; use a shorter horizon or more data"
            )
    _check_models(config, folds, y)
    _check_panel(config, market)
    n_oof = sum(len(f.test) for f in folds.folds)
    size = inner_block_size(n_oof, config.stacking.inner_folds, config.stacking.min_train_fraction)
    if size < MIN_INNER_BLOCK:
        raise ConfigError(
            f"config key 'stacking.inner_folds': {n_oof} out-of-fold rows give inner blocks of {size} rows "
            f"(at least {MIN_INNER_BLOCK} needed); lower stacking.inner_folds or supply more data"
        )
    shape = Shape(bars=bars, feature_rows=n, folds=folds, n_oof=n_oof)
    if out is not None:
        if config.data_dir:
            for c in (whole.target, *whole.cross):
                store_candles(c, out)
            store_table(whole_table, whole, config.features, config.gap_tolerance_hours, out)
        else:
            _store_synthetic(config, out, whole, whole_table)
        if record is not None:
            _remember(record, shape)
    return shape


def _store_synthetic(config: RetrainConfig, out: Path, generated: Market, table: FeatureTable) -> None:
    """The synthetic market checked here lived in memory: write its files (as the flow's first stage would, the
    same folder), read them back once (stored as every candle file is), and store the table built here under the
    files' content when the candles read back equal the ones it was built from (else the features stage builds)."""
    folder = write_synthetic_market(config.synthetic, out)
    cross = [c.symbol for c in generated.cross]
    stored = load_market(folder, config.target, cross, read=candle_reader(out))
    pairs = zip((generated.target, *generated.cross), (stored.target, *stored.cross))
    if all(a.frame.equals(b.frame) for a, b in pairs):
        spec, gap = config.features, config.gap_tolerance_hours
        table = dataclasses.replace(table, fingerprint=feature_fingerprint(stored, spec, gap))
        store_table(table, stored, spec, gap, out)


def _record_folder(config: RetrainConfig, out: Path) -> Path | None:
    """Keyed on the config's content, the code and the candle files' bytes (their sha256: no parse); None when
    the files cannot be hashed (the checks then run and say why)."""
    try:
        files = input_files(config) if config.data_dir else {}
    except (DataError, OSError):
        return None
    params = {"config": config.model_dump(mode="json", exclude={"force", "out_dir"}), "files": files}
    return cache_dir(out, "preflight", make_key("preflight", code_version(__name__), params))


def input_files(config: RetrainConfig) -> dict[str, str]:
    """Symbol -> sha256 of each candle file a run of ``config`` reads (target, cross, pooled panel)."""
    from macd_ml.features.ingest import find_symbol_file

    asked = config.cross_symbols()
    cross = asked if asked is not None else default_cross(config.data_dir, config.target)
    files = {s: sha256_file(find_symbol_file(Path(config.data_dir), s)) for s in [config.target, *cross]}
    if config.models.pooled:
        files.update(
            {
                s: sha256_file(find_symbol_file(Path(config.data_dir), s))
                for s in panel_symbols(config.data_dir, config.target, cross)
            }
        )
    return files


def _remember(record: Path, shape: Shape) -> None:
    doc = {"bars": shape.bars, "feature_rows": shape.feature_rows, "n_oof": shape.n_oof}
    save_signed(record, "preflight", {**doc, "folds": shape.folds.model_dump(mode="json")})


def _passed(record: Path) -> Shape | None:
    """The shape an earlier preflight of this config, code and candles found, when its record verifies."""
    doc = load_signed(record, "preflight")
    if doc is None:
        return None
    try:
        folds = Folds.model_validate(doc["folds"])
        return Shape(bars=doc["bars"], feature_rows=doc["feature_rows"], n_oof=doc["n_oof"], folds=folds)
    except (ValueError, KeyError, TypeError):
        return None  # the checks run again (and say what is wrong, if anything)


def _check_panel(config: RetrainConfig, market: Market) -> None:
    if not config.models.pooled:
        return
    cross = [c.symbol for c in market.cross]
    if config.data_dir:
        panel = panel_symbols(config.data_dir, config.target, cross)
    else:
        panel = [s for s in config.synthetic.symbols if s != config.target and s not in cross]
    if not panel:
        raise ConfigError(
            f"config key 'models.pooled': the data has no symbol besides the target {config.target} and the cross "
            f"symbols {cross} to pool with; add candle files or leave models.pooled empty"
        )


def _check_models(config: RetrainConfig, folds: Folds, y: pl.DataFrame) -> None:
    smallest = min([*folds.folds, folds.refit], key=lambda f: len(f.fit))
    fit = y.slice(smallest.fit.start, len(smallest.fit))
    labelled = min(int(fit[label_name(h)].drop_nulls().len()) for h in config.horizons)
    for name in config.models.trained():
        need, why = min_fit_rows(name, config.models.params_for(name))
        if labelled < need:
            raise ConfigError(
                f"config key 'models.{name}': fold {smallest.index} has {labelled} labelled fitting rows, "
                f"{name} needs at least {need} ({why}); supply more data, lower folds.n_folds or change that parameter"
            )
