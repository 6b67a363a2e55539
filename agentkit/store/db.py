"""Opening a store file safely, sharing one connection to it per process, and writing to
it from many threads and processes.

Opening never writes to a file it did not create or recognise: a missing or 0-byte
path is initialised, an agentkit store is migrated (and its runs left 'running' by a
process that is gone are marked 'interrupted', see store/_owners.py), anything else is
refused with StoreError before the first byte is written. An up-to-date store with no
such run is only read: opening it waits for no writer. The file is inspected through SQLite only,
never through a Python file handle: closing any other descriptor of a database file
drops every POSIX lock the process holds on it, so another process's close would then
checkpoint and delete the WAL this process still writes to, and its later commits
would be lost (https://sqlite.org/howtocorrupt.html#_posix_advisory_locks_canceled_by_a_separate_thread_doing_close_).

Every store object (TrajectoryStore, PolicyRegistry, TrainerStore, and the pair store and
experience library through theirs) opened on the same file in a process shares one
connection and one lock, keyed by the file's real path: ``StoreConnection`` is a store
object's counted reference to it, and the connection closes when the last reference
does. A child process after fork never uses or closes its parent's connection; it opens
its own on first use. No agentkit code deletes ``-wal`` or ``-shm`` files: SQLite does,
when the last connection of all processes closes.

Writes run in BEGIN IMMEDIATE transactions (so a writer never has to upgrade a read
lock, which is what makes WAL writers fail with "database is locked" despite a busy
timeout) and are retried with backoff when SQLite still reports the file busy.

Durability: in WAL mode ``synchronous=NORMAL`` (the default, as SQLite recommends for
WAL) makes every commit survive a killed process; only an OS crash or power loss can
roll back the last commits. ``synchronous=FULL`` also survives those, at an fsync per
commit: pass ``synchronous="full"`` to a store, or set ``AGENTKIT_SYNCHRONOUS=full``.
Store objects sharing a connection get the strongest level any of them asked for.
"""

from __future__ import annotations

import collections
import json
import os
import random
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import sqlite_utils

from agentkit.errors import StoreError

from . import _owners, migrations
from .migrations import utcnow

__all__ = ["StoreConnection", "connect", "in_write_transaction", "synchronous_level", "SYNCHRONOUS_ENV",
           "dumps", "loads", "utcnow", "is_damaged", "damaged_store"]

T = TypeVar("T")

WRITABLE_FIX = "pass --store PATH to a writable location"
FOREIGN_FIX = "pass --store PATH to a new file or an existing agentkit store"
# SQLite's own busy handler waits this long per attempt; our retry loop wraps it.
BUSY_TIMEOUT_MS = 5_000
_NOT_WRITABLE = ("readonly", "read-only", "unable to open", "disk i/o", "is full", "permission")

SYNCHRONOUS_ENV = "AGENTKIT_SYNCHRONOUS"
_LEVELS = {"normal": 1, "full": 2}  # PRAGMA synchronous values offered, weakest first


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    message = str(exc).lower()
    return "locked" in message or "busy" in message


def _not_writable(path: str, reason: object) -> StoreError:
    return StoreError(f"cannot write the store at {path} ({reason}); {WRITABLE_FIX}")


def is_damaged(exc: BaseException) -> bool:
    """SQLite found a damaged page (SQLITE_CORRUPT: "database disk image is malformed"), or
    a text column holds bytes that are not text, which only overwritten pages do."""
    message = str(exc).lower()
    return isinstance(exc, sqlite3.DatabaseError) and (
        getattr(exc, "sqlite_errorname", "") == "SQLITE_CORRUPT" or "malformed" in message
        or "could not decode to utf-8" in message
    )


def damaged_store(path: str | os.PathLike[str] | None, exc: BaseException) -> StoreError:
    """The one-line error for a store SQLite finds damaged: how to see the damage and the way out."""
    where = str(path) if path is not None else "STORE"
    return StoreError(
        f"store {where} is damaged ({' '.join(str(exc).split())}); see the damage with "
        f"`sqlite3 {where} 'PRAGMA integrity_check'`, then restore the file from a backup, "
        "or pass --store PATH to record into a new store"
    )


def _as_store_error(path: str, exc: sqlite3.Error) -> StoreError:
    if is_damaged(exc):
        return damaged_store(path, exc)
    if any(word in str(exc).lower() for word in _NOT_WRITABLE):
        return _not_writable(path, exc)
    return StoreError(f"store {path}: {exc}")


