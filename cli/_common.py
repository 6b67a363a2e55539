"""What every command group shares: the error-handling group class, the --store option's
help and default, and turning a bad option value into a one-line error. The command
modules import it; it imports none of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn, Optional

import typer
from typer.core import TyperGroup

from agentkit.cli._errors import (
    NoArgsIsHelpError,
    UsageError,
    damaged_store_line,
    remember_store,
    too_large_line,
    usage_line,
)

__all__ = ["STORE_HELP", "STORE_DEFAULT"]


def _fail(line: str) -> NoReturn:
    typer.echo(f"error: {line}", err=True)
    raise typer.Exit(1)


class _Group(TyperGroup):
    """Turns library errors, values Click cannot parse and a damaged store into one line on
    stderr and a non-zero exit, never a traceback or a usage box."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except NoArgsIsHelpError:
            raise  # the group alone: its help
        except UsageError as exc:
            _fail(usage_line(exc))

    def invoke(self, ctx: Any) -> Any:
        from agentkit.errors import AgentkitError

        try:
            return super().invoke(ctx)
        except AgentkitError as exc:
            typer.echo(f"error: {' '.join(str(exc).split())}", err=True)
            raise typer.Exit(getattr(exc, "exit_code", 1)) from None
        except NoArgsIsHelpError:
            raise
        except UsageError as exc:  # `--n abc`, `traces show -5`, an unknown option
            _fail(usage_line(exc))
        except Exception as exc:
            line = damaged_store_line(exc, ctx) or too_large_line(exc, ctx)
            if line is None:
                raise
            _fail(line)
        except KeyboardInterrupt:
            typer.echo("error: interrupted", err=True)
            raise typer.Exit(130) from None


STORE_HELP = "SQLite store of runs and steps."
STORE_DEFAULT = "$AGENTKIT_HOME/runs.db"


def _store_path(store: Optional[Path]) -> Path:
    from agentkit.llm.models import agentkit_home

    path = store.expanduser() if store is not None else agentkit_home() / "runs.db"
    remember_store(path)  # named if SQLite finds the file damaged
    return path


def _require(ok: bool, message: str) -> None:
    """A bad option value becomes the same one-line error as a library error."""
    if not ok:
        from agentkit.errors import AgentkitError

        raise AgentkitError(message)
