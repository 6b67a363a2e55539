"""Which training tasks a round searches: a Bayesian bandit over task families.

Search spent on a task the policy never solves (p ~ 0) or always solves (p ~ 1) yields no
data worth its CPU minutes: nothing verified in the first case, nothing new in the second.
MoPPS (Model Predictive Prompt Selection, Qu et al. 2025) predicts each prompt's success
rate online instead of measuring it: a Beta posterior per prompt, updated with the successes
its rollouts had, old evidence discounted because the policy moves; each step it
Thompson-samples a rate per prompt and trains on the prompts whose sampled rate is nearest
0.5. DUMP does the same over task families, with UCB on mean |advantage|.

``FamilyBandit`` is MoPPS over families (``Suite.family``), not single prompts: every
round's tasks are fresh, so a prompt is never seen twice, while its family is. And it draws
tasks with weight p(1 - p) + ``floor`` rather than taking MoPPS's top-n: families are few,
so a top-n would fill a round with one or two of them, and early rounds, whose posteriors
are still wide, should keep exploring.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = ["FamilyBandit"]

T = TypeVar("T")


@dataclass
class FamilyBandit:
    """A Beta(1, 1) prior per family on "search solves a task of this family", the
    posterior's counts in ``alpha`` (solved + 1) and ``beta`` (unsolved + 1)."""

    discount: float = 0.5
    """lambda: each ``update`` first shrinks the evidence so far to this share (MoPPS's
    temporal discount), since the policy changed since it was gathered."""
    floor: float = 0.02
    """Added to every family's weight p(1 - p) (at most 0.25), so no family is starved."""
    alpha: dict[str, float] = field(default_factory=dict)
    beta: dict[str, float] = field(default_factory=dict)

    def update(self, outcomes: Iterable[tuple[str, bool]]) -> None:
        """Discount the old evidence, then add one round's (family, solved?) outcomes."""
        for family in self.alpha:
            self.alpha[family] = 1.0 + self.discount * (self.alpha[family] - 1.0)
            self.beta[family] = 1.0 + self.discount * (self.beta[family] - 1.0)
        for family, solved in outcomes:
            self.alpha.setdefault(family, 1.0)
            self.beta.setdefault(family, 1.0)
            if solved:
                self.alpha[family] += 1.0
            else:
                self.beta[family] += 1.0

    def select(self, pool: Sequence[T], n: int, rng: random.Random, family: Callable[[T], str]) -> list[T]:
        """``n`` items of ``pool`` without replacement, in pool order. Each family gets one
        Thompson sample p ~ Beta(alpha, beta) (Beta(1, 1) for a family never seen), and each
        item the weight p(1 - p) + ``floor`` of its family; weighted sampling without
        replacement by keys u ** (1 / weight) (Efraimidis and Spirakis 2006).

        One draw per family, not per task: a round leans on the families whose draw came out
        near 0.5, and the next round's draws lean elsewhere. A draw per task (MoPPS has one
        per prompt) averages that away, so the pick follows the pool's mix. Side by side over 3
        seeds it reached a final mean of 16.7% (12.5-19.5%) against 20.2% (16.5-24.0%) per
        family, ranges overlapping (bench/results/improve-pertask-draw.md)."""
        families = [family(item) for item in pool]
        sampled = {f: rng.betavariate(self.alpha.get(f, 1.0), self.beta.get(f, 1.0)) for f in dict.fromkeys(families)}
        keys = [rng.random() ** (1.0 / (sampled[f] * (1.0 - sampled[f]) + self.floor)) for f in families]
        chosen = sorted(range(len(pool)), key=keys.__getitem__, reverse=True)[:n]
        return [pool[i] for i in sorted(chosen)]

    def level_share(self, pool: Sequence[str], outcomes: Sequence[tuple[str, bool]]) -> float:
        """What share of the whole ``pool`` (its tasks' families) search would solve, from
        the ``outcomes`` of the picked ones: each family's solved share among its picked
        tasks, weighted by how often the family occurs in the pool (a stratified estimate,
        since the pick over-samples the families near p = 0.5); a family the pick missed
        counts at its posterior mean. What the level threshold (``advance_at``) reads."""
        tried: dict[str, list[bool]] = {}
        for family, solved in outcomes:
            tried.setdefault(family, []).append(solved)
        rate = {f: sum(v) / len(v) for f, v in tried.items()}
        share = [rate[f] if f in rate else self.mean(f) for f in pool]
        return sum(share) / len(share) if share else 0.0

    def means(self) -> dict[str, float]:
        """The posterior mean success rate per family, rounded for a journal."""
        return {f: round(self.mean(f), 3) for f in sorted(self.alpha)}

    def mean(self, family: str) -> float:
        """The posterior mean success rate of ``family`` (the prior's 0.5 if never seen)."""
        a, b = self.alpha.get(family, 1.0), self.beta.get(family, 1.0)
        return a / (a + b)

    def as_dict(self) -> dict[str, Any]:
        return {"discount": self.discount, "floor": self.floor,
                "families": {f: [self.alpha[f], self.beta[f]] for f in sorted(self.alpha)}}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> FamilyBandit:
        families = state["families"]
        return cls(state["discount"], state["floor"], {f: a for f, (a, _) in families.items()},
                   {f: b for f, (_, b) in families.items()})