def _foreign(path: str, what: str) -> StoreError:
    return StoreError(f"{path} is not an agentkit store ({what}); refusing to modify it: {FOREIGN_FIX}")


def _error_name(exc: sqlite3.Error) -> str:
    return getattr(exc, "sqlite_errorname", "") or ""


def synchronous_level(value: str | None = None) -> str:
    """The durability level to use: ``value``, else $AGENTKIT_SYNCHRONOUS, else normal."""
    if value is None:
        raw = os.environ.get(SYNCHRONOUS_ENV, "").strip()
        if raw and raw.lower() not in _LEVELS:
            raise StoreError(f"{SYNCHRONOUS_ENV}={raw!r} is not a durability level; set it to full or normal, or unset it")
        return raw.lower() or "normal"
    if value.lower() not in _LEVELS:
        raise StoreError(f"synchronous={value!r} is not a durability level; pass 'full' or 'normal'")
    return value.lower()


def _check_tables(conn: sqlite3.Connection, path: str) -> None:
    """Raise unless the database is empty or carries the agentkit marker."""
    tables = [name for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
    )]
    if not tables:
        return
    if "agentkit_meta" in tables:
        row = conn.execute("SELECT value FROM agentkit_meta WHERE key = ?", (migrations.MARKER_KEY,)).fetchone()
        if row is not None and row[0] == migrations.MARKER_VALUE:
            if "schema_migrations" in tables:
                known = {name for name, _ in migrations.MIGRATIONS}
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
    """Refuse a non-empty file that is not an agentkit store, reading it through SQLite only."""
    try:
        is_dir, size = path.is_dir(), path.stat().st_size
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _not_writable(str(path), exc.strerror) from None
    if is_dir:
        raise StoreError(f"store path {path} is a directory; pass --store PATH to a file such as {path / 'agentkit.db'}")
    if size == 0:
        return
    # immutable=1 reads the main file alone, creating no -wal/-shm next to a foreign
    # database; if a checkpoint is rewriting pages under us, read again the locked way.
    # Both are SQLite's own opens: closing them keeps the locks of this process's other
    # connections to the file, which a Python open()/close() of it would drop.
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
    if _error_name(error) == "SQLITE_NOTADB" or "not a database" in str(error):
        raise _foreign(str(path), "not a SQLite database")
    if _error_name(error) in ("SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH"):
        raise StoreError(f"cannot read the store at {path} ({error}); {WRITABLE_FIX}")
    if is_damaged(error):
        raise damaged_store(path, error)
    raise StoreError(f"cannot read {path} as an agentkit store ({error}); {FOREIGN_FIX}")


def in_write_transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T], path: str, timeout: float) -> T:
    """Run fn(conn) in one BEGIN IMMEDIATE ... COMMIT, retrying while the file is busy.

    The transaction either commits whole or is rolled back, so re-running fn after a
    busy error cannot duplicate rows.
    """
    return _in_transaction(conn, fn, path, timeout, "BEGIN IMMEDIATE")


def _in_transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T], path: str, timeout: float,
                    begin: str) -> T:
    """fn(conn) between ``begin`` and COMMIT, retried while the file is busy; a deferred
    BEGIN reads one snapshot without taking the write lock."""
    deadline = None
    delay = 0.001
    while True:
        try:
            conn.execute(begin)
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


def connect(path: str, timeout: float, synchronous: str = "normal") -> sqlite3.Connection:
    """Open (creating or migrating if needed) the store at path: a new connection.

    Store objects use StoreConnection instead, which shares one connection per file."""
    return _connect(path, timeout, synchronous)[0]


def _connect(path: str, timeout: float, synchronous: str) -> tuple[sqlite3.Connection, list[int]]:
    """connect(), and the ids of the runs it marked interrupted (their process is gone)."""
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
        conn.execute(f"PRAGMA synchronous = {synchronous_level(synchronous).upper()}")

        def needs_writing(c: sqlite3.Connection) -> bool:
            _check_tables(c, path)  # again, in one snapshot: the file may have changed
            return bool(migrations.pending_migrations(c) or _owners.dead_runs(c))

        def setup(c: sqlite3.Connection) -> list[int]:
            _check_tables(c, path)  # again, inside the lock
            migrations.migrate(c)
            return _owners.mark_dead_runs(c)

        # Most opens find nothing to migrate and no dead process's run: they read, and
        # leave the write lock to the writers.
        interrupted = []
        if _in_transaction(conn, needs_writing, path, timeout, "BEGIN"):
            interrupted = in_write_transaction(conn, setup, path, timeout)
    except BaseException as exc:
        conn.close()
        if isinstance(exc, sqlite3.Error):
            raise _as_store_error(path, exc) from None
        raise
    return conn, interrupted


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


