"""The background trainer's bookkeeping: its cursors, live status and cycle history in the
store, and its files beside the store.

    runs.db -> runs.trainer.pid   the running trainer's pid, flock-ed while it lives
               runs.trainer.log   its progress lines
               runs.trainer/      candidate adapters and their checkpoints

The pid file doubles as the lock that keeps one trainer per store: the kernel drops an
flock when its process dies, kill -9 included, so a stale pid file never blocks a restart
and never makes a dead trainer look alive. No torch here: ``agentkit trainer status``
answers at once.

    with TrainerStore("runs.db") as bookkeeping:
        bookkeeping.save("arithmetic", run_cursor=120, status={"state": "idle"})
        bookkeeping.state("arithmetic").run_cursor  # 120
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agentkit.errors import StoreError

from .db import StoreConnection, dumps, utcnow

__all__ = ["TrainerFiles", "TrainerLock", "TrainerState", "TrainerCycle", "TrainerStore", "running_pid", "STATES"]

STATES = ("starting", "idle", "collecting", "training", "gating", "stopped", "failed")
"""What a trainer is doing; the last one it recorded stays in the store after it exits."""


# --- files beside the store ---------------------------------------------------------------


@dataclass(frozen=True)
class TrainerFiles:
    """Where the trainer of a store keeps its pid/lock file, its log and its work."""

    pid: Path
    log: Path
    work: Path

    @classmethod
    def beside(cls, store_path: str | os.PathLike[str]) -> TrainerFiles:
        """runs.db -> runs.trainer.pid, runs.trainer.log, runs.trainer/."""
        if str(store_path) == ":memory:":
            raise StoreError("the trainer needs a store file, not :memory:; pass --store PATH")
        path = Path(store_path).expanduser().resolve()
        return cls(path.with_name(path.stem + ".trainer.pid"), path.with_name(path.stem + ".trainer.log"),
                   path.with_name(path.stem + ".trainer"))


def running_pid(pid_path: str | os.PathLike[str]) -> int | None:
    """The pid of the live trainer holding ``pid_path``, or None when none holds it."""
    try:
        fd = os.open(pid_path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        for _ in range(50):  # a trainer writing its pid holds the lock exclusively for a moment
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                if text.isdigit():
                    return int(text)
                time.sleep(0.01)
                continue
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        return -1  # locked, pid not written yet: a trainer is starting
    finally:
        os.close(fd)


class TrainerLock:
    """The pid file, held under an exclusive flock for the trainer's lifetime."""

    def __init__(self, pid_path: str | os.PathLike[str]):
        self.path = Path(pid_path)
        self._fd: int | None = None

    def acquire(self, timeout: float = 2.0) -> TrainerLock:
        """Take the lock (retrying for ``timeout`` s: a ``status`` may be peeking) and write our pid."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                    os.close(fd)
                    raise StoreError(
                        f"a trainer is already running for this store (pid {text or '?'}, lock {self.path}); "
                        "see it with `agentkit trainer status`, stop it with `agentkit trainer stop`"
                    ) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # a pid file left behind names nobody
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> TrainerLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# --- rows in the store --------------------------------------------------------------------


class TrainerState(BaseModel):
    """The trainer's row for one suite: cursors and its last recorded status."""

    suite: str
    run_cursor: int = 0
    """Highest run id examined: runs above it are new."""
    pair_cursor: int = 0
    """Highest pair id a candidate was trained on: pairs above it are pending."""
    status: dict[str, Any] = {}
    """state, pid, counters, the active policy, the last gate, the last error, work in flight."""
    updated_at: str


class TrainerCycle(BaseModel):
    """One cycle that did work: runs examined, pairs built, and the candidate it gated, if any."""

    id: int
    suite: str
    policy_version: str | None = None
    run_from: int | None = None
    run_to: int | None = None
    runs: int | None = None
    failed: int | None = None
    pairs: int | None = None
    pending: int | None = None
    candidate: str | None = None
    decision: str | None = None
    p_value: float | None = None
    collect_s: float | None = None
    train_s: float | None = None
    gate_s: float | None = None
    error: str | None = None
    details: dict[str, Any] | None = None
    started_at: str
    finished_at: str | None = None


_CYCLE_COLUMNS = tuple(name for name in TrainerCycle.model_fields if name != "id")


def _dumps(value: Any) -> str | None:
    return dumps(value, canonical=True, default=str)


