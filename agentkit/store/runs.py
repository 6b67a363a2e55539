"""The trajectory store: one Run row per graph execution, one Step row per model call.

Steps keep the exact prompt/completion token ids and per-token logprobs, so training
never re-tokenizes. Every write is its own committed transaction (add_steps: one per
batch), so a writer killed mid-run loses at most the write in flight. One store
object is safe to share between threads; any number of processes may open the same
file, and store objects on one file in one process share its connection.

    with TrajectoryStore("runs.db") as store:
        run_id = store.start_run("solve", suite="arithmetic", task_id="t1", model="gemma-3-270m")
        store.add_step(run_id, node="solve", role="solver", prompt_ids=[2, 9], completion_ids=[7], logprobs=[-0.1])
        store.finish_run(run_id, status="success", reward=1.0)
        store.get_run(run_id).steps[0].completion_ids  # [7]
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from agentkit.errors import StoreError

from ._closing import close_run
from ._owners import mark_dead_runs, owner_alive, this_process
from .db import StoreConnection, utcnow
from .db import dumps as _dumps
from .db import loads as _loads

__all__ = ["Run", "Step", "StepRecord", "TrajectoryStore", "RUN_STATUSES"]

RUN_STATUSES = ("success", "failure", "error", "budget", "interrupted")
"""How a run ended; while it runs its status is 'running'. 'interrupted': stopped before it
finished (Ctrl-C, or its process died: see ``TrajectoryStore.repair``)."""


def _refuse_live(run_id: int, pid: int | None, host: str | None, start: str | None) -> None:
    """Raise unless the process recorded on 'running' run ``run_id`` is surely gone:
    resuming a live run would run it twice."""
    alive = owner_alive(pid, host, start)
    if alive is False:
        return
    if alive:
        raise StoreError(f"run {run_id} is still running in process {pid} on {host}; resuming it here would run it "
                         f"twice: wait for it to finish, or stop that process (kill {pid}) and resume it then")
    if pid is None:
        raise StoreError(f"run {run_id} is 'running' and recorded no process, so it may be live elsewhere; if "
                         "nothing else runs it, mark it with `agentkit traces repair --unowned` first, then resume it")
    raise StoreError(f"run {run_id} is 'running' in process {pid} on {host}, which cannot be checked from here "
                     "(another machine or container); if that process is gone, run `agentkit traces repair` "
                     "where it ran first, then resume it")


class StepRecord(BaseModel):
    """One step as a caller writes it: a Step without what the store fills in (id, token
    counts, created_at, step values). The one list of a step's fields, which add_step,
    add_steps and the runtime's Recorder all take."""

    model_config = ConfigDict(frozen=True, extra="forbid")  # a misspelt field is an error, never dropped

    run_id: int
    node: str
    role: str | None = None
    attempt: int = 0
    parent_step_id: int | None = None
    """The step this one continues (a retry's attempt before it, a search node's parent)."""
    prompt_text: str | None = None
    prompt_ids: list[int] | None = None
    completion_text: str | None = None
    completion_ids: list[int] | None = None
    logprobs: list[float] | None = None
    finish_reason: str | None = None
    parsed: Any = None
    latency_s: float | None = None
    adapter: str | None = None
    policy_version: str | None = None
    memory_ids: list[int | str] | None = None
    """The experience-library items the prompt showed."""
    meta: dict[str, Any] | None = None
    revision: int | None = None
    """In a graph run: how many critic revisions the run had made when this node ran."""
    route: str | None = None
    """In a graph run: the label a router or critic step chose."""

    @classmethod
    def of_completion(cls, run_id: int, node: str, completion: Any, **fields: Any) -> StepRecord:
        """A step holding an llm Completion's tokens, text, logprobs, finish reason, latency
        and adapter, as sampled (read by name: the store imports nothing above it)."""
        return cls(run_id=run_id, node=node, prompt_ids=completion.prompt_ids, completion_ids=completion.token_ids,
                   completion_text=completion.text, logprobs=completion.logprobs,
                   finish_reason=completion.finish_reason, latency_s=completion.latency_s,
                   adapter=completion.adapter, **fields)

    def row(self) -> tuple:
        """The values of an INSERT of _STEP_COLUMNS; token counts are the id lists' lengths."""
        return (
            self.run_id, self.node, self.role, self.attempt, self.parent_step_id,
            self.prompt_text, _dumps(self.prompt_ids),
            self.completion_text, _dumps(self.completion_ids), _dumps(self.logprobs),
            self.finish_reason, _dumps(self.parsed), self.latency_s,
            None if self.prompt_ids is None else len(self.prompt_ids),
            None if self.completion_ids is None else len(self.completion_ids),
            self.adapter, self.policy_version, _dumps(self.memory_ids), _dumps(self.meta),
            utcnow(), self.revision, self.route,
        )


