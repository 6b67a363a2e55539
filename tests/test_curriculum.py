"""The curriculum's parts: task families (Suite.family) and the bandit over them
(agentkit.learn.curriculum). That improve searches what the bandit picks is in test_improve."""

from __future__ import annotations

import pytest

from agentkit.tasks import Task, get_suite


def arithmetic(*steps):
    return Task(id="t", suite="arithmetic", split="train", level=len(steps), question="q", answer="0", solution="",
                data={"steps": [list(step) for step in steps]})


@pytest.mark.parametrize("steps, family", [
    ([(23, "+", 41, 64)], "+"),
    ([(27, "+", 45, 72)], "+c"),  # 7 + 5 carries
    ([(30, "+", 70, 100)], "+"),  # no carry in the units, though the tens carry
    ([(58, "-", 17, 41)], "-"),
    ([(52, "-", 17, 35)], "-b"),  # 2 - 7 borrows
    ([(12, "*", 8, 96)], "*"),
    ([(13, "*", 8, 104)], "*h"),
    ([(52, "-", 17, 35), (35, "*", 3, 105), (105, "+", 12, 117)], "-b *h +"),
])
def test_an_arithmetic_family_is_the_chain_of_marked_operations(steps, family):
    assert get_suite("arithmetic").family(arithmetic(*steps)) == family


def test_a_level_of_arithmetic_has_six_families_and_other_suites_use_the_level():
    suite = get_suite("arithmetic")
    assert {suite.family(t) for t in suite.tasks("train", 200, level=1)} == {"+", "+c", "-", "-b", "*", "*h"}
    countdown = get_suite("countdown")
    assert countdown.family(countdown.tasks("train", 1, level=3)[0]) == "level-3"
