"""One error hierarchy. Every user-facing failure is an AgentkitError whose message is a
single line naming the bad value and the fix; the CLI prints it and exits non-zero."""

from __future__ import annotations

import re
from typing import Mapping

__all__ = [
    "AgentkitError",
    "ConfigError",
    "BackendError",
    "ModelNotFoundError",
    "StoreError",
    "TaskError",
    "GraphSpecError",
    "BudgetExceeded",
]


class AgentkitError(Exception):
    """Base class: a one-line, actionable message."""

    exit_code = 1


class BackendError(AgentkitError):
    """A model backend failed: server unreachable, missing extra, bad request."""


class ModelNotFoundError(BackendError):
    """A --model value that is neither a known name, a local directory, nor a cached hub id."""


class StoreError(AgentkitError):
    """The SQLite store cannot be opened or written (read-only path, not an agentkit store)."""


class TaskError(AgentkitError):
    """Unknown suite, unreadable or malformed task file."""


class GraphSpecError(AgentkitError):
    """A graph declaration that cannot compile."""


class BudgetExceeded(AgentkitError):
    """A run hit its max_calls or max_tokens budget."""


_KNOB = re.compile(r"`(\w+)(?:=([^`]*))?`")


class ConfigError(AgentkitError):
    """A config value that cannot work, checked in one place for the library and the CLI.
    The message names the config's knobs in backquotes, `name` or `name=value`: ``str``
    reads them as fields (name, name 'value', name 3), ``as_flags`` as a command's flags (--name,
    --name value), so that the command's error names what its user typed."""

    def __init__(self, message: str):
        self.message = message
        super().__init__(_KNOB.sub(_as_field, message))

    def as_flags(self, flags: Mapping[str, str] | None = None) -> str:
        """The message with each knob as the flag ``flags`` maps it to (default: --name-with-dashes)."""
        def flag(m: re.Match[str]) -> str:
            name = (flags or {}).get(m[1]) or "--" + m[1].replace("_", "-")
            return name if m[2] is None else f"{name} {m[2]}"

        return _KNOB.sub(flag, self.message)


def _as_field(m: re.Match[str]) -> str:
    name, value = m[1], m[2]
    if value is None:
        return name
    try:
        float(value)
    except ValueError:
        return f"{name} '{value}'"
    return f"{name} {value}"