# --- the JSON codec of every TEXT column that holds JSON ---------------------------------------


def _plain(value: Any) -> Any:
    # numpy/torch scalars and arrays reach here only when json cannot encode them.
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# repr-based float encoding round-trips every double bit-exactly (and -inf/nan,
# which logprobs can hold, as the non-standard -Infinity/NaN that json.loads reads).
# The canonical text (sorted keys, ASCII) is what configs, metrics and the library's
# version snapshots were always written in: rollback compares rows by it.
def _options(canonical: bool, default: Callable[[Any], Any] = _plain) -> dict[str, Any]:
    return {"separators": (",", ":"), "ensure_ascii": canonical, "sort_keys": canonical, "default": default}


_ENCODERS = {canonical: json.JSONEncoder(**_options(canonical)).encode for canonical in (False, True)}


def dumps(value: Any, *, canonical: bool = False, default: Callable[[Any], Any] | None = None) -> str | None:
    """The column text of a JSON value; None stays NULL. ``canonical``: sorted keys and
    ASCII only (configs, metrics, library rows). ``default``: how to encode what json and
    ``tolist``/``item`` cannot (else TypeError)."""
    if value is None:
        return None
    if default is None:
        return _ENCODERS[canonical](value)

    def fallback(obj: Any) -> Any:
        try:
            return _plain(obj)
        except TypeError:
            return default(obj)

    return json.dumps(value, **_options(canonical, fallback))


def loads(text: str | None) -> Any:
    """The value of a JSON column; NULL is None."""
    return None if text is None else json.loads(text)


# --- one connection per store file per process ----------------------------------------------


class _Shared:
    """The process's connection to one store file, its lock, and how many store objects use it."""

    def __init__(self, opened: tuple[sqlite3.Connection, list[int]], key: str | None, synchronous: str):
        self.conn, self.interrupted = opened  # runs marked interrupted by this open, until taken
        self.key = key  # the file's real path; None for ":memory:", which is never shared
        self.lock = threading.RLock()  # one user at a time: in-process writers hand over here
        self.refs = 1
        self.synchronous = synchronous
        self.pid = os.getpid()
        self.inode = _inode(key) if key is not None else None


