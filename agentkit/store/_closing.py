"""Closing a run: the one place a run's outcome and its totals are written.

finish_run, interrupt_runs (Ctrl-C) and marking the runs of dead processes all close runs
here, so every ended run carries the same accounting: tokens, calls and cost summed from
its steps, its wall time and when it finished.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime

from .migrations import utcnow

__all__ = ["close_run"]


def close_run(
    conn: sqlite3.Connection,
    run_id: int,
    *,
    status: str,
    reward: float | None = None,
    step_accuracy: float | None = None,
    wall_s: float | None = None,
    error: str | None = None,
    running_only: bool = False,
    died: bool = False,
) -> bool:
    """Record how run ``run_id`` ended, inside the caller's write transaction; False if
    there is no such run (or, ``running_only``, it is no longer 'running': it keeps its outcome).

    tokens, calls and cost (= tokens for now) are summed from the run's steps. wall_s
    defaults to the time since the run started or, ``died`` (its process is gone and when
    it stopped is unknown), to the time of its last recorded step.
    """
    row = conn.execute("SELECT started_at, status FROM runs WHERE id = ?", (run_id,)).fetchone()
    if row is None or (running_only and row[1] != "running"):
        return False
    started_at = row[0]
    tokens, calls, last_step = conn.execute(
        "SELECT COALESCE(SUM(COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0)), 0), COUNT(*), "
        "MAX(created_at) FROM steps WHERE run_id = ?",
        (run_id,),
    ).fetchone()
    finished_at = utcnow()
    if wall_s is None:
        until = (last_step or started_at) if died else finished_at
        wall_s = max(0.0, (datetime.fromisoformat(until) - datetime.fromisoformat(started_at)).total_seconds())
    conn.execute(
        "UPDATE runs SET status = ?, reward = ?, step_accuracy = ?, tokens = ?, calls = ?, cost = ?, wall_s = ?, "
        "error = ?, finished_at = ? WHERE id = ?",
        (status, reward, step_accuracy, tokens, calls, float(tokens), wall_s, error, finished_at, run_id),
    )
    return True
