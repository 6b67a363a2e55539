"""Learning from runs: credit assignment (the first wrong step), Monte-Carlo rollouts,
preference pairs, the promotion gate, and the improvement cycle that ``agentkit improve``
and the background trainer both run. Training itself (torch) is agentkit.train."""

from agentkit.learn.credit import ErrorPoint, MCConfig, locate_errors
from agentkit.learn.cycle import gate_candidate, register_trained, train_candidate
from agentkit.learn.daemon import TrainerConfig, TrainerDaemon
from agentkit.learn.gate import GateResult, Measured, compare_policies, gate
from agentkit.learn.improve import ImproveConfig, improve
from agentkit.learn.pairs import PairStats, StepDPOConfig, build_outcome_pairs, build_step_pairs

__all__ = ["ErrorPoint", "MCConfig", "locate_errors", "PairStats", "StepDPOConfig", "build_step_pairs",
           "build_outcome_pairs", "GateResult", "Measured", "compare_policies", "gate", "train_candidate",
           "register_trained", "gate_candidate", "ImproveConfig", "improve", "TrainerConfig", "TrainerDaemon"]
