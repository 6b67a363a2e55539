"""Running a policy version on a backend, and proving that it is the one answering.

A misnamed or missing LoRA must never quietly evaluate the base model (a complaint users
of peer systems share): ``load_policy`` verifies the adapter's checksum, loads it under its
version name, and checks with a one-token generation that completions come back tagged
with that adapter; ``PolicyLLM`` pins every request of an agent to one version and checks
every completion it returns.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from agentkit.errors import BackendError
from agentkit.llm.base import LLM, Completion, GenerationRequest
from agentkit.store.policies import BASE, Policy, PolicyRegistry

__all__ = ["load_policy", "register_trained", "PolicyLLM", "adapter_name"]


def adapter_name(version: str) -> str | None:
    """The backend adapter a version runs under: None for ``base``, else its version name."""
    return None if version == BASE else version


def load_policy(llm: LLM, registry: PolicyRegistry, version: str | None = None) -> str | None:
    """Load ``version`` (default: the active one) into ``llm`` and return the adapter name to
    put in requests (None for ``base``).

    Raises ChecksumError when the adapter files changed since registration, BackendError
    when the backend does not answer with the adapter it was asked for."""
    policy = registry.verify(version or registry.active().version)
    name = adapter_name(policy.version)
    if name is not None:
        llm.load_adapter(name, policy.adapter_path)
    _check_answering(llm, name)
    return name


def register_trained(
    registry: PolicyRegistry,
    result: Any,
    *,
    parent: str | None = None,
    data: dict[str, Any] | None = None,
    note: str | None = None,
) -> Policy:
    """Record a ``TrainResult`` as a candidate version: its adapter, config, method, base
    model and final training metrics; ``data`` says what it was trained on (counts, ids or
    the query). Raises when the run produced no adapter (nothing to train)."""
    from agentkit.errors import AgentkitError

    if result.adapter_path is None:
        raise AgentkitError(f"the {result.method} run wrote no adapter (nothing to train: {result.stats}); nothing to register")
    stats = result.stats
    keep = ("examples", "groups", "equal_reward_groups", "steps", "trained_tokens", "wall_s", "tokens_per_s")
    data = {**{k: stats[k] for k in ("examples", "groups", "equal_reward_groups") if k in stats}, **(data or {})}
    return registry.register(
        result.adapter_path, parent=parent, base_model=stats.get("base_model"), method=result.method,
        data=data, config=result.config, note=note,
        metrics={"train": {**{k: stats[k] for k in keep if k in stats}, "final": stats.get("final")}},
    )


def _check_answering(llm: LLM, adapter: str | None) -> None:
    (completion,), = llm.generate([GenerationRequest("Hello", max_tokens=1, adapter=adapter)])
    if completion.adapter != adapter:
        raise BackendError(
            f"asked the backend for adapter {adapter or 'none (base)'} but {completion.adapter or 'the base model'} "
            f"answered; check the adapter name and that the server was started with LoRA enabled"
        )


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
