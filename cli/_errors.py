"""How the command line words a mistake that no library function sees: a value the
argument parser cannot read (``--n abc``, ``traces show -5``), an unknown option, and a
store file SQLite finds damaged. Each becomes the same one line as a library error,
``error: <what is wrong and the fix>``, and exit status 1 (app.py's group class calls these).
"""

from __future__ import annotations

import re
import sys
from typing import Any, Optional

try:  # typer >= 0.2x carries its own copy of Click
    from typer._click import exceptions as click_exceptions
    from typer._click.globals import get_current_context
except ImportError:  # pragma: no cover - older typer on Click itself
    from click import exceptions as click_exceptions
    from click.globals import get_current_context

__all__ = ["UsageError", "NoArgsIsHelpError", "usage_line", "damaged_store_line", "too_large_line", "remember_store"]

UsageError = click_exceptions.UsageError
NoArgsIsHelpError = getattr(click_exceptions, "NoArgsIsHelpError", ())
"""A group run without a subcommand: its help is shown, as before."""

_STORE_KEY = "agentkit.store"
_COMMAND_KEY = "agentkit.command"
_SQLITE_MAX = 2**63 - 1  # the largest INTEGER a store holds
_NEGATIVE = re.compile(r"-\d+(\.\d+)?")
_KINDS = {int: "a whole number", float: "a number"}


def remember_store(path: Any) -> None:
    """Note the store the running command opens, and the command, so that an error from the
    store can name the file (damaged) or the value (too large for it)."""
    ctx = get_current_context(silent=True)
    if ctx is not None:
        ctx.meta[_STORE_KEY] = path
        ctx.meta[_COMMAND_KEY] = ctx


def _help(ctx: Any) -> str:
    return f"see `{ctx.command_path} --help`" if ctx is not None else "see `agentkit --help`"


def _name(param: Any) -> str:
    """The parameter as the user writes it: --n for an option, RUN_ID for an argument."""
    if getattr(param, "param_type_name", "") == "option":
        return max(param.opts, key=len)
    return str(param.metavar or param.name or "argument").upper()


def _kind(param: Any) -> Optional[type]:
    descriptor = getattr(param, "type_descriptor", None)
    annotation = getattr(descriptor, "annotation", None)
    if annotation in _KINDS:
        return annotation
    return {"integer": int, "integer range": int, "float": float, "float range": float}.get(
        getattr(getattr(param, "type", None), "name", ""))


def _floor(param: Any) -> Any:
    info = getattr(getattr(param, "type_descriptor", None), "parameter_info", None)
    return getattr(info, "min", None) if info is not None else getattr(getattr(param, "type", None), "min", None)


def _value(exc: Any) -> Optional[str]:
    """The text the user typed, from the validation error behind the message."""
    cause = exc.__cause__
    try:
        errors = cause.errors() if cause is not None and hasattr(cause, "errors") else []
    except Exception:  # noqa: BLE001 - only a nicer message is at stake
        errors = []
    if errors and "input" in errors[0]:
        return str(errors[0]["input"])
    quoted = re.match(r"'([^']*)' is not", str(exc.message))  # Click's own "'abc' is not a valid integer."
    return quoted.group(1) if quoted else None


def _sentence(text: str) -> str:
    text = " ".join(str(text).split()).rstrip(".")
    return text[:1].lower() + text[1:]


def _bad_value(exc: Any) -> str:
    param, ctx = exc.param, exc.ctx
    kind, floor, value = _kind(param), _floor(param), _value(exc)
    shown = f"{_name(param)} {value!r}" if value is not None else _name(param)
    if kind is not None:
        try:
            number = kind(value)
        except (TypeError, ValueError):
            number = None
        need = _KINDS[kind] + (f" of {floor} or more" if floor is not None else "")
        if number is not None and floor is not None and number < floor:
            return f"{_name(param)} {value}: must be at least {floor} ({_help(ctx)})"
        example = param.default if getattr(param, "param_type_name", "") == "option" \
            and isinstance(param.default, (int, float)) and not isinstance(param.default, bool) else None
        return (f"{shown} is not {_KINDS[kind]}; pass {need}"
                + (f", e.g. {_name(param)} {example}" if example is not None else "") + f" ({_help(ctx)})")
    return f"{shown}: {_sentence(exc.message)}; {_help(ctx)}"


def _numeric_argument(ctx: Any) -> Any:
    """The command's number argument, which a negative number was meant for."""
    for param in getattr(getattr(ctx, "command", None), "params", []):
        if getattr(param, "param_type_name", "") == "argument" and _kind(param) is not None:
            return param
    return None


def usage_line(exc: Any) -> str:
    """One line naming the option or argument, the bad value and the fix."""
    ctx = exc.ctx
    if isinstance(exc, click_exceptions.MissingParameter) and exc.param is not None:
        return f"{_name(exc.param)} is missing; {_help(ctx)}"
    if isinstance(exc, click_exceptions.BadParameter) and exc.param is not None:
        return _bad_value(exc)
    if isinstance(exc, click_exceptions.NoSuchOption):
        option = exc.option_name
        argument = _numeric_argument(ctx) if _NEGATIVE.fullmatch(option) else None
        if argument is not None:  # `traces show -5`: the parser takes a negative number for an option
            floor = _floor(argument)
            need = f"at least {floor}" if floor is not None else "a number that does not start with '-'"
            return f"{_name(argument)} {option}: must be {need} ({_help(ctx)})"
        hint = f" (did you mean {' or '.join(sorted(exc.possibilities))}?)" if exc.possibilities else ""
        where = f"`{ctx.command_path}`" if ctx is not None else "this command"
        return f"{where} has no option {option}{hint}; {_help(ctx)}"
    return f"{_sentence(exc.format_message())}; {_help(ctx)}"


def damaged_store_line(exc: BaseException, ctx: Any) -> Optional[str]:
    """The one line for a store file SQLite reports as damaged, or None for any other error."""
    sqlite3 = sys.modules.get("sqlite3")
    if sqlite3 is None or not isinstance(exc, sqlite3.DatabaseError):
        return None  # not SQLite's: nothing more to import
    from agentkit.store.db import damaged_store, is_damaged

    return str(damaged_store(getattr(ctx, "meta", {}).get(_STORE_KEY), exc)) if is_damaged(exc) else None


def too_large_line(exc: BaseException, ctx: Any) -> Optional[str]:
    """The one line for a number too large for the store (an OverflowError, or SQLite's
    "datatype mismatch" for a LIMIT), naming the option or argument that carried it; None
    for any other error, or when no value of the command is that large."""
    command = getattr(ctx, "meta", {}).get(_COMMAND_KEY)
    sqlite3 = sys.modules.get("sqlite3")
    from_store = sqlite3 is not None and isinstance(exc, sqlite3.Error)
    if not (isinstance(exc, OverflowError) or from_store) or command is None:
        return None
    for param in command.command.params:
        value = command.params.get(param.name)
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _SQLITE_MAX:
            return f"{_name(param)} {value}: too large; pass at most {_SQLITE_MAX} ({_help(command)})"
    return None
