"""The trainer: credit assignment, step-level pairs, losses, training and the policy
registry. Imports torch (through the losses); the CLI imports it only in the commands
that train."""

from agentkit.train.credit import (
    ErrorPoint,
    MCConfig,
    TokenText,
    locate_errors,
    mc_values,
    mc_values_batch,
    step_char_spans,
    step_token_spans,
    token_step_index,
)
from agentkit.train.gate import GateResult, compare_policies, gate, mcnemar_exact, wilson_interval
from agentkit.train.losses import (
    dpo_loss,
    dpo_nll_loss,
    grpo_advantages,
    policy_gradient_loss,
    rloo_advantages,
    sequence_logps,
    sft_loss,
    step_advantages,
    token_logps,
)
from agentkit.train.pairs import (
    PairStats,
    StepDPOConfig,
    build_outcome_pairs,
    build_step_pairs,
)
from agentkit.train.registry import PolicyLLM, adapter_name, load_policy, register_trained
from agentkit.train.trainer import (
    DPOConfig,
    PGConfig,
    PreferenceExample,
    RLGroup,
    SFTConfig,
    SFTExample,
    TrainConfig,
    Trainer,
    TrainResult,
    config_from_dict,
)

__all__ = [
    # credit
    "ErrorPoint",
    "MCConfig",
    "TokenText",
    "locate_errors",
    "mc_values",
    "mc_values_batch",
    "step_char_spans",
    "step_token_spans",
    "token_step_index",
    # losses
    "dpo_loss",
    "dpo_nll_loss",
    "grpo_advantages",
    "policy_gradient_loss",
    "rloo_advantages",
    "sequence_logps",
    "sft_loss",
    "step_advantages",
    "token_logps",
    # pairs
    "PairStats",
    "StepDPOConfig",
    "build_outcome_pairs",
    "build_step_pairs",
    # trainer
    "TrainConfig",
    "DPOConfig",
    "SFTConfig",
    "PGConfig",
    "PreferenceExample",
    "SFTExample",
    "RLGroup",
    "Trainer",
    "TrainResult",
    "config_from_dict",
    # policy registry on backends, and the gate
    "load_policy",
    "register_trained",
    "PolicyLLM",
    "adapter_name",
    "GateResult",
    "compare_policies",
    "gate",
    "mcnemar_exact",
    "wilson_interval",
]
