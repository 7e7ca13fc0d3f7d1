"""Artifact store: atomic writes, sha256 verification, and clear messages on real permission failures."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from macd_ml.artifacts.store import (
    ArtifactWriteError,
    IntegrityError,
    atomic_write,
    copy_file,
    verify,
    verify_run,
    write_bytes,
    write_json,
    write_manifest,
)


def test_atomic_write_never_exposes_a_partial_file(tmp_path):
    """The writer fills a temp file beside the destination; a reader meanwhile sees the old file whole; the new
    file replaces it in one step (a new inode, not the old file rewritten in place); no temp file remains."""
    dest = tmp_path / "a" / "model.txt"
    write_bytes(dest, b"one")
    inode = dest.stat().st_ino
    seen = {}

    def writer(tmp: Path) -> None:
        seen["tmp"] = tmp
        tmp.write_bytes(b"tw")
        seen["during"] = dest.read_bytes()
        with open(tmp, "ab") as fh:
            fh.write(b"o")

    ref = atomic_write(dest, writer)
    assert seen["during"] == b"one", "a reader saw a half-written file"
    assert seen["tmp"] != dest and seen["tmp"].parent == dest.parent
    assert dest.read_bytes() == b"two" and ref.sha256 == hashlib.sha256(b"two").hexdigest()
    assert dest.stat().st_ino != inode
    assert [p.name for p in dest.parent.iterdir()] == ["model.txt"]


def test_failed_writer_keeps_old_file_and_removes_temp(tmp_path):
    dest = tmp_path / "m.json"
    write_json(dest, {"v": 1})

    def broken(tmp: Path) -> None:
        tmp.write_bytes(b'{"v": 2, "trunc')
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(ArtifactWriteError, match="disk is full"):
        atomic_write(dest, broken)
    assert dest.read_text().strip().startswith("{") and '"v": 1' in dest.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_tampered_artifact_is_refused(tmp_path):
    ref = write_bytes(tmp_path / "f.bin", b"0123456789")
    verify(ref)
    data = bytearray((tmp_path / "f.bin").read_bytes())
    data[3] ^= 0x01
    (tmp_path / "f.bin").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        verify(ref)
    with pytest.raises(IntegrityError, match="sha256"):
        copy_file(ref, tmp_path / "copy.bin")
    assert not (tmp_path / "copy.bin").exists()


def test_manifest_lists_everything_and_detects_change(tmp_path):
    run = tmp_path / "runs" / "20250101T000000Z-00000001"
    refs = {"a.json": write_json(run / "a.json", {"x": 1}), "b/c.bin": write_bytes(run / "b" / "c.bin", b"c")}
    write_manifest(run, refs)
    m = verify_run(run)
    assert {e["path"] for e in m["artifacts"]} == {"a.json", "b/c.bin"}
    (run / "b" / "c.bin").write_bytes(b"C")
    with pytest.raises(IntegrityError):
        verify_run(run)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_real_permission_denied_names_path_owner_and_fix():
    """Root ignores file modes, so run the write as `nobody` for a real EACCES."""
    base = Path(tempfile.mkdtemp(prefix="macd-perm-", dir="/tmp"))
    try:
        base.chmod(0o755)
        locked = base / "runs"
        locked.mkdir(mode=0o755)
        (locked / "keep.txt").write_text("earlier result")
        code = (
            "import sys; sys.path.insert(0, %r)\n"
            "from macd_ml.artifacts.store import write_bytes, ArtifactWriteError\n"
            "try:\n    write_bytes(%r, b'new')\n"
            "except ArtifactWriteError as e:\n    print(e); sys.exit(7)\n"
        ) % (str(Path(__file__).resolve().parents[1]), str(locked / "model.txt"))
        proc = subprocess.run(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 7, proc.stderr
        msg = proc.stdout
        assert str(locked / "model.txt") in msg
        assert "owned by root" in msg and "drwxr-xr-x" in msg
        assert "write access" in msg
        assert (locked / "keep.txt").read_text() == "earlier result"
        assert sorted(p.name for p in locked.iterdir()) == ["keep.txt"]
    finally:
        shutil.rmtree(base)
