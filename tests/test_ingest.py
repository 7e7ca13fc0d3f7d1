"""Input data (docs/data.md, "Running on your own candles"): every accepted file shape reads to the same normalised
frame; every bad input fails through the CLI with exit code 2, one line naming the file and the row or column,
and nothing written; gap reporting on the real Binance candles."""

from __future__ import annotations

import csv
import io
import json
import re
import sys
import time
import types
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from macd_ml.artifacts.store import sha256_file
from macd_ml.errors import DataError
from macd_ml.features.ingest import (
    default_cross,
    find_symbol_file,
    gap_report,
    load_market,
    read_candles,
    symbol_files,
    validate_candles,
)
from macd_ml.features.segments import segment_ids
from macd_ml.features.synth import synth_market
from tests.cliutil import cli, console_script

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/binance_spot_1h"
REAL_SYMBOLS = ("ETHUSDT", "BTCUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT")
VALUES = ("open", "high", "low", "close", "volume")
SCHEMA = {"timestamp": pl.Datetime("us", "UTC"), **{c: pl.Float64 for c in VALUES}}


# --------------------------------------------------------------------------------------------- synthetic candles


def _binance_rounded(df: pl.DataFrame) -> pl.DataFrame:
    """Values with 8 decimals, as Binance prints them, so every text format round-trips exactly."""
    return df.with_columns(pl.Series(c, [float(f"{v:.8f}") for v in df[c]]) for c in VALUES)


@pytest.fixture(scope="module")
def market() -> dict[str, pl.DataFrame]:
    """ETHUSDT and BTCUSDT, 200 hours from 2022-01-01 with two outage gaps (so gaps must survive every format)."""
    m = synth_market(["ETHUSDT", "BTCUSDT"], hours=200, seed=3, gaps=2)
    return {s: _binance_rounded(df) for s, df in m.items()}


@pytest.fixture(scope="module")
def eth(market) -> pl.DataFrame:
    return market["ETHUSDT"]


def test_synthetic_base_is_what_the_shape_tests_assume(eth):
    assert eth.schema == pl.Schema(SCHEMA)
    assert eth["timestamp"].is_sorted() and eth["timestamp"].n_unique() == eth.height
    assert gap_report(eth).n_gaps == 2  # the fixture really has gaps to carry through
    assert eth.height > 150


def _text_time(fmt: str, shift_minutes: int = 0) -> pl.Expr:
    """Wall-clock time ``shift_minutes`` away from UTC, printed with ``fmt`` (which carries the offset text)."""
    return (pl.col("timestamp") + pl.duration(minutes=shift_minutes)).dt.strftime(fmt)


def _csv(df: pl.DataFrame, path: Path, *, header: bool = True, float_precision: int | None = None) -> Path:
    df.write_csv(path, include_header=header, float_precision=float_precision)
    return path


def _epoch(unit: str) -> pl.Expr:
    mult = {"s": 1, "ms": 1_000, "us": 1_000_000}[unit]
    return pl.col("timestamp").dt.epoch("s") * mult


def _kline(df: pl.DataFrame, unit: str) -> pl.DataFrame:
    """Binance's 12-column kline layout (what data.binance.vision ships, without a header)."""
    mult = {"s": 1, "ms": 1_000, "us": 1_000_000}[unit]
    return df.select(
        _epoch(unit).alias("open_time"),
        *VALUES,
        (_epoch(unit) + 3600 * mult - 1).alias("close_time"),
        (pl.col("close") * pl.col("volume")).alias("quote_volume"),
        pl.int_range(pl.len()).add(1000).alias("trades"),
        (pl.col("volume") / 2).alias("taker_base"),
        (pl.col("close") * pl.col("volume") / 2).alias("taker_quote"),
        pl.lit(0).alias("ignore"),
    )


def _w_binance_text(df, d):  # (a) exactly the layout of ../shared/data/binance_spot_1h
    out = df.select(_text_time("%Y-%m-%d %H:%M:%S").alias("date"), *VALUES, ticker=pl.lit("ETHUSDT"))
    return _csv(out, d / "ETHUSDT_1h.csv", float_precision=8)


def _w_capitalised_plus_colon(df, d):  # (b)
    out = df.select(_text_time("%Y-%m-%d %H:%M:%S+00:00").alias("Date"), *(pl.col(c).alias(c.title()) for c in VALUES))
    return _csv(out, d / "ETHUSDT_1h.csv")


