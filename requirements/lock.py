"""Write the dependency locks from pyproject.toml:  make lock  (or  .venv/bin/python requirements/lock.py).

Two locks, both for CPython 3.11 on linux x86_64 (manylinux_2_28), both covering the whole dependency set
(pyproject's `dependencies` plus the `dask` and `dev` extras), every package pinned `==`:

- requirements/cpu.txt:  torch's CPU build (2.13.0+cpu) and no CUDA (`nvidia-*`) package at all. Used by
  `make install` (CI) and by the CPU image. The +cpu wheel is not on PyPI: it comes from this machine's
  local wheel folder (/opt/wheels, named in /etc/xdg/pip) or from https://download.pytorch.org/whl/cpu.
- requirements/cuda.txt: PyPI's torch 2.13.0, which depends on CUDA's runtime libraries as `nvidia-*` wheels.
  Used by the CUDA image only (never installed by CI: it is GBs).

Each lock records the SHA-256 of the dependency set it was made from (`# pyproject-deps-sha256:`);
tests/test_image.py and `make install` (`--check`) refuse a lock whose hash is not current.

    python requirements/lock.py              # regenerate both (needs PyPI; uses `uv`, `pip install uv` first),
                                             # keeping every pin of the current lock that still fits
    python requirements/lock.py --upgrade    # the same, each package at its newest version
    python requirements/lock.py cpu          # one of them
    python requirements/lock.py --check      # only check the recorded hashes (no network, stdlib only)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "requirements"
EXTRAS = ("dask", "dev")
PYTHON_VERSION = "3.11"
UV_PLATFORM = "x86_64-manylinux_2_28"
# what the locks' platform looks like to PEP 508 markers (tests/test_image.py evaluates pyproject's markers with it)
MARKER_ENV = {
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "sys_platform": "linux",
    "os_name": "posix",
    "platform_python_implementation": "CPython",
    "implementation_name": "cpython",
    "python_version": PYTHON_VERSION,
    "python_full_version": PYTHON_VERSION + ".0",
}
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
HASH_PREFIX = "# pyproject-deps-sha256: "
REGENERATE = "make lock  (= pip install uv; .venv/bin/python requirements/lock.py; needs PyPI)"


@dataclass(frozen=True)
class Lock:
    name: str
    about: str
    install: str
    # packages left out of the lock (installed with --no-deps, so pip never fetches them)
    no_emit: tuple[str, ...] = ()
    cpu_torch: bool = False

    @property
    def path(self) -> Path:
        return HERE / f"{self.name}.txt"


LOCKS = {
    "cpu": Lock(
        name="cpu",
        about="torch CPU build, no nvidia-* (CUDA) packages; for make install / CI and the CPU image",
        install=f"pip install --no-deps -r requirements/cpu.txt  [--extra-index-url {TORCH_CPU_INDEX}]",
        # xgboost's linux wheel asks for NCCL (multi-GPU only; xgboost loads it lazily and runs without it)
        no_emit=("nvidia-nccl-cu12",),
        cpu_torch=True,
    ),
    "cuda": Lock(
        name="cuda",
        about="PyPI's torch with CUDA's nvidia-* runtime wheels; for the CUDA image only (GBs: never for CI)",
        install="pip install --no-deps -r requirements/cuda.txt",
    ),
}


def dependency_set(root: Path = ROOT) -> dict:
    """What the locks are made from: requires-python, dependencies and the locked extras, as written."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    return {
        "requires-python": project.get("requires-python", ""),
        "dependencies": list(project.get("dependencies", [])),
        "optional-dependencies": {name: list(extras.get(name, [])) for name in EXTRAS},
    }


