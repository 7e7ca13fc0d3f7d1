"""Errors a user can cause, importable from every layer. The CLI maps bad input (DataError, ConfigError) to exit
code 2 with a one-line message and a refusal (Refused) to exit code 3 (docs/cli.md)."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data. The message names the file and the row or column at fault."""

    def __init__(self, path: object, problem: str, *, row: int | None = None, column: str | None = None):
        self.path = str(path)
        self.problem = problem
        self.row = row
        self.column = column
        where = self.path
        if row is not None:
            where += f", row {row}"
        if column is not None:
            where += f", column '{column}'"
        super().__init__(f"{where}: {problem}")


class ConfigError(ValueError):
    """A bad configuration value. The message names the key."""


class Refused(RuntimeError):
    """The run finished but must not become ``current``: the CLI exits 3 with this one line. Rerunning the same
    run cannot help."""


class PromotionRefused(Refused):
    """The health gate refused the run, or the champion beat it. The run is published for inspection
    (``run``: its folder, where known)."""

    def __init__(self, message: str = "", run: str | None = None):
        super().__init__(message)
        self.run = run


class NothingToShip(Refused):
    """Training finished but nothing may ship (every model of a horizon collapsed to a constant). Rerunning the
    same run cannot help; more data or other model parameters can. The CLI exits 3, like a refused health gate."""


class BundleError(ValueError):
    """A bundle that must not be used: tampered, incomplete, or with an unsafe path. The message names the member.
    The CLI exits 3 (refused)."""


def one_line(exc: BaseException) -> str:
    """The first non-empty line of an error: what the CLI prints for a failure (one line, docs/cli.md) and what a
    failed deployment run's state says."""
    return next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
