"""A read-only view of a store file, for `agentkit ui`: every query a page needs, over
connections SQLite itself opens read-only (``mode=ro``, ``query_only``), so nothing the
viewer does can write, migrate or lock the file against the writers.

Unlike the store classes, opening never creates or migrates: a missing file is an error,
and tables a newer agentkit added read as empty. Each thread gets its own connection
(uvicorn answers requests on a thread pool); WAL lets them read while others write.

    reader = StoreReader("runs.db")
    page = reader.runs(status="failure", limit=50)          # newest first
    more = reader.runs(status="failure", before=page[-1].id)  # keyset: the next page
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from agentkit.errors import StoreError

from .db import loads
from .improve import ImproveRun, _to_improve
from .pairs import Pair, _to_pair
from .policies import Policy, PolicyEvent, _to_event, _to_policy
from .runs import Run, _to_run, _to_step
from .trainer import TrainerCycle, TrainerState

__all__ = ["StoreReader", "RunFilter"]

RUN_LIST_COLUMNS = ("id", "graph", "suite", "task_id", "split", "model", "policy_version", "status", "reward",
                    "step_accuracy", "tokens", "calls", "wall_s", "error", "started_at", "finished_at")
"""What the runs page shows: everything but meta (the whole task) and the owner."""

RunFilter = dict[str, str]
"""Column -> value for runs(): suite, status, graph, policy_version, since and until (ISO times)."""

_EQUAL = ("suite", "status", "graph", "policy_version")


class StoreReader:
    """Read-only queries over the store at ``path`` (which must exist)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = str(Path(path).expanduser().resolve())
        if not Path(self.path).is_file():
            raise StoreError(f"no store at {self.path}; record runs first (`agentkit run --store {path}`) "
                             "or pass --store PATH")
        self._local = threading.local()
        self._tables: set[str] | None = None
        self._watch_lock = threading.Lock()
        self._watch: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(f"file:{quote(self.path)}?mode=ro", uri=True, check_same_thread=False)
        conn.execute("PRAGMA query_only = ON")
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.row_factory = sqlite3.Row
        return conn

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = self._local.conn = self._connect()
                conn.execute("SELECT 1 FROM sqlite_master LIMIT 1")
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"{self.path} cannot be read as an agentkit store: {exc}") from None
        return conn

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return [dict(row) for row in self.conn.execute(sql, tuple(params))]

    def has(self, table: str) -> bool:
        """Whether the store has ``table`` (an older store lacks the newer tables)."""
        if self._tables is None or table not in self._tables:
            self._tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return table in self._tables

    def version(self) -> int:
        """A number that changes whenever any process commits to the store (PRAGMA data_version
        on one long-lived connection): pages poll it to know when to refresh."""
        with self._watch_lock:
            if self._watch is None:
                self._watch = self._connect()
            return self._watch.execute("PRAGMA data_version").fetchone()[0]

    # -- runs -----------------------------------------------------------------------------

    def runs(self, *, before: int | None = None, limit: int = 50, **filters: str | None) -> list[Run]:
        """Runs newest first, without steps or meta; ``before``: only ids below it (the next
        page). Walks the primary key backwards and stops at ``limit`` matches, so a page costs
        the same at run 100 and at run 100,000."""
        where, params = [], []
        for column, value in filters.items():
            if not value:
                continue
            if column in _EQUAL:
                where.append(f"{column} = ?")
            elif column == "since":
                where.append("started_at >= ?")
            elif column == "until":
                where.append("started_at < ?")
            else:
                raise StoreError(f"runs cannot be filtered by {column!r}; use {', '.join(_EQUAL)}, since or until")
            params.append(value)
        if before is not None:
            where.append("id < ?")
            params.append(before)
        sql = (f"SELECT {', '.join(RUN_LIST_COLUMNS)} FROM runs" + (f" WHERE {' AND '.join(where)}" if where else "")
               + " ORDER BY id DESC LIMIT ?")
        return [Run.model_validate(row) for row in self._rows(sql, [*params, limit])]

    def run_choices(self) -> dict[str, list[str]]:
        """The distinct suites, graphs, statuses and policy versions runs have (one scan)."""
        found: dict[str, set[str]] = {"suite": set(), "graph": set(), "status": set(), "policy_version": set()}
        for row in self.conn.execute("SELECT DISTINCT suite, graph, status, policy_version FROM runs"):
            for key in found:
                if row[key] is not None:
                    found[key].add(row[key])
        return {key: sorted(values) for key, values in found.items()}

    def run(self, run_id: int) -> Run:
        """One run with its steps, in the order they were recorded (without prompt_ids)."""
        rows = self._rows("SELECT * FROM runs WHERE id = ?", (run_id,))
        if not rows:
            raise StoreError(f"no run with id {run_id} in store {self.path}")
        run = _to_run(rows[0])
        # every column but prompt_ids: pages show the prompt's text and count, and decoding
        # thousands of id lists would be most of a long run's page time
        columns = [r[1] for r in self.conn.execute("PRAGMA table_info(steps)") if r[1] != "prompt_ids"]
        sql = f"SELECT {', '.join(columns)}, NULL AS prompt_ids FROM steps WHERE run_id = ? ORDER BY id"
        run.steps = [_to_step(row) for row in self._rows(sql, (run_id,))]
        return run

    # -- improve --------------------------------------------------------------------------

    def improve_runs(self, limit: int = 100) -> list[ImproveRun]:
        if not self.has("improve_runs"):
            return []
        runs = [_to_improve(row) for row in self._rows("SELECT * FROM improve_runs ORDER BY id DESC LIMIT ?", (limit,))]
        counts = {r["improve_id"]: r["n"] for r in self._rows(
            "SELECT improve_id, COUNT(*) AS n FROM improve_rounds GROUP BY improve_id")}
        for run in runs:
            run.rounds = [{}] * counts.get(run.id, 0)  # only the count: get improve_run for the rounds
        return runs

    def improve_run(self, improve_id: int) -> ImproveRun:
        rows = self._rows("SELECT * FROM improve_runs WHERE id = ?", (improve_id,)) if self.has("improve_runs") else []
        if not rows:
            raise StoreError(f"no improve run with id {improve_id} in store {self.path}")
        run = _to_improve(rows[0])
        run.rounds = [loads(r["result"]) for r in self._rows(
            "SELECT result FROM improve_rounds WHERE improve_id = ? ORDER BY round", (improve_id,))]
        return run

    # -- policies -------------------------------------------------------------------------

    def policies(self) -> list[Policy]:
        """Every version, oldest first."""
        return [_to_policy(row) for row in self._rows("SELECT * FROM policies ORDER BY id")]

    def policy(self, version: str) -> Policy:
        rows = self._rows("SELECT * FROM policies WHERE version = ?", (version,))
        if not rows:
            raise StoreError(f"no policy version {version!r} in store {self.path}")
        return _to_policy(rows[0])

    def policy_events(self, version: str | None = None) -> list[PolicyEvent]:
        where, params = ("WHERE version = ? OR previous = ?", (version, version)) if version else ("", ())
        return [_to_event(row) for row in self._rows(f"SELECT * FROM policy_events {where} ORDER BY id", params)]

    # -- pairs ----------------------------------------------------------------------------

    def pairs(self, *, before: int | None = None, limit: int = 50, kind: str | None = None) -> list[Pair]:
        """Pairs newest first (keyset pages, like runs)."""
        where, params = [], []
        if kind:
            where.append("kind = ?")
            params.append(kind)
        if before is not None:
            where.append("id < ?")
            params.append(before)
        sql = "SELECT * FROM step_pairs" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id DESC LIMIT ?"
        return [_to_pair(row) for row in self._rows(sql, [*params, limit])]

    def pair(self, pair_id: int) -> Pair:
        rows = self._rows("SELECT * FROM step_pairs WHERE id = ?", (pair_id,))
        if not rows:
            raise StoreError(f"no pair with id {pair_id} in store {self.path}")
        return _to_pair(rows[0])

    def pair_counts(self) -> dict[str, int]:
        """Pairs per policy version that sampled them."""
        return {r["policy_version"] or "-": r["n"] for r in self._rows(
            "SELECT policy_version, COUNT(*) AS n FROM step_pairs GROUP BY policy_version")}

    # -- the experience library -----------------------------------------------------------

    def library_items(self, limit: int = 200) -> list[dict[str, Any]]:
        """Items, most shown first, with their counts (utility is computed by the caller)."""
        return [{**row, "source_runs": loads(row["source_runs"]), "meta": loads(row["meta"])} for row in self._rows(
            "SELECT id, kind, family, node, role, text, label, source_runs, shown, shown_success, expected, status, "
            "reason, meta, updated_at FROM library_items ORDER BY shown DESC, id DESC LIMIT ?", (limit,))]

    def library_versions(self, limit: int = 50) -> list[dict[str, Any]]:
        return [{**row, "changes": loads(row["changes"])} for row in self._rows(
            "SELECT id, message, changes, restored_from, created_at FROM library_versions ORDER BY id DESC LIMIT ?",
            (limit,))]

    def library_nodes(self) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM library_nodes ORDER BY family, node")

    # -- the background trainer -----------------------------------------------------------

    def trainer_states(self) -> list[TrainerState]:
        return [TrainerState.model_validate({**row, "status": loads(row["status"]) or {}})
                for row in self._rows("SELECT * FROM trainer_state ORDER BY updated_at DESC")]

    def trainer_cycles(self, limit: int = 50) -> list[TrainerCycle]:
        return [TrainerCycle.model_validate({**row, "details": loads(row["details"])})
                for row in self._rows("SELECT * FROM trainer_cycles ORDER BY id DESC LIMIT ?", (limit,))]

    def close(self) -> None:
        """Close this thread's connection and the watcher (other threads' close with them)."""
        for conn in (getattr(self._local, "conn", None), self._watch):
            if conn is not None:
                conn.close()
        self._local.conn = None
        self._watch = None
