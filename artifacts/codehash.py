"""Code versions derived from the source itself, so a cached result can never outlive the code that made it.

``code_version("macd_ml.models.ensemble.stacking")`` is the sha256 of the source of that module and of every project
module it imports, directly or not (found by reading the import statements, lazy ones inside functions
included). Edit any of them and the version changes; edit a module it does not reach and it does not. Hand-bumped
version strings drifted: an edit to the stacker without a bump silently reused stale results.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import re
import threading
from functools import lru_cache
from pathlib import Path

ROOT_PACKAGE = "macd_ml"


@lru_cache(maxsize=None)
def _locate(module: str) -> Path | None:
    """The source file of a project module, found without importing it (only its top-level package, whose
    ``__init__`` is a docstring, is looked up through the import system to honour the install's mapping)."""
    parts = module.split(".")
    if len(parts) < 2 or parts[0] != ROOT_PACKAGE:
        return None
    try:
        spec = importlib.util.find_spec(".".join(parts[:2]))
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    for i, part in enumerate(parts[2:], start=3):
        if (folder / part / "__init__.py").is_file():
            folder = folder / part
        elif (folder / f"{part}.py").is_file() and i == len(parts):
            return folder / f"{part}.py"
        else:
            return None
    return folder / "__init__.py" if (folder / "__init__.py").is_file() else None


@lru_cache(maxsize=None)
def _source(module: str) -> tuple[str, bytes] | None:
    path = _locate(module)
    return None if path is None else (str(path), path.read_bytes())


def _is_module(name: str) -> bool:
    return _source(name) is not None


# a string naming an attribute of a project module, resolved by importlib when first used: an import all the same
IMPORT_STRING = re.compile(r"macd_ml(\.\w+)+:\w+")


@lru_cache(maxsize=None)
def _imports(module: str) -> frozenset[str]:
    """Project modules that ``module`` imports (and the packages they live in)."""
    found = _source(module)
    if found is None:
        return frozenset()
    out: set[str] = set()
    for node in ast.walk(ast.parse(found[1])):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and IMPORT_STRING.fullmatch(node.value):
            names = [node.value.split(":")[0]]  # "macd_ml.x.y:Name", imported on first use (the learner registry)
        for name in names:
            if name == ROOT_PACKAGE or not name.startswith(ROOT_PACKAGE + "."):
                continue
            parts = name.split(".")
            for i in range(2, len(parts) + 1):  # the package __init__ files on the way count too
                candidate = ".".join(parts[:i])
                if _is_module(candidate):
                    out.add(candidate)
    out.discard(module)
    return frozenset(out)


def closure(module: str) -> list[str]:
    """``module`` and every project module it reaches through imports, sorted."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(_imports(m) - seen)
    return sorted(m for m in seen if _is_module(m))


_versions: dict[str, str] = {}
_lock = threading.Lock()


def code_version(module: str) -> str:
    """sha256 over the names and sources of :func:`closure`; 16 hex digits. Computed once per process (cache
    keys of tasks running in parallel threads ask at the same moment, hence the lock)."""
    with _lock:
        if module not in _versions:
            h = hashlib.sha256()
            for m in closure(module):
                found = _source(m)
                if found is None:
                    raise RuntimeError(f"source of {m} not found while versioning {module}")
                h.update(m.encode() + b"\0" + found[1] + b"\0")
            _versions[module] = h.hexdigest()[:16]
        return _versions[module]
