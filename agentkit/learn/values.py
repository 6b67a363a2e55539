"""Monte-Carlo step values: V(prefix), the share of K continuations from a prefix of an
output that end in a verified answer, and the token positions the prefixes are cut at.

Only tokens are trusted: prefixes are cut from the recorded completion ids and fed back
as ids, so nothing is re-tokenized. Text is used only to find where the steps are.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any, Sequence

from agentkit.llm.base import LLM, GenerationRequest
from agentkit.tasks import Suite, Task
from agentkit.tasks.steps import step_char_spans

__all__ = ["TokenText", "step_token_spans", "MCConfig", "derive_seed", "mc_values_batch", "mc_values",
           "first_error_by_values"]


class TokenText:
    """The decoded text of token ids, and which tokens cover which characters.

    ``covered(n)`` is how many characters of ``text`` the first n tokens spell: the length
    of the common prefix of ``decode(ids[:n])`` and ``decode(ids)``. Taking the common
    prefix, not the length, makes it robust to a multi-byte character split over byte
    tokens (its prefix decodes to U+FFFD and covers nothing yet), to tokens that spell
    several characters, and to special tokens that decode to nothing.

    ``boundary(c)`` is the token index where character c falls: the fewest tokens that
    spell text[:c]. A token that straddles c (e.g. ".\\nSt") stays on the left side;
    tokens that spell nothing right after it (the first bytes of a split character, EOS)
    go to the right. So ``ids[:boundary(c)] + ids[boundary(c):]`` is always the original,
    and consecutive steps get contiguous, disjoint token spans.

    Each ``covered`` costs one decode (cached); ``boundary`` bisects, so a few boundaries
    cost O(log T) decodes each — cheap for remote backends whose decode is a request."""

    def __init__(self, llm: Any, token_ids: Sequence[int]):
        self.ids = list(token_ids)
        self._decode = llm.decode
        self.text = self._decode(self.ids) if self.ids else ""
        self._covered: dict[int, int] = {0: 0, len(self.ids): len(self.text)}

    def covered(self, n: int) -> int:
        if n not in self._covered:
            prefix = self._decode(self.ids[:n])
            common = 0
            for a, b in zip(prefix, self.text):
                if a != b:
                    break
                common += 1
            self._covered[n] = common
        return self._covered[n]

    def boundary(self, c: int) -> int:
        if c <= 0:
            return 0
        c = min(c, len(self.text))
        return bisect_left(range(len(self.ids) + 1), c, key=self.covered)

    def text_of(self, start: int, end: int) -> str:
        """The characters spelled by ids[start:end]."""
        return self.text[self.covered(start):self.covered(end)]


def step_token_spans(llm: Any, completion_ids: Sequence[int]) -> list[tuple[int, int]]:
    """Token spans [start, end) of each "Step k:" line of a completion, the line's newline
    included, found by decoding (see ``TokenText`` for how boundaries inside a token fall).
    ``llm`` needs only ``decode``."""
    tt = TokenText(llm, completion_ids)
    return [(tt.boundary(s.start), tt.boundary(s.end)) for s in step_char_spans(tt.text)]


@dataclass(frozen=True)
class MCConfig:
    """Monte-Carlo step values: how many rollouts per prefix and how to read them.

    At K = 8 the thresholds read "at least 4 of 8 rollouts succeeded before the step, none
    after it". A weak policy rarely reaches 4 of 8 from any prefix: lower ``high`` there
    (RESEARCH.md: 5% success for the base model), or use a step checker.

    The sampling knobs (temperature to seed) are Step-DPO's, the paper's values and ours
    (see StepDPOConfig), declared here once: StepDPOConfig takes them (``field_of``) for its
    solutions and rectifications and passes them on to its rollouts (``mc_config``)."""

    samples: int = field(default=8, metadata={"help": "K rollouts per prefix: one request with n=K per prefix."})
    high: float = field(default=0.5, metadata={"help": "V before the wrong step is at least this (still on track)."})
    low: float = field(default=0.1, metadata={"help": "V after the wrong step is at most this (lost)."})
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature (Step-DPO: 0.8)."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus cut (Step-DPO: 0.95)."})
    top_k: int = field(default=64, metadata={"help": "Sample among the top-k tokens only; 0 turns the cut off."})
    max_tokens: int = field(default=160, metadata={"help": "Longest sampled solution, continuation or rollout, in tokens."})
    seed: int | None = field(default=0, metadata={"help": "Base seed (same seed and inputs, same samples); None: fresh."})


def derive_seed(base: int | None, *parts: Any) -> int | None:
    """A request seed from a base seed and what the request is for (None stays None).
    32 bits: backends derive per-sample seeds from it (seed * 1_000_003 + i) in 64 bits."""
    if base is None:
        return None
    digest = hashlib.sha1(repr((base, *parts)).encode()).hexdigest()
    return int(digest[:8], 16)


def mc_values_batch(
    llm: LLM,
    suite: Suite,
    items: Sequence[tuple[Task, Sequence[int], Sequence[int]]],
    config: MCConfig = MCConfig(),
    *,
    adapter: str | None = None,
) -> list[list[float]]:
    """Monte-Carlo values of every step prefix of several outputs, in ONE generate call.

    ``items``: (task, prompt_ids, completion_ids) per output. For an output with S steps
    the result has S + 1 values: V[0] from the prompt with the completion's text before
    step 1 (the bare prompt when it has no steps), V[j] from the prompt + steps 1..j
    (through step j's newline). Each prefix is one request with n = K, so a batching
    backend samples them all together, sharing the prompt's KV cache. A continuation
    succeeds when ``suite.verify`` of the prefix's text + the continuation gives reward 1.
    """
    requests: list[GenerationRequest] = []
    owners: list[tuple[int, str]] = []  # (item, prefix text) per request
    for i, (task, prompt_ids, completion_ids) in enumerate(items):
        tt = TokenText(llm, completion_ids)
        spans = step_char_spans(tt.text)
        cuts = [tt.boundary(spans[0].start) if spans else 0]
        cuts += [tt.boundary(s.end) for s in spans]
        for j, cut in enumerate(cuts):
            requests.append(GenerationRequest(
                list(prompt_ids) + tt.ids[:cut], n=config.samples, temperature=config.temperature,
                top_p=config.top_p, top_k=config.top_k, max_tokens=config.max_tokens, stop=suite.stop,
                seed=derive_seed(config.seed, "mc", task.id, tuple(completion_ids), j), adapter=adapter,
            ))
            owners.append((i, tt.text_of(0, cut)))
    results = llm.generate(requests) if requests else []
    values: list[list[float]] = [[] for _ in items]
    for (i, prefix_text), completions in zip(owners, results):
        task = items[i][0]
        wins = sum(suite.verify(task, prefix_text + c.text) >= 1.0 for c in completions)
        values[i].append(wins / len(completions))
    return values


def mc_values(
    llm: LLM,
    suite: Suite,
    task: Task,
    prompt_ids: Sequence[int],
    completion_ids: Sequence[int],
    config: MCConfig = MCConfig(),
    *,
    adapter: str | None = None,
) -> list[float]:
    """V[0..S] for one output (see ``mc_values_batch``)."""
    return mc_values_batch(llm, suite, [(task, prompt_ids, completion_ids)], config, adapter=adapter)[0]


def first_error_by_values(values: Sequence[float], high: float = 0.5, low: float = 0.1) -> int | None:
    """The first step j (0-based) with V[j] >= high and V[j + 1] <= low, where V[j] is the
    value before step j + 1 and V[j + 1] after it; None if the values never drop like that.

    Both thresholds, not just "V falls": a step taken from an already hopeless prefix is not
    the error, and a drop from 0.6 to 0.4 is noise at K = 8."""
    for j in range(len(values) - 1):
        if values[j] >= high and values[j + 1] <= low:
            return j
    return None
