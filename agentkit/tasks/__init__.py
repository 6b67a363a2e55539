"""Deterministic task suites with verifiers and step checkers.

    suite = get_suite("arithmetic")
    task = suite.tasks("test", n=1, level=2)[0]
    prompt = suite.prompt(task, shots=3)          # the model continues after "Solution:\\n"
    suite.verify(task, completion)                # outcome reward in [0, 1]
    suite.check_steps(task, completion)           # one bool per "Step k:" line
"""

from __future__ import annotations

import functools
from pathlib import Path

from agentkit.errors import TaskError
from agentkit.tasks.arithmetic import ArithmeticSuite
from agentkit.tasks.base import Suite, Task, family_of, split_steps
from agentkit.tasks.blocksworld import BlocksworldSuite
from agentkit.tasks.countdown import CountdownSuite
from agentkit.tasks.jsonl import JsonlSuite, load_jsonl
from agentkit.tasks.prontoqa import ProntoQASuite

__all__ = [
    "Task",
    "family_of",
    "Suite",
    "get_suite",
    "list_suites",
    "load_jsonl",
    "split_steps",
    "ArithmeticSuite",
    "BlocksworldSuite",
    "CountdownSuite",
    "ProntoQASuite",
    "JsonlSuite",
]

_SUITES: dict[str, type[Suite]] = {
    suite.name: suite for suite in (ArithmeticSuite, BlocksworldSuite, CountdownSuite, ProntoQASuite)
}


def list_suites() -> list[str]:
    """Names of the built-in suites, sorted."""
    return sorted(_SUITES)


def get_suite(name: str) -> Suite:
    """A built-in suite by name, or a path ending in .jsonl (exact-match checker)."""
    if isinstance(name, (str, Path)) and str(name).endswith(".jsonl"):
        return load_jsonl(name)
    if not isinstance(name, str) or name not in _SUITES:
        choices = ", ".join(list_suites())
        raise TaskError(f"unknown suite {str(name)!r}; choose one of: {choices}, or pass a .jsonl file")
    return _builtin(name)


@functools.cache
def _builtin(name: str) -> Suite:
    # one instance per name, so the few-shot examples are drawn once per process
    return _SUITES[name]()
