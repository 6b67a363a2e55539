"""Tasks, the Suite protocol and the parsers every suite shares.

A suite generates deterministic tasks, renders a few-shot prompt, and judges model text
twice: ``verify`` gives the outcome reward, ``check_steps`` judges each "Step k:" line.
Everything that reads model text is written against hostile input: it never evaluates
the text, caps lengths, and turns anything malformed into a zero reward, not an error.
"""

from __future__ import annotations

import hashlib
import random
import re
from abc import ABC, abstractmethod
from fractions import Fraction
from typing import Callable, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from agentkit.errors import TaskError
from agentkit.tasks.steps import split_steps

__all__ = [
    "family_of",
    "Task",
    "Suite",
    "Draft",
    "SPLITS",
    "split_steps",
    "parse_answer",
    "parse_number",
    "parse_equation",
    "parse_expression",
    "apply_op",
    "split_of",
    "task_id",
    "MAX_TASKS",
]

SPLITS = ("train", "test")
MAX_TASKS = 10_000
"""Most tasks one ``tasks()`` call generates: a larger ``n`` is an error at once, not minutes
of drawing candidates until the level runs out."""
MAX_EXPRESSION_CHARS = 200
_MAX_PARENS = 32
_STALE_LIMIT = 5000
_SHOT_SEED = 10_007  # shots come from their own fixed draw, whatever seeds the caller uses
_VOCABULARY_SEED = 10_009  # the solutions a suite's vocabulary is read from


class Task(BaseModel):
    """One problem with its gold answer and gold worked solution."""

    model_config = ConfigDict(frozen=True)

    id: str
    suite: str
    split: Literal["train", "test"]
    level: int
    question: str
    answer: str
    solution: str
    data: dict = Field(default_factory=dict)


class Draft(NamedTuple):
    """What a suite's generator returns; the base class adds id, suite, split and level."""

    question: str
    answer: str
    solution: str
    data: dict


def split_of(question: str) -> Literal["train", "test"]:
    """Train and test are disjoint for any seeds because a question's split is a function
    of its text alone: one question in five (by SHA-1) is a test question."""
    return "test" if _sha1_int(question) % 5 == 0 else "train"


def task_id(suite: str, split: str, level: int, question: str) -> str:
    """Stable across seeds and runs: the same question always gets the same id."""
    return f"{suite}-{split}-{level}-{hashlib.sha1(question.encode()).hexdigest()[:10]}"


def _sha1_int(text: str) -> int:
    return int(hashlib.sha1(text.encode()).hexdigest(), 16)


# --- reading model text -----------------------------------------------------------------

_ANSWER = re.compile(r"^[ \t*]*answer[ \t*]*:(.*)$", re.IGNORECASE | re.MULTILINE)


def parse_answer(text: str) -> str | None:
    """The text after the last "Answer:" line (markdown bold tolerated), or None."""
    if not isinstance(text, str):
        return None
    found = _ANSWER.findall(text)
    if not found:
        return None
    answer = found[-1].strip().strip("*").strip()
    return answer or None


_OPS = str.maketrans({"×": "*", "∗": "*", "·": "*", "x": "*", "X": "*", "−": "-", "–": "-", "÷": "/"})
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d{1,30})(?:\.\d{1,30})?|[-+]?\d{1,30}/\d{1,30}")


