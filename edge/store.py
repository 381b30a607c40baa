"""The one owner of the SQLite files: opening, pragmas, migrations, checks and the write lock.

Every database the box keeps is opened here. A file that fails its check is reported with what to
do and is never recreated; a file from a newer release is refused. After an unclean stop (the
marker file beside the database was left behind) a full integrity_check runs instead of the quick
one.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge.errors import EdgeError, SchemaTooNew, StoreBusy, StoreCorrupt, StoreError

log = logging.getLogger(__name__)

RESTORE_HINT = (
    "stop the gateway, move the file aside (keep it for support), restore it from a backup or "
    "re-provision the box; the gateway will not recreate it on its own"
)


@dataclass(frozen=True)
class Schema:
    """Numbered migrations: migrations[i] takes the schema from version i to version i + 1."""

    name: str
    migrations: Sequence[str]

    @property
    def version(self) -> int:
        return len(self.migrations)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` in one step: a temporary file beside it, created new (O_EXCL: never an
    existing file, O_NOFOLLOW: never through a link someone planted) with `mode` from the
    start, so a key is never readable by others, not even for an instant; then fsync, rename,
    fsync of the directory. A temporary file a crash left behind is removed first."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)  # the umask may have narrowed it; a cert stays readable
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _check(conn: sqlite3.Connection, path: Path, full: bool) -> None:
    pragma = "integrity_check" if full else "quick_check"
    rows = [r[0] for r in conn.execute(f"PRAGMA {pragma}").fetchall()]
    if rows != ["ok"]:
        raise StoreCorrupt(path, f"{pragma} failed: {'; '.join(rows[:3])}", RESTORE_HINT)


def open_db(
    path: Path,
    schema: Schema,
    *,
    create: bool,
    synchronous: str = "FULL",
    full_check: bool = False,
    readonly: bool = False,
    check: bool = True,
) -> sqlite3.Connection:
    """Open (and migrate) a database. Raises StoreError subclasses with a remedy."""
    if not path.exists() and not create:
        raise StoreError(path, "database does not exist", "run `edge init` for this box first")
    if not path.exists():
        # Owner-only: the cache holds the site's short-code key, the ledger who came when.
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
    try:
        uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=10.0)
    except sqlite3.Error as err:
        raise StoreError(path, f"cannot open: {err}", "check the path and its permissions") from err
    try:
        if not readonly:
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        if check or full_check:
            _check(conn, path, full_check)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > schema.version:
            raise SchemaTooNew(
                path,
                f"{schema.name} schema version {version} is newer than this release "
                f"understands ({schema.version})",
                "install the newer release again, or restore a backup made by this release",
            )
    except sqlite3.DatabaseError as err:
        conn.close()
        raise StoreCorrupt(path, f"not a readable SQLite database ({err})", RESTORE_HINT) from err
    except BaseException:
        conn.close()
        raise
    if version < schema.version and not readonly:
        try:
            _migrate(conn, schema, version)
        except BaseException:
            conn.close()
            raise
    return conn


def _migrate(conn: sqlite3.Connection, schema: Schema, current: int) -> None:
    """Apply the pending migrations in one transaction: all of them, or none."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for number in range(current, schema.version):
            for statement in _statements(schema.migrations[number]):
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version={schema.version}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    log.info("migrated %s schema from %d to %d", schema.name, current, schema.version)


def _statements(script: str) -> Iterator[str]:
    """Split a migration into statements (executescript would commit the open transaction)."""
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                yield buf
            buf = ""
    if buf.strip():
        raise ValueError(f"incomplete SQL statement in migration: {buf!r}")


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, *, synced: bool = True) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception. `synced=False`: this commit
    is not synced to disk (synchronous=NORMAL for it, the connection's own setting after), for
    a write a power cut may undo harmlessly (an ack mark, a delete of acked rows)."""
    level = None if synced else conn.execute("PRAGMA synchronous").fetchone()[0]
    if level is not None:
        conn.execute("PRAGMA synchronous=NORMAL")
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    finally:
        if level is not None:
            conn.execute(f"PRAGMA synchronous={int(level)}")


class WriteLock:
    """Exclusive lock on the state directory, held by the one process that writes.

    The marker file records an open writer; if it is still there at the next start, the last
    writer stopped uncleanly and the databases get a full integrity_check.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / "edge.lock"
        self.marker = state_dir / "edge.running"
        self._fd: int | None = None
        self.unclean = False

    def acquire(self) -> WriteLock:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            os.close(fd)
            raise StoreBusy(
                self.state_dir,
                "another process (normally the running gateway) holds the write lock",
                "run this through the running gateway, or stop it first",
            ) from err
        self._fd = fd
        self.unclean = self.marker.exists()
        if self.unclean:
            log.warning("last writer stopped uncleanly; running full integrity checks")
        self.marker.write_text(f"{os.getpid()}\n")
        fsync_dir(self.state_dir)
        return self

    def release(self, clean: bool = True) -> None:
        """Give up the lock. Only a clean stop removes the marker: after a failure (a corrupt
        file found at start, a crash) the next start runs the full integrity check again."""
        if self._fd is None:
            return
        if clean:
            with contextlib.suppress(FileNotFoundError):
                self.marker.unlink()
            fsync_dir(self.state_dir)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> WriteLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: object, tb: object) -> None:
        # A refused command (a bad argument, a config error) stopped cleanly; a store problem
        # or anything unexpected leaves the marker, so the next start checks the files fully.
        expected = exc_type is not None and issubclass(exc_type, EdgeError | ValueError)
        clean = exc_type is None or (expected and not issubclass(exc_type, StoreError))
        self.release(clean=bool(clean))
