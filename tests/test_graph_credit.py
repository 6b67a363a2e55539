"""Monte-Carlo credit through the rest of a graph: recorded calls before the target are
replayed, the target's prefix is forced, later nodes run live, and the graph's answer is
verified (agentkit.learn.rollouts)."""

from __future__ import annotations

from pathlib import Path

from agentkit.graph import Graph, load_graph
from agentkit.llm.scripted import ScriptedLLM
from agentkit.store import TrajectoryStore
from agentkit.runtime import GraphAgent, run_tasks
from agentkit.tasks import get_suite
from agentkit.learn.credit import MCConfig, locate_errors, mc_values
from agentkit.learn.rollouts import graph_mc_values, needs_graph_rollouts

SUITE = get_suite("arithmetic")
PLAN = "1. Do the first operation.\n2. Do the second operation.\n\n"
ACCEPT = "Score: 9/10\nCritique: none\nVerdict: accept\n\n"
REVISE = "Score: 2/10\nCritique: step 2 is wrong\nVerdict: revise\n\n"

GRAPH = load_graph(Path(__file__).resolve().parents[1] / "bench" / "plan_solve_review.py")


def lines(task):
    (a, op, b, c), (c2, op2, d, e) = task.data["steps"]
    return {"step1": f"Step 1: {a} {op} {b} = {c}\n", "good2": f"Step 2: {c2} {op2} {d} = {e}\n",
            "wrong2": f"Step 2: {c2} {op2} {d} = {e + 1}\n", "answer": f"Answer: {e}\n",
            "wrong_answer": f"Answer: {e + 1}\n"}


def policy(task, *, plan=PLAN, critic="discerning"):
    """A solver that writes a wrong step 2 from scratch, a right one after step 1 and the
    wrong answer after the wrong step; revises to the gold solution when told what was
    wrong. The critic accepts everything ("lazy") or only right answers ("discerning")."""
    w = lines(task)

    def reply(prompt: str, request) -> str:
        if prompt.endswith("Plan:\n"):
            return plan
        if prompt.endswith("Review:\n"):
            if critic == "lazy":
                return ACCEPT
            return ACCEPT if f"Answer: {task.answer}" in prompt.rsplit("Question:", 1)[1] else REVISE
        if "step 2 is wrong" in prompt:  # a revision
            return task.solution + "\n"
        so_far = prompt.rsplit("Solution:\n", 1)[1]
        if so_far == "":
            return w["step1"] + w["wrong2"] + w["wrong_answer"]
        if so_far == w["step1"]:
            return w["good2"] + w["answer"]
        if so_far == w["step1"] + w["wrong2"]:
            return w["wrong_answer"]
        raise AssertionError(f"unexpected prefix {so_far!r}")

    return reply


class Policy(ScriptedLLM):
    """Remembers every prompt it was asked to continue."""

    def __init__(self, replies):
        super().__init__(replies)
        self.prompts = []

    def _next_reply(self, prompt_text, request):
        self.prompts.append(prompt_text)
        return super()._next_reply(prompt_text, request)


def recorded_failure(store, task):
    """plan -> solve (wrong step 2) -> review (a lazy critic accepts) -> check: failure."""
    llm = ScriptedLLM(policy(task, critic="lazy"))
    [result] = run_tasks(llm, SUITE, [task], store, agent=GraphAgent(GRAPH)).results
    run = store.get_run(result.run_id)
    assert run.status == "failure" and [s.node for s in run.steps] == ["plan", "solve", "review", "check"]
    return run, run.steps[1]