def _w_plus_0000(df, d):  # (c)
    return _csv(df.with_columns(_text_time("%Y-%m-%d %H:%M:%S+0000").alias("timestamp")), d / "ETHUSDT_1h.csv")


def _w_iso_t_z(df, d):  # (d)
    return _csv(df.with_columns(_text_time("%Y-%m-%dT%H:%M:%SZ").alias("timestamp")), d / "ETHUSDT_1h.csv")


def _w_offset(minutes: int, suffix: str):  # (e) local wall-clock time plus its offset
    def write(df, d):
        t = _text_time(f"%Y-%m-%dT%H:%M:%S{suffix}", shift_minutes=minutes).alias("datetime")
        return _csv(df.select(t, *VALUES), d / "ETHUSDT_1h.csv")

    return write


def _w_kline(unit: str, newest_first: bool = False):  # (f), (g)
    def write(df, d):
        k = _kline(df, unit)
        return _csv(k.reverse() if newest_first else k, d / "ETHUSDT_1h.csv", header=False)

    return write


def _w_header_epoch(unit: str, name: str):
    def write(df, d):
        return _csv(df.select(_epoch(unit).alias(name), *VALUES), d / "ETHUSDT_1h.csv")

    return write


def _w_newest_first_text(df, d):  # (g)
    return _w_binance_text(df.reverse(), d)


def _w_parquet(transform: Callable[[pl.DataFrame], pl.DataFrame]):  # (h)
    def write(df, d):
        path = d / "ETHUSDT_1h.parquet"
        transform(df).write_parquet(path)
        return path

    return write


def _w_extra_columns_any_case(df, d):  # (i)
    out = df.select(
        pl.lit("ETHUSDT").alias("Symbol"),
        pl.col("volume").alias("VOLUME"),
        _text_time("%Y-%m-%d %H:%M:%S").alias("TimeStamp"),
        pl.col("close").alias("Close"),
        pl.int_range(pl.len()).alias("trades"),
        pl.col("low").alias("LOW"),
        pl.col("high").alias("hIgH"),
        (pl.col("close") * 2).alias("close_x2"),  # a look-alike name must not be picked
        pl.col("open").alias("Open"),
    )
    return _csv(out, d / "ETHUSDT_1h.csv")