def parse_number(text: str | None) -> Fraction | None:
    """An exact number from answer text: "47", "47.", "-3.5", "1,000", "$12", "3/4"."""
    if not isinstance(text, str) or len(text) > 80:
        return None
    s = text.strip().translate({ord("−"): "-"}).rstrip(".").strip().lstrip("$")
    if not _NUMBER.fullmatch(s):
        return None
    try:
        return Fraction(s.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


_NUM = r"\d{1,9}(?:\.\d{1,9})?"
_EQUATION = re.compile(rf"\s*({_NUM})\s*([-+*/])\s*({_NUM})\s*=\s*({_NUM})\s*\.?\s*")


def parse_equation(text: str) -> tuple[Fraction, str, Fraction, Fraction] | None:
    """A step of the form "a op b = c" (op one of + - * /, also × − ÷ and x) or None."""
    if not isinstance(text, str) or len(text) > MAX_EXPRESSION_CHARS:
        return None
    m = _EQUATION.fullmatch(text.translate(_OPS))
    if m is None:
        return None
    a, op, b, c = m.groups()
    return Fraction(a), op, Fraction(b), Fraction(c)


def apply_op(a: Fraction, op: str, b: Fraction) -> Fraction | None:
    """a op b exactly; None for division by zero."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a / b if b != 0 else None


_TOKEN = re.compile(r"\s*(?:(\d{1,9})(?!\d)|([-+*/()]))")


def parse_expression(text: str) -> tuple[Fraction, list[int]] | None:
    """Value and integer literals of an arithmetic expression, or None if it is invalid.

    A recursive-descent parser over integers, + - * / and parentheses with exact Fraction
    arithmetic. No unary minus, no names, at most 200 characters and 32 nested
    parentheses; division by zero is invalid. Model text is never handed to eval."""
    if not isinstance(text, str) or len(text) > MAX_EXPRESSION_CHARS:
        return None
    text = text.translate(_OPS).strip()
    tokens: list[str] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            return None
        tokens.append(m.group(1) or m.group(2))
        pos = m.end()
    parser = _ExpressionParser(tokens)
    try:
        value = parser.expression(0)
    except _Invalid:
        return None
    if parser.pos != len(tokens):
        return None
    return value, parser.literals


class _Invalid(Exception):
    pass


class _ExpressionParser:
    """expression := term (("+" | "-") term)* ; term := factor (("*" | "/") factor)* ;
    factor := INTEGER | "(" expression ")"."""

    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        self.pos = 0
        self.literals: list[int] = []

    def _peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _take(self) -> str:
        token = self._peek()
        if token is None:
            raise _Invalid
        self.pos += 1
        return token

    def expression(self, depth: int) -> Fraction:
        value = self.term(depth)
        while self._peek() in ("+", "-"):
            op = self._take()
            value = apply_op(value, op, self.term(depth))
        return value

    def term(self, depth: int) -> Fraction:
        value = self.factor(depth)
        while self._peek() in ("*", "/"):
            op = self._take()
            value = apply_op(value, op, self.factor(depth))
            if value is None:
                raise _Invalid
        return value

    def factor(self, depth: int) -> Fraction:
        token = self._take()
        if token == "(":
            if depth >= _MAX_PARENS:
                raise _Invalid
            value = self.expression(depth + 1)
            if self._take() != ")":
                raise _Invalid
            return value
        if token.isdigit():
            self.literals.append(int(token))
            return Fraction(int(token))
        raise _Invalid


# --- the suite protocol -----------------------------------------------------------------


class Suite(ABC):
    """A family of generated tasks with a prompt format, a verifier and a step checker.

    Subclasses set the class attributes, implement ``_generate`` (one random candidate)
    and ``_reward``, and optionally ``_check_steps``."""

    name: str
    levels: tuple[int, ...]
    default_level: int
    stop: tuple[str, ...] = ("\nQuestion:", "\n\n\n")
    instructions: str

    def tasks(self, split: str, n: int, level: int | None = None, seed: int = 0) -> list[Task]:
        """``n`` distinct tasks of ``split``, the same for the same arguments.

        Candidates are drawn from one seeded stream per (suite, level, seed) and each is
        kept only if ``split_of(question)`` is the requested split, so train and test never
        share a question and a smaller ``n`` gives a prefix of a larger one."""
        split = self._check_split(split)
        level = self._check_level(level)
        if not isinstance(n, int) or n < 0:
            raise TaskError(f"n={n!r}: the number of tasks must be an integer >= 0")
        if n > MAX_TASKS:
            raise TaskError(f"n={n}: a suite generates at most {MAX_TASKS} tasks at a time; ask for fewer")
        rng = random.Random(f"{self.name}/{level}/{seed}")
        found: list[Task] = []
        seen: set[str] = set()
        stale = 0  # draws in a row that brought no new question: the level is nearly exhausted
        while len(found) < n and stale < _STALE_LIMIT:
            draft = self._generate(rng, level)
            if draft is None or draft.question in seen:
                stale += 1
                continue
            stale = 0
            seen.add(draft.question)
            if split_of(draft.question) != split:
                continue
            found.append(
                Task(
                    id=task_id(self.name, split, level, draft.question),
                    suite=self.name,
                    split=split,
                    level=level,
                    **draft._asdict(),
                )
            )
        if len(found) < n:
            raise TaskError(
                f"suite '{self.name}' level {level}: found only {len(found)} distinct {split} "
                f"tasks of the {n} requested; ask for fewer or use another level"
            )
        return found

    def _generate(self, rng: random.Random, level: int) -> Draft | None:
        """One random candidate task (None to skip); suites without a generator override tasks."""
        raise NotImplementedError(f"{type(self).__name__} must implement _generate or override tasks")

    def prompt(self, task: Task, shots: int = 3) -> str:
        """Instructions, ``shots`` worked train examples of the task's level (never the task
        itself), then the task's question; the model continues after "Solution:\\n"."""
        if not isinstance(shots, int) or shots < 0:
            raise TaskError(f"shots={shots!r}: the number of examples must be an integer >= 0")
        if shots >= MAX_TASKS:
            raise TaskError(f"shots={shots}: at most {MAX_TASKS - 1} examples fit in a prompt; ask for fewer")
        parts = [self.instructions.strip() + "\n\n"]
        for example in self._shots(task, shots):
            parts.append(f"Question: {example.question}\nSolution:\n{example.solution}\n\n")
        parts.append(f"Question: {task.question}\nSolution:\n")
        return "".join(parts)

    def _shots(self, task: Task, shots: int) -> list[Task]:
        level = task.level if task.level in self.levels else self.default_level
        cache = self.__dict__.setdefault("_shot_cache", {})
        if (level, shots) not in cache:
            cache[(level, shots)] = self.tasks("train", shots + 1, level, seed=_SHOT_SEED)
        return [t for t in cache[(level, shots)] if t.question != task.question][:shots]

    def vocabulary(self, tokenize: Callable[[str], list[int]], n: int = 100) -> list[int]:
        """The token ids this suite's worked solutions are written in, sorted: every token of
        the solutions of ``n`` train tasks per level, each followed by the break before the
        next shot's "Question:" (where the stop ends a completion), as ``tokenize`` turns a
        continuation into ids. A policy that decodes only these
        (``GenerationRequest.allowed_token_ids``) can still write every gold solution, and its
        softmax costs a few dozen dot products instead of the whole vocabulary's."""
        ids: set[int] = set()
        for level in self.levels:
            for task in self.tasks("train", n, level, seed=_VOCABULARY_SEED):
                ids.update(tokenize(f"{task.solution}\n\nQuestion:"))
        return sorted(ids)

    def family(self, task: Task) -> str:
        """A coarse difficulty family of ``task``, which the curriculum (agentkit.learn.curriculum)
        learns a success rate for: tasks of one family should be about as hard as each other
        for a policy, and a level should have few families, so that one round of ~100 tasks
        says something about each. Not ``family_of``, the key memory items are kept under."""
        return f"level-{task.level}"

    def parse_answer(self, text: str) -> str | None:
        """The final answer: the text after the last "Answer:" line, None if missing."""
        return parse_answer(text)

    def verify(self, task: Task, text: str) -> float:
        """Outcome reward in [0, 1]; malformed or hostile text scores 0.0 and never raises."""
        if not isinstance(text, str):
            return 0.0
        try:
            return min(1.0, max(0.0, float(self._reward(task, text))))
        except (ValueError, ArithmeticError, RecursionError):
            return 0.0

    @abstractmethod
    def _reward(self, task: Task, text: str) -> float:
        """The suite's outcome reward for a model solution."""

    def check_steps(self, task: Task, text: str) -> list[bool] | None:
        """One judgement per "Step k:" line of ``text``; None if the suite has no step checker."""
        if not isinstance(text, str):
            text = ""
        try:
            return self._check_steps(task, text)
        except (ValueError, ArithmeticError, RecursionError):
            return [False] * len(split_steps(text))

    def _check_steps(self, task: Task, text: str) -> list[bool] | None:
        return None

    @property
    def has_step_checker(self) -> bool:
        """Whether ``check_steps`` judges steps (True) or always answers None."""
        return type(self)._check_steps is not Suite._check_steps

    def step_accuracy(self, task: Task, text: str) -> float | None:
        """Correct model steps / max(gold steps, model steps); 0.0 if the model wrote no
        steps, None if the suite has no step checker.

        Dividing by the larger count penalises both stopping short of the gold solution
        and padding it with extra steps, so only a complete, all-correct chain scores 1."""
        checks = self.check_steps(task, text)
        if checks is None:
            return None
        if not checks:
            return 0.0
        return sum(checks) / max(len(split_steps(task.solution)), len(checks))

    # --- argument checks shared by every suite ---

    def _check_split(self, split: str) -> str:
        if split not in SPLITS:
            raise TaskError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
        return split

    def _check_level(self, level: int | None) -> int:
        if level is None:
            return self.default_level
        if level not in self.levels:
            allowed = ", ".join(str(x) for x in self.levels)
            raise TaskError(f"level {level!r} is not available for suite '{self.name}'; choose one of: {allowed}")
        return level

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def family_of(suite: str | None, level: int | None = None) -> str:
    """The task family items are kept and capped by: "arithmetic/2", or the suite alone."""
    name = suite or "default"
    return name if level is None else f"{name}/{level}"
