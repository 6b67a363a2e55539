"""What every command group shares: the error-handling group class, the --store option's
help and default, opening an existing store, turning a bad option value into a one-line
error, and the spinner and consoles of the commands that load a model. The command
modules import it; it imports none of them."""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator, NoReturn, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from agentkit.cli._errors import (
    NoArgsIsHelpError,
    UsageError,
    damaged_store_line,
    remember_store,
    too_large_line,
    usage_line,
)

__all__ = ["STORE_HELP", "STORE_DEFAULT", "ConfigCommand", "Shown"]


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


class Shown(str):
    """The default of an option left None, so that the library decides: shown in the help only."""


class ConfigCommand(TyperCommand):
    """A command whose options take their defaults from a library config, read when the
    command parses its arguments or shows its help, not when `agentkit --help` builds the app
    (so the library loads only for this command). A subclass's ``defaults()`` maps parameter
    names to defaults, or to a ``Shown`` text for an option that stays None."""

    @staticmethod
    def defaults() -> dict[str, Any]:
        return {}

    def read_defaults(self) -> None:
        defaults = self.defaults()
        for param in self.params:
            value = defaults.get(param.name)
            if isinstance(value, Shown):
                param.show_default = str(value)
            elif value is not None:
                param.default = value

    def make_context(self, info_name: Optional[str], args: list[str], parent: Any = None, **extra: Any) -> Any:
        self.read_defaults()
        return super().make_context(info_name, args, parent, **extra)


STORE_HELP = "SQLite store of runs and steps."
STORE_DEFAULT = "$AGENTKIT_HOME/runs.db"


def _store_option() -> Any:
    """The --store option every command that reads or writes a store takes."""
    return typer.Option(None, "--store", envvar="AGENTKIT_STORE", show_default=STORE_DEFAULT, help=STORE_HELP)


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


@contextmanager
def _flags(flags: Optional[dict[str, str]] = None) -> Iterator[None]:
    """A library config's error (ConfigError) as the same one line, naming the command's
    flags (``flags``: where a flag is not the knob's name with dashes) instead of the knobs."""
    from agentkit.errors import AgentkitError, ConfigError

    try:
        yield
    except ConfigError as exc:
        raise AgentkitError(exc.as_flags(flags)) from None


def _existing_store(store: Optional[Path], hint: str = "record runs with `agentkit run` first") -> Path:
    """The store file ``store`` names; commands that read a store never create one."""
    from agentkit.errors import StoreError

    path = _store_path(store)
    if not path.exists():
        raise StoreError(f"no store at {path}; {hint}, or pass --store PATH")
    return path


def _open_traces(store: Optional[Path]) -> Any:
    """The runs and steps of the existing store at ``store``."""
    from agentkit.store import TrajectoryStore

    return TrajectoryStore(_existing_store(store))


def _quiet_hub() -> None:
    """Our spinner and progress bar replace the hub's and transformers' tqdm bars (read from
    the environment when huggingface_hub is first imported, which is after this)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


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


def _load_backend(backend: str, model: Optional[str], *, spinner: bool, **options: Any) -> Any:
    """The model backend, with a spinner on stderr while it loads when ``spinner``: the one
    place the commands load a model (torch and transformers load here, never at --help)."""
    from agentkit.llm import load_backend

    with _stderr_console().status(_loading(backend, model)) if spinner else nullcontext():
        return load_backend(backend, model, **options)


def _loading(backend: str, model: Optional[str]) -> str:
    """What the spinner says while the backend loads (the first use of the embedded model converts it)."""
    from agentkit.llm.models import DEFAULT_MODEL, cached_models

    if backend == "openai":
        return f"connecting to {model or 'the server'}"
    model = model or DEFAULT_MODEL
    if model == DEFAULT_MODEL and all(m.name != model for m in cached_models()):
        return f"converting {model} on first use (about a minute)"
    return f"loading {model} ({backend})"
