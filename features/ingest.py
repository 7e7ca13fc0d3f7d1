"""Read and validate hourly OHLCV candles (docs/data.md, "Running on your own candles").

One file per symbol in a folder: ``SYMBOL_1h.csv|.parquet`` or ``SYMBOL.csv|.parquet`` (file names matched
case-insensitively). Accepted shapes, all normalised to ``timestamp`` (UTC) + ``open, high, low, close, volume``:

- a header with a time column named ``timestamp|date|datetime|time|open_time`` (any case), ISO text with or
  without an offset (``+00:00``, ``+0000``, ``Z``) or epoch seconds/milliseconds/microseconds;
- Binance's header-less kline CSV (open time in epoch ms or us, then OHLCV, then columns we ignore);
- oldest-first or newest-first; extra columns ignored; parquet with the same columns.

Every problem raises :class:`DataError` naming the file and the row (1-based data row, as a spreadsheet
would count it below the header) or column. Nothing here writes anything.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import polars as pl

from macd_ml.artifacts import catalog
from macd_ml.artifacts.store import sha256_file
from macd_ml.errors import DataError
from macd_ml.features.segments import HOUR_US, missing_hours, segment_ids  # noqa: F401  (re-exported)

TIME_COLUMNS = ("timestamp", "date", "datetime", "time", "open_time")
PRICE_COLUMNS = ("open", "high", "low", "close")
VALUE_COLUMNS = (*PRICE_COLUMNS, "volume")
SUFFIXES = (".csv", ".parquet")
# the models train in float32: a larger value becomes inf there (a price of 1e308 passed float64 checks)
FLOAT32_MAX = 3.4028234663852886e38

# Binance kline CSV: open_time, open, high, low, close, volume, close_time, quote_volume, trades, ...
_BINANCE_KLINE = ("open_time", "open", "high", "low", "close", "volume")

_OFFSET_RE = r"([+-]\d{2}:?\d{2})$"
_NAIVE_FORMATS = ("%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M")
_OFFSET_FORMATS = ("%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%#z", "%Y-%m-%d %H:%M%#z")


@dataclass(frozen=True)
class GapReport:
    """Missing hours in one symbol's series. ``gaps`` lists (last bar before the gap, missing hours)."""

    n_gaps: int
    longest_hours: int
    missing_hours: int
    gaps: list[tuple[datetime, int]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "n_gaps": self.n_gaps,
            "longest_hours": self.longest_hours,
            "missing_hours": self.missing_hours,
            "gaps": [{"after": t.isoformat(), "missing_hours": h} for t, h in self.gaps],
        }


@dataclass(frozen=True)
class Candles:
    """One symbol's validated candles: ``frame`` has timestamp (UTC, ascending) and float OHLCV."""

    symbol: str
    path: Path | None  # None for candles given in memory (candles_from_frame)
    sha256: str
    frame: pl.DataFrame

    @property
    def gaps(self) -> GapReport:
        return gap_report(self.frame)


# --------------------------------------------------------------------------------------------- locating files


