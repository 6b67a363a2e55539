"""``agentkit ui``: the read-only web app over a store (agentkit.ui), on uvicorn.

Only typer is imported at module level: starlette, jinja2 and uvicorn load when the
command runs, so `agentkit --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from agentkit.cli._common import STORE_DEFAULT, STORE_HELP, _require, _store_path

__all__ = ["ui"]


def ui(
    store: Optional[Path] = typer.Option(None, envvar="AGENTKIT_STORE", show_default=STORE_DEFAULT, help=STORE_HELP),
    host: str = typer.Option("127.0.0.1", help="Address to bind; the default answers this machine only."),
    port: int = typer.Option(8765, help="Port to listen on."),
) -> None:
    """Browse runs, search trees, improve rounds, policies, pairs, memory and the trainer in a
    browser; read-only, and live while others write."""
    _require(0 < port < 65536, f"--port {port}: give a port between 1 and 65535")
    path = _store_path(store)
    from agentkit.ui import create_app

    app = create_app(path)  # refuses a missing store before binding
    import uvicorn

    typer.echo(f"agentkit ui on http://{host}:{port}/ over {path} (read-only); Ctrl-C stops it")
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"warning: --host {host} lets other machines read every prompt and completion in the store", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
