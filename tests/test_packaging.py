"""One namespace when installed: the wheel installs macd_ml.* only, never top-level `features`,
`models`, `tasks` or `flows`, so a trading bot's own `models` package and ours live side by side."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check"]


@pytest.mark.slow
def test_wheel_installs_one_namespace_beside_a_bots_own_models_package(tmp_path):
    subprocess.run(
        [*PIP, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [*PIP, "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    top = sorted(p.name for p in site.iterdir() if not p.name.endswith(".dist-info") and not p.name.startswith("_"))
    assert top == ["macd_ml"], top
    folders = [p for p in (site / "macd_ml").iterdir() if p.is_dir() and p.name != "__pycache__"]
    assert not any(p.is_symlink() for p in folders), "the wheel holds the folders' files, not links to the checkout"
    assert sorted(p.name for p in folders) == [
        "artifacts",
        "deployments",
        "features",
        "flows",
        "models",
        "serving",
        "tasks",
    ]

    bot = tmp_path / "bot"
    (bot / "models").mkdir(parents=True)
    (bot / "models" / "__init__.py").write_text("WHOSE = 'the bot'\n")
    (bot / "features").mkdir()
    (bot / "features" / "__init__.py").write_text("WHOSE = 'the bot'\n")
    code = (
        "import models, features\n"
        "import macd_ml.models, macd_ml.errors, macd_ml.artifacts  # (dependency-free modules)\n"
        "assert models.WHOSE == 'the bot' and features.WHOSE == 'the bot'\n"
        "assert macd_ml.models.__file__.startswith(%r), macd_ml.models.__file__\n"
        "assert macd_ml.errors.DataError.__module__ == 'macd_ml.errors'\n"
        "print('ok')\n"
    ) % str(site)
    proc = subprocess.run([str(python), "-c", code], cwd=bot, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_the_bots_import_the_cli_and_the_flow_load_no_training_stack():
    """A bot imports the scorer next to its own code; every CLI command imports the CLI; every run (an unchanged
    one too) imports the flow and validates its config. None of them may pull in torch, LightGBM, XGBoost or
    scikit-learn (seconds of import, and a GPU-sized dependency a bot scoring ONNX does not need): a model's
    library loads when that model is built or loaded."""
    heavy = ["torch", "lightgbm", "xgboost", "sklearn", "pandas", "matplotlib"]
    code = (
        "import sys\n"
        "from macd_ml.serving import Scorer, open_bundle\n"
        "import macd_ml.flows.cli, macd_ml.flows.retrain, macd_ml.deployments.nightly\n"
        "from macd_ml.flows.config import RetrainConfig\n"
        "RetrainConfig.model_validate({'models': {'tft': {'window': 12}}})\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
        "from macd_ml.models.learners.registry import MODEL_CLASSES\n"
        "MODEL_CLASSES['tft'], MODEL_CLASSES['xgb']\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    before, after = proc.stdout.splitlines()
    assert before == "[]", f"the scorer, the CLI or the flow imported {before}"
    assert "torch" in after and "xgboost" in after, f"positive control: building the models loads them ({after})"
