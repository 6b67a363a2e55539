"""Graphs on the tiny random Gemma model: concurrent graph runs are batched by one
backend, and the router never emits a label outside its set, whatever the model says."""

from __future__ import annotations

import random
import string

import pytest

from agentkit.graph import Graph, RunContext, load_graph
from agentkit.graph.roles import run_router
from agentkit.graph.spec import node_spec
from agentkit.llm.scripted import ScriptedLLM
from agentkit.runtime import Budget, GraphAgent, Recorder, run_tasks
from agentkit.tasks import get_suite


def test_concurrent_graph_runs_are_batched_by_one_backend(tiny_llm, store):
    suite = get_suite("arithmetic")
    tasks = suite.tasks("test", 8, level=1)
    agent = GraphAgent(load_graph("plan_solve_check"), shots=0, max_tokens=4)
    report = run_tasks(tiny_llm, suite, tasks, store, agent=agent, concurrency=8)
    assert tiny_llm.stats["max_rows_in_batch"] > 1  # calls of different graph runs shared a batch
    assert [r.status for r in report.results] == ["failure"] * 8  # random weights: nothing solved, nothing crashed
    for result in report.results:
        steps = store.steps(result.run_id)
        roles = [s.role for s in steps]
        assert roles[-1] == "verifier" and set(roles) == {"planner", "solver", "verifier"}
        # a random model's output is malformed: each node retried once, every attempt recorded
        assert [(s.node, s.attempt) for s in steps] == [("plan", 0), ("plan", 1), ("solve", 0), ("solve", 1), ("check", 0)]
        for s in steps[:-1]:
            assert s.completion_ids and len(s.completion_ids) == len(s.logprobs) <= 4


def random_labels(rng: random.Random) -> list[str]:
    words = ["calculator", "reasoning", "plan", "yes", "no", "a", "ab", "lookup", "x-1", "Z_9"]
    return rng.sample(words, rng.randint(2, 5))


def random_question(rng: random.Random) -> str:
    alphabet = string.ascii_letters + string.digits + " +-*/()?.:\n"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))


@pytest.mark.parametrize("backend", ["tiny", "scripted"])
def test_the_router_never_emits_an_invalid_label(backend, tiny_llm, store):
    rng = random.Random(7)
    llm = tiny_llm if backend == "tiny" else ScriptedLLM(["unused"])
    run_id = store.start_run("router-property")
    recorder = Recorder(llm, store, run_id, budget=Budget(max_calls=None, max_tokens=None))
    for i in range(6 if backend == "tiny" else 150):  # each tiny-model label score is a forward pass
        labels = random_labels(rng)
        node = node_spec(f"route{i}", "router", {"labels": labels})
        update = run_router(node, {"visits": {}}, RunContext(recorder=recorder, question=random_question(rng)))
        assert update["route"] in labels
        step = store.steps(run_id)[-1]
        assert step.route == update["route"] == step.parsed["route"]
        assert set(step.parsed["distribution"]) == set(labels)
        assert abs(sum(step.parsed["distribution"].values()) - 1) < 1e-9
        assert step.logprobs == llm.score(step.prompt_ids, step.completion_ids)
        assert llm.decode(step.completion_ids).strip() == update["route"]


def test_a_router_graph_runs_on_the_tiny_model(tiny_llm, store):
    suite = get_suite("arithmetic")
    tasks = suite.tasks("test", 2, level=1)
    report = run_tasks(tiny_llm, suite, tasks, store, agent=GraphAgent(load_graph("router_tool"), shots=0, max_tokens=4),
                       concurrency=2)
    for result in report.results:
        steps = store.steps(result.run_id)
        assert steps[0].route in ("calculator", "reasoning")
        assert steps[1].node == {"calculator": "calculate", "reasoning": "solve"}[steps[0].route]
        assert result.status in ("success", "failure")


def test_best_of_n_samples_reach_the_backend_together(tiny_llm, store):
    suite = get_suite("arithmetic")
    tasks = suite.tasks("test", 1, level=1)
    graph = (Graph("bo4").add_node("solve", role="solver", n=4, temperature=1.0, max_retries=0)
             .add_node("select", role="selector").add_edge("solve", "select").set_entry("solve"))
    run_tasks(tiny_llm, suite, tasks, store, agent=GraphAgent(graph, shots=0, max_tokens=4))
    assert tiny_llm.stats["max_rows_in_batch"] > 1  # the fan-out branches were batched
