"""Opening a store file safely, and writing to it from many threads and processes.

Opening never writes to a file it did not create or recognise: a missing or 0-byte
path is initialised, an agentkit store is migrated, anything else is refused with
StoreError before the first byte is written. Writes run in BEGIN IMMEDIATE
transactions (so a writer never has to upgrade a read lock, which is what makes WAL
writers fail with "database is locked" despite a busy timeout) and are retried with
backoff when SQLite still reports the file busy.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

from agentkit.errors import StoreError

from . import _schema

__all__ = ["connect", "in_write_transaction"]

T = TypeVar("T")

SQLITE_HEADER = b"SQLite format 3\x00"
WRITABLE_FIX = "pass --store PATH to a writable location"
FOREIGN_FIX = "pass --store PATH to a new file or an existing agentkit store"
# SQLite's own busy handler waits this long per attempt; our retry loop wraps it.
BUSY_TIMEOUT_MS = 5_000
_NOT_WRITABLE = ("readonly", "read-only", "unable to open", "disk i/o", "is full", "permission")


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    message = str(exc).lower()
    return "locked" in message or "busy" in message


def _not_writable(path: str, reason: object) -> StoreError:
    return StoreError(f"cannot write the store at {path} ({reason}); {WRITABLE_FIX}")


def _as_store_error(path: str, exc: sqlite3.Error) -> StoreError:
    if any(word in str(exc).lower() for word in _NOT_WRITABLE):
        return _not_writable(path, exc)
    return StoreError(f"store {path}: {exc}")


def _foreign(path: str, what: str) -> StoreError:
    return StoreError(f"{path} is not an agentkit store ({what}); refusing to modify it: {FOREIGN_FIX}")


def _check_tables(conn: sqlite3.Connection, path: str) -> None:
    """Raise unless the database is empty or carries the agentkit marker."""
    tables = [name for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
    )]
    if not tables:
        return
    if "agentkit_meta" in tables:
        row = conn.execute("SELECT value FROM agentkit_meta WHERE key = ?", (_schema.MARKER_KEY,)).fetchone()
        if row is not None and row[0] == _schema.MARKER_VALUE:
            if "schema_migrations" in tables:
                known = {name for name, _ in _schema.MIGRATIONS}
                unknown = sorted(
                    name for (name,) in conn.execute("SELECT name FROM schema_migrations")
                    if name not in known
                )
                if unknown:
                    raise StoreError(
                        f"store {path} has migrations this agentkit does not know ({', '.join(unknown)}); "
                        "upgrade agentkit or pass --store PATH to another store"
                    )
            return
    shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
    raise _foreign(path, f"a SQLite database with tables {shown} and no agentkit marker")


def _inspect_existing(path: Path) -> None:
    """Refuse a non-empty file that is not an agentkit store, reading it only."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _not_writable(str(path), exc.strerror) from None
    if path.is_dir():
        raise StoreError(f"store path {path} is a directory; pass --store PATH to a file such as {path / 'agentkit.db'}")
    if size == 0:
        return
    try:
        with path.open("rb") as f:
            header = f.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise StoreError(f"cannot read the store at {path} ({exc.strerror}); {WRITABLE_FIX}") from None
    if header != SQLITE_HEADER:
        raise _foreign(str(path), "not a SQLite database")
    # immutable=1 reads the main file alone, creating no -wal/-shm next to a foreign
    # database; if a checkpoint is rewriting pages under us, read again the locked way.
    for params in ("mode=ro&immutable=1", "mode=ro"):
        try:
            conn = sqlite3.connect(f"file:{quote(str(path))}?{params}", uri=True)
            try:
                _check_tables(conn, str(path))
            finally:
                conn.close()
            return
        except sqlite3.DatabaseError as exc:
            error = exc
    raise StoreError(f"cannot read {path} as an agentkit store ({error}); {FOREIGN_FIX}")


def in_write_transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T], path: str, timeout: float) -> T:
    """Run fn(conn) in one BEGIN IMMEDIATE ... COMMIT, retrying while the file is busy.

    The transaction either commits whole or is rolled back, so re-running fn after a
    busy error cannot duplicate rows.
    """
    deadline = None
    delay = 0.001
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
                return result
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise _as_store_error(path, exc) from exc
            now = time.monotonic()
            if deadline is None:
                deadline = now + timeout
            elif now >= deadline:
                raise StoreError(
                    f"store {path} stayed locked by another writer for {timeout:g} s; "
                    "retry when it finishes or open the store with a longer timeout"
                ) from exc
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 0.05)


def connect(path: str, timeout: float) -> sqlite3.Connection:
    """Open (creating or migrating if needed) the store at path; one connection per call."""
    memory = path == ":memory:"
    if not memory:
        file = Path(path)
        _inspect_existing(file)
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _not_writable(path, f"cannot create directory {file.parent}: {exc.strerror}") from None
    try:
        # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves.
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise _not_writable(path, exc) from None
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        _enable_wal(conn, path, timeout)
        # Under WAL, NORMAL still makes each commit survive a killed process; only
        # an OS crash or power loss can drop the last commits.
        conn.execute("PRAGMA synchronous = NORMAL")

        def setup(c: sqlite3.Connection) -> None:
            _check_tables(c, path)  # again, inside the lock: the file may have changed
            _schema.migrate(c)

        in_write_transaction(conn, setup, path, timeout)
    except BaseException as exc:
        conn.close()
        if isinstance(exc, sqlite3.Error):
            raise _as_store_error(path, exc) from None
        raise
    return conn


def _enable_wal(conn: sqlite3.Connection, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
            mode = None
        if mode in ("wal", "memory"):
            return
        if time.monotonic() >= deadline:
            raise StoreError(f"store {path} could not switch to WAL mode (journal_mode={mode}); {WRITABLE_FIX}")
        time.sleep(0.01)
