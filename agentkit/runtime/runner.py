"""Run an agent on many tasks concurrently through one backend, recording everything.

Each task runs on its own thread, so a batching backend sees up to ``concurrency``
requests at once and gathers them into one batch."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from agentkit.errors import AgentkitError, BudgetExceeded
from agentkit.llm.base import LLM
from agentkit.runtime.agents import Agent, SolveAgent
from agentkit.runtime.recorder import Budget, Recorder
from agentkit.store.protocols import RunStore
from agentkit.tasks import Suite, Task

__all__ = ["RunResult", "RunReport", "RunsInterrupted", "run_tasks", "resume_run", "resume_runs"]


@dataclass
class RunResult:
    run_id: int
    task_id: str
    status: str  # success | failure | error | budget
    reward: float
    step_accuracy: float | None
    calls: int
    tokens: int
    completion_tokens: int
    wall_s: float
    text: str = ""
    error: str | None = None


@dataclass
class RunReport:
    results: list[RunResult] = field(default_factory=list)
    wall_s: float = 0.0
    memory: dict[str, Any] = field(default_factory=dict)
    """With a library to learn into: exemplars added, items retired, reflections, last version."""

    @property
    def n(self) -> int:
        return len(self.results)

    @property
    def success_rate(self) -> float:
        return sum(r.reward >= 1.0 for r in self.results) / self.n if self.n else 0.0

    @property
    def mean_reward(self) -> float:
        return sum(r.reward for r in self.results) / self.n if self.n else 0.0

    @property
    def step_accuracy(self) -> float | None:
        values = [r.step_accuracy for r in self.results if r.step_accuracy is not None]
        return sum(values) / len(values) if values else None

    @property
    def tokens(self) -> int:
        return sum(r.tokens for r in self.results)

    @property
    def completion_tokens(self) -> int:
        return sum(r.completion_tokens for r in self.results)

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.wall_s if self.wall_s else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "runs": self.n, "success_rate": self.success_rate, "step_accuracy": self.step_accuracy,
            "tokens": self.tokens, "completion_tokens": self.completion_tokens,
            "wall_s": self.wall_s, "completion_tokens_per_s": self.tokens_per_s,
            "errors": sum(r.status == "error" for r in self.results),
            **({"memory": self.memory} if self.memory else {}),
        }


INTERRUPTED = "interrupted (Ctrl-C); finish it with agentkit run --resume interrupted"


class RunsInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``run_tasks``: ``report`` holds the runs that finished, and
    ``interrupted`` the ids of the runs in flight, closed with status interrupted."""

    def __init__(self, report: RunReport, interrupted: list[int]):
        super().__init__(f"{len(interrupted)} runs interrupted")
        self.report = report
        self.interrupted = interrupted


def run_tasks(
    llm: LLM,
    suite: Suite,
    tasks: Sequence[Task],
    store: RunStore,
    *,
    agent: Agent | None = None,
    concurrency: int = 16,
    budget: Budget = Budget(),
    model_name: str | None = None,
    policy_version: str | None = "base",
    on_result: Callable[[RunResult], None] | None = None,
    policy: Any = None,
    library: Any = None,
    learning: Any = None,
) -> RunReport:
    """Run ``agent`` on every task; one Run row per task and one Step row per model call.

    ``policy`` (an ``ActivePolicy``) follows the store's active policy version instead of
    ``policy_version``: each task runs, start to end, on the version active when it starts,
    so a promotion mid-batch reaches the tasks that start after it; its run records it.

    ``library`` (an ExperienceLibrary) learns from every run as soon as it is verified
    (``update_from_runs``: verified exemplars, the utility of the items shown, route
    statistics; every ``learning.reflect_every`` runs, ``llm`` reflects on them), so the
    tasks that start later read what the earlier ones taught it."""
    agent = agent or SolveAgent()
    report = RunReport()
    learn = _learner(library, learning, llm, store, suite, report.memory) if library is not None else None
    flight = _Flight(store)

    def one(index: int) -> RunResult | None:
        task = tasks[index]
        version, task_llm = policy.current() if policy is not None else (policy_version, llm)
        # an agent may record more on the run row (a graph agent: what resuming needs); the
        # task itself lets the background trainer rebuild pairs from the run
        extra = agent.run_meta(task, suite) if hasattr(agent, "run_meta") else {}
        run_id = flight.open_run(lambda: store.start_run(
            agent.name, suite=suite.name, task_id=task.id, split=task.split,
            model=model_name or getattr(llm, "model_name", None), policy_version=version,
            meta={"level": task.level, "task": task.model_dump(mode="json"), **extra},
        ))
        if run_id is None:
            return None
        recorder = Recorder(task_llm, store, run_id, budget=budget, policy_version=version)
        result = _execute(lambda: agent(task, suite, recorder), suite, task, store, run_id, flight=flight, index=index)
        if learn and result is not None:
            learn(result, task)  # on this thread, before it takes its next task
        return result

    return _run_all(one, len(tasks), concurrency, flight, report, on_result)


