"""Task results Prefect persists for caching and resume, made trustworthy (docs/operations.md, "Caching,
failures and re-running what failed").

Prefect decodes a persisted result with the serializer named *inside the record* (``metadata.serializer``),
not with the one the task declares. A record whose serializer says ``pickle`` runs code when read, and even the
default JSON serializer resolves ``__class__``/``__exc_type__`` names and a configurable ``object_decoder``
with ``from_qualified_name`` (an ``object_decoder`` of ``subprocess.run`` runs a command). So a record in
``OUT/cache/results`` is used only if all of this holds:

1. **Signed by us.** :class:`SignedResultStorage` writes each record with an HMAC-SHA256 header keyed by a
   secret outside ``OUT`` (:mod:`macd_ml.artifacts.signing`) and bound to the record's key; ``read_path``
   refuses a record whose header is missing or wrong *before* Prefect sees a byte of it.
2. **Our serializer only.** The record must name :class:`SafeJSONSerializer` and nothing else; that serializer
   decodes plain JSON plus an allow-list of our own pydantic types, and never imports a name from the data.
3. **Still true.** Every artifact the result refers to (an :class:`~macd_ml.artifacts.store.ArtifactRef`, a
   published run) is verified against its sha256; a damaged artifact makes the record stale.

Anything else is a cache miss: Prefect's ``ResultStore.exists`` treats an exception from ``read_path`` as "no
record", so the task recomputes; the reason is logged once with the file's path.

Writes go through the artifact store (temp file + fsync + rename, retried on OSError with back-off). Prefect
commits a result *after* the task body returned and only logs a failed commit, so every cached task also probes
the result folder from inside its body (:func:`check_results_writable`): an unwritable cache fails the task,
with the store's clear message and the task's OSError retries, instead of a green run that cached nothing.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from prefect.filesystems import WritableFileSystem
from prefect.serializers import Serializer
from pydantic import BaseModel, Field

from macd_ml.artifacts import signing, store
from macd_ml.errors import one_line

log = logging.getLogger("prefect.macd_ml.cache")

PURPOSE = "prefect-result-record"
_HEADER = b"macd-ml-signed-v1 "
SERIALIZER_TYPE = "macd-ml-json"

# ----------------------------------------------------------------------------------------- allow-listed types

_TYPES: dict[str, type[BaseModel]] = {}
_ERRORS: dict[str, type[BaseException]] = {}
M = TypeVar("M", bound=type)


def result_type(cls: M) -> M:
    """Register a pydantic model that task results may contain (decorator)."""
    _TYPES[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return cls


def _register_errors() -> None:
    from macd_ml.errors import ConfigError, DataError, NothingToShip, PromotionRefused

    for cls in (
        ValueError,
        RuntimeError,
        OSError,
        KeyError,
        TypeError,
        DataError,
        ConfigError,
        NothingToShip,
        PromotionRefused,
        store.ArtifactWriteError,
        store.IntegrityError,
    ):
        _ERRORS[f"{cls.__module__}.{cls.__qualname__}"] = cls


class UnknownResultError(RuntimeError):
    """A failure recorded by another process whose type is not on our allow-list."""


def _encode(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        name = f"{type(obj).__module__}.{type(obj).__qualname__}"
        if name not in _TYPES:
            raise TypeError(f"{name} is not a registered result type (tasks.results.result_type)")
        return {"__model__": name, "data": obj.model_dump(mode="json")}
    if isinstance(obj, BaseException):
        return {"__error__": f"{type(obj).__module__}.{type(obj).__qualname__}", "message": str(obj)}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, datetime):
        return obj.isoformat()
    raise TypeError(f"cannot persist a {type(obj).__name__} as a task result")


def _decode(d: dict) -> Any:
    if "__model__" in d:
        model = _TYPES.get(d["__model__"])
        if model is None or set(d) != {"__model__", "data"}:
            raise ValueError(f"result names a type that is not allowed: {d['__model__']!r}")
        return model.model_validate(d["data"])
    if "__error__" in d:
        if not _ERRORS:
            _register_errors()
        cls = _ERRORS.get(d["__error__"])
        message = str(d.get("message", ""))
        if cls is None:
            return UnknownResultError(f"{d['__error__']}: {message}")
        exc = cls.__new__(cls)  # no constructor of ours runs on data from disk
        BaseException.__init__(exc, message)
        return exc
    return d


class SafeJSONSerializer(Serializer):
    """JSON with an allow-list of our own pydantic types; the only serializer our result records may name.

    Unlike Prefect's JSON serializer it has no configurable encoder/decoder and never imports a name found in
    the data, so a record cannot make it run anything."""

    type: str = Field(default=SERIALIZER_TYPE, frozen=True)

    def dumps(self, obj: Any) -> bytes:
        return json.dumps(obj, default=_encode).encode()  # insertion order kept: reports list dicts in order

    def loads(self, blob: bytes) -> Any:
        return json.loads(blob.decode(), object_hook=_decode)


# ----------------------------------------------------------------------------------------- verification


class StaleRecord(RuntimeError):
    """A cache record that must not be used (unsigned, foreign serializer, damaged artifact)."""


_reported: set[tuple[str, str]] = set()
_report_lock = threading.Lock()


def _report(path: str, reason: str) -> None:
    with _report_lock:
        if (path, reason) in _reported:
            return
        _reported.add((path, reason))
    _logger().warning("cache record %s not used: %s; recomputing that task", path, reason)


def _logger():
    """The run's logger inside a task or flow (so the line reaches the UI), else the module's."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return log


