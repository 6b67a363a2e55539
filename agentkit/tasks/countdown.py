"""Countdown: combine the given numbers with + - * / to hit a target.

Level 4 is the Game of 24 (four numbers 1..13, target 24; only sets a brute-force solver
can solve are kept). Levels 3 and 5 draw numbers 1..25 and build the target with a random
operation tree over all of them. Every gold step is a positive integer below 1000, so
sets whose only 24-solutions pass through fractions (3 3 8 8) are skipped.
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from fractions import Fraction
from typing import NamedTuple

from agentkit.tasks.base import Draft, Suite, Task, apply_op, parse_equation, parse_expression, split_steps

__all__ = ["CountdownSuite"]

_MAX = 999
_ATOM = 3  # precedence of a bare number; + - are 1, * / are 2


class _Expr(NamedTuple):
    value: int
    text: str
    precedence: int


class CountdownSuite(Suite):
    name = "countdown"
    levels = (3, 4, 5)
    default_level = 4
    instructions = (
        "Combine the numbers with + - * / to reach the target, one operation per line as "
        "'Step k: a op b = c', then give 'Answer: <one expression using every number once>'."
    )

    def _generate(self, rng: random.Random, level: int) -> Draft | None:
        if level == 4:
            numbers = sorted(rng.randint(1, 13) for _ in range(4))
            target = 24
            solved = _solve(tuple(numbers), target)
        else:
            numbers = sorted(rng.randint(1, 25) for _ in range(level))
            solved = _random_tree(rng, numbers)
            target = solved[1].value if solved else 0
        if solved is None:
            return None
        steps, final = [list(step) for step in solved[0]], solved[1]  # _solve's result is cached: copy
        lines = [f"Step {k}: {a} {op} {b} = {c}" for k, (a, op, b, c) in enumerate(steps, 1)]
        listed = ", ".join(str(x) for x in numbers)
        return Draft(
            question=f"Use the numbers {listed} exactly once each with + - * / and parentheses to make {target}.",
            answer=final.text,
            solution="\n".join(lines + [f"Answer: {final.text}"]),
            data={"numbers": numbers, "target": target, "steps": steps},
        )

    def _reward(self, task: Task, text: str) -> float:
        """1.0 iff the Answer expression uses exactly the given numbers and equals the target.
        A trailing "= 24" is ignored; the expression goes through the safe parser only."""
        answer = self.parse_answer(text)
        if answer is None:
            return 0.0
        parsed = parse_expression(answer.split("=", 1)[0])
        if parsed is None:
            return 0.0
        value, used = parsed
        ok = sorted(used) == sorted(task.data["numbers"]) and value == task.data["target"]
        return 1.0 if ok else 0.0

    def _check_steps(self, task: Task, text: str) -> list[bool]:
        """A step is right iff "a op b = c" is exact arithmetic and a and b are in the pool
        (the given numbers; each right step takes a and b out and puts c in). Decimals are
        read exactly, so "1 / 4 = 0.25" is right and "8 / 3 = 2.67" is not."""
        pool = Counter(Fraction(x) for x in task.data["numbers"])
        checks = []
        for step in split_steps(text):
            parsed = parse_equation(step)
            ok = False
            if parsed is not None:
                a, op, b, c = parsed
                needed = Counter([a, b])
                ok = apply_op(a, op, b) == c and all(pool[x] >= k for x, k in needed.items())
                if ok:
                    pool -= needed
                    pool[c] += 1
            checks.append(ok)
        return checks


def _combine(x: _Expr, op: str, y: _Expr) -> _Expr | None:
    """x op y if the result is a positive integer <= 999, else None."""
    if op == "+":
        value = x.value + y.value
    elif op == "-":
        value = x.value - y.value
    elif op == "*":
        value = x.value * y.value
    elif y.value == 0 or x.value % y.value:
        return None
    else:
        value = x.value // y.value
    if not 0 < value <= _MAX:
        return None
    precedence = 1 if op in "+-" else 2
    left = f"({x.text})" if x.precedence < precedence else x.text
    # a - (b + c) and a / (b * c) need their parentheses; a + (b - c) and a * (b / c) do not
    tight = y.precedence < precedence or (op in "-/" and y.precedence == precedence)
    right = f"({y.text})" if tight else y.text
    return _Expr(value, f"{left} {op} {right}", precedence)


@functools.cache
def _solve(numbers: tuple[int, ...], target: int) -> tuple[list[list], _Expr] | None:
    """Steps and expression of the first solution found by exhaustive search, or None."""
    return _search([_Expr(n, str(n), _ATOM) for n in numbers], target, [])


def _search(items: list[_Expr], target: int, steps: list[list]) -> tuple[list[list], _Expr] | None:
    if len(items) == 1:
        return (steps, items[0]) if items[0].value == target else None
    for i, x in enumerate(items):
        for j, y in enumerate(items):
            if i == j:
                continue
            rest = [item for k, item in enumerate(items) if k not in (i, j)]
            for op in "+-*/":
                if op in "+*" and i > j:
                    continue  # commutative: one order is enough
                result = _combine(x, op, y)
                if result is None:
                    continue
                found = _search(rest + [result], target, steps + [[x.value, op, y.value, result.value]])
                if found is not None:
                    return found
    return None


def _random_tree(rng: random.Random, numbers: list[int]) -> tuple[list[list], _Expr] | None:
    """Combine random pairs with random valid operations until one number is left."""
    items = [_Expr(n, str(n), _ATOM) for n in numbers]
    rng.shuffle(items)
    steps: list[list] = []
    while len(items) > 1:
        i, j = rng.sample(range(len(items)), 2)
        x, y = sorted((items[i], items[j]), key=lambda e: e.value, reverse=True)
        options = [(op, r) for op in "+-*/" if (r := _combine(x, op, y)) is not None]
        if not options:
            return None
        op, result = rng.choice(options)
        steps.append([x.value, op, y.value, result.value])
        items = [item for k, item in enumerate(items) if k not in (i, j)] + [result]
    return steps, items[0]
