"""Chain arithmetic: "Compute ((23 + 41) - 17) * 3." evaluated in the written order.

The level is the number of operations. + and - take a two-digit operand, * a single digit
2..9, and every intermediate result stays in 1..999, so each step is one line of school
arithmetic and the canonical solution is unique.
"""

from __future__ import annotations

import random
from fractions import Fraction

from agentkit.tasks.base import Draft, Suite, Task, parse_equation, parse_number, split_steps

__all__ = ["ArithmeticSuite"]

_MAX = 999


class ArithmeticSuite(Suite):
    name = "arithmetic"
    levels = (1, 2, 3, 4, 5)
    default_level = 2
    instructions = (
        "Compute the expression one operation at a time, innermost parentheses first. "
        "Write each operation as 'Step k: a op b = c' and finish with 'Answer: <number>'."
    )

    def _generate(self, rng: random.Random, level: int) -> Draft:
        value = rng.randint(10, 99)
        expression = str(value)
        steps: list[list] = []
        for k in range(level):
            op, operand = _next_operation(rng, value)
            result = value + operand if op == "+" else value - operand if op == "-" else value * operand
            steps.append([value, op, operand, result])
            expression = f"({expression}) {op} {operand}" if k else f"{expression} {op} {operand}"
            value = result
        lines = [f"Step {k}: {a} {op} {b} = {c}" for k, (a, op, b, c) in enumerate(steps, 1)]
        return Draft(
            question=f"Compute {expression}.",
            answer=str(value),
            solution="\n".join(lines + [f"Answer: {value}"]),
            data={"steps": steps},
        )

    def _reward(self, task: Task, text: str) -> float:
        value = parse_number(self.parse_answer(text))
        return 1.0 if value is not None and value == Fraction(task.answer) else 0.0

    def _check_steps(self, task: Task, text: str) -> list[bool]:
        """Step k is right iff it is exactly the canonical k-th operation "a op b = c";
        steps beyond the gold count are wrong."""
        gold = [(Fraction(a), op, Fraction(b), Fraction(c)) for a, op, b, c in task.data["steps"]]
        return [k < len(gold) and parse_equation(step) == gold[k] for k, step in enumerate(split_steps(text))]

    def family(self, task: Task) -> str:
        """The chain of operations, each marked where school arithmetic gets harder: "+c" an
        addition that carries out of the units, "-b" a subtraction that borrows, "*h" a
        product that reaches the hundreds; "+", "-" and "*" the plain ones. So "+c" at level 1
        and "-b *h" at level 2: six families per operation, 6**level in all."""
        return " ".join(_mark(a, op, b, c) for a, op, b, c in task.data["steps"])


def _mark(a: int, op: str, b: int, c: int) -> str:
    if op == "+":
        return "+c" if a % 10 + b % 10 >= 10 else "+"
    if op == "-":
        return "-b" if a % 10 < b % 10 else "-"
    return "*h" if c >= 100 else "*"


def _next_operation(rng: random.Random, value: int) -> tuple[str, int]:
    """A random operation whose result stays in 1..999."""
    choices = []
    if value + 10 <= _MAX:
        choices.append(("+", 10, min(99, _MAX - value)))
    if value >= 11:
        choices.append(("-", 10, min(99, value - 1)))
    if value * 2 <= _MAX:
        choices.append(("*", 2, min(9, _MAX // value)))
    op, low, high = rng.choice(choices)
    return op, rng.randint(low, high)
