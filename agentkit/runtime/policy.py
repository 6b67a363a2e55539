"""Following the store's active policy while runs go on: a trainer may promote a new version
at any time, and the tasks that start after the promotion run on it.

    follow = ActivePolicy(llm, PolicyRegistry("runs.db"))
    run_tasks(llm, suite, tasks, store, policy=follow)   # each run records the version it used
    ActivePolicy(llm, registry, version="v3")            # pinned: v3 whatever is promoted

Each task asks ``current()`` once, when it starts, and keeps that version for the whole run.
A newly active version is loaded through ``agentkit.train.registry.load_policy`` (its
checksum verified, and a probe that the adapter itself answers), and every completion of the
run is checked to come from that adapter (``PolicyLLM``): a run never silently gets the base
model. A version that fails to load is logged and the previous one stays in use (and is what
the runs record); the next task tries again.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

__all__ = ["ActivePolicy"]

log = logging.getLogger("agentkit.policy")


class ActivePolicy:
    """The registry's active version, loaded into ``llm``.

    ``check_every``: seconds between looks at the registry (0: at every task start).
    ``on_change(old, new, error)``: called after a switch, or with the error of a failed one."""

    RETRY_S = 30.0
    """A version that failed to load is tried again after this many seconds."""

    def __init__(self, llm: Any, registry: Any, *, version: str | None = None, check_every: float = 0.0,
                 on_change: Callable[[str | None, str, Exception | None], None] | None = None):
        self.llm, self.registry = llm, registry
        self.pinned = version
        """A version to keep whatever becomes active (None: follow the active one)."""
        self.check_every = check_every
        self.on_change = on_change
        self.version: str | None = None
        self._view: Any = None
        self._checked = float("-inf")
        self._failed: tuple[str, float] | None = None  # (version, when): retried after RETRY_S
        self._lock = threading.Lock()

    def current(self) -> tuple[str, Any]:
        """(version, an LLM pinned to it) for a task starting now; the first call loads the
        active version and raises if it cannot (there is nothing to fall back to)."""
        with self._lock:
            now = time.monotonic()
            if self.version is None or (self.pinned is None and now - self._checked >= self.check_every):
                self._checked = now
                active = self.pinned or self.registry.active().version
                failed = self._failed is not None and self._failed[0] == active and now - self._failed[1] < self.RETRY_S
                if active != self.version and not failed:
                    self._switch(active)
            return self.version, self._view  # type: ignore[return-value]

    def _switch(self, version: str) -> None:
        from agentkit.train.registry import PolicyLLM, load_policy

        old = self.version
        try:
            # the base model has no adapter to verify; PolicyLLM still checks that no adapter answers
            adapter = None if self.registry.get(version).adapter_path is None else load_policy(
                self.llm, self.registry, version)
        except Exception as exc:
            if old is None:
                raise
            self._failed = (version, time.monotonic())
            log.warning("policy %s is active but did not load (%s); runs stay on %s", version, exc, old)
            if self.on_change:
                self.on_change(old, version, exc)
            return
        self.version, self._view = version, PolicyLLM(self.llm, adapter)
        if old is not None:
            log.info("policy %s -> %s: the next runs use %s", old, version, version)
            if self.on_change:
                self.on_change(old, version, None)
