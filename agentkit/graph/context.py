"""What a run gives its nodes besides the state: the ``RunContext``, and the two things on
it that live above the graph package, as protocols. The runtime's Recorder and the
experience library (agentkit.memory) satisfy them; the graph imports neither (the
never-arrows of docs/design.md), and a test passes any object with these methods."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agentkit.llm.base import LLM, Completion, GenerationRequest
from agentkit.tasks import Suite, Task, family_of

__all__ = ["RunContext", "NodeRecorder", "NodeLibrary"]


class NodeRecorder(Protocol):
    """The run's recorder as nodes use it (agentkit.runtime.Recorder): every model call
    within the run's budget, every step written with its place in the graph."""

    llm: LLM

    def reserve(self, calls: int = 1) -> None: ...

    def generate(self, request: GenerationRequest) -> list[Completion]: ...

    def record(self, *, node: str, completion: Completion | None = None, **fields: Any) -> int: ...

    def record_steps(self, steps: Sequence[Mapping[str, Any]]) -> list[int]: ...

    def account(self, *, calls: int = 0, tokens: int = 0) -> None: ...


class NodeLibrary(Protocol):
    """The experience library as nodes read it (agentkit.memory.ExperienceLibrary): text
    items shown in a marked section of a prompt, and numbers as a router's prior."""

    def show(self, prompt: str, question: str, *, family: str, kinds: Sequence[str], k: int,
             role: str | None = "solver") -> tuple[str, list[int]]: ...

    def route_prior(self, family: str, node: str, labels: Sequence[str],
                    weight: float) -> tuple[dict[str, float], list[int]]: ...


@dataclass
class RunContext:
    """What a run gives its nodes besides the state: never checkpointed."""

    recorder: NodeRecorder
    question: str
    suite: Suite | None = None
    task: Task | None = None
    shots: int = 3
    temperature: float = 0.0
    max_tokens: int | None = None
    """A cap on every node's max_tokens (tests and smoke runs)."""
    adapter: str | None = None
    seed: int | None = None
    library: NodeLibrary | None = None
    """The experience library nodes declared with memory= read (None: they read nothing)."""

    @property
    def llm(self) -> LLM:
        return self.recorder.llm

    @property
    def family(self) -> str:
        """The task's library family: "<suite>/<level>" ("default" without a suite)."""
        return family_of(self.suite.name if self.suite else None, self.task.level if self.task else None)
