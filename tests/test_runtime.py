"""The runtime: concurrent runs through one backend, recording, verification, budgets,
and failures that stay inside their run."""

from __future__ import annotations

import pytest

from agentkit.errors import BackendError
from agentkit.llm.base import GenerationRequest
from agentkit.llm.scripted import ScriptedLLM
from agentkit.runtime import Budget, SolveAgent, run_tasks
from agentkit.tasks import get_suite


def gold_for_first(tasks):
    """Replies with the gold solution for even-indexed tasks and a wrong one otherwise."""
    by_question = {t.question: (i, t) for i, t in enumerate(tasks)}

    def reply(prompt: str, request: GenerationRequest) -> str:
        question = prompt.rsplit("Question: ", 1)[1].split("\n", 1)[0]
        i, task = by_question[question]
        return task.solution + "\n" if i % 2 == 0 else "Step 1: 1 + 1 = 3\nAnswer: 3\n"

    return reply


def test_runs_are_recorded_verified_and_summarised(store):
    suite = get_suite("arithmetic")
    tasks = suite.tasks("test", 6, level=2)
    llm = ScriptedLLM(gold_for_first(tasks))
    report = run_tasks(llm, suite, tasks, store, concurrency=3)
    assert [r.task_id for r in report.results] == [t.id for t in tasks]
    assert [r.status for r in report.results] == ["success", "failure"] * 3
    assert report.success_rate == 0.5
    assert report.step_accuracy == pytest.approx((1.0 + 0.0) / 2)
    run = store.get_run(report.results[0].run_id)
    assert run.status == "success" and run.reward == 1.0 and run.calls == 1
    [step] = run.steps
    assert step.node == "solve" and step.role == "solver"
    assert llm.decode(step.completion_ids) == step.completion_text == tasks[0].solution + "\n"
    assert step.logprobs == llm.score(step.prompt_ids, step.completion_ids)
    assert step.parsed == {"answer": tasks[0].answer, "steps": [True, True]}
    assert run.tokens == len(step.prompt_ids) + len(step.completion_ids)


def test_malformed_output_is_a_failure_not_a_crash(store):
    suite = get_suite("countdown")
    tasks = suite.tasks("test", 3)
    llm = ScriptedLLM(["Answer: __import__('os').system('echo hi')", "\x00\xff garbage", ""])
    report = run_tasks(llm, suite, tasks, store, concurrency=1)
    assert [r.status for r in report.results] == ["failure"] * 3
    assert all(len(store.steps(r.run_id)) == 1 for r in report.results)


def test_budget_stops_a_run_and_is_recorded(store):
    suite = get_suite("arithmetic")
    [task] = suite.tasks("test", 1)

    class TwoCalls:
        name = "two-calls"

        def __call__(self, task, suite, recorder):
            for _ in range(2):
                (c,), _ = recorder.call(GenerationRequest("x", max_tokens=5), node="solve", role="solver")
            return c.text

    report = run_tasks(ScriptedLLM(["abc"]), suite, [task], store, agent=TwoCalls(), budget=Budget(max_calls=1))
    [result] = report.results
    assert result.status == "budget" and "max_calls=1" in result.error
    assert store.get_run(result.run_id).status == "budget"
    assert len(store.steps(result.run_id)) == 1  # the call within budget is kept


def test_token_budget(store):
    suite = get_suite("arithmetic")
    [task] = suite.tasks("test", 1)

    class Loop:
        name = "loop"

        def __call__(self, task, suite, recorder):
            while True:
                recorder.call(GenerationRequest("hello", max_tokens=50), node="solve", role="solver")

    [result] = run_tasks(ScriptedLLM(["y" * 50]), suite, [task], store, agent=Loop(),
                         budget=Budget(max_calls=None, max_tokens=200)).results
    assert result.status == "budget" and "max_tokens=200" in result.error
    assert 200 <= store.get_run(result.run_id).tokens < 200 + 57


def test_an_agent_crash_is_recorded_and_the_batch_goes_on(store):
    suite = get_suite("arithmetic")
    tasks = suite.tasks("test", 3)

    class Flaky:
        name = "flaky"

        def __call__(self, task, suite, recorder):
            if task is tasks[1]:
                raise ValueError("parser blew up")
            return task.solution

    report = run_tasks(ScriptedLLM(["unused"]), suite, tasks, store, agent=Flaky())
    assert [r.status for r in report.results] == ["success", "error", "success"]
    assert "parser blew up" in store.get_run(report.results[1].run_id).error


def test_a_backend_error_stops_the_batch_and_closes_the_run(store):
    suite = get_suite("arithmetic")
    [task] = suite.tasks("test", 1)
    with pytest.raises(BackendError):
        run_tasks(ScriptedLLM(["x"]), suite, [task], store, agent=SolveAgent(adapter="missing"))
    [run] = store.list_runs()
    assert run.status == "error" and "missing" in run.error


def test_concurrent_runs_reach_the_backend_together(store, tiny_llm):
    suite = get_suite("arithmetic")
    tasks = suite.tasks("test", 8)
    run_tasks(tiny_llm, suite, tasks, store, agent=SolveAgent(max_tokens=4, shots=0), concurrency=8)
    assert tiny_llm.stats["max_rows_in_batch"] >= 4
    assert len(store.list_runs(limit=None)) == 8
