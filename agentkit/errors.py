"""One error hierarchy. Every user-facing failure is an AgentkitError whose message is a
single line naming the bad value and the fix; the CLI prints it and exits non-zero."""

from __future__ import annotations

__all__ = [
    "AgentkitError",
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
