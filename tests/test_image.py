"""The worker image and the dependency locks (issue "worker image"), checked without Docker and without network.

- Dockerfile: every COPY source exists (and is not excluded by .dockerignore), every package folder of
  pyproject's [tool.setuptools.package-dir] is copied, the final USER is not root, the CMD is the Prefect
  process worker on the macd-ml pool, and each VARIANT build-arg installs an existing lock.
- requirements/*.txt: every requirement of pyproject (dependencies + the locked extras, markers evaluated for
  the lock's platform) has exactly one `==` pin in the lock that satisfies it, and the dependency-set hash the
  lock records is current. A failure says how to regenerate: make lock.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def _load_lock_module():
    spec = importlib.util.spec_from_file_location("macd_ml_requirements_lock", ROOT / "requirements" / "lock.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


lockgen = _load_lock_module()
REGENERATE = f"regenerate with: {lockgen.REGENERATE}"


# --- Dockerfile parsing ---------------------------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, backslash continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comment lines inside a continuation are skipped by Docker too
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole = pending + line
        pending = ""
        keyword, _, args = whole.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a line continuation"
    return out


def exec_or_shell(args: str) -> list[str]:
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def copy_sources(instrs: list[tuple[str, str]]) -> list[str]:
    sources = []
    for keyword, args in instrs:
        if keyword not in ("COPY", "ADD"):
            continue
        words = [w for w in exec_or_shell(args) if not w.startswith("--")]
        assert len(words) >= 2, f"{keyword} {args}: needs a source and a destination"
        sources += words[:-1]
    return sources


def _norm(path: str) -> str:
    return path.removeprefix("./").rstrip("/") or "."


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_copy_source_exists_and_is_in_the_build_context(dockerfile):
    ignored = [
        p.strip().rstrip("/")
        for p in (ROOT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    sources = copy_sources(dockerfile)
    assert sources, "the Dockerfile copies nothing"
    for src in sources:
        assert not src.startswith(("/", "..")), f"COPY {src}: outside the build context"
        assert "://" not in src, f"ADD {src}: no remote sources"
        matches = list(ROOT.glob(_norm(src)))
        assert matches, f"COPY {src}: no such file or folder in the repository"
        for pattern in ignored:
            assert not fnmatch.fnmatch(_norm(src), pattern), f"COPY {src}: excluded by .dockerignore ({pattern})"


def test_every_package_folder_and_prefect_yaml_is_copied(dockerfile, pyproject):
    copied = {_norm(s) for s in copy_sources(dockerfile)}
    root = ROOT
    # macd_ml/ and every folder it links to (the package the wheel installs)
    wanted = {"macd_ml"} | {
        str(p.resolve().relative_to(root.resolve())) for p in (root / "macd_ml").iterdir() if p.is_symlink()
    }
    # a sub-package (flows/cli) comes with its parent folder
    missing = {d for d in wanted if not any(d == c or d.startswith(c + "/") for c in copied)}
    assert not missing, f"package folders the wheel needs but the Dockerfile does not COPY: {sorted(missing)}"
    for needed in ("prefect.yaml", "pyproject.toml", pyproject["project"]["readme"]):
        assert needed in copied, f"the Dockerfile does not COPY {needed}"


def test_runs_as_a_non_root_user(dockerfile):
    users = [args for keyword, args in dockerfile if keyword == "USER"]
    assert users, "no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"the final USER is {users[-1]}"


def test_cmd_is_the_prefect_process_worker_on_the_macd_ml_pool(dockerfile):
    cmds = [args for keyword, args in dockerfile if keyword == "CMD"]
    assert cmds, "no CMD"
    assert cmds[-1].startswith("["), "CMD should be in exec form (JSON), so signals reach the worker"
    cmd = json.loads(cmds[-1])
    assert cmd[:3] == ["prefect", "worker", "start"], cmd
    assert "--pool" in cmd and cmd[cmd.index("--pool") + 1] == "macd-ml", cmd
    assert "--type" in cmd and cmd[cmd.index("--type") + 1] == "process", cmd


def test_env_points_prefects_pull_step_at_app(dockerfile):
    env = " ".join(args for keyword, args in dockerfile if keyword == "ENV")
    assert re.search(r"\bMACD_ML_HOME=/app(\s|$)", env), env
    workdirs = [args for keyword, args in dockerfile if keyword == "WORKDIR"]
    assert workdirs and workdirs[-1] == "/app", workdirs


def test_each_variant_installs_an_existing_lock(dockerfile):
    args = dict(a.partition("=")[::2] for keyword, a in dockerfile if keyword == "ARG")
    assert "VARIANT" in args, "no ARG VARIANT"
    runs = " ".join(a for keyword, a in dockerfile if keyword == "RUN")
    arms = dict(re.findall(r"(\w+)\)\s+pip install [^;]*?-r\s+(\S+)", runs))
    assert set(arms) == set(lockgen.LOCKS), f"VARIANT arms {sorted(arms)} != locks {sorted(lockgen.LOCKS)}"
    assert args["VARIANT"] in arms, f"the default VARIANT={args['VARIANT']} installs nothing"
    for variant, lock in arms.items():
        assert (ROOT / lock).is_file(), f"VARIANT={variant} installs {lock}, which does not exist; {REGENERATE}"
        assert Path(lock).stem == variant, f"VARIANT={variant} installs {lock}"
    cpu = re.search(r"cpu\)\s+pip install [^;]*", runs)
    assert cpu and "--no-deps" in cpu.group(0) and "--extra-index-url" in cpu.group(0), cpu
    assert args.get("TORCH_CPU_INDEX") == lockgen.TORCH_CPU_INDEX, "the CPU variant takes torch from PyTorch's index"


def test_hadolint_when_installed():
    # on PATH, or in the venv running the tests (`make hadolint`, which CI runs)
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (not packaged in Debian bookworm; `make hadolint`)")
    proc = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- locks ----------------------------------------------------------------------------------------------------


def parse_lock(path: Path) -> dict[str, list[str]]:
    """canonical name -> the version pins found for it (a well-formed lock has exactly one `==` per name)."""
    pins: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        assert not line.startswith("-"), f"{path.name}: option line {line!r}: index options belong to the installer"
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{path.name}: {line!r} is not pinned with =="
        pins.setdefault(canonicalize_name(req.name), []).append(specs[0].version)
    return pins


def required(pyproject: dict) -> list[tuple[str, Requirement]]:
    """(where, requirement) for the dependencies and the locked extras, as pyproject writes them."""
    project = pyproject["project"]
    out = [("dependencies", Requirement(r)) for r in project["dependencies"]]
    for extra in lockgen.EXTRAS:
        assert extra in project["optional-dependencies"], f"pyproject has no extra {extra!r}"
        out += [(f"extra {extra}", Requirement(r)) for r in project["optional-dependencies"][extra]]
    return out


@pytest.mark.parametrize("name", sorted(lockgen.LOCKS))
def test_lock_records_the_current_dependency_set(name):
    lock = lockgen.LOCKS[name]
    assert lock.path.is_file(), f"{lock.path.relative_to(ROOT)} is missing; {REGENERATE}"
    assert lockgen.recorded_hash(lock.path.read_text()) == lockgen.deps_hash(), (
        f"{lock.path.relative_to(ROOT)} is stale: pyproject.toml's dependencies or extras changed since it was "
        f"made; {REGENERATE}"
    )


@pytest.mark.parametrize("name", sorted(lockgen.LOCKS))
def test_lock_pins_every_requirement_once_and_satisfies_it(name, pyproject):
    lock = lockgen.LOCKS[name]
    pins = parse_lock(lock.path)
    env = {**default_environment(), **lockgen.MARKER_ENV}
    problems = []
    for where, req in required(pyproject):
        extra = where.removeprefix("extra ") if where.startswith("extra ") else ""
        if req.marker is not None and not req.marker.evaluate({**env, "extra": extra}):
            continue  # not for the lock's platform
        found = pins.get(canonicalize_name(req.name), [])
        if len(found) != 1:
            problems.append(f"{req} ({where}): {len(found)} pins in the lock")
        elif not req.specifier.contains(found[0], prereleases=True):
            problems.append(f"{req} ({where}): the lock pins {found[0]}")
    dupes = {n: v for n, v in pins.items() if len(v) > 1}
    assert not dupes, f"{lock.path.name} pins these more than once: {dupes}; {REGENERATE}"
    assert not problems, f"{lock.path.name} does not match pyproject.toml: " + "; ".join(problems) + f"; {REGENERATE}"


def test_cpu_lock_has_torchs_cpu_build_and_no_cuda_package():
    pins = parse_lock(lockgen.LOCKS["cpu"].path)
    cuda = sorted(n for n in pins if n.startswith("nvidia-") or n == "triton")
    assert not cuda, f"the CPU lock (make install, CI) would download CUDA packages: {cuda}; {REGENERATE}"
    assert Version(pins["torch"][0]).local == "cpu", f"torch {pins['torch'][0]} is not the CPU build; {REGENERATE}"


def test_cuda_lock_has_pypis_torch_and_its_cuda_runtime():
    pins = parse_lock(lockgen.LOCKS["cuda"].path)
    assert Version(pins["torch"][0]).local is None, f"torch {pins['torch'][0]}: the CUDA lock wants PyPI's build"
    assert any(n.startswith("nvidia-cudnn") for n in pins), "the CUDA lock lacks cuDNN; torch's CUDA deps are gone"


@pytest.mark.parametrize(
    ("system", "machine", "wanted"),
    [
        ("Linux", "x86_64", "onnxruntime-gpu"),
        ("Linux", "aarch64", "onnxruntime"),
        ("Darwin", "arm64", "onnxruntime"),
        ("Windows", "AMD64", "onnxruntime"),
    ],
)
def test_each_platform_gets_exactly_one_onnxruntime(pyproject, system, machine, wanted):
    env = {**default_environment(), "platform_system": system, "platform_machine": machine, "extra": ""}
    picked = [
        canonicalize_name(r.name)
        for r in map(Requirement, pyproject["project"]["dependencies"])
        if r.name.startswith("onnxruntime") and (r.marker is None or r.marker.evaluate(env))
    ]
    assert picked == [wanted], (system, machine, picked)