def test_a_wrong_step_the_graph_recovers_from_is_not_an_error(store, task):
    run, solve = recorded_failure(store, task)
    assert needs_graph_rollouts(run, solve)  # a model call (the review) came after the solver
    llm = Policy(policy(task, plan="1. Something else entirely.\n\n"))
    rollouts = TrajectoryStore(":memory:")
    [values] = graph_mc_values(llm, SUITE, [(run, solve, task)], MCConfig(samples=2), store=store,
                               rollout_store=rollouts, concurrency=4)
    # the discerning critic sends every wrong draft back and the revision is right
    assert values == [1.0, 1.0, 1.0]
    # the plan came from the record (this policy would plan otherwise, and the solver prompt
    # would no longer match): the planner was never asked
    assert not any(p.endswith("Plan:\n") for p in llm.prompts)
    # the continuing node's output alone says otherwise
    assert mc_values(llm, SUITE, task, solve.prompt_ids, solve.completion_ids, MCConfig(samples=2)) == [0.0, 1.0, 0.0]
    runs = rollouts.list_runs()
    assert len(runs) == 3 * 2 and {r.meta["rollout_of"] for r in runs} == {run.id}
    assert all(r.status == "success" for r in runs)
    after_wrong_step = next(r for r in runs if r.meta["prefix"] == 2)
    steps = rollouts.steps(after_wrong_step.id)
    assert [s.node for s in steps] == ["plan", "solve", "review", "solve", "review", "check"]
    assert steps[0].completion_ids == run.steps[0].completion_ids  # replayed exactly
    forced = steps[1]
    assert forced.prompt_ids == solve.prompt_ids  # the recorded prompt, not re-tokenized
    assert forced.completion_ids[: len(solve.completion_ids) - 1] == solve.completion_ids[:-1]  # the forced prefix
    assert forced.logprobs[:5] == solve.logprobs[:5]
    assert steps[2].route == "revise"


def test_a_lazy_critic_leaves_the_node_values(store, task):
    run, solve = recorded_failure(store, task)
    llm = Policy(policy(task, critic="lazy"))
    [values] = graph_mc_values(llm, SUITE, [(run, solve, task)], MCConfig(samples=2), store=store)
    assert values == [0.0, 1.0, 0.0]


def test_locate_errors_takes_the_graph_path_and_stores_the_values(store, task):
    run, solve = recorded_failure(store, task)
    lazy = Policy(policy(task, critic="lazy"))
    [error] = locate_errors(lazy, SUITE, {task.id: task}, store, [run.id], method="mc",
                            mc=MCConfig(samples=2, high=0.5, low=0.1))
    assert (error.step_id, error.index, error.method, error.values) == (solve.id, 1, "mc", [0.0, 1.0, 0.0])
    assert store.steps(run.id)[1].step_values == [0.0, 1.0, 0.0]
    assert any(p.endswith("Review:\n") for p in lazy.prompts)  # the review ran in the rollouts

    discerning = Policy(policy(task))
    [error] = locate_errors(discerning, SUITE, {task.id: task}, store, [run.id], method="mc", mc=MCConfig(samples=2))
    assert error is None  # the graph recovers from the wrong step: no step lost the run
    assert store.steps(run.id)[1].step_values == [1.0, 1.0, 1.0]


def test_a_run_whose_record_no_longer_matches_gets_no_values(store, task):
    run, solve = recorded_failure(store, task)
    plan = run.steps[0]
    stale = run.model_copy(update={"steps": [plan.model_copy(update={"prompt_text": "an older planner prompt",
                                                                     "prompt_ids": [1, 2, 3]}), *run.steps[1:]]})
    llm = Policy(policy(task, plan="1. Something else entirely.\n\n"))
    rollouts = TrajectoryStore(":memory:")
    assert graph_mc_values(llm, SUITE, [(stale, solve, task)], MCConfig(samples=1), rollout_store=rollouts) == [None]
    assert {r.status for r in rollouts.list_runs()} == {"error"}
    assert "diverged" in rollouts.list_runs()[0].error


def test_single_node_runs_keep_the_fast_path(store, task):
    llm = ScriptedLLM(policy(task))
    [result] = run_tasks(llm, SUITE, [task], store, agent=GraphAgent(Graph("one").add_node("solve", role="solver")
                                                                     .set_entry("solve"))).results
    run = store.get_run(result.run_id)
    assert not needs_graph_rollouts(run, run.steps[0])
