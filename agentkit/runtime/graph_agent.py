"""A declarative graph as a runtime Agent: run_tasks runs many graph runs on threads
through one backend (whose batcher gathers their calls), and an interrupted run resumes
from LangGraph's SQLite checkpoints without redoing its completed nodes.

    agent = GraphAgent(load_graph("plan_solve_check"), checkpoints=checkpoint_path("runs.db"))
    run_tasks(llm, suite, tasks, store, agent=agent)
    ...
    resume_run(llm, store, run_id)   # after a crash: finishes the run
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

from agentkit.errors import GraphSpecError, StoreError
from agentkit.store.protocols import RunStore
from agentkit.tasks import Suite, Task

__all__ = ["GraphAgent", "checkpoint_path", "restore_agent"]


def checkpoint_path(store_path: str | Path) -> Path | None:
    """The checkpoint file beside a store: runs.db -> runs.checkpoints.sqlite (None for :memory:)."""
    if str(store_path) == ":memory:":
        return None
    path = Path(store_path).expanduser()
    return path.with_name(path.stem + ".checkpoints.sqlite")


class GraphAgent:
    """Runs a graph on one task per call, all model calls through the run's Recorder.

    graph: a Graph (compiled here, once, with the checkpointer) or an already compiled
    LangGraph app from ``Graph.compile()``. The other arguments are run-wide defaults that
    a node's own options override: ``shots`` and ``temperature`` for solvers,
    ``max_tokens`` caps every node, ``seed`` makes sampled runs reproducible.
    checkpoints: a SQLite file for LangGraph's SqliteSaver (thread "run-<run id>"),
    which ``resume`` needs. meta: extra JSON recorded on every run row (the CLI records
    how to rebuild the suite and backend on resume). library: the ExperienceLibrary that
    nodes declared with memory= read; None: the library in the run's own store."""

    def __init__(
        self,
        graph: Any,
        *,
        shots: int = 3,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        adapter: str | None = None,
        seed: int | None = None,
        checkpoints: str | Path | None = None,
        meta: dict | None = None,
        library: Any = None,
    ):
        from agentkit.graph import Graph, GraphSpec

        if isinstance(graph, GraphSpec):
            graph = Graph.from_spec(graph)
        if isinstance(graph, Graph):
            self.graph: Graph | None = graph.validate()
            self.name = graph.name
            self._app = None
        elif hasattr(graph, "invoke") and hasattr(graph, "get_graph"):
            if checkpoints is not None:
                raise GraphSpecError("checkpoints= needs a Graph, not a compiled app; pass the Graph, or compile it with a checkpointer")
            self.graph, self._app = None, graph
            self.name = getattr(graph, "name", None) or "graph"
        else:
            raise GraphSpecError(f"GraphAgent takes a Graph or a compiled graph, not {type(graph).__name__}; see agentkit.graph.Graph")
        self.shots, self.temperature, self.max_tokens = shots, temperature, max_tokens
        self.adapter, self.seed, self.meta = adapter, seed, dict(meta or {})
        self.library = library
        self.checkpoints = None if checkpoints is None else Path(checkpoints)
        self._saver: Any = None
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    # --- the compiled app -------------------------------------------------------------------

    @property
    def app(self) -> Any:
        with self._lock:
            if self._app is None:
                self._app = self.graph.compile(checkpointer=self._checkpointer())
            return self._app

    def _checkpointer(self) -> Any:
        if self.checkpoints is None:
            return None
        from langgraph.checkpoint.sqlite import SqliteSaver

        try:
            self.checkpoints.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(self.checkpoints), check_same_thread=False, timeout=60)
            self._saver = SqliteSaver(self._conn)
            self._saver.setup()
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the checkpoint file {self.checkpoints} ({exc}); pass --store PATH to a writable place") from None
        return self._saver

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn, self._saver, self._app = None, None, None

    def __enter__(self) -> GraphAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the Agent protocol ----------------------------------------------------------------

    def run_meta(self, task: Task, suite: Suite) -> dict:
        """What run_tasks records on the run row, enough for ``restore_agent`` to resume it."""
        graph = None
        if self.graph is not None:
            graph = {"name": self.name, "source": self.graph.source, "spec": self.graph.spec.model_dump(mode="json")}
        return {
            "graph": graph,
            "agent": {"shots": self.shots, "temperature": self.temperature, "max_tokens": self.max_tokens,
                      "adapter": self.adapter, "seed": self.seed},
            "task": task.model_dump(mode="json"),
            **self.meta,
        }

    def __call__(self, task: Task, suite: Suite, recorder: Any) -> str:
        return self._invoke(task, suite, recorder, resume=False)

    def library_for(self, store: RunStore) -> Any:
        """The library memory nodes read: the given one, else the store's own; None when no
        node reads memory."""
        if self.library is not None or self.graph is None:
            return self.library
        if not any(node.memory is not None for node in self.graph.nodes):
            return None
        from agentkit.memory.library import ExperienceLibrary
        from agentkit.store.runs import TrajectoryStore

        return ExperienceLibrary(store) if isinstance(store, TrajectoryStore) else None

    def resume(self, task: Task, suite: Suite, recorder: Any) -> str:
        """Continue the run from its last checkpoint: completed nodes do not run again."""
        return self._invoke(task, suite, recorder, resume=True)

    def _invoke(self, task: Task, suite: Suite, recorder: Any, *, resume: bool) -> str:
        from agentkit.graph.compile import RECURSION_LIMIT, initial_state
        from agentkit.graph.context import RunContext

        app = self.app
        thread = f"run-{recorder.run_id}"
        config = {"configurable": {"thread_id": thread}, "recursion_limit": RECURSION_LIMIT}
        context = RunContext(recorder=recorder, question=task.question, suite=suite, task=task, shots=self.shots,
                             temperature=self.temperature, max_tokens=self.max_tokens, adapter=self.adapter,
                             seed=self.seed, library=self.library_for(recorder.store))
        state: Any = initial_state(task.question)
        saver = app.checkpointer
        if saver is not None:
            if resume:
                if app.get_state(config).values:
                    state = None  # LangGraph continues from the checkpoint
                elif recorder.store.steps(recorder.run_id):
                    raise StoreError(
                        f"run {recorder.run_id} has steps but no checkpoint in {self.checkpoints}; it cannot resume "
                        "without redoing them: start a new run"
                    )
            else:
                saver.delete_thread(thread)  # a stale thread of an older store with the same run id
        final = app.invoke(state, config, context=context)
        if saver is not None:
            saver.delete_thread(thread)  # finished: every step is in the store, the checkpoints hold nothing more
        return (final.get("draft") or {}).get("text") or ""


