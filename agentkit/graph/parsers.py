"""Each role's output schema and the parser that reads model text into it.

Parsers are written against hostile text: they never evaluate it, cap lengths, and
raise MalformedOutput, whose message is an instruction the retry prompt hands back to
the model ("reply with ... 'Answer: <value>'"), never a crash.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, Field

from agentkit.tasks.base import parse_answer, parse_number, split_steps

__all__ = [
    "MalformedOutput",
    "PlanOutput",
    "SolverOutput",
    "CriticOutput",
    "RouterOutput",
    "VerifierOutput",
    "ToolOutput",
    "SelectorOutput",
    "parse_plan",
    "parse_solution",
    "parse_review",
    "choose_label",
    "answer_key",
]

MAX_TEXT = 8000  # longer completions are not read at all
MAX_LINE = 400
MAX_PLAN_STEPS = 20


class MalformedOutput(ValueError):
    """The text does not fit the role's format; ``str(exc)`` says what was wrong."""


class PlanOutput(BaseModel):
    plan: list[str] = Field(min_length=1, max_length=MAX_PLAN_STEPS)

    def text(self) -> str:
        return "\n".join(f"{k}. {step}" for k, step in enumerate(self.plan, 1))


class SolverOutput(BaseModel):
    answer: str = Field(min_length=1, max_length=MAX_LINE)
    steps: list[str] = Field(default_factory=list)


class CriticOutput(BaseModel):
    score: float | None = Field(None, ge=0, le=1)
    """"Score: 7/10" -> 0.7; None when the review gave no score."""
    critique: str = ""
    verdict: Literal["accept", "revise"]


class RouterOutput(BaseModel):
    route: str
    distribution: dict[str, float]


class VerifierOutput(BaseModel):
    reward: float = Field(ge=0, le=1)


class ToolOutput(BaseModel):
    tool: str
    input: dict
    output: str | None = None
    error: str | None = None


class SelectorOutput(BaseModel):
    answer: str | None
    votes: dict[str, int]
    chosen: int
    """Index of the chosen sample."""


def _check_size(text: str) -> str:
    if not isinstance(text, str):
        raise MalformedOutput("the reply is not text")
    if len(text) > MAX_TEXT:
        raise MalformedOutput(f"the reply is {len(text)} characters long; keep it under {MAX_TEXT}")
    return text


# [ \t\r]*$: a line ending in "\r\n" (Windows-style model output) reads like one ending in "\n"
_PLAN_LINE = re.compile(r"^[ \t]*(?:step[ \t]*)?(\d{1,2})[.):][ \t]+(\S.*?)[ \t\r]*$", re.IGNORECASE | re.MULTILINE)


def parse_plan(text: str) -> PlanOutput:
    """Numbered lines "1. ...", "2) ..." in order; at least one, at most 20."""
    lines = _PLAN_LINE.findall(_check_size(text))
    if not lines:
        raise MalformedOutput("no numbered step was found")
    steps = []
    for expected, (number, step) in enumerate(lines, 1):
        if int(number) != expected:
            break  # a second list or stray numbering ends the plan
        if len(step) > MAX_LINE:
            raise MalformedOutput(f"step {expected} is {len(step)} characters long; keep each step to one short line")
        steps.append(step)
    if not steps:
        raise MalformedOutput("the numbering does not start at 1")
    if len(steps) > MAX_PLAN_STEPS:
        raise MalformedOutput(f"the plan has {len(steps)} steps; use at most {MAX_PLAN_STEPS}")
    return PlanOutput(plan=steps)


def parse_solution(text: str, answer_of: Callable[[str], str | None] = parse_answer) -> SolverOutput:
    """"Step k:" lines (optional) and the last "Answer:" line (required, one short line)."""
    answer = answer_of(_check_size(text))
    if answer is None:
        raise MalformedOutput("there is no line 'Answer: <value>'")
    if len(answer) > MAX_LINE:
        raise MalformedOutput(f"the answer is {len(answer)} characters long; give only the final value")
    return SolverOutput(answer=answer, steps=split_steps(text))


_FIELD = r"^[ \t*_]*{}[ \t*_]*:[ \t*_]*(.*?)[ \t\r]*$"
_SCORE = re.compile(_FIELD.format("score"), re.IGNORECASE | re.MULTILINE)
_CRITIQUE = re.compile(_FIELD.format("critique"), re.IGNORECASE | re.MULTILINE)
_VERDICT = re.compile(_FIELD.format("verdict"), re.IGNORECASE | re.MULTILINE)
_SCORE_VALUE = re.compile(r"(\d{1,2}(?:\.\d{1,3})?)\s*(?:/\s*(10|100)\b)?")


def parse_review(text: str) -> CriticOutput:
    """"Score: 7/10" (optional), "Critique: ..." (optional) and "Verdict: accept|revise"
    (required; the last verdict line counts)."""
    text = _check_size(text)
    verdicts = _VERDICT.findall(text)
    if not verdicts:
        raise MalformedOutput("there is no line 'Verdict: accept' or 'Verdict: revise'")
    verdict = verdicts[-1].strip(" .*_!\"'").lower()
    if verdict not in ("accept", "revise"):
        raise MalformedOutput(f"the verdict {verdicts[-1][:40]!r} is neither 'accept' nor 'revise'")
    score = None
    scores = _SCORE.findall(text)
    if scores:
        m = _SCORE_VALUE.match(scores[-1].strip(" *_"))
        if m is None:
            raise MalformedOutput(f"the score {scores[-1][:40]!r} is not a number out of 10")
        value, scale = float(m.group(1)), float(m.group(2) or 10)
        if not 0 <= value <= scale:
            raise MalformedOutput(f"the score {scores[-1][:40]!r} is outside 0..{scale:g}")
        score = value / scale
    critiques = _CRITIQUE.findall(text)
    critique = critiques[-1].strip()[:MAX_LINE] if critiques else ""
    return CriticOutput(score=score, critique=critique, verdict=verdict)


def choose_label(scores: dict[str, float]) -> RouterOutput:
    """The label with the highest summed logprob (the first declared one on a tie) and the
    softmax distribution over all labels. Never returns a label outside ``scores``."""
    if not scores:
        raise ValueError("choose_label needs at least one label")
    # a log-probability is finite or -inf; anything else (nan, +inf) counts as impossible
    finite = {label: _logprob(s) for label, s in scores.items()}
    best = max(finite, key=lambda label: finite[label])  # max keeps the first of equal keys
    top = finite[best]
    if top == -math.inf:
        distribution = {label: 1 / len(finite) for label in finite}
    else:
        weights = {label: math.exp(s - top) for label, s in finite.items()}
        total = sum(weights.values())
        distribution = {label: w / total for label, w in weights.items()}
    return RouterOutput(route=best, distribution=distribution)


def _logprob(score: object) -> float:
    """``score`` as a log-probability: finite or -inf (nan, +inf, an int too large for a
    float and anything not a number count as impossible)."""
    if not isinstance(score, (int, float)) or isinstance(score, bool):
        return -math.inf
    try:
        value = float(score)
    except OverflowError:
        return -math.inf
    return value if value < math.inf else -math.inf


def answer_key(answer: str | None) -> str | None:
    """What majority voting compares: the exact number when the answer is one ("84.0",
    "84" and "$84" agree), else the answer without case and surrounding space."""
    if answer is None:
        return None
    number = parse_number(answer)
    if number is not None:
        return str(number)
    return " ".join(answer.split()).lower().rstrip(".") or None
