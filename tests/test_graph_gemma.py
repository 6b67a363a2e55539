"""A prebuilt graph end to end on the real embedded Gemma 3 270M: plan_solve_check on two
arithmetic tasks, both runs in flight through one backend, every node recorded."""

from __future__ import annotations

import pytest

from agentkit.graph import load_graph
from agentkit.llm.transformers import TransformersLLM
from agentkit.store import TrajectoryStore
from agentkit.runtime import GraphAgent, run_tasks
from agentkit.tasks import get_suite

pytestmark = pytest.mark.slow


def test_plan_solve_check_on_gemma(tmp_path):
    suite = get_suite("arithmetic")
    tasks = suite.tasks("test", n=2, level=1)
    agent = GraphAgent(load_graph("plan_solve_check"), shots=1, max_tokens=24)
    with TransformersLLM("gemma-3-270m", dtype="fp32") as llm, TrajectoryStore(tmp_path / "runs.db") as store:
        report = run_tasks(llm, suite, tasks, store, agent=agent, concurrency=2)
        assert all(r.status in ("success", "failure") for r in report.results), [r.error for r in report.results]
        assert llm.stats["max_rows_in_batch"] >= 2  # the two graph runs shared batches
        for result in report.results:
            steps = store.steps(result.run_id)
            nodes = [s.node for s in steps]
            assert nodes[0] == "plan" and nodes[-1] == "check" and "solve" in nodes
            assert nodes == sorted(nodes, key=["plan", "solve", "check"].index)  # in graph order
            for step in steps[:-1]:
                assert step.completion_ids and len(step.completion_ids) == len(step.logprobs)
                assert step.attempt <= 1  # at most one retry per node
            solve = [s for s in steps if s.node == "solve"][-1]
            assert "Step 1:" in solve.completion_text or "Answer:" in solve.completion_text  # the few-shot format took
            check = steps[-1]
            assert check.parsed["reward"] == result.reward and check.parent_step_id == solve.id
