"""The ``agentkit`` command line (Typer): thin commands over the library.

    agentkit run --suite arithmetic --n 20
    agentkit traces list
"""

from agentkit.cli.app import app, main

__all__ = ["app", "main"]
