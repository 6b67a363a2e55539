"""``agentkit improve`` runs and their rounds, next to the runs and policies they made.

One ``improve_runs`` row per call of learn.improve.improve (its suite, graph, method and
config) and one ``improve_rounds`` row per round, the round's numbers as JSON (the gate's
raw and adjusted p-values, final-test success with its interval, examples, tokens, CPU),
written as each round ends, so `agentkit ui` draws the curve while the run goes on.

    with TrajectoryStore("runs.db") as store:
        log = ImproveLog(store)
        improve_id = log.start(suite="arithmetic", method="step-dpo", config={"rounds": 3})
        log.add_round(improve_id, 0, {"heldout_success": 0.1, "final_success": 0.08})
        log.finish(improve_id)
        log.rounds(improve_id)[0]["final_success"]  # 0.08
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from agentkit.errors import StoreError

from .db import dumps, loads, utcnow
from .protocols import RunStore

__all__ = ["ImproveRun", "ImproveLog", "IMPROVE_STATUSES"]

IMPROVE_STATUSES = ("running", "finished", "failed")


class ImproveRun(BaseModel):
    """One call of ``agentkit improve``; ``rounds`` are loaded by ImproveLog.get."""

    id: int
    suite: str | None = None
    graph: str | None = None
    method: str | None = None
    status: str
    config: dict[str, Any] | None = None
    started_at: str
    finished_at: str | None = None
    rounds: list[dict[str, Any]] | None = None


class ImproveLog:
    """The ``improve_runs`` and ``improve_rounds`` tables of a trajectory store (sharing its connection)."""

    def __init__(self, store: RunStore):
        self.store = store

    def start(self, *, suite: str | None = None, graph: str | None = None, method: str | None = None,
              config: Mapping[str, Any] | None = None) -> int:
        """Insert a 'running' improve run and return its id."""
        row = (suite, graph, method, dumps(config, canonical=True, default=str), utcnow())
        return self.store.db.write(lambda c: c.execute(
            "INSERT INTO improve_runs (suite, graph, method, status, config, started_at) "
            "VALUES (?, ?, ?, 'running', ?, ?)", row).lastrowid)

    def add_round(self, improve_id: int, round: int, result: Mapping[str, Any]) -> None:
        """Record round ``round``'s numbers (a RoundResult as a dict); a round recorded twice is replaced."""
        row = (improve_id, round, dumps(dict(result), canonical=True, default=str), utcnow())
        self.store.db.write(lambda c: c.execute(
            "INSERT OR REPLACE INTO improve_rounds (improve_id, round, result, created_at) VALUES (?, ?, ?, ?)", row))

    def finish(self, improve_id: int, status: str = "finished") -> None:
        if status not in IMPROVE_STATUSES[1:]:
            raise StoreError(f"improve status {status!r} is not one of {', '.join(IMPROVE_STATUSES[1:])}")
        self.store.db.write(lambda c: c.execute(
            "UPDATE improve_runs SET status = ?, finished_at = ? WHERE id = ?", (status, utcnow(), improve_id)))

    def list(self, limit: int | None = 50) -> list[ImproveRun]:
        """Improve runs, newest first, without their rounds."""
        rows = self.store.db.rows("improve_runs", order_by="id DESC", limit=limit)
        return [_to_improve(row) for row in rows]

    def get(self, improve_id: int) -> ImproveRun:
        rows = self.store.db.rows("improve_runs", "id = ?", [improve_id])
        if not rows:
            raise StoreError(f"no improve run with id {improve_id} in store {self.store.path}; "
                             "see `agentkit ui` or start one with `agentkit improve`")
        run = _to_improve(rows[0])
        run.rounds = self.rounds(improve_id)
        return run

    def rounds(self, improve_id: int) -> list[dict[str, Any]]:
        """The recorded rounds, in order (round 0 measures the starting policy)."""
        return [loads(r[0]) for r in self.store.db.read(
            "SELECT result FROM improve_rounds WHERE improve_id = ? ORDER BY round", (improve_id,))]


def _to_improve(row: dict[str, Any]) -> ImproveRun:
    row["config"] = loads(row["config"])
    return ImproveRun.model_validate(row)