def restore_agent(run: Any, *, checkpoints: str | Path | None, suite: Suite | None = None) -> tuple[Any, Suite, Task]:
    """The agent, suite and task of a recorded run, from what its agent's ``run_meta``
    stored: a GraphAgent on its checkpoints, or the solve agent with its options."""
    from agentkit.graph import Graph, load_graph
    from agentkit.runtime.agents import SolveAgent

    meta = run.meta or {}
    graph_meta = meta.get("graph")
    options = dict(meta.get("agent") or {})
    solve = options.pop("kind", None) == "solve"
    if not (graph_meta or solve) or "task" not in meta:
        raise StoreError(
            f"run {run.id} ran the '{run.graph}' agent and recorded no way to rebuild it (runs from before "
            "agentkit recorded their agent options); start a new run instead"
        )
    suite = suite or _recorded_suite(run, meta)
    task = Task.model_validate(meta["task"])
    extra = {k: v for k, v in meta.items() if k not in ("graph", "agent", "task", "level")}
    if solve:
        return SolveAgent(meta=extra, **options), suite, task
    spec = graph_meta["spec"]
    if graph_meta.get("source"):
        graph = load_graph(graph_meta["source"])
        if graph.spec.model_dump(mode="json") != spec:
            raise GraphSpecError(
                f"graph {graph_meta['source']} changed since run {run.id} started; restore it, or start a new run"
            )
    else:
        graph = Graph.from_spec(spec)
    agent = GraphAgent(graph, checkpoints=checkpoints, meta=extra, **options)
    return agent, suite, task


def _recorded_suite(run: Any, meta: dict) -> Suite:
    from agentkit.tasks import get_suite, load_jsonl

    source = (meta.get("suite") or {}).get("source") or run.suite
    if source is None:
        raise StoreError(f"run {run.id} records no suite; pass the suite to resume it")
    checker = (meta.get("suite") or {}).get("checker")
    return load_jsonl(source, checker=checker or "exact") if str(source).endswith(".jsonl") else get_suite(source)
