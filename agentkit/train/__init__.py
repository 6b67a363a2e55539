"""Training on token ids, torch only: the shared loop (``Trainer``), the losses, one config
per method, and the examples the loop consumes. Nothing here runs agents or reads the
store; agentkit.learn builds the examples and decides what to train.

Names are imported on first use (PEP 562), so ``from agentkit.train import DPOConfig``
does not import torch; only the losses and the trainer need it."""

from __future__ import annotations

import importlib
from typing import Any

_SOURCES = {
    "losses": ("dpo_loss", "dpo_nll_loss", "grpo_advantages", "policy_gradient_loss", "rloo_advantages",
               "sequence_logps", "sft_loss", "step_advantages", "token_logps"),
    "configs": ("TrainConfig", "DPOConfig", "SFTConfig", "PGConfig", "config_from_dict"),
    "examples": ("PreferenceExample", "SFTExample", "RLGroup", "TrainResult", "token_step_index"),
    "trainer": ("Trainer",),
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
