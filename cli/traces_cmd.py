"""``agentkit traces list|show|repair``: the recorded runs and their steps. Only typer is
imported at module level (see app.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from agentkit.cli._common import _Group, _open_traces, _require, _store_option

__all__ = ["traces_app"]

traces_app = typer.Typer(
    cls=_Group, no_args_is_help=True, help="Inspect recorded runs and their steps.",
    context_settings={"help_option_names": ["-h", "--help"]},
)


@traces_app.command("list")
def traces_list(
    store: Optional[Path] = _store_option(),
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
    with _open_traces(store) as traces:
        runs = traces.list_runs(limit, suite=suite, status=status)
        path = traces.path

    from rich.console import Console

    from agentkit.cli.render import runs_table

    Console().print(runs_table(runs, path))


@traces_app.command("show")
def traces_show(
    run_id: int = typer.Argument(..., min=1, help="A run id from `agentkit traces list`."),
    store: Optional[Path] = _store_option(),
) -> None:
    """Show one run and every model call it made."""
    from agentkit.errors import StoreError

    with _open_traces(store) as traces:
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
    store: Optional[Path] = _store_option(),
    unowned: bool = typer.Option(
        False, "--unowned", help="Also mark runs left running that recorded no process (from before agentkit "
        "recorded one); only when no run is in progress anywhere.",
    ),
) -> None:
    """Mark runs whose process is gone (kill -9, a crash) as interrupted and say how many (opening the store does it too)."""
    with _open_traces(store) as traces:
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