class Step(StepRecord):
    """One model call inside a run, with its exact tokens: a StepRecord as stored."""

    model_config = ConfigDict(frozen=False, extra="ignore")

    id: int
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    step_values: list[float] | None = None
    created_at: str


class Run(BaseModel):
    """One graph execution on one task; tokens, calls and cost are filled by finish_run."""

    id: int
    graph: str
    suite: str | None = None
    task_id: str | None = None
    split: str | None = None
    model: str | None = None
    policy_version: str | None = None
    status: str
    reward: float | None = None
    step_accuracy: float | None = None
    tokens: int | None = None
    calls: int | None = None
    cost: float | None = None
    wall_s: float | None = None
    error: str | None = None
    meta: dict[str, Any] | None = None
    started_at: str
    finished_at: str | None = None
    owner_pid: int | None = None
    """The process that started (or resumed) the run, with its host and start identity
    (store/_owners.py); None on runs recorded before runs recorded it."""
    owner_host: str | None = None
    owner_start: str | None = None
    steps: list[Step] | None = None  # loaded by get_run(steps=True)


_STEP_JSON = ("prompt_ids", "completion_ids", "logprobs", "parsed", "memory_ids", "step_values", "meta")
_STEP_COLUMNS = (
    "run_id", "node", "role", "attempt", "parent_step_id", "prompt_text", "prompt_ids",
    "completion_text", "completion_ids", "logprobs", "finish_reason", "parsed", "latency_s",
    "prompt_tokens", "completion_tokens", "adapter", "policy_version", "memory_ids", "meta",
    "created_at", "revision", "route",
)
_INSERT_STEP = (
    f"INSERT INTO steps ({', '.join(_STEP_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_STEP_COLUMNS))})"
)


def _to_step(row: dict[str, Any]) -> Step:
    for key in _STEP_JSON:
        row[key] = _loads(row[key])
    return Step.model_validate(row)


def _to_run(row: dict[str, Any]) -> Run:
    row["meta"] = _loads(row["meta"])
    return Run.model_validate(row)


