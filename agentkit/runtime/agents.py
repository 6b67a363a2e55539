"""The default agent: one "solve" node that answers a task from a few-shot prompt.
Declarative graphs (agentkit.graph) plug into the runtime through the same protocol."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol

from agentkit.graph.context import NodeLibrary
from agentkit.graph.search import as_strategy, record_tree, search, strategy_dict
from agentkit.llm.base import GenerationRequest
from agentkit.runtime.recorder import Recorder
from agentkit.tasks import Suite, Task, family_of

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
    library: NodeLibrary | None = field(default=None, compare=False)
    """An ExperienceLibrary: up to ``memory`` exemplars and insights retrieved for each task
    are shown, in a marked section, as extra worked examples before the question."""
    memory: int = 4
    meta: dict = field(default_factory=dict, compare=False)
    """More to record on each run row (the CLI records the suite's source here)."""
    search: Any = None
    """A step-level search (``Beam``, ``MCTS`` or a spec such as "beam:4x8"): the solver
    grows its output line by line under a verifier instead of one sampled call, and the
    run records the whole tree (agentkit.graph.search)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "search", as_strategy(self.search))

    def run_meta(self, task: Task, suite: Suite) -> dict:
        """What run_tasks records on the run row: enough for ``restore_agent`` to run it again."""
        options = {"shots": self.shots, "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                   "max_tokens": self.max_tokens, "adapter": self.adapter, "seed": self.seed, "memory": self.memory,
                   "search": strategy_dict(self.search) if self.search is not None else None}
        return {"agent": {"kind": "solve", **options}, **self.meta}

    def resume(self, task: Task, suite: Suite, recorder: Recorder) -> str:
        """Finish an interrupted run. Its one model call either never returned or was not
        verified, so the call runs again, on the same run row."""
        return self(task, suite, recorder)

    def prompt(self, task: Task, suite: Suite) -> tuple[str, list[int]]:
        """The solver prompt for ``task`` and the ids of the library items shown in it."""
        prompt, memory_ids = suite.prompt(task, shots=self.shots), []
        if self.library is not None and self.memory > 0:
            prompt, memory_ids = self.library.show(prompt, task.question, family=family_of(suite.name, task.level),
                                                   kinds=("exemplar", "insight"), k=self.memory)
        return prompt, memory_ids

    def __call__(self, task: Task, suite: Suite, recorder: Recorder) -> str:
        prompt, memory_ids = self.prompt(task, suite)
        if self.search is not None:
            tree = search(recorder.llm, suite, task, prompt, self.search, adapter=self.adapter,
                          seed=0 if self.seed is None else self.seed)
            record_tree(recorder, tree)
            return tree.text()
        request = GenerationRequest(
            prompt, temperature=self.temperature, top_p=self.top_p,
            top_k=self.top_k, max_tokens=self.max_tokens, stop=suite.stop, adapter=self.adapter,
            seed=None if self.seed is None else _task_seed(self.seed, task.id),
        )
        (completion,), _ = recorder.call(
            request, node="solve", role="solver",
            parse=lambda text: {"answer": suite.parse_answer(text), "steps": suite.check_steps(task, text)},
            memory_ids=memory_ids or None,
        )
        return completion.text


def _task_seed(seed: int, task_id: str) -> int:
    return seed * 1_000_003 + int(hashlib.sha1(task_id.encode()).hexdigest()[:8], 16)
