"""The house rules of docs/architecture.md, checked on the source: the layers import only downwards (a module may
import its own layer and those below it), and no module imports itself through others (no cycle, counting the
imports inside functions too: a lazy import is still a dependency)."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "macd_ml"

# bottom to top (docs/architecture.md, "Layers"); the command line (flows/cli) sits on top of everything, the
# deployments it serves included
LAYERS = ["errors", "artifacts", "features", "models", "serving", "tasks", "flows", "deployments", "cli"]
# models/ inside, bottom to top
MODEL_ROLES = ["evaluation", "learners", "ensemble", "release", "gate"]


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    paths = [Path(d) / f for d, _, files in os.walk(PACKAGE, followlinks=True) for f in files if f.endswith(".py")]
    for path in sorted(paths):  # through macd_ml/'s links into the top-level folders
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = ["macd_ml", *rel.parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its source (``from a import b`` counts as ``a.b``
    when ``a.b`` is a module, else as ``a``)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                if t.startswith("macd_ml") and t != name:
                    while t not in modules and "." in t:
                        t = t.rsplit(".", 1)[0]
                    if t in modules and t != name:
                        deps.add(t)
        graph[name] = deps
    return graph


def _layer(module: str) -> str:
    if module.startswith("macd_ml.flows.cli"):
        return "cli"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "macd_ml"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_read_from_the_source():
    """Positive control: the graph sees imports inside functions, and what it finds is real."""
    graph = import_graph()
    assert len(graph) > 60
    assert "macd_ml.models.ensemble.logistic" in graph["macd_ml.models.ensemble.calibration"]
    assert "macd_ml.errors" in graph["macd_ml.features.ingest"]
    # a planted cycle is found
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_itself_through_others():
    cycles = _cycles(import_graph())
    assert not cycles, "import cycles (docs/architecture.md, 'Layers'): " + "; ".join(" <-> ".join(c) for c in cycles)


def test_layers_import_only_downwards():
    graph = import_graph()
    bad = []
    for module, deps in graph.items():
        layer = _layer(module)
        if layer not in LAYERS:
            continue
        for dep in deps:
            other = _layer(dep)
            if other in LAYERS and LAYERS.index(other) > LAYERS.index(layer):
                bad.append(f"{module} ({layer}) imports {dep} ({other})")
    assert not bad, "upward imports:\n" + "\n".join(sorted(bad))


def test_models_roles_import_only_downwards():
    graph = import_graph()
    bad = []
    for module, deps in graph.items():
        parts = module.split(".")
        if parts[1:2] != ["models"] or len(parts) < 3 or parts[2] not in MODEL_ROLES:
            continue
        for dep in deps:
            dparts = dep.split(".")
            if dparts[1:2] == ["models"] and len(dparts) > 2 and dparts[2] in MODEL_ROLES:
                if MODEL_ROLES.index(dparts[2]) > MODEL_ROLES.index(parts[2]):
                    bad.append(f"{module} imports {dep}")
    assert not bad, "models/ roles import upwards (evaluation < learners < ensemble < release):\n" + "\n".join(
        sorted(bad)
    )


@pytest.mark.parametrize("folder", [p for p in LAYERS if p not in ("errors", "cli")])
def test_every_top_level_folder_is_linked_into_the_package(folder):
    link = PACKAGE / folder
    assert link.is_symlink() and link.resolve() == (ROOT / folder).resolve(), f"macd_ml/{folder} -> ../{folder}"


def test_run_folder_files_and_columns_are_named_only_in_the_catalog():
    """artifacts/catalog.py names every run-folder file and table column once; code elsewhere uses its names."""
    from macd_ml.artifacts import catalog

    literals = {v for k, v in vars(catalog).items() if k.isupper() and isinstance(v, str) and "." in v}
    assert {"shipped_holdout.parquet", "metrics.json", "onnx/ensemble.onnx"} <= literals  # positive control
    patterns = [re.compile(r'(?<![\w])"' + re.escape(lit) + '"') for lit in literals]
    patterns += [re.compile(p) for p in (r'f"shipped_h\{', r'f"y_\{', r'f"\{\w+\}_h\{\w+\}"')]
    # the table columns every table shares; not the word in other senses (an input's accepted time column names,
    # TUF's timestamp role, polars' orient="row")
    columns = re.compile(r'(?<![\w])"(timestamp|row)"')
    other_senses = ("TIME_COLUMNS", "orient=")
    found = []
    for module, path in _modules().items():
        if module == "macd_ml.artifacts.catalog":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("  #")[0]
            if code.strip().startswith(("#", '"""')):
                continue
            found += [f"{module}:{n}: {code.strip()}" for p in patterns if p.search(code)]
            if (
                columns.search(code)
                and module != "macd_ml.serving.publish"
                and not any(s in code for s in other_senses)
            ):
                found.append(f"{module}:{n}: {code.strip()}")
    assert not found, "use artifacts/catalog.py:\n" + "\n".join(found)


def test_benches_use_the_package_as_a_user_would():
    """bench/ imports public names only, edits no sys.path and patches nothing of Prefect: what a bench times is
    what the package does."""
    problems = []
    for path in sorted((ROOT / "bench").glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("macd_ml"):
                problems += [f"{path.name}: imports private {a.name}" for a in node.names if a.name.startswith("_")]
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
                if node.value.attr == "path" and node.attr in ("insert", "append"):
                    problems.append(f"{path.name}:{node.lineno}: edits sys.path")
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Attribute) and "prefect" in ast.unparse(target):
                        problems.append(f"{path.name}:{node.lineno}: patches {ast.unparse(target)}")
    assert not problems, "\n".join(problems)
