"""Running agents on tasks: concurrency, budgets, recording."""

from agentkit.runtime.agents import Agent, SolveAgent
from agentkit.runtime.recorder import Budget, Recorder
from agentkit.runtime.runner import RunReport, RunResult, run_tasks

__all__ = ["Agent", "SolveAgent", "Budget", "Recorder", "RunReport", "RunResult", "run_tasks"]
