"""Views over a backend: the same LLM protocol, with something fixed.

``PolicyLLM`` pins every request of an agent to one adapter (a policy version) and checks
that every completion comes back from it: a misnamed or missing LoRA must never quietly
evaluate the base model. ``agentkit.runtime.policy.load_policy`` loads a version first.
``VocabularyLLM`` decodes every request over one set of allowed token ids (a suite's
vocabulary), so a policy trained over them runs as it trained.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Sequence

from agentkit.errors import BackendError
from agentkit.llm.base import LLM, Completion, GenerationRequest, allowed_ids

__all__ = ["PolicyLLM", "VocabularyLLM"]


class PolicyLLM:
    """``llm`` with every request pinned to one adapter (None: the base model), and every
    completion checked to come from it. Lets any Agent run under a given policy version."""

    def __init__(self, llm: LLM, adapter: str | None):
        self.llm = llm
        self.adapter = adapter
        self.model_name = llm.model_name

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        pinned = []
        for r in requests:
            if r.adapter not in (None, self.adapter):
                raise BackendError(f"request for adapter {r.adapter} inside a run pinned to {self.adapter or 'base'}")
            pinned.append(dataclasses.replace(r, adapter=self.adapter))
        out = self.llm.generate(pinned)
        for completions in out:
            for c in completions:
                if c.adapter != self.adapter:
                    raise BackendError(
                        f"a run on adapter {self.adapter or 'none (base)'} was answered by "
                        f"{c.adapter or 'the base model'}; refusing to record it"
                    )
        return out

    def score(self, prompt_ids: Sequence[int], completion_ids: Sequence[int], adapter: str | None = None) -> list[float]:
        return self.llm.score(prompt_ids, completion_ids, adapter=self.adapter if adapter is None else adapter)

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.llm.decode(token_ids)

    def load_adapter(self, name: str, path: str) -> None:
        self.llm.load_adapter(name, path)

    def unload_adapter(self, name: str) -> None:
        self.llm.unload_adapter(name)

    def list_adapters(self) -> list[str]:
        return self.llm.list_adapters()

    def close(self) -> None:
        """The wrapped backend belongs to the caller: closing the view leaves it open."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.llm, name)


class VocabularyLLM:
    """``llm`` with every request that names no ``allowed_token_ids`` decoding only
    ``allowed`` (``Suite.vocabulary``), and ``score`` over the same ids: the policy that
    ``TrainConfig.allowed_token_ids`` trains. Everything else passes through."""

    def __init__(self, llm: LLM, allowed: Sequence[int]):
        self.llm = llm
        self.allowed = allowed_ids(allowed)
        self.model_name = llm.model_name

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        return self.llm.generate([r if r.allowed_token_ids is not None else
                                  dataclasses.replace(r, allowed_token_ids=self.allowed) for r in requests])

    def score(self, prompt_ids: Sequence[int], completion_ids: Sequence[int], adapter: str | None = None) -> list[float]:
        if "allowed_token_ids" not in inspect.signature(self.llm.score).parameters:
            raise BackendError(f"{type(self.llm).__name__} scores over the whole vocabulary only; "
                               "use the in-process backend for a restricted vocabulary")
        return self.llm.score(prompt_ids, completion_ids, adapter=adapter, allowed_token_ids=self.allowed)

    def close(self) -> None:
        """The wrapped backend belongs to the caller: closing the view leaves it open."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.llm, name)
