"""What callers of the stores depend on: the methods they use, as protocols, so that a
recorder, a collector or a gate takes any store with them (a test double, a server-backed
store) and says which part of a store it needs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .db import StoreConnection
    from .pairs import Pair
    from .policies import Policy
    from .runs import Run, Step, StepRecord

__all__ = ["RunStore", "PairSink", "PolicyBook"]


class RunStore(Protocol):
    """Runs and their steps (TrajectoryStore)."""

    path: str
    db: StoreConnection

    def start_run(self, graph: str, *, suite: str | None = None, task_id: str | None = None,
                  split: str | None = None, model: str | None = None, policy_version: str | None = None,
                  meta: Mapping[str, Any] | None = None) -> int: ...

    def add_step(self, run_id: int, *, node: str, **fields: Any) -> int: ...

    def add_steps(self, steps: Iterable[StepRecord | Mapping[str, Any]]) -> list[int]: ...

    def finish_run(self, run_id: int, *, status: str, reward: float | None = None,
                   step_accuracy: float | None = None, wall_s: float | None = None,
                   error: str | None = None) -> Any: ...

    def reopen_run(self, run_id: int) -> Any: ...

    def get_run(self, run_id: int, *, steps: bool = True) -> Run: ...

    def steps(self, run_id: int) -> list[Step]: ...

    def summary(self, run_ids: Iterable[int] | None = None) -> dict[str, Any]: ...


class PairSink(Protocol):
    """Where preference pairs go and are read back (PairStore)."""

    def add_pairs(self, pairs: Iterable[Pair]) -> list[int | None]: ...

    def pairs(self, *, kind: str | None = None, policy_version: str | None = None, suite: str | None = None,
              run_id: int | None = None, limit: int | None = None) -> list[Pair]: ...


class PolicyBook(Protocol):
    """Policy versions and which one is active (PolicyRegistry)."""

    path: str

    def active(self) -> Policy: ...

    def get(self, version: str) -> Policy: ...

    def verify(self, version: str) -> Policy: ...

    def register(self, adapter_path: Any, **fields: Any) -> Policy: ...

    def promote(self, version: str, *, actor: str | None = None, reason: str | None = None,
                details: Mapping[str, Any] | None = None) -> Policy: ...

    def reject(self, version: str, *, actor: str | None = None, reason: str | None = None,
               details: Mapping[str, Any] | None = None) -> Policy: ...


