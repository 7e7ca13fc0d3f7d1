"""A copy of the package to edit (planted bugs, code edits): macd_ml/'s own modules and a real copy of every
folder it links to, so the copy stands alone on PYTHONPATH (run it with PYTHONSAFEPATH=1, so that no
``python -m`` puts the checkout's own macd_ml/ ahead of it)."""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def linked_folders() -> list[str]:
    """The top-level folders macd_ml/ links to."""
    return sorted(p.name for p in (ROOT / "macd_ml").iterdir() if p.is_symlink())


def copy_package(dest: Path) -> Path:
    """Copy the package to ``dest/macd_ml``; returns that folder."""
    pkg = Path(dest) / "macd_ml"
    pkg.mkdir(parents=True)
    for f in (ROOT / "macd_ml").glob("*.py"):
        shutil.copy2(f, pkg / f.name)
    for name in linked_folders():
        shutil.copytree(ROOT / name, pkg / name, ignore=shutil.ignore_patterns("__pycache__"))
    return pkg
