"""PrOntoQA-style deduction over made-up categories (Saparov & He, 2023).

The context is a shuffled list of rules ("Every wumpus is a yumpus.", "Every yumpus is not
hot.") with distractors, and one fact ("Max is a wumpus."). The level is the number of
hops: rules applied from the fact to the queried property. Half the queries ask about the
negation of the provable statement, so the gold answer is False.
"""

from __future__ import annotations

import random
import re

from agentkit.tasks.base import Draft, Suite, Task, split_steps

__all__ = ["ProntoQASuite"]

CATEGORIES = (
    "wumpus", "yumpus", "zumpus", "dumpus", "rompus", "numpus", "tumpus", "vumpus", "impus",
    "jompus", "gorpus", "shumpus", "lempus", "sterpus", "grimpus", "lorpus", "brimpus",
)  # fmt: skip
PROPERTIES = (
    "fruity", "hot", "transparent", "bright", "cold", "dull", "feisty", "happy", "kind",
    "large", "luminous", "metallic", "mean", "nervous", "opaque", "red", "sad", "shy",
    "small", "sour", "spicy", "sweet", "wooden", "aggressive", "amenable", "angry", "blue",
)  # fmt: skip
NAMES = ("Max", "Alex", "Sam", "Polly", "Rex", "Stella", "Wren", "Fae", "Sally")

_CONCLUSION = re.compile(r"\bso\s+(\w+)\s+is\s+(not\s+)?(?:an?\s+)?(\w+)\s*\.?\s*$", re.IGNORECASE)

Rule = tuple[str, str, bool]  # (category, category or property, negated)


class ProntoQASuite(Suite):
    name = "prontoqa"
    levels = (1, 2, 3, 4, 5)
    default_level = 2
    instructions = (
        "Apply one rule per step, written 'Step k: <known fact>. <rule>. So <new fact>.', "
        "then answer 'Answer: True' or 'Answer: False'."
    )

    def _generate(self, rng: random.Random, level: int) -> Draft:
        words = rng.sample(CATEGORIES, level + 2)
        chain, (loose, feeder) = words[:level], words[level:]
        prop, other = rng.sample(PROPERTIES, 2)
        negated = rng.random() < 0.5
        entity = rng.choice(NAMES)
        rules: list[Rule] = [(a, b, False) for a, b in zip(chain, chain[1:])]
        rules.append((chain[-1], prop, negated))
        distractors: list[Rule] = [
            (loose, prop, not negated),  # the opposite conclusion, from a category the entity is not in
            (feeder, rng.choice(chain), False),  # leads into the chain, but not from the fact
            (rng.choice(chain), other, rng.random() < 0.5),  # provable but beside the point
        ]
        context = rules + distractors
        rng.shuffle(context)

        truth = rng.random() < 0.5
        asked_negated = negated if truth else not negated
        steps = [
            f"Step {k}: {_fact(entity, a, False)} {_rule_text((a, b, neg))} So {_fact(entity, b, neg)}"
            for k, (a, b, neg) in enumerate(rules, 1)
        ]
        answer = "True" if truth else "False"
        question = (
            " ".join(_rule_text(rule) for rule in context)
            + f" {_fact(entity, chain[0], False)} True or false: {_fact(entity, prop, asked_negated)}"
        )
        return Draft(
            question=question,
            answer=answer,
            solution="\n".join(steps + [f"Answer: {answer}"]),
            data={"entity": entity, "fact": chain[0], "rules": [list(rule) for rule in context],
                  "query": [prop, asked_negated]},
        )  # fmt: skip

    def _reward(self, task: Task, text: str) -> float:
        answer = self.parse_answer(text)
        if answer is None:
            return 0.0
        return 1.0 if answer.rstrip(".").strip().casefold() == task.answer.casefold() else 0.0

    def _check_steps(self, task: Task, text: str) -> list[bool]:
        """A step is right iff its conclusion ("So Max is (not) X.") follows from one rule of
        the context and a fact already established: the given fact or an earlier right
        conclusion. The premises the step cites are not graded, only what it concludes."""
        entity = task.data["entity"].casefold()
        rules = {(a, b, neg) for a, b, neg in task.data["rules"]}
        known = {task.data["fact"]}  # categories the entity is known to belong to
        checks = []
        for step in split_steps(text):
            m = _CONCLUSION.search(step)
            ok = False
            if m is not None and m.group(1).casefold() == entity:
                concluded, negated = m.group(3).casefold(), m.group(2) is not None
                ok = any((a, concluded, negated) in rules for a in known)
                if ok and not negated:
                    known.add(concluded)
            checks.append(ok)
        return checks


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _fact(entity: str, predicate: str, negated: bool) -> str:
    return f"{entity} is {_predicate(predicate, negated)}."


def _rule_text(rule: Rule) -> str:
    category, predicate, negated = rule
    return f"Every {category} is {_predicate(predicate, negated)}."


def _predicate(word: str, negated: bool) -> str:
    noun = f"{_article(word)} {word}" if word in CATEGORIES else word
    return f"not {noun}" if negated else noun