def verify_result(obj: Any) -> None:
    """Call ``verify_integrity()`` on every object in a decoded result that has one (artifact refs, runs)."""
    check = getattr(obj, "verify_integrity", None)
    if callable(check):
        check()
    if isinstance(obj, BaseModel):
        for name in type(obj).model_fields:
            verify_result(getattr(obj, name))
    elif isinstance(obj, dict):
        for v in obj.values():
            verify_result(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            verify_result(v)


def check_record(content: bytes) -> None:
    """A signed record's body: names our serializer, decodes with it, and every artifact it refers to is intact."""
    try:
        record = json.loads(content)
        meta = record["metadata"]
        result = record["result"]
    except (ValueError, KeyError, TypeError) as exc:
        raise StaleRecord(f"not a result record ({exc})") from None
    if meta.get("serializer") != {"type": SERIALIZER_TYPE}:
        raise StaleRecord(f"names serializer {meta.get('serializer')!r}, not ours")
    if not isinstance(result, str):
        raise StaleRecord("result payload is not JSON text")
    try:
        value = SafeJSONSerializer().loads(result.encode())
    except (ValueError, TypeError) as exc:
        raise StaleRecord(f"result does not decode: {exc}") from None
    try:
        verify_result(value)
    except (store.IntegrityError, OSError, ValueError) as exc:
        raise StaleRecord(f"an artifact it refers to is damaged or gone ({one_line(exc)})") from None


# ----------------------------------------------------------------------------------------- storage


class SignedResultStorage(WritableFileSystem):
    """Result storage for Prefect that signs what it writes and refuses what it did not write.

    ``basepath`` is a local folder (written through :mod:`macd_ml.artifacts.store`: atomic, retried, clear errors) or an
    fsspec URL (``s3://bucket/results``, ``memory://results``) for results shared between workers."""

    _block_type_name: ClassVar[str] = "macd-ml signed results"
    _block_type_slug: ClassVar[str] = "macd-ml-signed-results"

    basepath: str = Field(description="folder or fsspec URL where task results persist")

    # -- paths

    @property
    def is_local(self) -> bool:
        return "://" not in self.basepath

    def _base(self) -> Path:
        return Path(self.basepath).expanduser().resolve()

    def _resolve_path(self, path: str) -> Path | None:
        """Absolute local path for a key (Prefect calls this to build storage keys); None for remote storage."""
        if not self.is_local:
            return None
        base = self._base()
        p = Path(path)
        p = p if p.is_absolute() else base / p
        p = p.resolve()
        if p != base and base not in p.parents:
            raise ValueError(f"result key {path!r} resolves outside the result folder {base}")
        return p

    def _relative(self, path: str) -> str:
        if self.is_local:
            resolved = self._resolve_path(path)
            assert resolved is not None
            return resolved.relative_to(self._base()).as_posix()
        base = self.basepath.rstrip("/") + "/"
        rel = path[len(base) :] if path.startswith(base) else path
        if rel.startswith("/") or ".." in rel.split("/"):
            raise ValueError(f"result key {path!r} escapes {self.basepath}")
        return rel

    def _fs(self):
        import fsspec

        fs, root = fsspec.core.url_to_fs(self.basepath)
        return fs, root.rstrip("/")

    # -- raw bytes

    def _read_raw(self, rel: str) -> bytes:
        if self.is_local:
            p = self._base() / rel
            if not p.is_file():
                raise ValueError(f"no result record {p}")
            return p.read_bytes()
        fs, root = self._fs()
        return fs.cat_file(f"{root}/{rel}")

    def _write_raw(self, rel: str, data: bytes) -> str:
        if self.is_local:
            return store.write_bytes(self._base() / rel, data).path
        fs, root = self._fs()
        target = f"{root}/{rel}"
        tmp = f"{target}.{uuid.uuid4().hex[:8]}.tmp"
        fs.pipe_file(tmp, data)
        fs.mv(tmp, target)
        return target

    def location(self, rel: str) -> str:
        return str(self._base() / rel) if self.is_local else f"{self.basepath.rstrip('/')}/{rel}"

    # -- the WritableFileSystem interface (Prefect calls these with _sync=True, or the a- variants)

    def read_path(self, path: str, _sync: bool | None = None) -> bytes:  # type: ignore[override]  # sync, like Prefect's
        rel = self._relative(path)
        raw = self._read_raw(rel)
        where = self.location(rel)
        head, sep, body = raw.partition(b"\n")
        if not sep or not head.startswith(_HEADER):
            _report(where, "it is not signed by this installation")
            raise StaleRecord(f"{where}: unsigned result record")
        signature = head[len(_HEADER) :].decode("ascii", errors="replace").strip()
        if not signing.verify_signature(PURPOSE, rel, body, signature):
            _report(where, "its signature does not match (changed on disk, or signed with another key)")
            raise StaleRecord(f"{where}: bad signature")
        try:
            check_record(body)
        except StaleRecord as exc:
            _report(where, str(exc))
            raise StaleRecord(f"{where}: {exc}") from None
        return body

    def write_path(self, path: str, content: bytes, _sync: bool | None = None) -> str:  # type: ignore[override]
        rel = self._relative(path)
        header = _HEADER + signing.sign(PURPOSE, rel, content).encode() + b"\n"
        return self._write_raw(rel, header + content)

    async def aread_path(self, path: str) -> bytes:
        return self.read_path(path)

    async def awrite_path(self, path: str, content: bytes) -> str:
        return self.write_path(path, content)

    # -- the in-body write probe

    def check_writable(self) -> None:
        """Write and remove a small file where records go, through the store (retried; clear error on failure)."""
        if not self.is_local:
            return
        probe = self._base() / f".probe-{uuid.uuid4().hex[:8]}"
        store.write_bytes(probe, b"probe")
        try:
            probe.unlink()
        except OSError:
            pass


def check_results_writable() -> None:
    """Inside a task body: fail now (with retries) if the task's result cannot be persisted afterwards."""
    from prefect.context import TaskRunContext

    ctx = TaskRunContext.get()
    storage = getattr(getattr(ctx, "result_store", None), "result_storage", None) if ctx else None
    if isinstance(storage, SignedResultStorage):
        storage.check_writable()


class _InsideARun(logging.Filter):
    """Passes a record to the API only inside a flow or task run (a stage called directly has no run to log to)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from prefect.context import FlowRunContext, TaskRunContext

        return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def route_stage_logs() -> None:
    """The stages log with the standard library (``logging.getLogger(__name__)``, so they run without Prefect);
    inside a run their INFO lines go where a task's own log lines go: the run's log in the API (the UI) and the
    console. Every task calls it (in a Dask worker's process too); idempotent. Prefect's
    ``PREFECT_LOGGING_EXTRA_LOGGERS`` does the first half but leaves the level at WARNING."""
    from prefect.logging.handlers import APILogHandler

    stages = logging.getLogger("macd_ml")
    if any(isinstance(h, APILogHandler) for h in stages.handlers):
        return
    api = APILogHandler()
    api.addFilter(_InsideARun())
    stages.addHandler(api)
    stages.setLevel(logging.INFO)  # and on to the root logger, where Prefect's console handler prints them


def persisting(fn: Callable) -> Callable:
    """Wrap a task body so that it checks, before returning, that its result can be persisted."""
    import functools

    @functools.wraps(fn)
    def body(*args, **kwargs):
        route_stage_logs()
        result = fn(*args, **kwargs)
        check_results_writable()
        return result

    return body


result_type(store.ArtifactRef)
result_type(store.RunRef)


# ----------------------------------------------------------------------------------------- task options


def cached_task(**options: Any) -> Callable[[Callable], Any]:
    """``@task`` with what every cached stage shares: persisted results in our serializer, OSError-only
    retries with back-off, and the in-body check that the result can be persisted."""
    from prefect import task

    from macd_ml.tasks.policy import RETRY_DELAYS, RETRY_JITTER, WRITE_RETRIES, ContentKey, retry_on_oserror

    defaults = dict(
        cache_policy=ContentKey(),
        persist_result=True,
        result_serializer=SafeJSONSerializer(),
        retries=WRITE_RETRIES,
        retry_delay_seconds=RETRY_DELAYS,
        retry_jitter_factor=RETRY_JITTER,
        retry_condition_fn=retry_on_oserror,
    )

    def decorate(fn: Callable) -> Any:
        return task(**{**defaults, **options})(persisting(fn))

    return decorate


def result_storage_block(location: str) -> str:
    """Save (once per location) a signed result-storage block and return its slug for ``result_storage=``.

    Prefect only accepts saved blocks as task result storage; the block holds nothing secret (the key stays in
    the key file), just where results go."""
    import hashlib

    base = location if "://" in location else str(Path(location).expanduser().resolve())
    name = "macd-ml-" + hashlib.sha256(base.encode()).hexdigest()[:16]
    slug = f"{SignedResultStorage.get_block_type_slug()}/{name}"
    from prefect.settings import PREFECT_API_URL

    memo = (slug, str(PREFECT_API_URL.value()))
    with _saved_lock:
        if memo not in _saved:
            SignedResultStorage(basepath=base).save(name, overwrite=True)
            _saved.add(memo)
    return slug


_saved: set[tuple[str, str]] = set()
_saved_lock = threading.Lock()
