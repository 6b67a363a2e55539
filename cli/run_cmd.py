"""``agentkit run``: an agent on a suite's tasks, every model call recorded; ``--resume``
finishes unfinished runs. Only typer is imported at module level (see app.py)."""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import typer

from agentkit.cli._common import (
    _load_backend,
    _open_traces,
    _quiet_hub,
    _require,
    _search_strategy,
    _stderr_console,
    _store_option,
    _store_path,
)

__all__ = ["run"]


def run(
    graph: Optional[str] = typer.Argument(
        None, metavar="GRAPH", show_default="one solve node",
        help="A prebuilt graph (see `agentkit graphs list`) or a .py file defining `graph`.",
    ),
    resume: Optional[str] = typer.Option(
        None, "--resume", metavar="RUN_IDS",
        help="Finish unfinished runs in one model load: ids (3,7,9) or `interrupted` (every interrupted run). "
        "A graph run's completed nodes are not run again; a solve run makes its call again.",
    ),
    suite: str = typer.Option("arithmetic", help="A built-in suite (see `agentkit suites`) or a .jsonl task file."),
    checker: Optional[str] = typer.Option(
        None, show_default="exact", help="How a .jsonl suite checks answers: exact, numeric or regex."
    ),
    n: int = typer.Option(20, "--n", "-n", help="Number of tasks."),
    split: str = typer.Option("test", help="Task split: train or test; a .jsonl file also all (every line, train and test)."),
    level: Optional[int] = typer.Option(
        None, show_default="the suite's default; a .jsonl file: all levels", help="Difficulty level."
    ),
    seed: int = typer.Option(0, help="Seed of the task generator and, with --temperature > 0, of sampling (a .jsonl file: 0 keeps file order)."),
    shots: int = typer.Option(3, help="Worked examples in each prompt."),
    memory: int = typer.Option(
        0, help="Experience-library items shown in the default solve prompt (0: none; a graph declares memory per node).",
    ),
    learn: bool = typer.Option(
        True, "--learn/--no-learn",
        help="Update the experience library after each verified run when the agent reads it (--no-learn: read only).",
    ),
    reflect_every: int = typer.Option(
        16, help="With --learn: the model reflects on the last this many runs and writes insights (0: never).",
    ),
    model: Optional[str] = typer.Option(
        None, show_default="gemma-3-270m; openai: the server's first model",
        help="gemma-3-270m, a local save_pretrained directory, or a Hugging Face id in the HF cache.",
    ),
    backend: str = typer.Option("transformers", help="transformers, openai or vllm."),
    base_url: Optional[str] = typer.Option(
        None, show_default="http://127.0.0.1:8000/v1", help="The server's API root, for --backend openai."
    ),
    store: Optional[Path] = _store_option(),
    policy: str = typer.Option(
        "active", help="Policy version: active (the store's active one; a newly promoted version is loaded "
        "between tasks, e.g. from `agentkit trainer`), base, or a version such as v3.",
    ),
    concurrency: int = typer.Option(16, help="Tasks in flight at once (their model calls are batched together)."),
    max_calls: Optional[int] = typer.Option(None, show_default="16", help="Per-run budget of model calls."),
    max_tokens: Optional[int] = typer.Option(
        None, show_default="8192", help="Per-run budget of prompt plus completion tokens."
    ),
    temperature: float = typer.Option(0.0, help="Sampling temperature; 0 is greedy."),
    search: Optional[str] = typer.Option(
        None, metavar="SPEC", show_default="off: one call",
        help="Step-level search instead of one call: the solve node grows its output a line at a time, each line "
        "scored by the suite's step checker (else by Monte-Carlo rollouts): beam:WxK (beam width W, K lines per "
        "node, e.g. beam:4x8) or mcts:N / mcts:NxK (N simulations), then any ,name=value sampling options "
        "(beam:4x8,temperature=1.0,top_p=0.99). Every tree node is recorded as a step. "
        "A graph declares search on its solver node (search=...).",
    ),
    dtype: str = typer.Option("auto", help="auto, bf16, fp16 or fp32 (auto: bf16 where the hardware runs it fast)."),
    show_steps: Optional[bool] = typer.Option(
        None, "--show-steps/--no-show-steps", show_default="on for --n 20 or less",
        help="Print every run's completion with ✓/✗ per step.",
    ),
    json_output: bool = typer.Option(False, "--json", help="Print the report and every run's result as JSON instead."),
) -> None:
    """Run an agent graph (default: one solve node) on tasks of a suite and record every model call in the store."""
    if resume is not None:
        _require(graph is None, f"--resume {resume} continues the graph each run started with; drop {graph}")
        return _resume_runs(resume, store=store, model=model, backend=backend, base_url=base_url, dtype=dtype,
                           max_calls=max_calls, max_tokens=max_tokens, json_output=json_output)
    # check everything cheap before the model loads
    _require(n >= 1, f"--n {n}: the number of tasks must be at least 1; pass e.g. --n 20")
    _require(concurrency >= 1, f"--concurrency {concurrency}: must be at least 1")
    _require(temperature >= 0, f"--temperature {temperature}: must be >= 0 (0 is greedy)")
    _require(memory >= 0, f"--memory {memory}: give a number of library items, 0 or more")
    _require(memory == 0 or graph is None,
             f"--memory {memory} sets the default solve prompt; a graph declares memory on its nodes, drop --memory")
    _require(reflect_every >= 0, f"--reflect-every {reflect_every}: must be 0 (never) or more")
    for name, value in (("--max-calls", max_calls), ("--max-tokens", max_tokens)):
        _require(value is None or value >= 1, f"{name} {value}: must be at least 1 (omit it for the default)")
    if search is not None:
        _require(graph is None, f"--search {search} searches with the default solve node; graph {graph} declares "
                                f"search on its solver node, e.g. .add_node('solve', role='solver', search={search!r}); "
                                "drop --search")
        _require(temperature == 0, f"--temperature {temperature:g}: a search samples its lines at its own temperature "
                                   f"(0.8 unless the spec sets it); set it in the spec instead, e.g. --search {search},"
                                   f"temperature={temperature:g}")
    strategy = _search_strategy("--search", search)

    from agentkit.store import TrajectoryStore
    from agentkit.runtime import Budget, SolveAgent, run_tasks
    from agentkit.runtime.runner import RunsInterrupted
    from agentkit.tasks import get_suite, load_jsonl

    if suite.endswith(".jsonl"):
        task_suite = load_jsonl(suite, checker=checker or "exact")
    else:
        _require(checker is None, f"--checker {checker}: only a .jsonl suite takes a checker; drop it for '{suite}'")
        _require(split != "all", f"--split all runs every line of a .jsonl file; {suite} has train and test: "
                                 "pass --split test")
        task_suite = get_suite(suite)
    tasks = task_suite.tasks(split, n, level=level, seed=seed)
    task_suite.prompt(tasks[0], shots=shots)  # a bad --shots fails now, not after the model loads
    if hasattr(task_suite, "describe"):  # a .jsonl file: what became of its lines, never silently
        typer.echo(task_suite.describe(split, running=len(tasks), shots=shots), err=True)
    defaults = Budget()
    budget = Budget(max_calls=max_calls or defaults.max_calls, max_tokens=max_tokens or defaults.max_tokens)
    store_path = _store_path(store)
    # recorded on every run row, so `--resume` can rebuild the run
    recorded = {"suite": {"source": suite, "checker": checker},
                "backend": {"backend": backend, "base_url": base_url, "dtype": dtype}}
    if graph is None:
        sampled = temperature > 0 or strategy is not None
        agent: Any = SolveAgent(shots=shots, temperature=temperature, seed=seed if sampled else None, memory=memory,
                                search=strategy, meta=recorded)
    else:
        from agentkit.graph import load_graph
        from agentkit.runtime import GraphAgent, checkpoint_path

        agent = GraphAgent(
            load_graph(graph), shots=shots, temperature=temperature, seed=seed if temperature > 0 else None,
            checkpoints=checkpoint_path(store_path), meta=recorded,
        )
    show_steps = len(tasks) <= 20 if show_steps is None else show_steps

    err = _stderr_console()
    interactive = err.is_terminal and not json_output
    _quiet_hub()
    from agentkit.store import PolicyRegistry
    from agentkit.runtime import ActivePolicy
    from agentkit.memory.learning import LearningConfig

    with TrajectoryStore(store_path) as traces, PolicyRegistry(store_path) as registry:
        if policy != "active":
            registry.get(policy)  # an unknown version fails now, naming the known ones
        agent, library = _reading_library(agent, traces)
        llm = _load_backend(backend, model, spinner=interactive, base_url=base_url, dtype=dtype)
        follow = ActivePolicy(llm, registry, version=None if policy == "active" else policy, on_change=lambda old, new, e: (
            err.print(f"policy {old} -> {new}: the next runs use {new}" if e is None
                      else f"policy {new} is active but did not load ({e}); runs stay on {old}", markup=False)))
        interrupted = None
        try:
            with _progress_bar(f"{task_suite.name} on {llm.model_name}", len(tasks), enabled=interactive) as on_result:
                report = run_tasks(
                    llm, task_suite, tasks, traces, agent=agent, concurrency=concurrency, budget=budget,
                    model_name=model, on_result=on_result, policy=follow,
                    library=library if learn else None, learning=LearningConfig(reflect_every=reflect_every),
                )
        except RunsInterrupted as stopped:
            report, interrupted = stopped.report, stopped.interrupted
        finally:
            llm.close()
            if hasattr(agent, "close"):
                agent.close()
        runs = [traces.get_run(r.run_id) for r in report.results] if show_steps and not json_output else []
        nodes = traces.node_stats(r.run_id for r in report.results)
    _print_report(report, runs, nodes, graph=agent.name, suite=task_suite.name, model=llm.model_name, backend=backend,
                  store_path=store_path, show_steps=show_steps, json_output=json_output)
    if interrupted is not None:
        _stop_interrupted(report, interrupted, total=len(tasks))


