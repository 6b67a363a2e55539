"""Running a policy version on a backend, and following the store's active policy while
runs go on: a trainer may promote a new version at any time, and the tasks that start
after the promotion run on it.

``load_policy`` verifies a version's adapter checksum, loads it under its version name,
and checks with a one-token generation that completions come back tagged with that
adapter; ``PolicyLLM`` (agentkit.llm.views) then checks every completion of a run.

    follow = ActivePolicy(llm, PolicyRegistry("runs.db"))
    run_tasks(llm, suite, tasks, store, policy=follow)   # each run records the version it used
    ActivePolicy(llm, registry, version="v3")            # pinned: v3 whatever is promoted

Each task asks ``current()`` once, when it starts, and keeps that version for the whole run.
A newly active version is loaded through ``load_policy`` (its
checksum verified, and a probe that the adapter itself answers), and every completion of the
run is checked to come from that adapter (``PolicyLLM``): a run never silently gets the base
model. A version that fails to load is logged and the previous one stays in use (and is what
the runs record); the next task tries again. A version trained over a restricted vocabulary
(``TrainConfig.allowed_token_ids``, `agentkit improve --vocabulary suite`) decodes over it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from agentkit.errors import BackendError
from agentkit.llm.base import LLM, GenerationRequest
from agentkit.llm.views import PolicyLLM, VocabularyLLM
from agentkit.store.policies import BASE, PolicyRegistry

__all__ = ["ActivePolicy", "load_policy", "adapter_name", "PolicyLLM"]

log = logging.getLogger("agentkit.policy")


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


def _check_answering(llm: LLM, adapter: str | None) -> None:
    (completion,), = llm.generate([GenerationRequest("Hello", max_tokens=1, adapter=adapter)])
    if completion.adapter != adapter:
        raise BackendError(
            f"asked the backend for adapter {adapter or 'none (base)'} but {completion.adapter or 'the base model'} "
            f"answered; check the adapter name and that the server was started with LoRA enabled"
        )


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
        allowed = (self.registry.get(version).config or {}).get("allowed_token_ids")
        # trained over a suite's vocabulary (TrainConfig.allowed_token_ids): it decodes and scores as it trained
        backend = VocabularyLLM(self.llm, allowed) if allowed else self.llm
        self.version, self._view = version, PolicyLLM(backend, adapter)
        if old is not None:
            log.info("policy %s -> %s: the next runs use %s", old, version, version)
            if self.on_change:
                self.on_change(old, version, None)