def symbol_files(data_dir: Path) -> dict[str, Path]:
    """Map SYMBOL -> file for every candle file in ``data_dir``. Two files for one symbol is an error."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(data_dir, "data folder does not exist or is not a folder")
    found: dict[str, Path] = {}
    try:
        entries = sorted(data_dir.iterdir())
    except OSError as exc:
        raise DataError(data_dir, f"cannot list the data folder ({exc.strerror or exc})") from None
    for path in entries:
        name = path.name
        low = name.lower()
        if not path.is_file() or not low.endswith(SUFFIXES):
            continue
        stem = name[: name.rindex(".")]
        if stem.lower().endswith("_1h"):
            stem = stem[:-3]
        symbol = stem.upper()
        if symbol in found:
            raise DataError(path, f"two files for symbol {symbol}: {found[symbol].name} and {name}; keep one")
        found[symbol] = path
    return found


def find_symbol_file(data_dir: Path, symbol: str) -> Path:
    files = symbol_files(data_dir)
    key = symbol.upper()
    if key not in files:
        have = ", ".join(sorted(files)) or "none"
        raise DataError(
            data_dir,
            f"no file for symbol {key} (looked for {key}_1h.csv|.parquet or {key}.csv|.parquet; symbols found: {have})",
        )
    return files[key]


# --------------------------------------------------------------------------------------------- reading


def _read_raw(path: Path) -> pl.DataFrame:
    """Read the file with every column as text (CSV) or as stored (parquet)."""
    try:
        with open(path, "rb"):
            pass
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(path, f"cannot read the file ({exc.strerror or exc})") from None
    if size == 0:
        raise DataError(path, "file is empty")
    if path.suffix.lower() == ".parquet":
        try:
            df = pl.read_parquet(path)
        except Exception as exc:  # pyarrow/polars raise several types for corrupt files
            raise DataError(path, f"cannot read parquet: {_first_line(exc)}") from None
        return df
    with open(path, "rb") as fh:
        first = fh.readline().decode("utf-8", errors="replace").strip().lstrip("\ufeff")
    if not first:
        raise DataError(path, "file is empty (first line is blank)")
    first_field = first.split(",")[0].strip().strip('"')
    headerless = bool(re.fullmatch(r"\d{9,}", first_field))
    try:
        df = pl.read_csv(
            path,
            has_header=not headerless,
            infer_schema=False,
            truncate_ragged_lines=False,
        )
    except Exception as exc:
        bad_row = _first_non_utf8_row(path, headerless)
        if bad_row is not None:
            raise DataError(path, "not utf-8 text (a byte that is not valid utf-8)", row=bad_row) from None
        row, problem = _locate_csv_problem(path, headerless)
        if row is not None:
            raise DataError(path, f"cannot parse CSV: {problem}", row=row) from None
        raise DataError(path, f"cannot parse CSV: {_first_line(exc)}") from None
    if headerless:
        if df.width < len(_BINANCE_KLINE):
            raise DataError(
                path,
                f"header-less file has {df.width} columns; a Binance kline CSV has at least 6 "
                "(open_time, open, high, low, close, volume)",
            )
        df = df.rename({old: new for old, new in zip(df.columns, _BINANCE_KLINE)}).select(_BINANCE_KLINE)
        return df
    return df


def _first_line(exc: Exception) -> str:
    """Library errors can span many lines of advice; the CLI promises one line."""
    return next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)


def _first_non_utf8_row(path: Path, headerless: bool) -> int | None:
    """1-based data row (as counted below the header) holding the first byte that is not UTF-8, if any."""
    with open(path, "rb") as fh:
        for i, line in enumerate(fh):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return i + 1 if headerless else max(i, 1)
    return None


def _locate_csv_problem(path: Path, headerless: bool) -> tuple[int | None, str]:
    """After the CSV reader failed: the 1-based data row with a wrong field count or broken quoting."""
    row = 0
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh, strict=True)
            width = None if headerless else len(next(reader, []))
            for row, fields in enumerate(reader, start=1):
                if width is None:
                    width = len(fields)
                elif fields and len(fields) != width:
                    return row, f"{len(fields)} fields where the {'first row' if headerless else 'header'} has {width}"
    except csv.Error as exc:
        return row + 1, f"broken quoting ({exc})"
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    return None, ""


def _pick_columns(df: pl.DataFrame, source: Path | str) -> pl.DataFrame:
    by_lower: dict[str, str] = {}
    for name in df.columns:
        key = name.strip().lstrip("\ufeff").lower()
        by_lower.setdefault(key, name)
    time_col = next((by_lower[c] for c in TIME_COLUMNS if c in by_lower), None)
    if time_col is None:
        raise DataError(
            source,
            f"missing time column (one of {', '.join(TIME_COLUMNS)}); found columns: {', '.join(df.columns)}",
        )
    missing = [c for c in VALUE_COLUMNS if c not in by_lower]
    if missing:
        raise DataError(
            source,
            f"missing column{'s' if len(missing) > 1 else ''} {', '.join(repr(m) for m in missing)}; "
            f"found columns: {', '.join(df.columns)}",
            column=missing[0],
        )
    return df.select(
        pl.col(time_col).alias("_time"),
        *[pl.col(by_lower[c]).alias(c) for c in VALUE_COLUMNS],
    )


def _epoch_to_us(values: pl.Expr | pl.Series) -> pl.Expr:
    """Epoch seconds / ms / us / ns -> microseconds, decided per value by magnitude."""
    values = pl.lit(values) if isinstance(values, pl.Series) else values
    a = values.abs()
    return (
        pl.when(a < 1e11)
        .then(values * 1_000_000)
        .when(a < 1e14)
        .then(values * 1_000)
        .when(a < 1e17)
        .then(values)
        .otherwise(values // 1_000)
    )


def _text_formats() -> list[str]:
    """Every date-text layout accepted, as written in files: 'T' or space between date and time, seconds with or
    without a fraction or no seconds, then an offset, a literal Z, or nothing (naive = UTC)."""
    out = []
    for sep in ("T", " "):
        for clock in ("%H:%M:%S%.f", "%H:%M:%S", "%H:%M"):
            for zone in ("%#z", "Z", ""):
                out.append(f"%Y-%m-%d{sep}{clock}{zone}")
    return out


_TEXT_FORMATS = _text_formats()


def _parse_one_format(text: pl.Series) -> pl.Series | None:
    """Fast path: the layout of the first value, found by trying each on that value alone, then one parse of the
    whole column with it (trying six layouts on a million rows cost 1.3 s; one costs 0.2 s). None when no layout
    fits the first value or some row does not fit it (a file that mixes layouts): the general path decides."""
    first = text.drop_nulls().head(1)
    if first.len() == 0:
        return None
    for fmt in _TEXT_FORMATS:
        if first.str.to_datetime(fmt, strict=False, time_zone="UTC", time_unit="us").null_count() == 0:
            ts = text.str.to_datetime(fmt, strict=False, time_zone="UTC", time_unit="us")
            return ts if ts.null_count() == text.null_count() else None
    return None


def _parse_any_format(text: pl.Series) -> pl.Series:
    """General path: each row in whichever accepted layout fits it (offset layouts for rows with an offset)."""
    norm = text.str.replace("T", " ", literal=True).str.replace(r"[zZ]$", "+00:00")
    has_offset = norm.str.contains(_OFFSET_RE)
    parsed = [
        norm.str.to_datetime(fmt, strict=False, time_zone="UTC", time_unit="us")
        for fmt in (*_OFFSET_FORMATS, *_NAIVE_FORMATS)
    ]
    n_off = len(_OFFSET_FORMATS)
    offset_parse = pl.select(pl.coalesce(parsed[:n_off])).to_series()
    naive_parse = pl.select(pl.coalesce(parsed[n_off:])).to_series()
    return pl.select(pl.when(pl.lit(has_offset)).then(pl.lit(offset_parse)).otherwise(pl.lit(naive_parse))).to_series()


def _parse_time(df: pl.DataFrame, source: Path | str) -> pl.DataFrame:
    col = df["_time"]
    dtype = col.dtype
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is None:  # naive timestamps are UTC by contract
            ts = col.dt.replace_time_zone("UTC")
        else:
            ts = col.dt.convert_time_zone("UTC")
        ts = ts.dt.cast_time_unit("us")
    elif dtype.is_numeric():
        ts = pl.select(_epoch_to_us(col.cast(pl.Int64, strict=False)).cast(pl.Datetime("us", "UTC"))).to_series()
    else:
        text = col.cast(pl.String).str.strip_chars()
        # Epoch numbers or date text, judged by the first value; a row of the other kind becomes null below.
        digits = text.str.extract(r"^(\d{9,})(?:\.0+)?$", 1)
        first = digits.filter(text.is_not_null()).head(1)
        if first.len() and first[0] is not None:
            as_int = digits.cast(pl.Int64, strict=False)
            ts = pl.select(_epoch_to_us(as_int).cast(pl.Datetime("us", "UTC"))).to_series()
        else:
            fast = _parse_one_format(text)
            ts = fast if fast is not None else _parse_any_format(text)
    bad = ts.is_null()
    if bad.any():
        i = int(bad.arg_true()[0])
        raise DataError(source, f"cannot parse time {str(col[i])!r}", row=_row_no(df, i), column="time")
    return df.with_columns(timestamp=ts).drop("_time")


def _row_no(df: pl.DataFrame, i: int) -> int:
    """1-based data row number of frame row ``i`` (rows keep their original number after sorting)."""
    return int(df["_row"][i]) if "_row" in df.columns else i + 1


def _parse_values(df: pl.DataFrame, source: Path | str) -> pl.DataFrame:
    out = []
    for c in VALUE_COLUMNS:
        s = df[c]
        if s.dtype == pl.String:
            num = s.str.strip_chars().cast(pl.Float64, strict=False)
        elif s.dtype.is_numeric():
            num = s.cast(pl.Float64)
        else:
            raise DataError(source, f"column has type {s.dtype}, expected numbers", column=c)
        finite = num.is_not_null() & num.is_finite()
        if not finite.all():
            i = int((~finite).arg_true()[0])
            raise DataError(source, f"not a finite number ({str(s[i])!r})", row=_row_no(df, i), column=c)
        big = num.abs() > FLOAT32_MAX
        if big.any():
            i = int(big.arg_true()[0])
            raise DataError(
                source,
                f"{str(s[i])!r} is too large for the models' float32 (max {FLOAT32_MAX:.3g})",
                row=_row_no(df, i),
                column=c,
            )
        out.append(num.alias(c))
    return df.with_columns(out)


def _first_bad(df: pl.DataFrame, mask: pl.Series) -> int | None:
    return int(mask.arg_true()[0]) if mask.any() else None


def _check_values(df: pl.DataFrame, source: Path | str) -> None:
    for c in PRICE_COLUMNS:
        i = _first_bad(df, df[c] <= 0)
        if i is not None:
            raise DataError(source, f"price must be > 0, got {df[c][i]}", row=_row_no(df, i), column=c)
    body_top = pl.select(pl.max_horizontal(df["open"], df["close"])).to_series()
    body_bottom = pl.select(pl.min_horizontal(df["open"], df["close"])).to_series()
    for col, ok, words, bound in (
        ("high", df["high"] >= body_top, "below max(open, close)", body_top),
        ("low", df["low"] <= body_bottom, "above min(open, close)", body_bottom),
    ):
        i = _first_bad(df, ~ok)
        if i is not None:
            raise DataError(source, f"{col} {df[col][i]} is {words} = {bound[i]}", row=_row_no(df, i), column=col)
    i = _first_bad(df, df["volume"] < 0)
    if i is not None:
        raise DataError(source, f"volume must be >= 0, got {df['volume'][i]}", row=_row_no(df, i), column="volume")


def _check_time(df: pl.DataFrame, source: Path | str) -> pl.DataFrame:
    us = df[catalog.TIMESTAMP].dt.epoch("us")
    i = _first_bad(df, (us % HOUR_US) != 0)
    if i is not None:
        raise DataError(
            source,
            f"time {df['timestamp'][i].isoformat()} is not on the hour (hourly candles expected)",
            row=_row_no(df, i),
            column="time",
        )
    if df.height > 1:
        d = us.diff().drop_nulls()
        if not ((d >= 0).all() or (d <= 0).all()):
            bad = (d < 0) if (d > 0).sum() >= (d < 0).sum() else (d > 0)
            i = int(bad.arg_true()[0]) + 1
            raise DataError(
                source,
                "timestamps are neither oldest-first nor newest-first "
                f"(order breaks at {df['timestamp'][i].isoformat()})",
                row=_row_no(df, i),
                column="time",
            )
    df = df.sort(catalog.TIMESTAMP)
    dup = df[catalog.TIMESTAMP].is_duplicated()
    if dup.any():
        i = int(dup.arg_true()[0])
        t = df[catalog.TIMESTAMP][i]
        rows = df.filter(pl.col(catalog.TIMESTAMP) == t)["_row"].to_list()
        raise DataError(
            source,
            f"duplicate timestamp {t.isoformat()} (rows {', '.join(map(str, rows))})",
            row=rows[0],
            column="time",
        )
    return df


def read_candles(path: Path | str, symbol: str | None = None) -> Candles:
    """Read, normalise and validate one symbol's file. Raises DataError on any problem."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file does not exist")
    raw = _read_raw(path)
    if symbol is None:
        stem = path.name[: path.name.rindex(".")]
        symbol = stem[:-3] if stem.lower().endswith("_1h") else stem
    frame = validate_candles(raw, path)
    return Candles(symbol=symbol.upper(), path=path, sha256=sha256_file(path), frame=frame)


