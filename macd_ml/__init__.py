"""macd-ml: the nightly retraining pipeline for the ML gate of a MACD trading bot (docs/index.md).

The code lives in the repository's top-level folders (``artifacts/ features/ models/ tasks/ flows/ deployments/
serving/``); this folder holds a symbolic link to each, so ``macd_ml.features`` is ``features/`` for Python, for
the installed wheel and for static tools (IDEs, mypy, pyright, import-graph tools) alike (docs/architecture.md,
"One package, top-level folders").
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("macd-ml")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
