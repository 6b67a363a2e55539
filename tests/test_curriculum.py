"""The curriculum's parts: task families (Suite.family) and the bandit over them
(agentkit.learn.curriculum). That improve searches what the bandit picks is in test_improve."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from agentkit.learn.curriculum import FamilyBandit
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


def outcomes(solved: dict[str, list[bool]]):
    return [(family, ok) for family, oks in solved.items() for ok in oks]


def test_the_bandit_picks_the_family_solved_half_the_time():
    bandit = FamilyBandit()
    bandit.update(outcomes({"A": [True] * 12, "B": [False] * 12, "C": [True, False] * 6}))
    assert bandit.means() == {"A": 0.929, "B": 0.071, "C": 0.5}
    pool = [(f, k) for f in "ABC" for k in range(100)]
    rng, counts = random.Random(0), Counter()
    for _ in range(20):  # 20 rounds' picks: one Thompson sample per family each
        picked = bandit.select(pool, 60, rng, family=lambda item: item[0])
        assert len(picked) == len(set(picked)) == 60 and picked == sorted(picked)  # no repeats, in pool order
        counts.update(f for f, _ in picked)
    assert counts["C"] > 2 * max(counts["A"], counts["B"]), counts
    assert min(counts["A"], counts["B"]) > 60, counts  # the floor: no family starves


def test_without_evidence_every_family_gets_picked():
    pool = [(f, k) for f in "ABCDEF" for k in range(20)]
    counts = Counter(f for f, _ in FamilyBandit().select(pool, 60, random.Random(1), family=lambda item: item[0]))
    assert set(counts) == set("ABCDEF")


class CountingRandom(random.Random):
    """Counts the Thompson samples a pick draws."""

    def __init__(self, seed):
        super().__init__(seed)
        self.draws = 0

    def betavariate(self, alpha, beta):
        self.draws += 1
        return super().betavariate(alpha, beta)


def test_a_pick_draws_one_thompson_sample_per_family_not_per_task():
    # per task, the draws average out and the pick follows the pool's mix
    # (bench/results/improve-pertask-draw.md)
    pool = [(f, k) for f in "ABCDEF" for k in range(20)]
    rng = CountingRandom(3)
    FamilyBandit().select(pool, 60, rng, family=lambda item: item[0])
    assert rng.draws == 6


def test_the_discount_shrinks_old_evidence_toward_the_prior():
    bandit = FamilyBandit(discount=0.5)
    bandit.update(outcomes({"A": [True] * 8}))
    assert (bandit.alpha["A"], bandit.beta["A"]) == (9.0, 1.0)
    bandit.update(outcomes({"A": [False] * 2}))  # old counts halved, then the new ones added
    assert (bandit.alpha["A"], bandit.beta["A"]) == (5.0, 3.0)
    bandit.update([])
    assert (bandit.alpha["A"], bandit.beta["A"]) == (3.0, 2.0)


def test_the_state_round_trips_through_a_dict():
    bandit = FamilyBandit(discount=0.7, floor=0.05)
    bandit.update(outcomes({"+c": [True, False, False], "*h": [True]}))
    state = bandit.as_dict()
    assert state == {"discount": 0.7, "floor": 0.05, "families": {"*h": [2.0, 1.0], "+c": [2.0, 3.0]}}
    assert FamilyBandit.from_dict(state) == bandit


def test_the_level_share_reweights_the_pick_to_the_pool():
    """The pick over-samples the family near p = 0.5; the level's share is each family's
    solved share weighted by the pool's mix, so a threshold reads the level, not the pick."""
    bandit = FamilyBandit()
    bandit.update(outcomes({"A": [True] * 4}))
    picked = outcomes({"A": [True] * 2, "C": [True, False] * 5})  # 12 picked: 10 of them C
    pool = ["A"] * 80 + ["C"] * 10 + ["B"] * 10  # B never picked: its posterior mean, the prior's 0.5
    assert bandit.level_share(pool, picked) == pytest.approx((80 * 1.0 + 10 * 0.5 + 10 * 0.5) / 100)
    assert sum(ok for _, ok in picked) / len(picked) == pytest.approx(7 / 12)  # what the pick alone says
