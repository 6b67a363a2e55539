"""The one LLM protocol every backend implements.

A backend turns ``GenerationRequest``s into ``Completion``s that carry the exact token ids
and the per-token log-probabilities of the sampled tokens, and scores a given completion
(``score``) so that training and credit assignment never re-tokenize.

Log-probabilities are always those of the model's raw next-token distribution
(``log_softmax(logits)`` at temperature 1, before top-k/top-p), as vLLM reports them by
default, so ``score(prompt_ids, completion.token_ids)`` reproduces ``completion.logprobs``.
A request that names ``allowed_token_ids`` decodes from the softmax over those ids alone,
and its logprobs are of that distribution.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

__all__ = ["GenerationRequest", "Completion", "LLM", "mean_logprob", "allowed_ids"]


def allowed_ids(ids: Sequence[int]) -> tuple[int, ...]:
    """``allowed_token_ids`` in their one form, sorted and without repeats; ValueError for an
    empty set or a negative id."""
    allowed = tuple(sorted({int(t) for t in ids}))
    if not allowed or allowed[0] < 0:
        raise ValueError(f"allowed_token_ids={list(ids)[:8]}: give at least one token id >= 0")
    return allowed


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt, sampled ``n`` times."""

    prompt: str | Sequence[int]
    """Text (tokenized by the backend, special BOS added) or exact prompt token ids."""
    n: int = 1
    temperature: float = 0.0
    """0 means greedy."""
    top_p: float = 1.0
    top_k: int = 0
    """0 means no top-k cut."""
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    """Generation ends when the decoded text contains one of these; the text is cut before
    it (OpenAI convention) while ``token_ids`` keep every sampled token."""
    stop_token_ids: tuple[int, ...] = ()
    """Token ids that end generation besides the model's end-of-sequence ids (a chat turn's
    end-of-turn token); like those, kept in ``token_ids`` and given no text."""
    seed: int | None = None
    """Same seed, same request -> same samples, whatever else is in the batch."""
    adapter: str | None = None
    """Name of a loaded LoRA adapter; None means the base model."""
    allowed_token_ids: tuple[int, ...] | None = None
    """Decode only these token ids (vLLM's ``allowed_token_ids``); None means the whole
    vocabulary. The model's distribution is then the softmax over these ids alone, and the
    completion's logprobs are of that distribution: a policy trained with the same ids
    (``TrainConfig.allowed_token_ids``) is exactly the policy that decodes here."""

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n={self.n}: must be >= 1")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature}: must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p}: must be in (0, 1]")
        if self.max_tokens < 0:
            raise ValueError(f"max_tokens={self.max_tokens}: must be >= 0")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        if self.allowed_token_ids is not None:
            object.__setattr__(self, "allowed_token_ids", allowed_ids(self.allowed_token_ids))


@dataclass
class Completion:
    """One sampled continuation with everything training needs."""

    text: str
    token_ids: list[int]
    logprobs: list[float]
    """logprobs[i] = log p(token_ids[i] | prompt, token_ids[:i]) under the raw distribution."""
    finish_reason: str
    """"stop" (stop string or end-of-sequence token) or "length"."""
    prompt_ids: list[int] = field(default_factory=list)
    adapter: str | None = None
    """The adapter that actually produced this completion (None: base model)."""
    latency_s: float = 0.0

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


def mean_logprob(logprobs: Sequence[float]) -> float | None:
    return sum(logprobs) / len(logprobs) if logprobs else None


@runtime_checkable
class LLM(Protocol):
    """What the runtime, the graph nodes and the trainer need from a model."""

    model_name: str

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        """One list of ``request.n`` completions per request, in request order.
        Thread-safe: concurrent callers may be batched together."""
        ...

    def score(
        self, prompt_ids: Sequence[int], completion_ids: Sequence[int], adapter: str | None = None
    ) -> list[float]:
        """Per-token logprobs of ``completion_ids`` given ``prompt_ids``."""
        ...

    def tokenize(self, text: str) -> list[int]:
        """Prompt token ids as ``generate`` would build them from text (with BOS)."""
        ...

    def load_adapter(self, name: str, path: str) -> None:
        """Load a PEFT LoRA adapter under ``name`` without reloading the base model."""
        ...

    def unload_adapter(self, name: str) -> None:
        """Raises BackendError when ``name`` is not loaded."""
        ...

    def list_adapters(self) -> list[str]:
        """Names of the loaded adapters (a method, not a property: for a remote backend it
        is a request, and isinstance checks on the protocol must not send one)."""
        ...

    def decode(self, token_ids: Sequence[int]) -> str:
        ...

    def close(self) -> None:
        ...