def _inode(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class _Registry:
    """The connections this process holds, by real path. Locks are taken registry first,
    then a connection's; connections are opened and closed outside the registry lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open: dict[str, _Shared] = {}
        self.inherited: list[_Shared] = []
        # Store objects dropped without close(): their finalizers only queue here (they may
        # run inside a section that holds self.lock); the queue is drained under the lock.
        self.dropped: collections.deque[_Shared] = collections.deque()

    def share_locked(self, path: str) -> _Shared | None:
        """A new reference to this process's connection to ``path``, or None when there is
        none to share. Call with self.lock held."""
        if path == ":memory:":
            return None  # a private database each time
        key = os.path.realpath(path)
        shared = self.open.get(key)
        # A file deleted or replaced since it was opened is a new store: never share the old one.
        if shared is None or shared.inode is None or shared.inode != _inode(key):
            return None
        shared.refs += 1
        return shared

    def add_locked(self, path: str, opened: tuple[sqlite3.Connection, list[int]], synchronous: str) -> _Shared:
        """Share ``opened``, a connection made outside the lock, as the process's connection
        to ``path``. Call with self.lock held, after share_locked found none."""
        if path == ":memory:":
            return _Shared(opened, None, synchronous)
        key = os.path.realpath(path)
        shared = self.open[key] = _Shared(opened, key, synchronous)
        return shared

    def release_locked(self, shared: _Shared) -> list[_Shared]:
        """Drop one reference; returns the connections to close once the lock is released."""
        if shared.pid != os.getpid():
            return []  # the parent's connection: neither used nor closed in a forked child
        shared.refs -= 1
        if shared.refs > 0:
            return []
        if shared.key is not None and self.open.get(shared.key) is shared:
            del self.open[shared.key]
        return [shared]

    def drain_locked(self) -> list[_Shared]:
        finished = []
        while self.dropped:
            finished += self.release_locked(self.dropped.popleft())
        return finished

    def after_fork_in_child(self) -> None:
        # The parent's connections must be neither used nor closed here
        # (https://sqlite.org/howtocorrupt.html#_carrying_an_open_database_connection_across_a_fork_):
        # they stay referenced, so garbage collection never closes them, and the child
        # opens its own. The lock may have been held by a parent thread at the fork.
        self.inherited.extend(self.open.values())
        self.open.clear()
        self.dropped.clear()
        self.lock = threading.Lock()


def _close_all(finished: list[_Shared]) -> None:
    for shared in finished:
        with shared.lock:
            shared.conn.close()


_registry = _Registry()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_registry.after_fork_in_child)


class StoreConnection:
    """A store object's reference to its process's one connection to a store file.

    path: the store file (created or migrated on the first open in the process) or
    ":memory:" (a private database, never shared). timeout: seconds a write keeps
    retrying while other processes hold the file. synchronous: "normal" or "full"
    (default: $AGENTKIT_SYNCHRONOUS, else normal). owner: the store class, for messages.
    """

    def __init__(self, path: str, *, timeout: float, synchronous: str | None = None, owner: str = "store"):
        self.path = path
        self.timeout = timeout
        self.synchronous = synchronous_level(synchronous)
        self.owner = owner
        self._closed = False
        self._pid = -1
        self._attach()

    def _attach(self) -> None:
        """Take a reference to this process's connection (at open, and after a fork)."""
        finished: list[_Shared] = []
        opened = None  # a connection this thread made, until shared or found redundant
        try:
            while True:
                with _registry.lock:
                    if self._pid == os.getpid():  # another thread of this process got here first
                        if opened is not None:
                            self._shared.interrupted += opened[1]  # report what this open marked
                        return
                    finished += _registry.drain_locked()
                    shared = _registry.share_locked(self.path)
                    if shared is not None and opened is not None:
                        shared.interrupted += opened[1]  # another thread opened the file meanwhile
                    elif opened is not None:
                        shared, opened = _registry.add_locked(self.path, opened, self.synchronous), None
                    if shared is not None:
                        if self._pid != -1:
                            self._finalizer.detach()  # it would release the parent's connection
                        self._shared, self._pid = shared, os.getpid()
                        self._finalizer = weakref.finalize(self, _registry.dropped.append, shared)
                        break
                # Outside the registry lock: opening may wait up to `timeout` s for another
                # process's write lock, while this process's other threads open and close stores.
                opened = _connect(self.path, self.timeout, self.synchronous)
        finally:
            if opened is not None:
                opened[0].close()
            _close_all(finished)
        if _LEVELS[self.synchronous] > _LEVELS[shared.synchronous]:
            with shared.lock:
                shared.conn.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
                shared.synchronous = self.synchronous

    def _current(self) -> _Shared:
        if self._closed:
            raise StoreError(f"{self.owner} {self.path} is closed; open a new {self.owner}")
        if self._pid != os.getpid():
            self._attach()
        return self._shared

    @contextmanager
    def locked(self) -> Iterator[sqlite3.Connection]:
        """The connection, held by this thread for the with-block (reads, or several statements)."""
        shared = self._current()
        with shared.lock:
            if self._closed:  # closed by another thread while this one waited
                self._current()
            yield shared.conn

    def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """fn(conn) in one write transaction, retried while other processes hold the file."""
        with self.locked() as conn:
            return in_write_transaction(conn, fn, self.path, self.timeout)

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """All rows of one query, as sqlite3.Row (by name or index)."""
        with self.locked() as conn:
            cursor = conn.cursor()
            cursor.row_factory = sqlite3.Row
            return cursor.execute(sql, tuple(params)).fetchall()

    def rows(self, table: str, where: str | None = None, params: Sequence[Any] = (), **kwargs: Any) -> list[dict[str, Any]]:
        """Rows of ``table`` as dicts, through sqlite-utils' ``rows_where`` (order_by, limit, ...)."""
        with self.locked() as conn:
            db = sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)
            return list(db[table].rows_where(where, params, **kwargs))

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple:
        """The first row of one query, as a tuple (None when there is none)."""
        with self.locked() as conn:
            return conn.execute(sql, tuple(params)).fetchone()

    def select(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """All rows of one query, as dicts by column name."""
        with self.locked() as conn:
            cursor = conn.execute(sql, tuple(params))
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row)) for row in cursor.fetchall()]

    def take_interrupted(self) -> list[int]:
        """The runs this process's open of the file marked interrupted, once (to report them)."""
        shared = self._current()
        with _registry.lock:
            taken, shared.interrupted = shared.interrupted, []
        return taken

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Drop this reference; the connection closes with the last one in the process."""
        with _registry.lock:
            if self._closed:
                return
            self._closed = True
            self._finalizer.detach()
            finished = _registry.release_locked(self._shared) + _registry.drain_locked()
        _close_all(finished)
