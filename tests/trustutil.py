"""What the trust tests (test_trust_*.py) share: a small market, the fast config, helpers."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from pathlib import Path

from macd_ml.artifacts import store
from macd_ml.serving.bundle import build_bundle
from tests.cliutil import cli
from tests.flowutil import spawn_cli

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--set", "folds.n_folds=3", "--set", 'models.enabled=["lgb"]']
RUN_FILES = ("onnx/ensemble.onnx", "meta.json", "features.json", "metrics.json")


def small_run(out: Path, run_id: str) -> Path:
    """A verified run folder with the members a bundle needs (their content is not scored: for publishing)."""
    run = out / "runs" / run_id
    refs = {}
    for rel in RUN_FILES:
        refs[rel] = store.write_bytes(run / rel, json.dumps({"run": run_id, "file": rel}).encode())
    store.write_manifest(run, refs)
    return run


def small_bundle(tmp: Path, n: int) -> bytes:
    """The signed bundle of :func:`small_run` number ``n``."""
    return build_bundle(small_run(tmp / f"out{n}", f"20260101T00000{n}Z-{n:08x}"))


def _retrain(market: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return cli("retrain", "--data", str(market), "--out", str(out), *FAST, *extra)


def _records(out: Path) -> list[Path]:
    return sorted(p for p in (out / "cache" / "results").iterdir() if p.is_file() and not p.name.startswith("."))


def _flip(path: Path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if at is None else at] ^= 0x01
    path.write_bytes(bytes(data))


_B64_PICKLE = re.compile(rb"gA[SNJU][A-Za-z0-9+/]{12,}={0,2}")


def _holds_pickle(path: Path) -> bool:
    data = path.read_bytes()
    if re.match(rb"\x80[\x02-\x05]", data):
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False  # a binary format of ours (parquet, safetensors, PNG): a pickle in it would start it
    if b"picklelib" in data or b'"type": "pickle"' in data or b'"type":"pickle"' in data:
        return True
    for m in _B64_PICKLE.finditer(data):
        try:
            if re.match(rb"\x80[\x02-\x05]", base64.b64decode(m.group(0) + b"=" * (-len(m.group(0)) % 4))):
                return True
        except ValueError:
            continue
    return False


def _spawn_cli(args: list[str], home: Path, log: Path, shared_api: bool = True, **env_extra: str) -> subprocess.Popen:
    return spawn_cli(args, log, home, shared_api=shared_api, **env_extra)
