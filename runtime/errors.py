"""The one exception hierarchy of the runtime. `runtime.rpc.status_of` maps each class to one gRPC
status code, in one place; messages name the offending item."""

from __future__ import annotations


class TesseraError(Exception):
    """Base of every error the runtime raises on purpose."""


class BundleError(TesseraError):
    """A bundle is missing, malformed, of another schema, or fails its checksums."""


class PrecisionRefused(TesseraError):
    """A lower-precision graph failed its check on this machine (runtime/selfcheck.py): not served."""


class StartError(TesseraError):
    """The server cannot start as configured: a port in use, an address it cannot bind."""


class MissingDependency(TesseraError, ImportError):
    """An optional dependency is not installed; the message holds the install command."""


class InvalidInput(TesseraError):
    """The caller sent something we cannot serve (INVALID_ARGUMENT)."""


class NotFound(TesseraError):
    """A named thing (a collection) does not exist (NOT_FOUND)."""


class Overloaded(TesseraError):
    """The queue is full: backpressure, retry later (RESOURCE_EXHAUSTED)."""


class Expired(TesseraError):
    """The request's deadline passed before it reached the engine (DEADLINE_EXCEEDED)."""


class Unavailable(TesseraError):
    """Warming up or draining (UNAVAILABLE)."""


class EngineFailure(TesseraError):
    """The engine failed on a batch; only that batch's requests fail (INTERNAL)."""


class AlreadyExists(TesseraError):
    """A named thing (a collection) exists already (ALREADY_EXISTS)."""


class DiskFull(TesseraError):
    """A write found no space; nothing of it was applied (RESOURCE_EXHAUSTED, naming the disk)."""


class CorruptData(TesseraError):
    """Stored data (a log, a snapshot, a collection's description) is damaged; the message names the
    file and what to do. The server does not start on it."""


def shown(value: str, limit: int = 64) -> str:
    """A caller's string as an error message quotes it: repr, cut to `limit` characters, so a
    message never grows with the input (gRPC refuses status messages past its metadata limit)."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}… ({len(value):,} characters)"


class Unauthenticated(TesseraError):
    """No API key, or not a valid one (UNAUTHENTICATED / 401); never says which."""


class PermissionDenied(TesseraError):
    """A valid API key without the scope the call needs (PERMISSION_DENIED / 403)."""


# The one mapping from errors to status, by gRPC's code names: runtime/rpc.py turns them into gRPC
# status codes, runtime/http_api.py into HTTP statuses. First match wins; anything else is INTERNAL.
CODES: list[tuple[type[Exception], str]] = [
    (InvalidInput, "INVALID_ARGUMENT"),
    (NotFound, "NOT_FOUND"),
    (AlreadyExists, "ALREADY_EXISTS"),
    (Overloaded, "RESOURCE_EXHAUSTED"),
    (DiskFull, "RESOURCE_EXHAUSTED"),
    (Expired, "DEADLINE_EXCEEDED"),
    (Unavailable, "UNAVAILABLE"),
    (EngineFailure, "INTERNAL"),
    (Unauthenticated, "UNAUTHENTICATED"),
    (PermissionDenied, "PERMISSION_DENIED"),
]


def code_of(error: Exception) -> str:
    """The status code name of an error (gRPC's spelling)."""
    return next((code for kind, code in CODES if isinstance(error, kind)), "INTERNAL")
