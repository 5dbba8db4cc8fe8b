"""The one exception hierarchy of the runtime (DESIGN.md §7.5); the gRPC layer maps each class to
one status code in one place."""

from __future__ import annotations


class TesseraError(Exception):
    """Base of every error the runtime raises on purpose."""


class BundleError(TesseraError):
    """A bundle is missing, malformed, of another schema, or fails its checksums."""


class MissingDependency(TesseraError, ImportError):
    """An optional dependency is not installed; the message holds the install command."""