class TrainerStore:
    """The ``trainer_state`` and ``trainer_cycles`` tables of a store, and the read-only
    queries over runs and pairs the trainer needs."""

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 60.0, synchronous: str | None = None):
        self.path = str(Path(path).expanduser())
        self.timeout = timeout
        self.db = StoreConnection(self.path, timeout=timeout, synchronous=synchronous, owner="TrainerStore")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> TrainerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state ---------------------------------------------------------------------------

    def state(self, suite: str | None = None) -> TrainerState | None:
        """The row of ``suite``, or (None) the most recently updated one; None if there is none."""
        rows = (self.db.read("SELECT * FROM trainer_state WHERE suite = ?", (suite,)) if suite is not None
                else self.db.read("SELECT * FROM trainer_state ORDER BY updated_at DESC LIMIT 1"))
        if not rows:
            return None
        row = dict(rows[0])
        row["status"] = json.loads(row["status"]) if row["status"] else {}
        return TrainerState.model_validate(row)

    def save(self, suite: str, *, run_cursor: int | None = None, pair_cursor: int | None = None,
             status: Mapping[str, Any] | None = None) -> TrainerState:
        """Move the cursors and merge ``status`` into the recorded status (top-level keys
        replace), in one transaction."""

        def txn(c: sqlite3.Connection) -> None:
            row = c.execute("SELECT run_cursor, pair_cursor, status FROM trainer_state WHERE suite = ?",
                            (suite,)).fetchone()
            runs, pairs, old = (row[0], row[1], json.loads(row[2]) if row[2] else {}) if row else (0, 0, {})
            merged = {**old, **(status or {})}
            c.execute(
                "INSERT INTO trainer_state (suite, run_cursor, pair_cursor, status, updated_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(suite) DO UPDATE SET run_cursor = excluded.run_cursor, "
                "pair_cursor = excluded.pair_cursor, status = excluded.status, updated_at = excluded.updated_at",
                (suite, runs if run_cursor is None else run_cursor, pairs if pair_cursor is None else pair_cursor,
                 _dumps(merged), utcnow()),
            )

        self.db.write(txn)
        return self.state(suite)  # type: ignore[return-value]

    # -- cycles --------------------------------------------------------------------------

    def add_cycle(self, suite: str, started_at: str, **fields: Any) -> int:
        """Record one cycle (fields: TrainerCycle's columns); returns its id."""
        unknown = set(fields) - set(_CYCLE_COLUMNS)
        if unknown:
            raise StoreError(f"trainer cycle fields {sorted(unknown)} are unknown; use {', '.join(_CYCLE_COLUMNS)}")
        row = {"suite": suite, "started_at": started_at, "finished_at": utcnow(), **fields}
        row["details"] = _dumps(row.get("details"))
        names = [n for n in _CYCLE_COLUMNS if n in row]
        sql = f"INSERT INTO trainer_cycles ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
        return self.db.write(lambda c: c.execute(sql, [row[n] for n in names]).lastrowid)

    def cycles(self, suite: str | None = None, limit: int | None = 20) -> list[TrainerCycle]:
        """Recorded cycles, newest first."""
        where, params = ("WHERE suite = ?", [suite]) if suite else ("", [])
        sql = f"SELECT * FROM trainer_cycles {where} ORDER BY id DESC" + (" LIMIT ?" if limit else "")
        out = []
        for row in self.db.read(sql, params + ([limit] if limit else [])):
            row = dict(row)
            row["details"] = json.loads(row["details"]) if row["details"] else None
            out.append(TrainerCycle.model_validate(row))
        return out

    # -- what the trainer watches ----------------------------------------------------------

    def runs_after(self, run_id: int, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` runs with id > ``run_id``, oldest first, without steps or meta."""
        return [dict(r) for r in self.db.read(
            "SELECT id, graph, suite, task_id, split, model, policy_version, status, started_at, owner_pid, "
            "owner_host FROM runs WHERE id > ? ORDER BY id LIMIT ?", (run_id, limit))]

    def run_tasks(self, run_ids: Sequence[int]) -> dict[int, dict[str, Any] | None]:
        """The task each run recorded in its meta ("task"), or None when it did not."""
        out: dict[int, dict[str, Any] | None] = {}
        for chunk in (list(run_ids)[i:i + 500] for i in range(0, len(run_ids), 500)):
            sql = f"SELECT id, meta FROM runs WHERE id IN ({', '.join('?' * len(chunk))})"
            for row in self.db.read(sql, chunk):
                meta = json.loads(row["meta"]) if row["meta"] else {}
                out[row["id"]] = meta.get("task") if isinstance(meta, dict) else None
        return out

    def runs_with_pairs(self, run_ids: Sequence[int]) -> set[int]:
        """Those of ``run_ids`` that already have a stored pair (their pairs were built)."""
        found: set[int] = set()
        for chunk in (list(run_ids)[i:i + 500] for i in range(0, len(run_ids), 500)):
            sql = f"SELECT DISTINCT run_id FROM step_pairs WHERE run_id IN ({', '.join('?' * len(chunk))})"
            found.update(r[0] for r in self.db.read(sql, chunk))
        return found

    def pair_ids(self, suite: str, *, after: int = 0, limit: int | None = None) -> list[int]:
        """Ids of the suite's step pairs above ``after``, oldest first; with ``limit``, the newest ``limit``."""
        sql = "SELECT id FROM step_pairs WHERE kind = 'step' AND suite = ? AND id > ? ORDER BY id DESC"
        rows = self.db.read(sql + (" LIMIT ?" if limit else ""), (suite, after, limit) if limit else (suite, after))
        return sorted(r[0] for r in rows)
