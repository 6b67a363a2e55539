"""The trainer: credit assignment, step-level pairs, losses, training and the policy
registry.

Names are imported on first use (PEP 562), so ``from agentkit.train import load_policy``
does not import torch; only the losses and the trainer need it."""

from __future__ import annotations

import importlib
from typing import Any

_SOURCES = {
    "credit": ("ErrorPoint", "MCConfig", "TokenText", "locate_errors", "mc_values", "mc_values_batch",
               "step_char_spans", "step_token_spans", "token_step_index"),
    "losses": ("dpo_loss", "dpo_nll_loss", "grpo_advantages", "policy_gradient_loss", "rloo_advantages",
               "sequence_logps", "sft_loss", "step_advantages", "token_logps"),
    "pairs": ("PairStats", "StepDPOConfig", "build_outcome_pairs", "build_step_pairs"),
    "trainer": ("TrainConfig", "DPOConfig", "SFTConfig", "PGConfig", "PreferenceExample", "SFTExample", "RLGroup",
                "Trainer", "TrainResult", "config_from_dict"),
    "registry": ("load_policy", "register_trained", "PolicyLLM", "adapter_name"),
    "gate": ("GateResult", "compare_policies", "gate", "mcnemar_exact", "wilson_interval"),
}
_MODULE_OF = {name: module for module, names in _SOURCES.items() for name in names}

__all__ = list(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'agentkit.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"agentkit.train.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