SHAPES = {
    "a-binance-naive-utc-text": _w_binance_text,
    "b-Date-Open-plus00:00": _w_capitalised_plus_colon,
    "c-timestamp-plus0000": _w_plus_0000,
    "d-iso-T-Z": _w_iso_t_z,
    "e-offset-plus02:00": _w_offset(120, "+02:00"),
    "e-offset-minus05:00": _w_offset(-300, "-05:00"),
    "e-offset-plus0530": _w_offset(330, "+0530"),
    "f-kline-headerless-ms": _w_kline("ms"),
    "f-kline-headerless-s": _w_kline("s"),
    "f-kline-headerless-us": _w_kline("us"),
    "header-epoch-seconds": _w_header_epoch("s", "timestamp"),
    "header-open_time-ms": _w_header_epoch("ms", "open_time"),
    "g-newest-first-text": _w_newest_first_text,
    "g-newest-first-kline": _w_kline("ms", newest_first=True),
    "h-parquet-datetime-utc": _w_parquet(lambda df: df),
    "h-parquet-datetime-naive-ms": _w_parquet(
        lambda df: df.with_columns(pl.col("timestamp").dt.replace_time_zone(None).dt.cast_time_unit("ms"))
    ),
    "h-parquet-datetime-berlin": _w_parquet(
        lambda df: df.with_columns(pl.col("timestamp").dt.convert_time_zone("Europe/Berlin"))
    ),
    "h-parquet-int-epoch-ms": _w_parquet(lambda df: df.select(_epoch("ms").alias("open_time"), *VALUES)),
    "h-parquet-newest-first": _w_parquet(lambda df: df.reverse()),
    "i-extra-columns-any-case": _w_extra_columns_any_case,
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_shape_reads_to_the_same_normalised_frame(shape, eth, tmp_path):
    path = SHAPES[shape](eth, tmp_path)
    before = path.read_bytes()

    c = read_candles(path)

    assert c.frame.schema == pl.Schema(SCHEMA)
    assert_frame_equal(c.frame, eth, check_exact=True)
    assert c.frame["timestamp"].is_sorted()
    assert c.symbol == "ETHUSDT"
    assert c.sha256 == sha256_file(path)
    assert c.gaps == gap_report(eth)
    assert path.read_bytes() == before  # read, never rewritten
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_shapes_really_differ_on_disk(eth, tmp_path):
    """Guard for the test above: each writer produces a distinct file (no two shapes silently the same)."""
    contents = {}
    for name, write in SHAPES.items():
        d = tmp_path / name
        d.mkdir()
        contents[name] = write(eth, d).read_bytes()
    assert len(set(contents.values())) == len(SHAPES)
    assert contents["a-binance-naive-utc-text"].startswith(
        b"date,open,high,low,close,volume,ticker\n2022-01-01 00:00:00,"
    )
    assert contents["e-offset-plus02:00"].split(b"\n")[1].startswith(b"2022-01-01T02:00:00+02:00,")
    assert contents["e-offset-minus05:00"].split(b"\n")[1].startswith(b"2021-12-31T19:00:00-05:00,")
    first_kline = contents["f-kline-headerless-ms"].split(b"\n")[0].split(b",")
    assert len(first_kline) == 12 and first_kline[0] == b"1640995200000" and first_kline[6] == b"1640998799999"
    assert contents["f-kline-headerless-us"].startswith(b"1640995200000000,")
    assert contents["f-kline-headerless-s"].startswith(b"1640995200,")


def test_non_utc_offset_converts_to_utc(tmp_path):
    p = tmp_path / "X.csv"
    p.write_text(
        "timestamp,open,high,low,close,volume\n"
        "2024-03-10 02:00:00+02:00,10,11,9,10.5,1\n"  # 00:00 UTC
        "2024-03-09T22:00:00-03:00,10,11,9,10.5,1\n"  # 01:00 UTC
        "2024-03-10T07:30:00+0530,10,11,9,10.5,1\n"  # 02:00 UTC
        "2024-03-10 03:00:00Z,10,11,9,10.5,1\n"
    )
    got = read_candles(p).frame["timestamp"].to_list()
    assert got == [datetime(2024, 3, 10, h, tzinfo=timezone.utc) for h in range(4)]


# --------------------------------------------------------------------------------------------- finding files


def _write_as(df: pl.DataFrame, path: Path) -> Path:
    if path.suffix.lower() == ".parquet":
        df.write_parquet(path)
    else:
        df.write_csv(path)
    return path


@pytest.mark.parametrize(
    "name", ["ETHUSDT_1h.csv", "ETHUSDT.csv", "ethusdt_1h.parquet", "EthUsdt_1H.CSV", "ethusdt.PARQUET"]
)
def test_symbol_file_names_are_found_case_insensitively(name, market, tmp_path):
    path = _write_as(market["ETHUSDT"], tmp_path / name)
    _write_as(market["BTCUSDT"], tmp_path / "btcusdt_1h.csv")
    (tmp_path / "README.txt").write_text("not candles")
    (tmp_path / "ETHUSDT_1h.csv.bak").write_text("not candles either")
    (tmp_path / "SOLUSDT_1h.csv").mkdir()  # a folder with a candle-like name is not a file

    assert symbol_files(tmp_path) == {"ETHUSDT": path, "BTCUSDT": tmp_path / "btcusdt_1h.csv"}
    for asked in ("ETHUSDT", "ethusdt", "EthUsdt"):
        assert find_symbol_file(tmp_path, asked) == path

    m = load_market(tmp_path, "ethUSDT", ["BtcUsdt"])
    assert m.symbols == ["ETHUSDT", "BTCUSDT"]
    assert m.target.path == path
    assert_frame_equal(m.target.frame, market["ETHUSDT"], check_exact=True)
    assert_frame_equal(m.cross[0].frame, market["BTCUSDT"], check_exact=True)
    assert default_cross(tmp_path, "ethusdt") == ["BTCUSDT"]
    assert default_cross(tmp_path, "btcusdt") == []


@pytest.mark.parametrize(
    "names",
    [
        ("ETHUSDT_1h.csv", "ETHUSDT.csv"),
        ("ETHUSDT_1h.csv", "ethusdt_1h.parquet"),
        ("ETHUSDT.parquet", "ethusdt_1H.CSV"),
    ],
)
def test_two_files_for_one_symbol_is_an_error(names, eth, tmp_path):
    for n in names:
        _write_as(eth, tmp_path / n)
    for call in (
        lambda: symbol_files(tmp_path),
        lambda: find_symbol_file(tmp_path, "ETHUSDT"),
        lambda: load_market(tmp_path, "ETHUSDT"),
    ):
        with pytest.raises(DataError, match="two files for symbol ETHUSDT") as ei:
            call()
        assert all(n in str(ei.value) for n in names)


def test_missing_symbol_lists_what_is_there(eth, tmp_path):
    _write_as(eth, tmp_path / "ETHUSDT_1h.csv")
    with pytest.raises(DataError) as ei:
        find_symbol_file(tmp_path, "xyzusdt")
    msg = str(ei.value)
    assert msg.startswith(str(tmp_path)) and "XYZUSDT" in msg and "symbols found: ETHUSDT" in msg


# --------------------------------------------------------------------------------------------- bad input via the CLI


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def _write_rows(path: Path, rows: list[list[str]]) -> None:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    path.write_text(buf.getvalue())


def edit(fn: Callable[[list[list[str]]], None], file: str = "ETHUSDT_1h.csv"):
    """A case builder that edits the good CSV rows in place; rows[0] is the header, rows[n] data row n."""

    def make(d: Path, market) -> None:
        rows = _rows(d / file)
        fn(rows)
        _write_rows(d / file, rows)

    return make


def set_cell(row: int, **values: str):
    def fn(rows):
        for col, v in values.items():
            rows[row][rows[0].index(col)] = v

    return fn


def raw_line(row: int, fn: Callable[[bytes], bytes], file: str = "ETHUSDT_1h.csv"):
    """A case builder that rewrites the raw bytes of line ``row`` (0 = the header, n = data row n)."""

    def make(d: Path, market) -> None:
        lines = (d / file).read_bytes().split(b"\n")
        lines[row] = fn(lines[row])
        (d / file).write_bytes(b"\n".join(lines))

    return make


def write_bytes(data: bytes, file: str = "ETHUSDT_1h.csv"):
    def make(d: Path, market) -> None:
        (d / file).write_bytes(data)

    return make


def replace_eth(writer: Callable[[pl.DataFrame, Path], None]):
    """Replace the good ETHUSDT_1h.csv with another file written by ``writer(eth_frame, folder)``."""

    def make(d: Path, market) -> None:
        (d / "ETHUSDT_1h.csv").unlink()
        writer(market["ETHUSDT"], d)

    return make


def kline_lines(mutate: Callable[[list[list[str]]], None], width: int = 12):
    """Header-less kline CSV (epoch ms) where mutate(rows) edits rows[n - 1] = data row n (no header)."""

    def writer(df: pl.DataFrame, d: Path) -> None:
        buf = io.StringIO()
        _kline(df, "ms").write_csv(buf, include_header=False)
        rows = [r[:width] for r in csv.reader(io.StringIO(buf.getvalue()))]
        mutate(rows)
        _write_rows(d / "ETHUSDT_1h.csv", rows)

    return replace_eth(writer)


def _kline_time(row: int, value: str):
    """Set the open time of data row ``row`` of a header-less file (line ``row`` of the file)."""

    def fn(rows):
        rows[row - 1][0] = value

    return fn


def parquet_with(**exprs: pl.Expr):
    def writer(df: pl.DataFrame, d: Path) -> None:
        df.with_columns(**exprs).write_parquet(d / "ETHUSDT_1h.parquet")

    return replace_eth(writer)


def at_row(n: int, value, col: str) -> pl.Expr:
    """Column ``col`` with data row ``n`` (1-based) replaced by ``value``."""
    return pl.when(pl.int_range(pl.len()) == n - 1).then(value).otherwise(pl.col(col))


def _swap(a: int, b: int):
    def fn(rows):
        rows[a], rows[b] = rows[b], rows[a]

    return fn


def _reverse_then_swap(a: int, b: int):
    def fn(rows):
        rows[1:] = rows[1:][::-1]
        rows[a], rows[b] = rows[b], rows[a]

    return fn


def _drop_column(name: str):
    def fn(rows):
        i = rows[0].index(name)
        for r in rows:
            del r[i]

    return fn


def _rename_column(old: str, new: str):
    def fn(rows):
        rows[0][rows[0].index(old)] = new

    return fn


def _copy_time(src: int, dst: int):
    def fn(rows):
        rows[dst][0] = rows[src][0]

    return fn


def _half_past(row: int):
    def fn(rows):
        rows[row][0] = rows[row][0][:-5] + "30:00"  # 'YYYY-MM-DD HH:00:00' -> 'HH:30:00'

    return fn


def _shift_btc_one_year(d: Path, market) -> None:
    late = market["BTCUSDT"].with_columns(pl.col("timestamp").dt.offset_by("1y"))
    late.with_columns(pl.col("timestamp").dt.strftime("%Y-%m-%d %H:%M:%S")).write_csv(d / "BTCUSDT_1h.csv")


def _also_parquet(d: Path, market) -> None:
    market["ETHUSDT"].write_parquet(d / "ETHUSDT.parquet")


def _nothing(d: Path, market) -> None:
    pass


def _parquet_nan_epoch(df: pl.DataFrame, d: Path) -> None:
    """Float epoch-ms time column with NaN in data row 3."""
    ms = df["timestamp"].dt.epoch("ms").cast(pl.Float64).to_list()
    ms[2] = float("nan")
    df.with_columns(timestamp=pl.Series(ms)).write_parquet(d / "ETHUSDT_1h.parquet")


@dataclass(frozen=True)
class Bad:
    make: Callable[[Path, dict], None]  # turns the good folder into the bad one
    file: str | None  # file the message must name (path inside the folder); None: the folder itself
    words: tuple[str, ...]  # fragments of the problem text
    row: int | None = None  # the 1-based data row the message must name (and no other)
    column: str | None = None
    args: tuple[str, ...] = ()  # extra CLI arguments


ETH, BTC = "ETHUSDT_1h.csv", "BTCUSDT_1h.csv"

# fmt: off
BAD = {
    "missing-value-column":  Bad(edit(_drop_column("volume")), ETH, ("missing column 'volume'",), column="volume"),
    "missing-time-column":   Bad(edit(_rename_column("date", "when")), ETH, ("missing time column", "when")),
    "empty-file-0-bytes":    Bad(write_bytes(b""), ETH, ("file is empty",)),
    "blank-lines-only":      Bad(write_bytes(b"\n\n"), ETH, ("file is empty",)),
    "header-only":           Bad(write_bytes(b"date,open,high,low,close,volume\n"), ETH, ("no data rows",)),
    "header-only-no-eol":    Bad(write_bytes(b"date,open,high,low,close,volume"), ETH, ("no data rows",)),
    "unparseable-time":      Bad(edit(set_cell(7, date="2022-01-01 25:00:00")), ETH,
                                 ("cannot parse time", "25:00:00"), row=7, column="time"),
    "time-is-words":         Bad(edit(set_cell(150, date="yesterday")), ETH, ("'yesterday'",), row=150, column="time"),
    "unparseable-epoch":     Bad(kline_lines(_kline_time(5, "16410x6400000")), ETH,
                                 ("cannot parse time", "16410x6400000"), row=5, column="time"),
    "epoch-out-of-range":    Bad(kline_lines(_kline_time(2, "9" * 23)), ETH,
                                 ("cannot parse time",), row=2, column="time"),
    "duplicate-timestamp":   Bad(edit(_copy_time(8, 9)), ETH, ("duplicate timestamp", "rows 8, 9"),
                                 row=8, column="time"),
    "not-on-the-hour":       Bad(edit(_half_past(6)), ETH, ("not on the hour",), row=6, column="time"),
    "price-nan":             Bad(edit(set_cell(4, close="NaN")), ETH, ("not a finite number", "NaN"),
                                 row=4, column="close"),
    "price-inf":             Bad(edit(set_cell(5, high="inf")), ETH, ("not a finite number", "inf"),
                                 row=5, column="high"),
    "price-text":            Bad(edit(set_cell(3, open="12,5x")), ETH, ("not a finite number", "12,5x"),
                                 row=3, column="open"),
    "volume-empty-cell":     Bad(edit(set_cell(12, volume="")), ETH, ("not a finite number",),
                                 row=12, column="volume"),
    "price-zero":            Bad(edit(set_cell(10, low="0")), ETH, ("price must be > 0",), row=10, column="low"),
    "price-negative":        Bad(edit(set_cell(11, open="-1")), ETH, ("price must be > 0",), row=11, column="open"),
    "high-below-max-o-c":    Bad(edit(set_cell(20, open="10", high="10.5", low="9", close="11")), ETH,
                                 ("high 10.5 is below max(open, close) = 11",), row=20, column="high"),
    "low-above-min-o-c":     Bad(edit(set_cell(21, open="10", high="12", low="10.5", close="11")), ETH,
                                 ("low 10.5 is above min(open, close) = 10",), row=21, column="low"),
    "negative-volume":       Bad(edit(set_cell(13, volume="-5")), ETH, ("volume must be >= 0",),
                                 row=13, column="volume"),
    "out-of-order-asc":      Bad(edit(_swap(5, 6)), ETH, ("neither oldest-first nor newest-first",),
                                 row=6, column="time"),
    "out-of-order-desc":     Bad(edit(_reverse_then_swap(30, 31)), ETH, ("neither oldest-first nor newest-first",),
                                 row=31, column="time"),
    "ragged-row":            Bad(edit(lambda r: r[9].extend(["x", "y"])), ETH, ("9 fields", "header has 7"), row=9),
    "unterminated-quote":    Bad(raw_line(4, lambda b: b'"' + b), ETH, ("quoting",), row=4),
    "not-utf8":              Bad(raw_line(3, lambda b: b.replace(b"ETHUSDT", b"ETH\xffUSDT")), ETH, ("utf-8",), 3),
    "kline-too-few-columns": Bad(kline_lines(lambda r: None, width=5), ETH, ("header-less file has 5 columns",)),
    "corrupt-parquet":       Bad(replace_eth(lambda df, d: (d / "ETHUSDT_1h.parquet").write_bytes(b"PAR1 garbage")),
                                 "ETHUSDT_1h.parquet", ("cannot read parquet",)),
    "parquet-nan-epoch":     Bad(replace_eth(_parquet_nan_epoch), "ETHUSDT_1h.parquet", ("cannot parse time", "nan"),
                                 row=3, column="time"),
    "parquet-null-close":    Bad(parquet_with(close=at_row(6, None, "close")), "ETHUSDT_1h.parquet",
                                 ("not a finite number",), row=6, column="close"),
    "bad-row-in-cross-file": Bad(edit(set_cell(15, close="NaN"), file=BTC), BTC, ("not a finite number",),
                                 row=15, column="close"),
    "two-files-one-symbol":  Bad(_also_parquet, ETH, ("two files for symbol ETHUSDT", "ETHUSDT.parquet")),
    "target-has-no-file":    Bad(_nothing, None, ("no file for symbol XYZUSDT",), args=("--target", "XYZUSDT")),
    "cross-has-no-file":     Bad(_nothing, None, ("no file for symbol FOOUSDT",), args=("--cross", "FOOUSDT")),
    "no-overlap-in-time":    Bad(_shift_btc_one_year, BTC, ("does not overlap the target ETHUSDT",)),
}
# fmt: on


@pytest.fixture
def good_dir(market, tmp_path) -> Path:
    """A valid folder in the real data's layout: ETHUSDT (target) and BTCUSDT (the default cross)."""
    d = tmp_path / "data"
    d.mkdir()
    for sym, df in market.items():
        df.with_columns(pl.col("timestamp").dt.strftime("%Y-%m-%d %H:%M:%S").alias("date")).select(
            "date", *VALUES, ticker=pl.lit(sym)
        ).write_csv(d / f"{sym}_1h.csv", float_precision=8)
    return d


@pytest.fixture
def no_prefect(monkeypatch, tmp_path):
    """Stand-in for flows.retrain: records the call instead of starting Prefect. A bad-input case that got past
    validation would reach it (and the test would see exit code 0 or 1, not 2)."""
    calls = []

    def retrain(config, run_id=None):
        calls.append(config)
        run = tmp_path / "fake-run"
        run.mkdir()
        (run / "manifest.json").write_text(json.dumps({"artifacts": []}))
        return str(run)

    monkeypatch.setitem(sys.modules, "macd_ml.flows.retrain", types.SimpleNamespace(retrain=retrain))
    # the data here are 200 h: too few to train on, but these tests are about reading them. Preflight keeps its
    # first step, ingest + validation of every file, and skips the size checks; no server is started.
    from macd_ml.flows import local_api, preflight

    monkeypatch.setattr(preflight, "preflight", preflight._market)
    monkeypatch.setattr(local_api, "api_configured", lambda: True)
    return calls


def _listing(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _assert_one_line_error(err: str, case: Bad, data: Path) -> str:
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), f"expected one line on stderr, got:\n{err}"
    line = lines[0]
    assert line.startswith("macd-ml: error: ")
    named = str(data / case.file) if case.file else str(data)
    assert named in line, f"message does not name {named}: {line}"
    rows = re.findall(r"\brow (\d+)\b", line)
    assert rows == ([str(case.row)] if case.row is not None else []), line
    if case.column is not None:
        assert f"column '{case.column}'" in line
    for w in case.words:
        assert w in line
    return line


def test_good_folder_passes_validation_and_reaches_the_flow(good_dir, tmp_path, no_prefect):
    """Positive control for the table below: the unedited folder is valid, so each case fails for its edit."""
    out = tmp_path / "out"
    retrain = cli("retrain", "--data", good_dir, "--out", out)
    assert retrain.code == 0, retrain.err
    assert len(no_prefect) == 1 and no_prefect[0].data_dir == str(good_dir)
    feat = tmp_path / "feat" / "table.parquet"
    features = cli("features", "--data", good_dir, "--to", feat)
    assert features.code == 0, features.err
    assert feat.is_file() and feat.with_suffix(".json").is_file()
    assert retrain.err == features.err == ""


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_retrain_exits_2_with_one_line_and_writes_nothing(name, market, good_dir, tmp_path, no_prefect):
    case = BAD[name]
    case.make(good_dir, market)
    before = _listing(good_dir)
    out = tmp_path / "out"

    t0 = time.perf_counter()
    captured = cli("retrain", "--data", good_dir, "--out", out, *case.args)
    elapsed = time.perf_counter() - t0

    assert captured.code == 2, captured.err
    assert captured.out == ""
    _assert_one_line_error(captured.err, case, good_dir)
    assert not out.exists()
    assert no_prefect == []  # failed before the flow (and Prefect) started
    assert _listing(good_dir) == before  # nothing written into the data folder either
    assert elapsed < 2.0


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_features_exits_2_and_writes_no_table(name, market, good_dir, tmp_path):
    case = BAD[name]
    case.make(good_dir, market)
    feat = tmp_path / "feat" / "table.parquet"

    captured = cli("features", "--data", good_dir, "--to", feat, *case.args)

    assert captured.code == 2, captured.err
    _assert_one_line_error(captured.err, case, good_dir)
    assert not feat.exists() and not feat.with_suffix(".json").exists() and not feat.parent.exists()


def test_missing_data_folder_is_a_one_line_error(tmp_path, no_prefect):
    missing, out = tmp_path / "nope", tmp_path / "out"
    code, _, err = cli("retrain", "--data", missing, "--out", out)
    assert code == 2, err
    _assert_one_line_error(err, Bad(_nothing, None, ("data folder does not exist",)), missing)
    assert not out.exists() and no_prefect == []


def test_console_script_exits_2_without_traceback(market, good_dir, tmp_path):
    assert console_script(), "the macd-ml console script is not installed (pip install -e .)"
    case = BAD["price-nan"]
    case.make(good_dir, market)
    out = tmp_path / "out"

    proc = cli(
        "retrain",
        "--data",
        good_dir,
        "--out",
        out,
        subprocess=True,
        timeout=120,
        cwd=tmp_path,
        env={"PREFECT_SERVER_ANALYTICS_ENABLED": "false"},
    )

    assert proc.code == 2, proc.err
    assert "Traceback" not in proc.err
    _assert_one_line_error(proc.err, case, good_dir)
    assert proc.out == ""
    assert not out.exists()


# --------------------------------------------------------------------------------------------- real candles


@pytest.fixture(scope="module")
def real_market():
    if not (REAL_DATA / "ETHUSDT_1h.csv").is_file():
        pytest.skip(f"real Binance candles not found at {REAL_DATA} (they live in ../shared/data next to the repo)")
    return load_market(REAL_DATA, "ETHUSDT", [s for s in REAL_SYMBOLS if s != "ETHUSDT"])


def test_real_symbols_all_load_and_validate(real_market):
    assert real_market.symbols == list(REAL_SYMBOLS)
    assert default_cross(REAL_DATA, "ETHUSDT") == ["BTCUSDT"]
    for c in (real_market.target, *real_market.cross):
        f = c.frame
        assert f.schema == pl.Schema(SCHEMA), c.symbol
        assert f.height > 20_000
        assert f["timestamp"].is_sorted() and f["timestamp"].n_unique() == f.height
        assert f["timestamp"][0].year == 2021
        assert c.path == REAL_DATA / f"{c.symbol}_1h.csv"
        assert c.sha256 == sha256_file(c.path)
    eth = real_market.target.frame
    assert eth.row(0) == (datetime(2021, 4, 4, 20, tzinfo=timezone.utc), 2061.43, 2066.61, 2051.24, 2062.56, 13961.8437)
    assert len(real_market.fingerprint()) == 64


def test_real_eth_gap_report(real_market):
    g = real_market.target.gaps
    assert (g.n_gaps, g.missing_hours, g.longest_hours) == (5, 12, 4)
    assert sum(h for _, h in g.gaps) == 12
    assert (datetime(2023, 3, 24, 12, tzinfo=timezone.utc), 1) in g.gaps
    assert real_market.gap_reports()["ETHUSDT"]["n_gaps"] == 5


@pytest.mark.parametrize("tolerance, n_segments", [(0, 6), (1, 5), (4, 1)])
def test_real_eth_segments(real_market, tolerance, n_segments):
    f = real_market.target.frame
    seg = segment_ids(f["timestamp"], gap_tolerance_hours=tolerance)
    assert seg.len() == f.height
    assert seg.unique().sort().to_list() == list(range(n_segments))  # numbered 0.. in time order
    assert seg.is_sorted()
    # the 1-hour outage of 2023-03-24 (12:00 then 14:00) splits only when nothing is bridged
    before = f["timestamp"] == datetime(2023, 3, 24, 12, tzinfo=timezone.utc)
    after = f["timestamp"] == datetime(2023, 3, 24, 14, tzinfo=timezone.utc)
    assert (seg.filter(before)[0] != seg.filter(after)[0]) == (tolerance == 0)


# --------------------------------------------------------------------------------------------- time layouts

_LAYOUTS = {
    "iso-offset": lambda t: t.strftime("%Y-%m-%dT%H:%M:%S+00:00"),
    "iso-z": lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ"),
    "iso-lower-z": lambda t: t.strftime("%Y-%m-%dT%H:%M:%Sz"),
    "iso-fraction-z": lambda t: t.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
    "space-naive": lambda t: t.strftime("%Y-%m-%d %H:%M:%S"),
    "space-minutes": lambda t: t.strftime("%Y-%m-%d %H:%M"),
    "other-offset": lambda t: (t.astimezone(timezone(timedelta(hours=2)))).strftime("%Y-%m-%dT%H:%M:%S%z"),
    "colon-offset": lambda t: (t.astimezone(timezone(timedelta(hours=-5)))).isoformat(),
}


@pytest.mark.parametrize("layout", [*_LAYOUTS, "mixed"])
def test_one_layout_parse_equals_the_every_layout_parse(layout):
    """The fast path (the first value's layout, one parse) gives exactly what trying every layout per row gives;
    a file that mixes layouts falls back to the per-row parse."""
    from macd_ml.features.ingest import _parse_any_format, _parse_one_format

    t0 = datetime(2022, 3, 27, 0, 0, tzinfo=timezone.utc)
    times = [t0 + timedelta(hours=i) for i in range(300)]
    if layout == "mixed":
        fns = list(_LAYOUTS.values())
        text = pl.Series([fns[i % len(fns)](t) for i, t in enumerate(times)])
    else:
        text = pl.Series([_LAYOUTS[layout](t) for t in times])
    general = _parse_any_format(text)
    fast = _parse_one_format(text)
    assert general.null_count() == 0
    if layout == "mixed":
        assert fast is None
    elif fast is not None:  # every layout but a lower-case z has a fast path
        assert fast.equals(general) and fast.dtype == general.dtype
    else:
        assert layout == "iso-lower-z"
    assert pl.Series(times).dt.cast_time_unit("us").equals(general, check_names=False)
    # and through a file, whatever the path taken
    frame = pl.DataFrame({"timestamp": text, "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5, "volume": 10.0})
    assert validate_candles(frame, "<layouts>")["timestamp"].equals(general, check_names=False)
