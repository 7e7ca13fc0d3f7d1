"""The one way tests run ``macd-ml``: ``cli(*args)``.

- in-process by default: ``main(argv)`` with stdout and stderr captured (argparse's ``SystemExit``, from
  ``--help``, ``--version`` or a usage error, becomes the exit code);
- ``subprocess=True``: the installed console script (``macd-ml`` beside the interpreter), in its own process, for
  tests that need one (signals, a fresh interpreter, another user, a mutated copy of the package on PYTHONPATH).
  The console script imports ``macd_ml`` from PYTHONPATH first and never from the working directory, so a copy on
  PYTHONPATH (tests/mutations.py, with PYTHONSAFEPATH=1) is what runs;
- ``spawn(*args)``: the same process, started and not waited for (a test that kills it, or runs several at once).

``cli`` returns what the command did and never raises on a non-zero exit: ``Result(code, out, err)``, a named
tuple (``code, out, err = cli(...)`` works too).

A ``retrain`` run here is relaxed for the tests' tiny markets unless a test asks for the real gates
(``strict=True``): the AUC gates warn instead of refusing, no live check, a challenger is not held back by an
earlier test's champion; the report's PNGs are drawn only with ``plots=True``.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess as sp
import sys
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import IO, Iterator, Mapping, NamedTuple

LENIENT = ["--set", "health.auc_gates=false", "--set", "health.live_check=false", "--set", "promotion.margin_se=1000"]
NO_PLOTS = ["--set", "report.plots=false"]
RETRAINS = ("retrain", "walkforward", "fleet")  # the commands that retrain (relaxed unless strict)


class Result(NamedTuple):
    """What a command did: exit code, stdout, stderr (also ``code, out, err = cli(...)``)."""

    code: int
    out: str
    err: str


def argv(args, strict: bool = False, plots: bool = False) -> list[str]:
    """The command line as strings (paths allowed), a retrain relaxed unless ``strict`` (see the module doc)."""
    args = [os.fspath(a) for a in args]
    if not args or args[0] not in RETRAINS or strict:
        return args
    return [*args, *LENIENT, *([] if plots else NO_PLOTS)]


def console_script() -> str | None:
    """The installed ``macd-ml`` of this interpreter's environment (``pip install -e .``), else on PATH."""
    exe = Path(sys.executable).parent / "macd-ml"
    return str(exe) if exe.is_file() else shutil.which("macd-ml")


def command(*args, strict: bool = False, plots: bool = False) -> list[str]:
    """The process ``cli(..., subprocess=True)`` and ``spawn`` start."""
    exe = console_script()
    if exe is None:
        raise RuntimeError("the macd-ml console script is not installed (pip install -e . or make install)")
    return [exe, *argv(args, strict, plots)]


def environment(env: Mapping[str, str | None] | None) -> dict[str, str]:
    """This process's environment with ``env`` on top (a value of None removes the variable)."""
    merged = dict(os.environ)
    for k, v in (env or {}).items():
        if v is None:
            merged.pop(k, None)
        else:
            merged[k] = str(v)
    return merged


# Prefect's console log handler keeps the stream it first saw; pytest's capsys/capfd close theirs after each
# test, which later sends Prefect's logging into a recursion. These buffers live as long as the session.
_OUT, _ERR = io.StringIO(), io.StringIO()


@contextmanager
def _inside(env: Mapping[str, str | None] | None, cwd) -> Iterator[None]:
    """``env`` and ``cwd`` for an in-process run, put back afterwards."""
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    try:
        if env:
            os.environ.clear()
            os.environ.update(environment(env))
        if cwd is not None:
            os.chdir(cwd)
        yield
    finally:
        if cwd is not None:
            os.chdir(saved_cwd)
        if env:
            os.environ.clear()
            os.environ.update(saved_env)


def cli(
    *args,
    subprocess: bool = False,
    env: Mapping[str, str | None] | None = None,
    cwd: str | os.PathLike | None = None,
    timeout: float = 600,
    strict: bool = False,
    plots: bool = False,
    wrap: tuple[str, ...] | list[str] = (),
) -> Result:
    """Run ``macd-ml ARGS``; return its exit code, stdout and stderr. ``env``: variables set (None: removed) for
    this run only; ``cwd``: its working directory; ``timeout`` (seconds, a process only); ``wrap``: a command the
    process runs under (e.g. ``setpriv ...``), with ``subprocess=True`` only."""
    if subprocess:
        proc = sp.run(
            [*wrap, *command(*args, strict=strict, plots=plots)],
            cwd=cwd,
            env=environment(env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)
    if wrap:
        raise ValueError("wrap= needs subprocess=True")
    from macd_ml.flows.cli import main

    o, e = _OUT.tell(), _ERR.tell()
    with _inside(env, cwd), redirect_stdout(_OUT), redirect_stderr(_ERR):
        try:
            code = main(argv(args, strict, plots))
        except SystemExit as exc:  # argparse: --help, --version, a usage error
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if isinstance(exc.code, str):
                print(exc.code, file=sys.stderr)
    return Result(code, _OUT.getvalue()[o:], _ERR.getvalue()[e:])


def spawn(
    *args,
    env: Mapping[str, str | None] | None = None,
    cwd: str | os.PathLike | None = None,
    stdout: int | IO | None = None,
    stderr: int | IO | None = None,
    new_session: bool = False,
    strict: bool = False,
    plots: bool = False,
) -> sp.Popen:
    """``macd-ml ARGS`` as ``cli(..., subprocess=True)`` starts it, not waited for; ``new_session``: in its own
    session and process group, like a user's shell (a test may signal the group)."""
    return sp.Popen(
        command(*args, strict=strict, plots=plots),
        cwd=cwd,
        env=environment(env),
        stdout=stdout,
        stderr=stderr,
        text=True,
        start_new_session=new_session,
    )


def package_copy(where: str | os.PathLike) -> Path:
    """A complete copy of the package under ``where``: macd_ml/ with its own modules and every folder it links,
    copied (no link back to the checkout). Returns the copy's macd_ml folder; ``env={"PYTHONPATH": where}``
    makes a CLI process run the copy (a test edits it to see what a code change does)."""
    import macd_ml

    # the package this process imports: the checkout's, or the mutated copy tests/mutations.py put first
    root = Path(macd_ml.__file__).resolve().parent
    pkg = Path(where) / "macd_ml"
    pkg.mkdir(parents=True)
    for entry in sorted(root.iterdir()):
        if entry.suffix == ".py":
            shutil.copy2(entry, pkg / entry.name)
        elif entry.is_dir() and entry.name != "__pycache__":
            shutil.copytree(entry, pkg / entry.name, ignore=shutil.ignore_patterns("__pycache__"))
    return pkg