def _stop_interrupted(report: Any, interrupted: list[int], *, total: int) -> None:
    """After Ctrl-C: say what finished and what was marked, and exit 130 at once.

    Every run is closed in the store by now. The threads of the runs that were in flight
    may still wait on a backend call (an HTTP request to a server runs to its own end),
    and the interpreter would join them at exit, so the process ends without them."""
    ids = ",".join(map(str, interrupted))
    hint = f"; finish them with `agentkit run --resume interrupted` (runs {ids})" if interrupted else ""
    typer.echo(f"interrupted: {report.n} of {total} runs finished, {len(interrupted)} marked interrupted{hint}", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


def _reading_library(agent: Any, traces: Any) -> tuple[Any, Any]:
    """``agent`` reading the store's experience library, and that library; (agent, None)
    when it reads none (a graph without memory nodes, the solve agent without --memory)."""
    from dataclasses import replace

    from agentkit.memory.library import ExperienceLibrary

    if hasattr(agent, "library_for"):
        agent.library = agent.library_for(traces)
        return agent, agent.library
    if agent.memory > 0:
        library = ExperienceLibrary(traces)
        return replace(agent, library=library), library
    return agent, None


def _print_report(report: Any, runs: list, nodes: list, *, graph: str, suite: str, model: str, backend: str,
                  store_path: Path, show_steps: bool, json_output: bool) -> None:
    if json_output:
        from agentkit.cli.render import report_json

        data = report_json(report, graph=graph, suite=suite, model=model, backend=backend, store=str(store_path),
                           nodes=nodes)
        typer.echo(json.dumps(data, indent=2))
        return

    from rich.console import Console

    from agentkit.cli.render import node_table, run_steps, summary_table

    out = Console()
    if show_steps:
        for r in runs:
            out.print(run_steps(r))
    out.print(summary_table(report, store_path))
    out.print(node_table(nodes, runs=report.n))


def _resume_runs(spec: str, *, store: Optional[Path], model: Optional[str], backend: str, base_url: Optional[str],
                 dtype: str, max_calls: Optional[int], max_tokens: Optional[int], json_output: bool) -> None:
    """agentkit run --resume 3,7 | interrupted: rebuild each run's agent, suite and task from
    its row and finish them together, on one backend loaded once, each on the policy version
    it started with."""
    from agentkit.errors import AgentkitError, StoreError
    from agentkit.store import PolicyRegistry
    from agentkit.runtime import ActivePolicy, Budget, checkpoint_path, restore_agent
    from agentkit.runtime.runner import RESUMABLE, RunsInterrupted, resume_runs

    defaults = Budget()
    budget = Budget(max_calls=max_calls or defaults.max_calls, max_tokens=max_tokens or defaults.max_tokens)
    err = _stderr_console()
    _quiet_hub()
    with _open_traces(store) as traces:
        store_path = Path(traces.path)
        if spec.strip().lower() == "interrupted":
            rows = traces.list_runs(None, status="interrupted")[::-1]
            _require(bool(rows), f"--resume interrupted: no interrupted runs in {store_path}; "
                     "see `agentkit traces list --status running`")
        else:
            rows = [_resumable(traces, _run_id(part, spec)) for part in spec.split(",") if part.strip()]
            _require(bool(rows), f"--resume {spec!r}: give run ids such as 3,7 or `interrupted`")
        for row in rows:
            if row.status not in RESUMABLE:
                raise StoreError(f"run {row.id} already finished ({row.status}); only an unfinished run "
                                 "(status running, interrupted or error) resumes")
        runs, restored, skipped = [], [], []
        for row in rows:  # a run that cannot be rebuilt is named, not the end of the others
            try:
                restored.append(restore_agent(row, checkpoints=checkpoint_path(store_path)))
                runs.append(row)
            except AgentkitError as exc:
                skipped.append(f"run {row.id}: {exc}")
        for line in skipped:
            err.print(f"skipped {line}", markup=False)
        _require(bool(runs), f"--resume {spec}: none of the runs can be rebuilt")
        setups = {_backend_setup(row) for row in runs}
        _require(len(setups) == 1, f"--resume {spec}: the runs used different backends, models or dtypes "
                 f"({'; '.join(sorted(map(str, setups)))}); resume each group by its ids")
        [(recorded_backend, recorded_model, recorded_url, recorded_dtype)] = setups
        backend = recorded_backend if backend == "transformers" and recorded_backend else backend
        base_url = base_url or recorded_url
        dtype = recorded_dtype if dtype == "auto" and recorded_dtype else dtype
        model = model or recorded_model
        llm = _load_backend(backend, model, spinner=err.is_terminal and not json_output, base_url=base_url, dtype=dtype)
        registry = PolicyRegistry(store_path)
        pinned: dict[Any, Any] = {}

        def llm_for(run: Any) -> Any:  # the policy version the run started on, its adapter loaded
            version = run.policy_version or "base"
            if version not in pinned:
                pinned[version] = ActivePolicy(llm, registry, version=version)
            return pinned[version].current()[1]

        interrupted = None
        try:
            report = resume_runs(traces, runs, restored, llm_for, budget=budget, concurrency=16)
        except RunsInterrupted as stopped:
            report, interrupted = stopped.report, stopped.interrupted
        finally:
            llm.close()
            registry.close()
            for agent, _, _ in restored:
                if hasattr(agent, "close"):
                    agent.close()
        ids = [r.run_id for r in report.results]
        shown = [traces.get_run(i) for i in ids] if not json_output else []
        nodes = traces.node_stats(ids)
    names = sorted({agent.name for agent, _, _ in restored})
    suites = sorted({task_suite.name for _, task_suite, _ in restored})
    _print_report(report, shown, nodes, graph=", ".join(names), suite=", ".join(suites), model=llm.model_name,
                  backend=backend, store_path=store_path, show_steps=True, json_output=json_output)
    if interrupted is not None:
        _stop_interrupted(report, interrupted, total=len(runs))


def _backend_setup(run: Any) -> tuple:
    """(backend, model, base URL, dtype) a run recorded, to resume it the same way."""
    recorded = (run.meta or {}).get("backend") or {}
    return recorded.get("backend"), run.model, recorded.get("base_url"), recorded.get("dtype")


def _run_id(part: str, spec: str) -> int:
    part = part.strip()
    _require(part.isdigit() and 1 <= int(part) < 2**63, f"--resume {spec!r}: {part!r} is not a run id; "
             "give ids such as 3,7 or `interrupted`")
    return int(part)


def _resumable(traces: Any, run_id: int) -> Any:
    from agentkit.errors import StoreError

    try:
        return traces.get_run(run_id, steps=False)
    except StoreError:
        raise StoreError(f"no run with id {run_id} in {traces.path}; see the ids with `agentkit traces list`") from None



@contextmanager
def _progress_bar(description: str, total: int, *, enabled: bool) -> Iterator[Optional[Callable[[Any], None]]]:
    """A progress bar on stderr; yields the ``on_result`` callback for run_tasks (None when off)."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[solved]} solved"), TimeElapsedColumn())
    with Progress(*columns, console=_stderr_console(), transient=True) as progress:
        bar = progress.add_task(description, total=total, solved=0)
        solved = 0

        def advance(result: Any) -> None:
            nonlocal solved
            solved += result.reward >= 1.0
            progress.update(bar, advance=1, solved=solved)

        yield advance