def deps_hash(root: Path = ROOT) -> str:
    blob = json.dumps(dependency_set(root), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def recorded_hash(lock_text: str) -> str | None:
    for line in lock_text.splitlines():
        if line.startswith(HASH_PREFIX):
            return line[len(HASH_PREFIX) :].strip()
    return None


def torch_pin(root: Path = ROOT) -> str:
    for req in dependency_set(root)["dependencies"]:
        name, sep, version = req.partition("==")
        if name.strip() == "torch" and sep:
            return version.split(";")[0].strip()
    raise SystemExit("pyproject.toml: torch must be pinned with == (the CPU lock takes its +cpu build)")


def _torch_cpu_source() -> list[str]:
    """Where uv finds the +cpu wheel: the local wheel folder pip is configured with, else PyTorch's index."""
    for folder in (os.environ.get("PIP_FIND_LINKS") or "/opt/wheels").split():
        if any(Path(folder).glob("torch-*+cpu-*.whl")):
            return ["--find-links", folder]
    return ["--extra-index-url", TORCH_CPU_INDEX, "--index-strategy", "unsafe-best-match"]


def uv_args(lock: Lock, overrides: str | None) -> list[str]:
    args = ["pip", "compile", "pyproject.toml", *(a for e in EXTRAS for a in ("--extra", e))]
    args += ["--python-version", PYTHON_VERSION, "--python-platform", UV_PLATFORM, "--no-header", "--quiet"]
    for pkg in lock.no_emit:
        args += ["--no-emit-package", pkg]
    if lock.cpu_torch:
        assert overrides is not None
        args += ["--override", overrides, *_torch_cpu_source()]
    return args


def current_pins(lock: Lock) -> list[str]:
    """``name==version`` of every package the current lock pins (empty when there is none)."""
    if not lock.path.exists():
        return []
    return [line.split(" ")[0] for line in lock.path.read_text().splitlines() if "==" in line and line[:1].isalnum()]


def _without_pins_source(body: str) -> str:
    """uv names the constraints file as a source of every pin ("# via -c pins.txt"); the lock names only the
    packages that need each one, as without the constraints."""
    lines = [line for line in body.splitlines() if line.strip() != "#   -c pins.txt"]
    out: list[str] = []
    for i, line in enumerate(lines):
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        after = lines[i + 2] if i + 2 < len(lines) else ""
        if line == "    # via" and nxt.startswith("    #   ") and not after.startswith("    #   "):
            out.append("    # via " + nxt.removeprefix("    #   "))
        elif out and out[-1].startswith("    # via ") and line.startswith("    #   ") and lines[i - 1] == "    # via":
            continue
        else:
            out.append(line)
    return "\n".join(out) + ("\n" if body.endswith("\n") else "")


def generate(lock: Lock, upgrade: bool = False) -> None:
    override = f"torch=={torch_pin()}+cpu" if lock.cpu_torch else None
    with tempfile.TemporaryDirectory() as tmp:
        overrides = Path(tmp) / "overrides.txt"
        if override:
            overrides.write_text(override + "\n")
        args = uv_args(lock, str(overrides) if override else None)
        pins = [] if upgrade else [p for p in current_pins(lock) if not p.startswith("torch==")]
        if pins:  # a new dependency adds its own packages; every package already locked keeps its version
            (Path(tmp) / "pins.txt").write_text("\n".join(pins) + "\n")
            args += ["--constraint", str(Path(tmp) / "pins.txt")]
        try:
            body = subprocess.run(
                [sys.executable, "-m", "uv", *args], cwd=ROOT, check=True, capture_output=True, text=True
            ).stdout
        except subprocess.CalledProcessError as exc:
            raise SystemExit(f"uv pip compile failed for {lock.path.name} (is uv installed?):\n{exc.stderr}") from None
    body = body.replace(str(overrides), "overrides.txt")  # uv's "# via --override" names the temporary file
    body = _without_pins_source(body.replace(str(Path(tmp) / "pins.txt"), "pins.txt"))
    shown = " ".join(
        "overrides.txt" if a == str(overrides) else "pins.txt" if a.endswith("pins.txt") else a for a in args
    )
    header = [
        f"# macd-ml dependency lock '{lock.name}': CPython {PYTHON_VERSION}, linux x86_64 ({UV_PLATFORM}).",
        f"# {lock.about}.",
        "# Whole dependency set: pyproject.toml's dependencies + extras " + ", ".join(EXTRAS) + ".",
        f"# Install:    {lock.install}",
        "#             then the project itself: pip install --no-deps .  (make install / the Dockerfile do both).",
        f"# Regenerate: {REGENERATE}",
        f"#   which runs: uv {shown}",
        *([f"#   with overrides.txt: {override}"] if override else []),
        *(["#   and pins.txt: the previous lock's pins (make lock keeps them; --upgrade drops them)"] if pins else []),
        *(f"# Left out (install with --no-deps): {pkg}" for pkg in lock.no_emit),
        f"{HASH_PREFIX}{deps_hash()}",
        "",
    ]
    lock.path.write_text("\n".join(header) + body)
    print(f"wrote {lock.path.relative_to(ROOT)}")


def check(names: list[str]) -> int:
    current = deps_hash()
    bad = []
    for name in names:
        path = LOCKS[name].path
        got = recorded_hash(path.read_text()) if path.exists() else None
        if got != current:
            bad.append(f"{path.relative_to(ROOT)}: " + ("missing" if not path.exists() else "stale"))
    if bad:
        print(
            "\n".join(bad) + f"\nThe dependency set in pyproject.toml changed since the lock was made. Regenerate: "
            f"{REGENERATE}",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("locks", nargs="*", metavar="LOCK", help=f"which locks: {', '.join(LOCKS)} (default: all)")
    p.add_argument("--check", action="store_true", help="only check that the recorded hashes are current")
    p.add_argument("--upgrade", action="store_true", help="newest versions, not the current lock's pins")
    args = p.parse_args(argv)
    names = args.locks or list(LOCKS)
    if unknown := sorted(set(names) - set(LOCKS)):
        p.error(f"unknown lock(s) {unknown}; choose from {list(LOCKS)}")
    if args.check:
        return check(names)
    for name in names:
        generate(LOCKS[name], upgrade=args.upgrade)
    return 0


if __name__ == "__main__":
    sys.exit(main())
