"""Running agents on tasks: concurrency, budgets, recording."""

from agentkit.runtime.agents import Agent, SolveAgent
from agentkit.runtime.graph_agent import GraphAgent, checkpoint_path, restore_agent
from agentkit.runtime.policy import ActivePolicy
from agentkit.runtime.recorder import Budget, Recorder
from agentkit.runtime.runner import RunReport, RunResult, resume_run, run_tasks

__all__ = [
    "Agent", "SolveAgent", "GraphAgent", "Budget", "Recorder", "RunReport", "RunResult", "run_tasks", "resume_run",
    "checkpoint_path", "restore_agent", "ActivePolicy",
]