class TrajectoryStore:
    """Runs and steps in one SQLite file (WAL mode), created and migrated on open.

    path: a file (created with its parent directories if missing) or ":memory:".
    timeout: seconds a write keeps retrying while other writers hold the file.
    synchronous: "normal" (default in WAL mode: a commit survives a killed process) or
    "full" (it also survives a power loss); default $AGENTKIT_SYNCHRONOUS, else normal.
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 60.0, synchronous: str | None = None):
        self.path = str(path) if str(path) == ":memory:" else str(Path(path).expanduser())
        self.timeout = timeout
        # The process's one connection to the file, shared with every other store object on
        # it and used by one thread at a time (see store/db.py); pair stores and the
        # experience library read and write through it.
        self.db = StoreConnection(self.path, timeout=timeout, synchronous=synchronous, owner="TrajectoryStore")

    # -- plumbing ---------------------------------------------------------------

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> TrajectoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TrajectoryStore({self.path!r})"

    # -- runs -------------------------------------------------------------------

    def start_run(
        self,
        graph: str,
        *,
        suite: str | None = None,
        task_id: str | None = None,
        split: str | None = None,
        model: str | None = None,
        policy_version: str | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> int:
        """Insert a run with status 'running', owned by this process, and return its id."""
        row = (graph, suite, task_id, split, model, policy_version, "running", _dumps(meta), utcnow(), *this_process())
        return self.db.write(lambda c: c.execute(
            "INSERT INTO runs (graph, suite, task_id, split, model, policy_version, status, meta, started_at, "
            "owner_pid, owner_host, owner_start) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            row,
        ).lastrowid)

    def reopen_run(self, run_id: int) -> TrajectoryStore:
        """Set an unfinished run (interrupted, error, or running in a process that is gone)
        back to 'running', owned by this process, before resuming it: while it runs,
        nothing marks it interrupted and no other process resumes it."""

        def txn(c: sqlite3.Connection) -> None:
            row = c.execute("SELECT status, owner_pid, owner_host, owner_start FROM runs WHERE id = ?",
                            (run_id,)).fetchone()
            if row is None:
                raise self._no_run(run_id)
            status, *owner = row
            if status not in ("running", "interrupted", "error"):
                raise StoreError(f"run {run_id} already finished ({status}); only an interrupted, error or running run reopens")
            if status == "running":
                _refuse_live(run_id, *owner)
            c.execute(
                "UPDATE runs SET status = 'running', finished_at = NULL, error = NULL, "
                "owner_pid = ?, owner_host = ?, owner_start = ? WHERE id = ?",
                (*this_process(), run_id),
            )

        self.db.write(txn)
        return self

    def interrupt_runs(self, run_ids: Iterable[int], *, error: str) -> list[int]:
        """Close as 'interrupted' those of ``run_ids`` still 'running', in one transaction,
        with their totals as finish_run records them, and return them: a run that finished
        meanwhile keeps its outcome (Ctrl-C in run_tasks)."""
        ids = list(run_ids)

        def txn(c: sqlite3.Connection) -> list[int]:
            return [run_id for run_id in ids
                    if close_run(c, run_id, status="interrupted", reward=0.0, error=error, running_only=True)]

        return self.db.write(txn) if ids else []

    def repair(self, *, unowned: bool = False) -> list[int]:
        """Mark 'interrupted' the runs left 'running' by a process that is gone; returns
        their ids, with those this process's opening of the store marked (opening does this
        too). ``unowned``: also runs that recorded no process (from before runs recorded
        one), which cannot be told from live ones - only when nothing else is running."""
        opened = self.db.take_interrupted()

        def txn(c: sqlite3.Connection) -> list[int]:
            status = "SELECT status FROM runs WHERE id = ?"
            still = [i for i in opened if c.execute(status, (i,)).fetchone() == ("interrupted",)]  # not reopened since
            return sorted(still + mark_dead_runs(c, unowned=unowned))

        return self.db.write(txn)

    def finish_run(
        self,
        run_id: int,
        *,
        status: str,
        reward: float | None = None,
        step_accuracy: float | None = None,
        wall_s: float | None = None,
        error: str | None = None,
    ) -> TrajectoryStore:
        """Record the outcome; tokens, calls and cost are summed from the run's steps.

        wall_s defaults to the time since start_run. cost equals tokens for now.
        """
        if status not in RUN_STATUSES:
            raise ValueError(f"run status {status!r} is not one of {', '.join(RUN_STATUSES)}")

        def txn(c: sqlite3.Connection) -> None:
            if not close_run(c, run_id, status=status, reward=reward, step_accuracy=step_accuracy, wall_s=wall_s,
                             error=error):
                raise self._no_run(run_id)

        self.db.write(txn)
        return self

    def get_run(self, run_id: int, *, steps: bool = True) -> Run:
        rows = self.db.rows("runs", "id = ?", [run_id])
        if not rows:
            raise self._no_run(run_id)
        run = _to_run(rows[0])
        if steps:
            run.steps = self.steps(run_id)
        return run

    def list_runs(
        self,
        limit: int | None = 20,
        *,
        suite: str | None = None,
        status: str | None = None,
        graph: str | None = None,
    ) -> list[Run]:
        """Runs newest first, without their steps; limit=None returns all."""
        where, params = [], []
        for column, value in (("suite", suite), ("status", status), ("graph", graph)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        rows = self.db.rows("runs", " AND ".join(where) or None, params, order_by="id DESC", limit=limit)
        return [_to_run(row) for row in rows]

    def summary(self, run_ids: Iterable[int] | None = None) -> dict[str, Any]:
        """Totals over the given runs (all runs when None).

        success_rate is success / runs, counting unfinished runs as not successful;
        mean_step_accuracy averages the runs that have one (None if none do).
        """
        aggregate = (
            "SELECT COUNT(*), SUM(CASE WHEN status = 'success' THEN 1 ELSE 0 END), "
            "COALESCE(SUM(tokens), 0), COALESCE(SUM(wall_s), 0.0), "
            "COALESCE(SUM(step_accuracy), 0.0), COUNT(step_accuracy) FROM runs"
        )
        if run_ids is None:
            parts = [self.db.one(aggregate)]
        else:
            ids = sorted(set(run_ids))
            # Chunks keep each IN list under SQLite's bound-parameter limit.
            parts = [
                self.db.one(
                    f"{aggregate} WHERE id IN ({', '.join('?' * len(chunk))})", chunk
                )
                for chunk in (ids[i:i + 500] for i in range(0, len(ids), 500))
            ]
        runs = sum(p[0] for p in parts)
        success = sum(p[1] or 0 for p in parts)
        accuracy_sum = sum(p[4] for p in parts)
        accuracy_n = sum(p[5] for p in parts)
        return {
            "runs": runs,
            "success": success,
            "success_rate": success / runs if runs else 0.0,
            "tokens": sum(p[2] for p in parts),
            "wall_s": sum(p[3] for p in parts),
            "mean_step_accuracy": accuracy_sum / accuracy_n if accuracy_n else None,
        }

    def _no_run(self, run_id: int) -> StoreError:
        return StoreError(f"no run with id {run_id} in store {self.path}; start one with store.start_run(...)")

    # -- steps ------------------------------------------------------------------

    def add_step(self, run_id: int, *, node: str, **fields: Any) -> int:
        """Record one model call, committed before returning; returns the step id.
        ``fields``: the rest of StepRecord's (a misspelt one is an error).

        prompt_tokens/completion_tokens are the lengths of the id lists. In a graph run,
        ``revision`` and ``route`` give the step's place (see Step).
        """
        return self._insert_steps([StepRecord(run_id=run_id, node=node, **fields).row()])[0]

    def add_steps(self, steps: Iterable[StepRecord | Mapping[str, Any]]) -> list[int]:
        """Record many steps in one transaction (all or none); returns their ids in order.

        Each is a StepRecord, or a mapping of its fields. Durable per batch: cheaper than
        add_step per call when a runtime buffers a few steps.
        """
        rows = [(s if isinstance(s, StepRecord) else StepRecord(**s)).row() for s in steps]
        return self._insert_steps(rows) if rows else []

    def _insert_steps(self, rows: list[tuple]) -> list[int]:
        def txn(c: sqlite3.Connection) -> list[int]:
            return [c.execute(_INSERT_STEP, row).lastrowid for row in rows]

        try:
            return self.db.write(txn)
        except sqlite3.IntegrityError as exc:
            raise self._explain_integrity(rows, exc) from None

    def _explain_integrity(self, rows: list[tuple], exc: sqlite3.IntegrityError) -> StoreError:
        for row in rows:
            run_id, parent_step_id = row[0], row[4]
            if not self.db.one("SELECT COUNT(*) FROM runs WHERE id = ?", (run_id,))[0]:
                return StoreError(f"cannot add a step to run {run_id}: {self._no_run(run_id)}")
            if parent_step_id is not None and not self.db.one(
                "SELECT COUNT(*) FROM steps WHERE id = ?", (parent_step_id,)
            )[0]:
                return StoreError(
                    f"parent_step_id {parent_step_id} is not a step in store {self.path}; "
                    "pass the id add_step returned for the parent, or None"
                )
        return StoreError(f"store {self.path} rejected a step: {exc}")

    def node_stats(self, run_ids: Iterable[int]) -> list[dict[str, Any]]:
        """Per-node accounting over the given runs, in the order nodes first ran.

        One dict per (node, role): ``runs`` (runs that reached the node), ``calls`` (steps,
        model calls and checker/tool steps alike), ``retries`` (steps with attempt > 0),
        ``unparsed`` (steps whose output did not parse: a recorded ``parsed["error"]``, or a
        solve step with no answer), ``fallbacks`` (steps after which the node went on with
        a default, ``parsed["fallback"]``: no plan, no verdict so accept, ...) with
        ``fallback_reasons`` (those defaults, most frequent first), ``prompt_tokens``,
        ``completion_tokens``, ``tokens`` and ``latency_s`` (sums). A node that searched
        (steps with ``meta["search"]``, agentkit.graph.search.record_tree) also has
        ``tree_nodes`` (its tree steps), ``sampled_tokens`` (each tree line's tokens times
        the times it was sampled, duplicates included, plus the Monte-Carlo rollouts that
        valued them: what the search paid to generate) and ``strategies`` (e.g. ["beam:4x8"]); other nodes have 0, 0 and [].
        """
        valid = "json_valid(parsed) AND "  # a row whose parsed output is not JSON counts as neither
        tree = "json_valid(meta) AND json_extract(meta, '$.search') IS NOT NULL"  # a search tree's step
        query = (
            "SELECT node, COALESCE(role, ''), MIN(id), COUNT(DISTINCT run_id), COUNT(*), "
            "SUM(CASE WHEN attempt > 0 THEN 1 ELSE 0 END), "
            f"SUM(CASE WHEN {valid}(json_extract(parsed, '$.error') IS NOT NULL "
            "OR json_type(parsed, '$.answer') = 'null') THEN 1 ELSE 0 END), "
            f"SUM(CASE WHEN {valid}json_extract(parsed, '$.fallback') IS NOT NULL THEN 1 ELSE 0 END), "
            "COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0), COALESCE(SUM(latency_s), 0.0), "
            f"SUM(CASE WHEN {tree} THEN 1 ELSE 0 END), "
            f"COALESCE(SUM(CASE WHEN {tree} THEN json_extract(meta, '$.search.count') * completion_tokens "
            "+ COALESCE(json_extract(meta, '$.search.rollout_tokens'), 0) END), 0), "
            # a JSON array, not GROUP_CONCAT: a strategy's spec may hold commas ("beam:4x8,temperature=1.0")
            f"json_group_array(DISTINCT CASE WHEN {tree} THEN json_extract(meta, '$.search.strategy') END) "
            "FROM steps WHERE run_id IN ({}) GROUP BY node, role"
        )
        reasons_query = (
            "SELECT node, COALESCE(role, ''), json_extract(parsed, '$.fallback'), COUNT(*) FROM steps "
            f"WHERE run_id IN ({{}}) AND {valid}json_extract(parsed, '$.fallback') IS NOT NULL GROUP BY 1, 2, 3"
        )
        ids = sorted(set(run_ids))
        totals: dict[tuple[str, str], list] = {}
        reasons: dict[tuple[str, str], dict[str, int]] = {}
        searched: dict[tuple[str, str], set[str]] = {}
        with self.db.locked() as conn:
            # chunks keep each IN list under SQLite's bound-parameter limit
            for chunk in (ids[i:i + 500] for i in range(0, len(ids), 500)):
                marks = ", ".join("?" * len(chunk))
                for node, role, first, runs, *sums, strategies in conn.execute(query.format(marks), chunk):
                    row = totals.setdefault((node, role), [first, 0, 0, 0, 0, 0, 0, 0, 0.0, 0, 0])
                    row[0] = min(row[0], first)
                    for k, value in enumerate([runs, *sums], 1):
                        row[k] += value or 0
                    searched.setdefault((node, role), set()).update(x for x in json.loads(strategies) if x)
                for node, role, reason, count in conn.execute(reasons_query.format(marks), chunk):
                    seen = reasons.setdefault((node, role), {})
                    seen[str(reason)] = seen.get(str(reason), 0) + count
        stats = []
        for (node, role), (_, runs, calls, retries, unparsed, fallbacks, prompt, completion, latency, tree_nodes,
                           sampled) in sorted(totals.items(), key=lambda item: item[1][0]):
            why = reasons.get((node, role), {})
            stats.append({
                "node": node, "role": role or None, "runs": runs, "calls": calls, "retries": retries,
                "unparsed": unparsed, "fallbacks": fallbacks,
                "fallback_reasons": sorted(why, key=lambda reason: (-why[reason], reason)),
                "prompt_tokens": prompt, "completion_tokens": completion, "tokens": prompt + completion,
                "latency_s": latency, "tree_nodes": tree_nodes, "sampled_tokens": int(sampled),
                "strategies": sorted(searched.get((node, role), ())),
            })
        return stats

    def steps(self, run_id: int) -> list[Step]:
        """A run's steps in the order they were recorded."""
        return [_to_step(row) for row in self.db.rows("steps", "run_id = ?", [run_id], order_by="id")]

    def set_step_values(self, step_id: int, values: Sequence[float]) -> TrajectoryStore:
        """Store the credit-assignment values (e.g. Monte-Carlo estimates per sub-step)."""
        payload = _dumps(list(values))

        def txn(c: sqlite3.Connection) -> None:
            if c.execute("UPDATE steps SET step_values = ? WHERE id = ?", (payload, step_id)).rowcount == 0:
                raise StoreError(f"no step with id {step_id} in store {self.path}")

        self.db.write(txn)
        return self
