"""Every model call goes through a Recorder: it enforces the run's budget and writes one
Step row, with exact token ids and logprobs, before the caller sees the completion.

``call`` is generate-then-record in one; graph nodes that need the parsed output before
recording (a critic's route) or that make no generate call (a router scores labels, a
checker or a tool makes no model call at all) use ``reserve``/``generate`` and ``record``."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from collections.abc import Mapping, Sequence
from typing import Any

from agentkit.errors import BudgetExceeded
from agentkit.llm.base import LLM, Completion, GenerationRequest
from agentkit.store.protocols import RunStore
from agentkit.store.runs import StepRecord

__all__ = ["Budget", "Recorder"]


@dataclass(frozen=True)
class Budget:
    """Per-run limits; None means unlimited."""

    max_calls: int | None = 16
    max_tokens: int | None = 8192
    """Prompt plus completion tokens over all calls of the run."""


class Recorder:
    """Records the calls of one run. Safe to share between the threads of one run.

    ``calls`` and ``tokens`` start at zero, or at what an interrupted run already spent
    when it resumes."""

    def __init__(self, llm: LLM, store: RunStore, run_id: int, *, budget: Budget = Budget(),
                 policy_version: str | None = None, calls: int = 0, tokens: int = 0):
        self.llm, self.store, self.run_id = llm, store, run_id
        self.budget, self.policy_version = budget, policy_version
        self.calls = calls
        self.tokens = tokens
        self._lock = threading.Lock()

    def reserve(self, calls: int = 1) -> None:
        """Count ``calls`` model calls against the budget, or raise BudgetExceeded."""
        with self._lock:
            if self.budget.max_calls is not None and self.calls + calls > self.budget.max_calls:
                raise BudgetExceeded(f"run {self.run_id} reached max_calls={self.budget.max_calls}")
            if self.budget.max_tokens is not None and self.tokens >= self.budget.max_tokens:
                raise BudgetExceeded(f"run {self.run_id} reached max_tokens={self.budget.max_tokens}")
            self.calls += calls

    def account(self, *, calls: int = 0, tokens: int = 0) -> None:
        """Count work recorded without ``record`` (a search writes its tree in batches)."""
        with self._lock:
            self.calls += calls
            self.tokens += tokens

    def generate(self, request: GenerationRequest) -> list[Completion]:
        """The request's completions, within budget; nothing is recorded yet."""
        self.reserve(request.n)
        return self.llm.generate([request])[0]

    def record(self, *, node: str, completion: Completion | None = None, **fields: Any) -> int:
        """Write one step of this run (a StepRecord) and return its id. With ``completion``,
        its tokens, text, logprobs, finish reason, latency and adapter fill the step;
        without, ``fields`` do (a router's scored label, or a step with no tokens at all).
        ``fields``: the rest of StepRecord's (role, parsed, memory_ids, ...)."""
        fields["policy_version"] = self.policy_version
        step = (StepRecord(run_id=self.run_id, node=node, **fields) if completion is None
                else StepRecord.of_completion(self.run_id, node, completion, **fields))
        (step_id,) = self.store.add_steps([step])
        with self._lock:
            self.tokens += len(step.prompt_ids or ()) + len(step.completion_ids or ())
        return step_id

    def record_steps(self, steps: Sequence[Mapping[str, Any]]) -> list[int]:
        """Write many steps of this run (StepRecord fields, without run and policy) in one
        transaction; their tokens and calls are the caller's to ``account``."""
        return self.store.add_steps([StepRecord(run_id=self.run_id, policy_version=self.policy_version, **s) for s in steps])

    def call(
        self,
        request: GenerationRequest,
        *,
        node: str,
        role: str,
        attempt: int = 0,
        parent_step_id: int | None = None,
        parse: Any = None,
        revision: int | None = None,
        route: str | None = None,
        meta: dict | None = None,
        memory_ids: Sequence[int] | None = None,
    ) -> tuple[list[Completion], list[int]]:
        """Generate, record one step per completion, and return (completions, step ids).

        ``parse`` (text -> JSON-able) fills the step's parsed output; a parser that raises
        records ``{"error": ...}`` instead, so malformed model output never crashes a run."""
        completions = self.generate(request)
        prompt_text = request.prompt if isinstance(request.prompt, str) else None
        step_ids = []
        for c in completions:
            parsed = None
            if parse is not None:
                try:
                    parsed = parse(c.text)
                except Exception as e:  # a parser bug or hostile text is data, not a crash
                    parsed = {"error": f"{type(e).__name__}: {e}"}
            step_ids.append(self.record(
                node=node, role=role, completion=c, prompt_text=prompt_text, attempt=attempt,
                parent_step_id=parent_step_id, parsed=parsed, revision=revision, route=route, meta=meta,
                memory_ids=memory_ids,
            ))
        return completions, step_ids
