"""One improvement cycle, written once: collect -> credit -> train -> gate -> promote.

``agentkit improve`` (learn/improve.py) runs cycles back to back in one process; the
background trainer (learn/daemon.py) runs one phase at a time and records each in the
store, so that a restart resumes. They collect and credit their own way (improve samples
fresh runs; the daemon reads the runs others recorded) and share the rest, here:

    result = train_candidate(registry, DPOConfig(output_dir="out"), "gemma-3-270m", "base", examples)
    policy = register_trained(registry, result, parent="base", data={"pairs": len(examples)})
    outcome = gate_candidate(registry, llm, suite, held_out, policy.version, incumbent="base")
    outcome.promote  # promoted (or rejected) in the registry; the loser's adapter unloaded
    # the next round's candidate: the active policy's outcomes are known, only it runs
    gate_candidate(registry, llm, suite, held_out, next_policy.version, incumbent=registry.active().version,
                   incumbent_measured=outcome.kept)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from agentkit.errors import AgentkitError
from agentkit.learn.gate import GateResult, Measured, gate
from agentkit.llm._malloc import release_memory
from agentkit.llm.base import LLM
from agentkit.runtime import Agent
from agentkit.runtime.policy import adapter_name
from agentkit.store.policies import Policy, PolicyRegistry
from agentkit.store.protocols import RunStore
from agentkit.tasks import Suite, Task
from agentkit.train.configs import DPOConfig, TrainConfig, field_of

__all__ = ["CandidateConfig", "train_candidate", "register_trained", "gate_candidate"]


@dataclass
class CandidateConfig:
    """How a cycle trains its candidate: the trainer configs' knobs that ImproveConfig and
    TrainerConfig both carry (``field_of``: their defaults and help), declared here once.
    Both loops train a candidate for 2 epochs, not the trainer's 1."""

    lr: float = field_of(TrainConfig, "lr")
    epochs: float = field_of(TrainConfig, "epochs", default=2.0)
    batch_size: int = field_of(TrainConfig, "batch_size")
    beta: float = field_of(DPOConfig, "beta")
    nll_weight: float = field_of(DPOConfig, "nll_weight")
    lora_r: int = field_of(TrainConfig, "lora_r")


def train_candidate(registry: PolicyRegistry, config: Any, model: Any, parent: str, examples: Sequence[Any], *,
                    resume: bool = False, on_log: Callable[..., None] | None = None,
                    parent_adapter: str | None = None) -> Any:
    """Train a LoRA candidate (``config``: a DPOConfig, SFTConfig or PGConfig) on
    ``examples``, continuing ``parent``'s adapter (a fresh one for ``base``), or the adapter
    directory ``parent_adapter`` (a stage of this candidate not registered on its own);
    returns the TrainResult. The trainer's model copy goes back to the OS before this returns."""
    from agentkit.train.trainer import Trainer  # imports torch: not when the CLI starts

    parent_path = parent_adapter
    if parent_path is None and adapter_name(parent) is not None:
        parent_path = registry.get(parent).adapter_path
    trainer = Trainer(config, model, parent_adapter=parent_path, on_log=on_log)
    try:
        return trainer.train(list(examples), resume=resume)
    finally:
        del trainer
        release_memory()


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


def gate_candidate(registry: PolicyRegistry, llm: LLM, suite: Suite, held_out: Sequence[Task], candidate: str, *,
                   incumbent: str, agent: Agent | None = None, store: RunStore | None = None, alpha: float = 0.05,
                   concurrency: int = 16, metric: str = "success", share: float = 1.0, carried: float = 0.0,
                   incumbent_measured: Measured | None = None) -> GateResult:
    """Gate ``candidate`` against ``incumbent`` on ``held_out`` (promoted on a significant
    gain, else rejected), then unload the adapter that lost: only the active one stays
    resident in ``llm``. ``incumbent_measured``: the incumbent's outcomes on ``held_out``
    (the last gate's ``outcome.kept``), so that only the candidate runs."""
    outcome = gate(registry, llm, suite, held_out, candidate, incumbent=incumbent, agent=agent, store=store,
                   alpha=alpha, concurrency=concurrency, metric=metric, share=share, carried=carried,
                   incumbent_measured=incumbent_measured)
    stale = adapter_name(incumbent) if outcome.promote else adapter_name(candidate)
    if stale is not None and stale in llm.list_adapters():
        llm.unload_adapter(stale)
    return outcome