def validate_candles(raw: pl.DataFrame, source: Path | str) -> pl.DataFrame:
    """Normalise and validate candles already in memory (any accepted column naming, either order); return
    ``timestamp`` (UTC, ascending) + float OHLCV. ``source`` names them in every error message."""
    if raw.height == 0:
        raise DataError(source, "has a header but no data rows")
    df = _pick_columns(raw, source).with_row_index("_row", offset=1)
    df = _parse_time(df, source)
    df = _parse_values(df, source)
    _check_values(df, source)
    df = _check_time(df, source)
    return df.select(catalog.TIMESTAMP, *VALUE_COLUMNS)


def candles_from_frame(symbol: str, frame: pl.DataFrame, source: str | None = None) -> Candles:
    """Candles a caller already holds (a bot's own feed, a test): validated exactly like a file's. Their
    ``sha256`` hashes the validated content, so equal candles give equal fingerprints."""
    label = source or f"<{symbol.upper()} candles in memory>"
    clean = validate_candles(frame, label)
    return Candles(symbol=symbol.upper(), path=None, sha256=content_digest(clean), frame=clean)


def content_digest(frame: pl.DataFrame) -> str:
    """sha256 of validated candles' values (column by column): equal candles, equal digest, whatever file held
    them."""
    digest = hashlib.sha256()
    for col in frame.iter_columns():
        digest.update(col.to_numpy().tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------- gaps


def gap_report(frame: pl.DataFrame) -> GapReport:
    missing = missing_hours(frame[catalog.TIMESTAMP])
    idx = (missing > 0).arg_true()
    gaps = [(frame[catalog.TIMESTAMP][int(i) - 1], int(missing[int(i)])) for i in idx]
    return GapReport(
        n_gaps=len(gaps),
        longest_hours=max((h for _, h in gaps), default=0),
        missing_hours=int(missing.sum()),
        gaps=gaps,
    )


# --------------------------------------------------------------------------------------------- market


@dataclass(frozen=True)
class Market:
    """The target's candles plus the reference (cross-asset) symbols' candles, all validated."""

    target: Candles
    cross: tuple[Candles, ...]

    @property
    def symbols(self) -> list[str]:
        return [self.target.symbol, *(c.symbol for c in self.cross)]

    def fingerprint(self) -> str:
        """Content hash of every input file used, in a stable order."""
        h = hashlib.sha256()
        for c in (self.target, *self.cross):
            h.update(f"{c.symbol}:{c.sha256};".encode())
        return h.hexdigest()

    def gap_reports(self) -> dict[str, dict]:
        return {c.symbol: c.gaps.to_dict() for c in (self.target, *self.cross)}

    def until(self, last: datetime | None) -> "Market":
        """The market as a bot saw it when the bar at ``last`` was the newest: every symbol's candles up to
        ``last`` (None: the whole market), each fingerprinted by its content (:func:`cut_candles`; docs/walkforward.md,
        "Cutoffs")."""
        if last is None:
            return self
        return Market(target=cut_candles(self.target, last), cross=tuple(cut_candles(c, last) for c in self.cross))


def cut_candles(c: Candles, last: datetime) -> Candles:
    """``c`` up to and including the bar at ``last``; an error naming the file when none is left. Its ``sha256``
    is the cut's content (not the file's): candles appended to the file later leave an earlier cutoff's
    fingerprint, and so everything cached for it, as it was."""
    frame = c.frame.filter(pl.col(catalog.TIMESTAMP) <= last)
    if frame.height == 0:
        raise DataError(c.path or c.symbol, f"no {c.symbol} candle at or before the cutoff {last.isoformat()}")
    return Candles(c.symbol, c.path, f"cut:{content_digest(frame)}", frame)


def load_market(
    data_dir: Path | str,
    target: str,
    cross: list[str] | tuple[str, ...] = (),
    read: Callable[[Path, str], Candles] | None = None,
) -> Market:
    """Load and validate the target and reference symbols. Symbols that do not overlap in time are an error.
    ``read`` turns a file into validated candles (default :func:`read_candles`; the pipeline passes one that
    reuses candles it validated before, tasks/candles.py)."""
    read = read or read_candles
    data_dir = Path(data_dir)
    target = target.upper()
    cross = [c.upper() for c in cross]
    if target in cross:
        raise DataError(data_dir, f"cross symbols must differ from the target ({target})")
    tc = read(find_symbol_file(data_dir, target), target)
    refs = []
    for sym in cross:
        rc = read(find_symbol_file(data_dir, sym), sym)
        t0 = max(tc.frame[catalog.TIMESTAMP][0], rc.frame[catalog.TIMESTAMP][0])
        t1 = min(tc.frame[catalog.TIMESTAMP][-1], rc.frame[catalog.TIMESTAMP][-1])
        if t0 > t1:
            raise DataError(
                rc.path,
                f"{sym} ({_span(rc)}) does not overlap the target {target} ({_span(tc)}) in time",
            )
        refs.append(rc)
    return Market(target=tc, cross=tuple(refs))


def _span(c: Candles) -> str:
    return f"{c.frame['timestamp'][0]:%Y-%m-%d %H:%M} to {c.frame['timestamp'][-1]:%Y-%m-%d %H:%M} UTC"


def panel_symbols(data_dir: Path | str, target: str, cross: list[str] | tuple[str, ...]) -> list[str]:
    """Every symbol in the folder but the target and its cross symbols: the panel of pooled training."""
    return [s for s in symbol_files(Path(data_dir)) if s != target and s not in cross]


def default_cross(data_dir: Path | str, target: str) -> list[str]:
    """docs/data.md, "Running on your own candles": cross defaults to BTCUSDT when present (and not the target)."""
    files = symbol_files(Path(data_dir))
    return ["BTCUSDT"] if "BTCUSDT" in files and target.upper() != "BTCUSDT" else []
