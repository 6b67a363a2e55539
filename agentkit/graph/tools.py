"""Tool nodes: typed Python callables with pydantic-validated input.

A Tool builds its input from the run's context (the question and the current answer),
validates it against ``input_model``, and calls ``fn``. Its result becomes the run's
current answer ("Answer: <result>"). The built-in calculator evaluates the arithmetic
expression in the question with agentkit's own parser; nothing is ever passed to eval.

    register_tool(Tool("lookup", lookup, LookupInput, lambda question, answer: {"key": question}))
    graph.add_node("look", role="tool", tool="lookup")
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from pydantic import BaseModel, Field

from agentkit.errors import GraphSpecError
from agentkit.tasks.base import MAX_EXPRESSION_CHARS, parse_expression

__all__ = ["Tool", "ToolError", "CalculatorInput", "calculate", "register_tool", "get_tool", "list_tools", "CALCULATOR"]


class ToolError(ValueError):
    """The tool cannot produce a result for this input; the message says why."""


@dataclass(frozen=True)
class Tool:
    name: str
    fn: Callable[[Any], Any]
    """Called with a validated ``input_model`` instance; returns the result (str()-able)."""
    input_model: type[BaseModel]
    read: Callable[[str, str | None], dict[str, Any]]
    """(question, current answer text or None) -> the raw input; raises ToolError if there is none."""
    description: str = ""


_TOOLS: dict[str, Tool] = {}


def register_tool(tool: Tool) -> Tool:
    """Make ``tool`` available to nodes as ``tool=<name>``; returns it."""
    _TOOLS[tool.name] = tool
    return tool


def get_tool(name: str) -> Tool:
    if name not in _TOOLS:
        raise GraphSpecError(
            f"unknown tool {name!r}; choose one of: {', '.join(sorted(_TOOLS))}, or register it with register_tool(Tool(...))"
        )
    return _TOOLS[name]


def list_tools() -> list[str]:
    return sorted(_TOOLS)


# --- the calculator ------------------------------------------------------------------------

_ALLOWED = r"0-9+\-*/×÷−().\s"


class CalculatorInput(BaseModel):
    expression: str = Field(min_length=1, max_length=MAX_EXPRESSION_CHARS, pattern=rf"^[{_ALLOWED}]+$")


def calculate(args: CalculatorInput) -> str:
    """The exact value of an integer expression with + - * / and parentheses: "84", "3/4"."""
    parsed = parse_expression(args.expression.rstrip(". "))
    if parsed is None:
        raise ToolError(f"{args.expression!r} is not a valid expression (integers, + - * /, parentheses; no division by zero)")
    value: Fraction = parsed[0]
    return str(value.numerator) if value.denominator == 1 else str(value)


# A run of expression characters that starts and ends with a digit or parenthesis.
_CANDIDATE = re.compile(rf"[0-9(][{_ALLOWED}]*[0-9)]")
_OPERATOR = re.compile(r"[+\-*/×÷−]")


def find_expression(question: str, answer: str | None = None) -> dict[str, Any]:
    """The longest valid arithmetic expression (with at least one operator) in the question."""
    if not isinstance(question, str):
        raise ToolError("the question is not text")
    found = []
    for m in _CANDIDATE.finditer(question[:4000]):
        text = m.group(0).strip()
        if _OPERATOR.search(text) and len(text) <= MAX_EXPRESSION_CHARS and parse_expression(text) is not None:
            found.append(text)
    if not found:
        longest = max((m.group(0) for m in _CANDIDATE.finditer(question[:4000])), key=len, default="")
        if len(longest) > MAX_EXPRESSION_CHARS:
            return {"expression": longest}  # let validation say it is too long
        raise ToolError("the question contains no arithmetic expression")
    return {"expression": max(found, key=len)}


CALCULATOR = register_tool(Tool(
    "calculator", calculate, CalculatorInput, find_expression,
    "evaluates the arithmetic expression in the question exactly",
))
