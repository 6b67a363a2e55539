"""The default agent: one "solve" node that answers a task from a few-shot prompt.
Declarative graphs (agentkit.graph) plug into the runtime through the same protocol."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

from agentkit.llm.base import GenerationRequest
from agentkit.runtime.recorder import Recorder
from agentkit.tasks import Suite, Task

__all__ = ["Agent", "SolveAgent"]


class Agent(Protocol):
    name: str

    def __call__(self, task: Task, suite: Suite, recorder: Recorder) -> str:
        """Run on one task, making every model call through ``recorder``; return the final text."""
        ...


@dataclass(frozen=True)
class SolveAgent:
    """A single solver call: the suite's few-shot prompt, greedy by default."""

    name: str = "solve"
    shots: int = 3
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 160
    adapter: str | None = None
    seed: int | None = None
    """With temperature > 0: the same seed and task give the same sample."""

    def __call__(self, task: Task, suite: Suite, recorder: Recorder) -> str:
        request = GenerationRequest(
            suite.prompt(task, shots=self.shots), temperature=self.temperature, top_p=self.top_p,
            top_k=self.top_k, max_tokens=self.max_tokens, stop=suite.stop, adapter=self.adapter,
            seed=None if self.seed is None else _task_seed(self.seed, task.id),
        )
        (completion,), _ = recorder.call(
            request, node="solve", role="solver",
            parse=lambda text: {"answer": suite.parse_answer(text), "steps": suite.check_steps(task, text)},
        )
        return completion.text


def _task_seed(seed: int, task_id: str) -> int:
    return seed * 1_000_003 + int(hashlib.sha1(task_id.encode()).hexdigest()[:8], 16)
