"""What the training loop consumes, as token ids: preference pairs, completions to
imitate, groups of rewarded samples; and what a run produces. No torch here: the code
that builds training data (agentkit.learn) imports these without loading it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

__all__ = ["PreferenceExample", "SFTExample", "RLGroup", "TrainResult", "token_step_index"]


def _get(record: Any, name: str) -> Any:
    return record[name] if isinstance(record, dict) else getattr(record, name)


@dataclass
class PreferenceExample:
    """A DPO pair: chosen and rejected continue prompt_ids (exact ids, as sampled)."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    id: Any = None

    @classmethod
    def from_record(cls, record: Any) -> "PreferenceExample":
        """From anything with prompt_ids, chosen_ids, rejected_ids (a stored Pair, a dict)."""
        rid = record.get("id") if isinstance(record, dict) else getattr(record, "id", None)
        return cls(list(_get(record, "prompt_ids")), list(_get(record, "chosen_ids")),
                   list(_get(record, "rejected_ids")), rid)


@dataclass
class SFTExample:
    """A completion to imitate, continuing prompt_ids."""

    prompt_ids: list[int]
    completion_ids: list[int]
    id: Any = None


@dataclass
class RLGroup:
    """G sampled completions of one prompt with their verified rewards."""

    prompt_ids: list[int]
    completions: list[list[int]]
    rewards: list[float]
    logprobs: list[list[float]] | None = None
    """Per-token logprobs recorded at sampling (the behaviour policy); None: the policy at
    the start of training is taken as the sampler."""
    id: Any = None
    step_values: list[list[float]] | None = None
    """Per completion, step values V[0..S] (V[j]: how promising the output is after its
    first j "Step k:" lines; from Monte-Carlo rollouts or a step checker). With
    ``PGConfig.step_weight`` > 0 each step's tokens also get its progress V[j+1] - V[j]."""
    step_spans: list[list[tuple[int, int]]] | None = None
    """Per completion, the token spans [start, end) of its S steps (credit.step_token_spans)."""
    weights: list[float] | None = None
    """Per completion, how many samples it stands for (None: 1 each). A completion sampled
    k times is one row of weight k: advantages, loss, gradient and logged stats are those of
    k identical rows, while its forward, backward and reference pass run once."""


@dataclass
class TrainResult:
    """What a training run produced."""

    method: str
    adapter_path: str | None
    """The PEFT adapter directory; None when there was nothing to train."""
    steps: int
    resumed_from: int | None
    """The checkpoint step this run continued from, if any."""
    stats: dict[str, Any]
    history: list[dict[str, Any]]
    config: dict[str, Any]


def token_step_index(spans: Sequence[tuple[int, int]], length: int) -> list[int]:
    """For each of ``length`` tokens, the index of the step span holding it, or -1:
    the ``step_index`` input of ``losses.step_advantages``."""
    index = [-1] * length
    for k, (start, end) in enumerate(spans):
        for t in range(start, min(end, length)):
            index[t] = k
    return index
