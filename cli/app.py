"""The ``agentkit`` command: thin Typer commands over library functions, one module per
command group (run_cmd, traces_cmd, graphs_cmd, catalog_cmd, serve_cmd, policy_cmd,
improve_cmd, memory_cmd, trainer_cmd, ui_cmd); what they share is in _common.py.

Only typer is imported at module level, here and in every command module: the library (and
torch, through a backend) loads inside the command that needs it, so ``agentkit --help``
answers at once (tests/test_packaging.py holds it).
"""

from __future__ import annotations

import typer

from agentkit.cli._common import _Group
from agentkit.cli.catalog_cmd import models, suites
from agentkit.cli.graphs_cmd import graphs_app
from agentkit.cli.improve_cmd import ImproveCommand, improve
from agentkit.cli.memory_cmd import memory_app
from agentkit.cli.policy_cmd import policy_app
from agentkit.cli.run_cmd import run
from agentkit.cli.serve_cmd import serve
from agentkit.cli.traces_cmd import traces_app
from agentkit.cli.trainer_cmd import trainer_app
from agentkit.cli.ui_cmd import ui

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

# The order here is the order of `agentkit --help` and docs/cli.md.
for command in (run, models, suites, serve):
    app.command()(command)
app.command(cls=ImproveCommand)(improve)  # its defaults are ImproveConfig's
app.add_typer(traces_app, name="traces")
app.add_typer(graphs_app, name="graphs")
app.add_typer(policy_app, name="policy")
app.add_typer(memory_app, name="memory", cls=_Group)
app.add_typer(trainer_app, name="trainer")
app.command("ui")(ui)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="agentkit")


if __name__ == "__main__":
    main()
