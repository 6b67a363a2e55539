"""Every model call goes through a Recorder: it enforces the run's budget and writes one
Step row, with exact token ids and logprobs, before the caller sees the completion."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from agentkit.errors import BudgetExceeded
from agentkit.llm.base import LLM, Completion, GenerationRequest

__all__ = ["Budget", "Recorder"]


@dataclass(frozen=True)
class Budget:
    """Per-run limits; None means unlimited."""

    max_calls: int | None = 16
    max_tokens: int | None = 8192
    """Prompt plus completion tokens over all calls of the run."""


class Recorder:
    """Records the calls of one run. Safe to share between the threads of one run."""

    def __init__(self, llm: LLM, store: Any, run_id: int, *, budget: Budget = Budget(),
                 policy_version: str | None = None):
        self.llm, self.store, self.run_id = llm, store, run_id
        self.budget, self.policy_version = budget, policy_version
        self.calls = 0
        self.tokens = 0
        self._lock = threading.Lock()

    def call(
        self,
        request: GenerationRequest,
        *,
        node: str,
        role: str,
        attempt: int = 0,
        parent_step_id: int | None = None,
        parse: Any = None,
        meta: dict | None = None,
    ) -> tuple[list[Completion], list[int]]:
        """Generate, record one step per completion, and return (completions, step ids).

        ``parse`` (text -> JSON-able) fills the step's parsed output; a parser that raises
        records ``{"error": ...}`` instead, so malformed model output never crashes a run."""
        with self._lock:
            if self.budget.max_calls is not None and self.calls + request.n > self.budget.max_calls:
                raise BudgetExceeded(f"run {self.run_id} reached max_calls={self.budget.max_calls}")
            if self.budget.max_tokens is not None and self.tokens >= self.budget.max_tokens:
                raise BudgetExceeded(f"run {self.run_id} reached max_tokens={self.budget.max_tokens}")
            self.calls += request.n
        completions = self.llm.generate([request])[0]
        step_ids = []
        for c in completions:
            parsed = None
            if parse is not None:
                try:
                    parsed = parse(c.text)
                except Exception as e:  # a parser bug or hostile text is data, not a crash
                    parsed = {"error": f"{type(e).__name__}: {e}"}
            step_ids.append(
                self.store.add_step(
                    self.run_id, node=node, role=role, attempt=attempt, parent_step_id=parent_step_id,
                    prompt_text=request.prompt if isinstance(request.prompt, str) else None,
                    prompt_ids=c.prompt_ids, completion_text=c.text, completion_ids=c.token_ids,
                    logprobs=c.logprobs, finish_reason=c.finish_reason, parsed=parsed,
                    latency_s=c.latency_s, adapter=c.adapter, policy_version=self.policy_version, meta=meta,
                )
            )
            with self._lock:
                self.tokens += c.prompt_tokens + c.completion_tokens
        return completions, step_ids