class _Flight:
    """The runs of one batch in flight, and the line Ctrl-C draws through them: a run
    either closes before the interrupt (its result is reported) or is marked interrupted by
    it, never both, since both sides hold the lock while they decide."""

    def __init__(self, store: RunStore):
        self.store = store
        self.lock = threading.Lock()
        self.interrupted = False
        self.open: set[int] = set()
        self.results: dict[int, RunResult] = {}  # by task index

    def open_run(self, start: Callable[[], int]) -> int | None:
        """Open a run with ``start`` and count it in flight, or None after Ctrl-C. Under the
        lock, so Ctrl-C never misses a run that is being opened: it is either not started
        or among the interrupted ones."""
        with self.lock:
            if self.interrupted:
                return None
            run_id = start()
            self.open.add(run_id)
            return run_id

    def close(self, index: int, run_id: int, finish: Callable[[], RunResult]) -> RunResult | None:
        """Close the run with ``finish`` unless Ctrl-C came first (then None)."""
        with self.lock:
            if self.interrupted:
                return None
            result = self.results[index] = finish()
            self.open.discard(run_id)
            return result

    def interrupt(self) -> list[int]:
        """Stop: the runs still in flight are marked interrupted; returns their ids."""
        with self.lock:
            self.interrupted = True
            still = sorted(self.open)
        return self.store.interrupt_runs(still, error=INTERRUPTED)


def _run_all(one: Callable[[int], RunResult | None], n: int, concurrency: int, flight: _Flight, report: RunReport,
             on_result: Callable[[RunResult], None] | None) -> RunReport:
    """``one(i)`` for i < n on ``concurrency`` threads, results into ``report`` in index order.

    Ctrl-C stops at once: nothing new starts, the runs in flight are marked interrupted
    (their threads end when the backend closes under them) and RunsInterrupted carries
    what finished. Any other error waits for the runs in flight to close, then raises."""
    start = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="agentkit-run")
    futures = []
    try:
        futures += [pool.submit(one, i) for i in range(n)]  # Ctrl-C may come while threads start
        for future in as_completed(futures):
            result = future.result()
            if result is not None and on_result:
                on_result(result)
    except KeyboardInterrupt:
        interrupted = flight.interrupt()
        pool.shutdown(wait=False, cancel_futures=True)
        report.results = [flight.results[i] for i in sorted(flight.results)]
        report.wall_s = time.perf_counter() - start
        raise RunsInterrupted(report, interrupted) from None
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    report.results = [flight.results[i] for i in sorted(flight.results)]
    report.wall_s = time.perf_counter() - start
    return report


def _learner(library: Any, learning: Any, llm: LLM, store: RunStore, suite: Suite,
             totals: dict[str, Any]) -> Callable[[RunResult, Task], None]:
    """The per-run library update of ``run_tasks``, keeping running totals in ``totals``.

    Each run is accounted alone, at once. Reflection compares failed with successful runs,
    so it reads the window of runs since the previous reflection, every
    ``reflect_every`` runs."""
    from agentkit.memory.learning import LearningConfig, reflect, update_from_runs

    config = learning or LearningConfig()
    totals.update(added=0, retired=0, insights=0, version=None)
    window: list[tuple[int, Task]] = []
    lock = threading.Lock()  # over the totals and the window; the library locks itself

    def learn(result: RunResult, task: Task) -> None:
        update = update_from_runs(library, store, [result.run_id], suite, tasks=[task])
        with lock:
            totals["added"] += len(update.added)
            totals["retired"] += len(update.retired) + len(update.evicted)
            window.append((result.run_id, task))
            due = config.reflect_every and len(window) >= config.reflect_every
            recent = list(window) if due else []
            if due:
                window.clear()
        if recent:
            reflected = reflect(library, llm, store, [i for i, _ in recent], suite, tasks=[t for _, t in recent],
                                config=config)
            with lock:
                totals["insights"] += len(reflected.insights)
        with lock:
            totals["version"] = library.version()

    return learn


