"""``agentkit graphs list|show``: the declarative agent graphs. Only typer is imported at
module level (see app.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from agentkit.cli._common import _Group, _require

__all__ = ["graphs_app"]

graphs_app = typer.Typer(
    cls=_Group, no_args_is_help=True, help="List and inspect declarative agent graphs.",
    context_settings={"help_option_names": ["-h", "--help"]},
)


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

