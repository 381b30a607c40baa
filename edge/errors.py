"""Exception hierarchy. One root, subclasses by phase; structured fields, not strings to parse."""

from __future__ import annotations

from pathlib import Path


class EdgeError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(EdgeError):
    """A configuration file is missing, unreadable or holds a bad value."""

    def __init__(self, path: Path | str, key: str, expected: str) -> None:
        self.path = str(path)
        self.key = key
        self.expected = expected
        where = f"{self.path}: {key}" if key else self.path
        super().__init__(f"{where}: {expected}")


class StoreError(EdgeError):
    """A database cannot be opened or used."""

    def __init__(self, path: Path | str, problem: str, action: str) -> None:
        self.path = str(path)
        self.problem = problem
        self.action = action
        super().__init__(f"{self.path}: {problem}. What to do: {action}")


class StoreCorrupt(StoreError):
    """The file failed an integrity check. It is never recreated silently."""


class StoreBusy(StoreError):
    """Another process (normally the daemon) holds the write lock."""


class SchemaTooNew(StoreError):
    """The file was written by a newer release of this software."""


class TrustError(EdgeError):
    """A trust anchor or key certificate is unusable."""


class BundleRefused(EdgeError):
    """A bundle was refused; the active cache is untouched. `reason` is from BUNDLE_REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class Stopping(EdgeError):
    """The daemon is stopping: the request was not started."""


class NotFound(EdgeError):
    """A redemption id (or another key) that the caller named does not exist."""


class InvalidTransition(EdgeError):
    """A redemption cannot move to the requested state (e.g. confirm after void)."""