def _execute(call: Callable[[], str], suite: Suite, task: Task, store: RunStore, run_id: int, *,
             flight: _Flight | None = None, index: int = 0) -> RunResult | None:
    """Run the agent, verify its text and close the run row, whatever happens inside.
    In a batch (``flight``): None when Ctrl-C came before the run closed; the interrupt
    marked it, and a failure it caused (the backend closing under the call) is not the run's."""
    t0 = time.perf_counter()
    text, error, status = "", None, "failure"
    reward, step_acc = 0.0, None
    fatal: AgentkitError | None = None
    try:
        text = call()
        reward = suite.verify(task, text)
        step_acc = suite.step_accuracy(task, text)
        status = "success" if reward >= 1.0 else "failure"
    except BudgetExceeded as e:
        status, error = "budget", str(e)
    except AgentkitError as e:
        # a configuration problem (bad adapter, dead server) stops the whole batch, but
        # the run row still says what happened
        status, error, fatal = "error", str(e), e
    except Exception as e:  # one task's crash is recorded, never the batch's end
        status, error = "error", f"{type(e).__name__}: {e}"

    def finish() -> RunResult:
        wall = time.perf_counter() - t0
        store.finish_run(run_id, status=status, reward=reward, step_accuracy=step_acc, wall_s=wall, error=error)
        run = store.get_run(run_id, steps=True)
        return RunResult(
            run_id, task.id, status, reward, step_acc, run.calls or 0, run.tokens or 0,
            sum(s.completion_tokens or 0 for s in run.steps), wall, text, error,
        )

    result = finish() if flight is None else flight.close(index, run_id, finish)
    if fatal is not None and result is not None:
        raise fatal
    return result


RESUMABLE = ("running", "interrupted", "error")


def resume_run(
    llm: LLM,
    store: RunStore,
    run_id: int,
    *,
    agent: Any = None,
    suite: Suite | None = None,
    task: Task | None = None,
    budget: Budget = Budget(),
    checkpoints: Any = None,
) -> RunResult:
    """Finish an interrupted run (status running, interrupted or error). A graph run goes on
    from its checkpoints: completed nodes are not run again and their steps are not
    recorded again. A solve run makes its one call again.

    Without ``agent``/``suite``/``task`` they are rebuilt from what the run row recorded
    (``GraphAgent.run_meta``), with ``checkpoints`` as the checkpoint file."""
    from agentkit.errors import StoreError
    from agentkit.runtime.graph_agent import restore_agent

    run = store.get_run(run_id, steps=True)
    if run.status not in RESUMABLE:
        raise StoreError(
            f"run {run_id} already finished ({run.status}); only an unfinished run (status running, interrupted "
            "or error) resumes"
        )
    if agent is None or task is None or suite is None:
        restored, restored_suite, restored_task = restore_agent(run, checkpoints=checkpoints, suite=suite)
        agent, suite, task = agent or restored, suite or restored_suite, task or restored_task
    if not hasattr(agent, "resume"):
        raise StoreError(f"the '{agent.name}' agent cannot resume runs; only graph agents (GraphAgent) can")
    return _resume(llm, store, run, agent, suite, task, budget)


def _resume(llm: LLM, store: RunStore, run: Any, agent: Any, suite: Suite, task: Task, budget: Budget, *,
            flight: _Flight | None = None, index: int = 0) -> RunResult | None:
    def reopen() -> int:
        store.reopen_run(run.id)  # running again, owned by this process
        return run.id

    if flight is None:
        reopen()
    elif flight.open_run(reopen) is None:
        return None
    steps = run.steps or []
    model_calls = sum(1 for s in steps if s.prompt_ids is not None)
    tokens = sum((s.prompt_tokens or 0) + (s.completion_tokens or 0) for s in steps)
    recorder = Recorder(llm, store, run.id, budget=budget, policy_version=run.policy_version,
                        calls=model_calls, tokens=tokens)
    return _execute(lambda: agent.resume(task, suite, recorder), suite, task, store, run.id, flight=flight, index=index)


def resume_runs(
    store: RunStore,
    runs: Sequence[Any],
    restored: Sequence[tuple[Any, Suite, Task]],
    llm_for: Callable[[Any], LLM],
    *,
    budget: Budget = Budget(),
    concurrency: int = 16,
    on_result: Callable[[RunResult], None] | None = None,
) -> RunReport:
    """Finish many unfinished runs together, like ``run_tasks`` (Ctrl-C included):
    ``restored[i]`` is run i's (agent, suite, task) from ``restore_agent``, and
    ``llm_for(run)`` the backend to finish it on (pinned to the policy version it ran)."""
    flight = _Flight(store)

    def one(i: int) -> RunResult | None:
        if flight.interrupted:
            return None
        agent, suite, task = restored[i]
        run = store.get_run(runs[i].id, steps=True)
        return _resume(llm_for(run), store, run, agent, suite, task, budget, flight=flight, index=i)

    return _run_all(one, len(runs), concurrency, flight, RunReport(), on_result)
