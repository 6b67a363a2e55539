"""Graphs running on tasks: every prebuilt graph end to end on the scripted backend with the
exact steps it records, retries, bounded loops, the router, the verifier's judge, resume
after a crash, budgets and per-node accounting."""

from __future__ import annotations

import threading

import pytest

from agentkit.errors import StoreError
from agentkit.graph import Graph, RunContext, load_graph
from agentkit.graph.compile import initial_state
from agentkit.graph.roles import run_selector
from agentkit.graph.spec import node_spec
from agentkit.llm.scripted import ScriptedLLM
from agentkit.runtime import Budget, GraphAgent, Recorder, SolveAgent, checkpoint_path, resume_run, run_tasks
from agentkit.tasks import get_suite

PLAN = "1. Do the first operation.\n2. Do the second operation.\n\n"
ACCEPT = "Score: 9/10\nCritique: none\nVerdict: accept\n\n"
REVISE = "Score: 3/10\nCritique: step 2 is wrong\nVerdict: revise\n\n"
WRONG = "Step 1: 1 + 1 = 3\nAnswer: 3\n"


@pytest.fixture
def suite():
    return get_suite("arithmetic")


def question_of(prompt: str) -> str:
    return prompt.rsplit("Question: ", 1)[1].split("\n", 1)[0]


def scripted(tasks, *, review=ACCEPT, solve=None, cls=ScriptedLLM, **kwargs):
    """Plans, reviews and solutions by prompt kind; the gold solution unless ``solve`` says otherwise."""
    by_question = {t.question: t for t in tasks}

    def reply(prompt: str, request) -> str:
        if prompt.endswith("Plan:\n"):
            return PLAN
        if prompt.endswith("Review:\n"):
            return review(prompt) if callable(review) else review
        task = by_question[question_of(prompt)]
        return solve(task, prompt) if solve else task.solution + "\n"

    return cls(reply, **kwargs)


class Prefers(ScriptedLLM):
    """Scores any continuation that mentions ``label`` as far likelier than the others."""

    def __init__(self, replies, label: str):
        super().__init__(replies)
        self.label = label

    def score(self, prompt_ids, completion_ids, adapter=None):
        hit = self.label in self.decode(completion_ids)
        return [-0.01 if hit else -4.0] * len(completion_ids)


def run_graph(graph, llm, suite, store, n=1, **agent):
    tasks = suite.tasks("test", n, level=2)
    report = run_tasks(llm, suite, tasks, store, agent=GraphAgent(graph, **agent), concurrency=4)
    return report, [store.get_run(r.run_id) for r in report.results], tasks


def nodes(run) -> list[str]:
    return [s.node for s in run.steps]


# --- every prebuilt graph, end to end ------------------------------------------------------------


def test_single_solver(suite, store):
    tasks = suite.tasks("test", 1, level=2)
    report, [run], _ = run_graph(load_graph("single_solver"), scripted(tasks), suite, store)
    assert len(run.steps) == 1  # solve
    [step] = run.steps
    assert (step.node, step.role, step.attempt, step.parent_step_id, step.revision) == ("solve", "solver", 0, None, 0)
    assert step.parsed == {"answer": tasks[0].answer, "steps": [True, True]}
    assert step.prompt_text == suite.prompt(tasks[0], shots=3)  # the suite's few-shot prompt, unchanged
    assert run.status == "success" and run.graph == "single_solver"
    assert run.meta["graph"]["source"] == "single_solver" and run.meta["task"]["id"] == tasks[0].id


def test_plan_solve_check(suite, store):
    tasks = suite.tasks("test", 1, level=2)
    report, [run], _ = run_graph(load_graph("plan_solve_check"), scripted(tasks), suite, store)
    assert len(run.steps) == 3  # plan, solve, check
    plan, solve, check = run.steps
    assert nodes(run) == ["plan", "solve", "check"] and [s.role for s in run.steps] == ["planner", "solver", "verifier"]
    assert plan.parsed == {"plan": ["Do the first operation.", "Do the second operation."]}
    assert "Plan:\n1. Do the first operation.\n2. Do the second operation.\nSolution:\n" in solve.prompt_text
    assert solve.prompt_text.startswith(suite.prompt(tasks[0], shots=3)[: -len("Solution:\n")])
    # each step's parent is the step that produced its input
    assert (plan.parent_step_id, solve.parent_step_id, check.parent_step_id) == (None, plan.id, solve.id)
    assert check.parsed == {"reward": 1.0, "checker": "arithmetic"}
    assert check.prompt_ids is None and check.completion_ids is None  # a checker makes no model call
    assert run.status == "success" and run.reward == 1.0 and run.calls == 3


def test_solve_critic_revises_twice_then_proceeds(suite, store):
    tasks = suite.tasks("test", 1, level=2)
    report, [run], _ = run_graph(load_graph("solve_critic"), scripted(tasks, review=REVISE), suite, store)
    assert len(run.steps) == 7  # 3 x (solve, review) + check: max_revisions=2 bounds the loop
    assert nodes(run) == ["solve", "review", "solve", "review", "solve", "review", "check"]
    assert [s.revision for s in run.steps] == [0, 0, 1, 1, 2, 2, 2]
    assert [s.route for s in run.steps] == [None, "revise", None, "revise", None, "accept", None]
    assert all(s.parsed["verdict"] == "revise" for s in run.steps if s.role == "critic")  # the bound overrode it
    second_solve = run.steps[2]
    assert "Previous solution:\n" + tasks[0].solution in second_solve.prompt_text
    assert "Critique: step 2 is wrong\nWrite a corrected solution.\nSolution:\n" in second_solve.prompt_text
    assert [s.parent_step_id for s in run.steps[1:]] == [s.id for s in run.steps[:-1]]
    assert run.status == "success"


def test_solve_critic_accepting_at_once(suite, store):
    tasks = suite.tasks("test", 1, level=2)
    _, [run], _ = run_graph(load_graph("solve_critic"), scripted(tasks, review=ACCEPT), suite, store)
    assert len(run.steps) == 3  # solve, review, check
    assert run.steps[1].parsed == {"score": 0.9, "critique": "none", "verdict": "accept"}


def test_router_tool_takes_the_calculator_path(suite, store):
    tasks = suite.tasks("test", 1, level=2)
    llm = scripted(tasks, cls=Prefers, label="calculator")
    _, [run], _ = run_graph(load_graph("router_tool"), llm, suite, store)
    assert len(run.steps) == 3  # route, calculate, check
    route, calculate, check = run.steps
    assert nodes(run) == ["route", "calculate", "check"]
    assert route.route == "calculator" and route.parsed["route"] == "calculator"
    assert set(route.parsed["distribution"]) == {"calculator", "reasoning"}
    assert route.parsed["distribution"]["calculator"] > 0.9
    assert llm.decode(route.completion_ids) == " calculator" and route.logprobs == [-0.01] * len(route.completion_ids)
    expression = tasks[0].question.removeprefix("Compute ").rstrip(".")
    assert calculate.parsed == {"tool": "calculator", "input": {"expression": expression},
                                "output": tasks[0].answer, "error": None}
    assert calculate.completion_ids is None and calculate.parent_step_id == route.id
    assert check.parsed["reward"] == 1.0 and run.status == "success"
    assert llm.requests == []  # no text was generated on this path


def test_router_tool_takes_the_reasoning_path(suite, store):
    tasks = suite.tasks("test", 1, level=2)
    _, [run], _ = run_graph(load_graph("router_tool"), scripted(tasks, cls=Prefers, label="reasoning"), suite, store)
    assert nodes(run) == ["route", "solve", "check"]  # route, solve, check
    assert run.steps[0].route == "reasoning" and run.status == "success"


def test_the_calculator_on_a_question_without_arithmetic(store):
    suite = get_suite("prontoqa")
    tasks = suite.tasks("test", 1)
    _, [run], _ = run_graph(load_graph("router_tool"), scripted(tasks, cls=Prefers, label="calculator"), suite, store)
    assert nodes(run) == ["route", "calculate", "check"]
    assert run.steps[1].parsed["error"] == "the question contains no arithmetic expression"
    assert run.steps[2].parsed["reward"] == 0.0 and run.status == "failure"


def test_best_of_n_fans_out_votes_and_verifies(suite, store):
    tasks = suite.tasks("test", 1, level=2)
    replies = iter([WRONG, tasks[0].solution, "Step 1: 1 + 1 = 2\nAnswer: 2\n", tasks[0].solution])
    lock = threading.Lock()

    def solve(task, prompt):
        with lock:
            return next(replies)

    llm = scripted(tasks, solve=solve)
    _, [run], _ = run_graph(load_graph("best_of_n"), llm, suite, store)
    assert len(run.steps) == 6  # 4 x solve (in parallel), select, check
    assert sorted(nodes(run)) == ["check", "select", "solve", "solve", "solve", "solve"]
    samples = [s for s in run.steps if s.node == "solve"]
    select, check = run.steps[-2:]
    assert all(s.parent_step_id is None for s in samples)
    assert {r.temperature for r in llm.requests} == {0.8} and len({r.seed for r in llm.requests}) == 4
    assert select.parsed["answer"] == tasks[0].answer
    assert select.parsed["votes"] == {tasks[0].answer: 2, "3": 1, "2": 1}
    chosen = next(s for s in samples if s.id == select.parent_step_id)
    assert chosen.parsed["answer"] == tasks[0].answer
    assert check.parent_step_id == select.id and check.parsed["reward"] == 1.0 and run.status == "success"


def test_selector_breaks_ties_by_mean_logprob():
    node = node_spec("select", "selector", {})
    samples = [
        {"node": "solve", "round": 1, "sample": i, "answer": a, "text": f"Answer: {a}", "step_id": 10 + i,
         "mean_logprob": lp}
        for i, (a, lp) in enumerate([("5", -0.9), ("7", -0.2), ("5", -0.8), ("7", -1.5), (None, -0.01)])
    ]

    class Rec:
        steps = []

        def record(self, **step):
            self.steps.append(step)
            return 99

    rec = Rec()
    update = run_selector(node, {"samples": samples, "visits": {}}, RunContext(recorder=rec, question="q"))
    assert update["draft"]["answer"] == "7" and update["draft"]["step_id"] == 11  # 2-2 tie: "7" has the best sample
    assert rec.steps[0]["parent_step_id"] == 11
    # an older round's samples do not vote
    update = run_selector(node, {"samples": samples + [{**samples[0], "round": 2, "sample": 0}], "visits": {}},
                          RunContext(recorder=rec, question="q"))
    assert update["draft"]["answer"] == "5"


# --- retries and bounds ----------------------------------------------------------------------------


def test_malformed_output_is_retried_with_an_instruction(suite, store):
    tasks = suite.tasks("test", 1, level=2)
    attempts = iter(["I think it is about ninety.", tasks[0].solution])
    _, [run], _ = run_graph(load_graph("single_solver"), scripted(tasks, solve=lambda t, p: next(attempts)), suite, store)
    assert len(run.steps) == 2  # solve attempt 0 (malformed), solve attempt 1
    first, second = run.steps
    assert (first.attempt, second.attempt) == (0, 1) and second.parent_step_id == first.id
    assert first.parsed["error"] == "there is no line 'Answer: <value>'"
    assert second.prompt_text.startswith(first.prompt_text + "I think it is about ninety.\n")
    assert ("That solution was not usable: there is no line 'Answer: <value>'. "
            "Reply with lines 'Step k: ...' and a final 'Answer: <value>'.\nSolution:\n") in second.prompt_text
    assert run.status == "success"


def test_retries_are_bounded(suite, store):
    tasks = suite.tasks("test", 1, level=2)
    graph = Graph("g").add_node("solve", role="solver", max_retries=2).set_entry("solve")
    _, [run], _ = run_graph(graph, scripted(tasks, solve=lambda t, p: "no idea"), suite, store)
    assert [s.attempt for s in run.steps] == [0, 1, 2]
    assert run.status == "failure"


def test_a_malformed_review_is_retried_then_lets_the_answer_through(suite, store):
    tasks = suite.tasks("test", 1, level=2)
    _, [run], _ = run_graph(load_graph("solve_critic"), scripted(tasks, review="Looks fine to me."), suite, store)
    assert nodes(run) == ["solve", "review", "review", "check"]
    assert [s.route for s in run.steps] == [None, None, "accept", None]
    assert run.steps[2].parsed["error"].startswith("there is no line 'Verdict:")


EMPTY_PLAN = "".join(f"{k}.\n" for k in range(1, 22))  # what the small model writes: "1. 2. ... 21."


def test_an_unparsed_plan_and_a_missing_verdict_are_recorded_as_fallbacks(suite, store):
    tasks = suite.tasks("test", 2, level=2)
    graph = (Graph("plan_review").add_node("plan", role="planner").add_node("solve", role="solver")
             .add_node("review", role="critic", max_revisions=2).add_node("check", role="verifier")
             .add_edge("plan", "solve").add_edge("solve", "review").add_edge("review", "solve", when="revise")
             .add_edge("review", "check", when="accept").set_entry("plan"))
    by_question = {t.question: t for t in tasks}

    def reply(prompt: str, request) -> str:
        if prompt.endswith("Plan:\n"):
            return EMPTY_PLAN
        if prompt.endswith("Review:\n"):
            return "Looks fine to me."
        return by_question[question_of(prompt)].solution + "\n"

    report, runs, _ = run_graph(graph, ScriptedLLM(reply), suite, store, n=2)
    for run in runs:
        plan, retried_plan, solve, review, retried_review, check = run.steps
        assert plan.parsed == {"error": "no numbered step was found"}  # then retried: no fallback yet
        assert retried_plan.parsed["fallback"] == "no plan parsed: the nodes after it ran without one"
        assert "Plan:" not in solve.prompt_text.split("Question: ")[-1]
        assert retried_review.parsed["fallback"] == "no verdict parsed: routed to accept"
        assert retried_review.route == "accept" and "fallback" not in review.parsed and "fallback" not in solve.parsed
    stats = {s["node"]: s for s in store.node_stats(r.run_id for r in report.results)}
    assert [(n, stats[n]["unparsed"], stats[n]["fallbacks"]) for n in ("plan", "solve", "review", "check")] == [
        ("plan", 4, 2), ("solve", 0, 0), ("review", 4, 2), ("check", 0, 0)]
    assert stats["plan"]["fallback_reasons"] == ["no plan parsed: the nodes after it ran without one"]
    assert stats["review"]["fallback_reasons"] == ["no verdict parsed: routed to accept"]


def test_a_router_that_can_score_no_label_records_its_default(suite, store):
    class Unscorable(ScriptedLLM):
        def score(self, prompt_ids, completion_ids, adapter=None):
            return [float("-inf")] * len(completion_ids)

    tasks = suite.tasks("test", 1, level=2)
    report, [run], _ = run_graph(load_graph("router_tool"), scripted(tasks, cls=Unscorable), suite, store)
    route = run.steps[0]
    assert route.route == "calculator" and route.parsed["fallback"] == "no label could be scored: took 'calculator', the first"
    stats = {s["node"]: s for s in store.node_stats([run.id])}
    assert (stats["route"]["unparsed"], stats["route"]["fallbacks"]) == (0, 1)


def test_a_solve_step_without_an_answer_counts_as_unparsed(suite, store):
    tasks = suite.tasks("test", 2, level=2)
    replies = iter(["Step 1: 1 + 1 = 2\n", tasks[1].solution])
    report = run_tasks(ScriptedLLM(lambda prompt, request: next(replies)), suite, tasks, store, concurrency=1)
    [row] = store.node_stats(r.run_id for r in report.results)
    assert (row["node"], row["calls"], row["unparsed"], row["fallbacks"]) == ("solve", 2, 1, 0)


def test_max_visits_ends_a_loop(suite, store):
    tasks = suite.tasks("test", 1, level=2)
    graph = (Graph("visits").add_node("solve", role="solver")
             .add_node("route", role="router", labels=["again", "done"], max_visits=3)
             .add_node("check", role="verifier").add_edge("solve", "route").add_edge("route", "solve", when="again")
             .add_edge("route", "check", when="done").set_entry("solve"))
    _, [run], _ = run_graph(graph, scripted(tasks, cls=Prefers, label="again"), suite, store)
    assert nodes(run) == ["solve", "route"] * 3 + ["solve"]  # the fourth visit to route ends the run
    assert run.status == "success"  # the last answer stands


def test_the_budget_stops_a_graph_run(suite, store):
    tasks = suite.tasks("test", 1, level=2)
    graph = load_graph("solve_critic")
    report = run_tasks(scripted(tasks, review=REVISE), suite, tasks, store, agent=GraphAgent(graph),
                       budget=Budget(max_calls=3))
    [result] = report.results
    assert result.status == "budget" and "max_calls=3" in result.error
    assert nodes(store.get_run(result.run_id)) == ["solve", "review", "solve"]


# --- the verifier's judge and runs without a suite ---------------------------------------------------


def test_the_judge_scores_yes_against_no(suite, store):
    tasks = suite.tasks("test", 1, level=2)
    graph = (Graph("judged").add_node("solve", role="solver").add_node("judge", role="verifier", judge=True)
             .add_edge("solve", "judge").set_entry("solve"))
    llm = scripted(tasks, cls=Prefers, label="yes")
    _, [run], _ = run_graph(graph, llm, suite, store)
    judge = run.steps[-1]
    assert judge.role == "verifier" and judge.parsed["judge"] is True
    assert judge.parsed["reward"] == judge.parsed["distribution"]["yes"] > 0.9
    assert llm.decode(judge.completion_ids) == " yes" and "Is this answer correct?" in judge.prompt_text


def test_a_graph_runs_on_a_plain_question_without_a_suite(store):
    app = load_graph("plan_solve_check").compile()
    llm = ScriptedLLM(lambda prompt, request: PLAN if prompt.endswith("Plan:\n") else "Step 1: 2 + 3 = 5\nAnswer: 5\n")
    run_id = store.start_run("plan_solve_check")
    recorder = Recorder(llm, store, run_id)
    final = app.invoke(initial_state("What is 2 + 3?"), context=RunContext(recorder=recorder, question="What is 2 + 3?"))
    assert final["draft"]["answer"] == "5" and 0 <= final["reward"] <= 1
    plan, solve, check = store.steps(run_id)
    assert solve.prompt_text.startswith("Solve the problem one step per line")
    assert check.parsed["judge"] is True  # no checker without a task suite: the model judges


# --- resume after a crash ----------------------------------------------------------------------------


class CrashOnce:
    """A reply function that raises on its ``at``-th solver call, like a backend dying mid-run."""

    def __init__(self, tasks, at: int = 1):
        self.tasks, self.at, self.solver_calls = {t.question: t for t in tasks}, at, 0

    def __call__(self, prompt: str, request) -> str:
        if prompt.endswith("Plan:\n"):
            return PLAN
        self.solver_calls += 1
        if self.solver_calls == self.at:
            raise RuntimeError("backend died")
        return self.tasks[question_of(prompt)].solution + "\n"


def test_resume_after_a_crash_runs_only_the_unfinished_nodes(suite, store, tmp_path):
    tasks = suite.tasks("test", 1, level=2)
    checkpoints = checkpoint_path(tmp_path / "runs.db")
    assert checkpoints == tmp_path / "runs.checkpoints.sqlite"
    crashing = ScriptedLLM(CrashOnce(tasks))
    with GraphAgent(load_graph("plan_solve_check"), checkpoints=checkpoints) as agent:
        [result] = run_tasks(crashing, suite, tasks, store, agent=agent).results
    assert result.status == "error" and "backend died" in result.error
    before = store.steps(result.run_id)
    assert [s.node for s in before] == ["plan"]

    fresh = scripted(tasks)
    resumed = resume_run(fresh, store, result.run_id, checkpoints=checkpoints)
    assert resumed.status == "success" and resumed.reward == 1.0
    after = store.steps(result.run_id)
    assert after[0] == before[0]  # the plan step was neither re-run nor re-recorded
    assert [s.node for s in after[1:]] == ["solve", "check"]  # only the unfinished nodes ran
    assert after[1].parent_step_id == before[0].id  # the plan from the checkpoint fed the solver
    assert [r.prompt.endswith("Plan:\n") for r in fresh.requests] == [False]  # one call: the solver
    run = store.get_run(result.run_id)
    assert run.status == "success" and run.calls == 3 and run.error is None
    with pytest.raises(StoreError, match=f"run {result.run_id} already finished \\(success\\)"):
        resume_run(fresh, store, result.run_id, checkpoints=checkpoints)


def test_resume_reruns_only_the_failed_fan_out_branch(suite, store, tmp_path):
    tasks = suite.tasks("test", 1, level=2)
    checkpoints = tmp_path / "cp.sqlite"
    with GraphAgent(load_graph("best_of_n"), checkpoints=checkpoints) as agent:
        [result] = run_tasks(ScriptedLLM(CrashOnce(tasks, at=3)), suite, tasks, store, agent=agent).results
    assert result.status == "error"
    # the branches run concurrently: when the third call crashes, the fourth may or may not
    # have finished first (on a loaded machine it sometimes has not)
    finished = [s.node for s in store.steps(result.run_id)]
    assert finished in (["solve"] * 2, ["solve"] * 3)
    fresh = scripted(tasks)
    resumed = resume_run(fresh, store, result.run_id, checkpoints=checkpoints)
    assert resumed.status == "success"
    assert [s.node for s in store.steps(result.run_id)] == ["solve"] * 4 + ["select", "check"]
    assert len(fresh.requests) == 4 - len(finished)  # only the branches that did not finish ran again


def test_a_solve_run_resumes_by_making_its_call_again(suite, store, tmp_path):
    tasks = suite.tasks("test", 1, level=2)
    agent = SolveAgent()
    run_id = store.start_run("solve", suite="arithmetic", task_id=tasks[0].id,  # as run_tasks opens it
                             meta={"level": tasks[0].level, "task": tasks[0].model_dump(mode="json"),
                                   **agent.run_meta(tasks[0], suite)})
    store.interrupt_runs([run_id], error="killed")
    result = resume_run(scripted(tasks), store, run_id)
    assert result.status in ("success", "failure") and store.get_run(run_id).status == result.status
    assert len(store.steps(run_id)) == 1
    old = store.start_run("solve", suite="arithmetic")  # a row from before runs recorded their agent
    with pytest.raises(StoreError, match="recorded no way to rebuild it"):
        resume_run(scripted(tasks), store, old, checkpoints=tmp_path / "cp.sqlite")


# --- accounting ---------------------------------------------------------------------------------------


def test_node_stats_account_calls_tokens_and_latency_per_node(suite, store):
    tasks = suite.tasks("test", 2, level=2)
    report, runs, _ = run_graph(load_graph("solve_critic"), scripted(tasks, review=REVISE), suite, store, n=2)
    stats = store.node_stats(r.run_id for r in report.results)
    assert [(s["node"], s["role"], s["runs"], s["calls"], s["retries"]) for s in stats] == [
        ("solve", "solver", 2, 6, 0), ("review", "critic", 2, 6, 0), ("check", "verifier", 2, 2, 0)]
    steps = [s for run in runs for s in run.steps]
    for row in stats:
        mine = [s for s in steps if s.node == row["node"]]
        assert row["prompt_tokens"] == sum(s.prompt_tokens or 0 for s in mine)
        assert row["tokens"] == sum((s.prompt_tokens or 0) + (s.completion_tokens or 0) for s in mine)
        assert row["latency_s"] == pytest.approx(sum(s.latency_s or 0 for s in mine))
    assert stats[2]["tokens"] == 0
    assert sum(s["tokens"] for s in stats) == report.tokens
    assert store.node_stats([]) == []


def test_a_critic_can_send_a_fan_out_back_for_another_round(suite, store):
    tasks = suite.tasks("test", 1, level=2)
    graph = (Graph("fan_review").add_node("route", role="router", labels=["sample", "skip"])
             .add_node("solve", role="solver", n=3, temperature=0.7).add_node("select", role="selector")
             .add_node("review", role="critic", max_revisions=1).add_node("check", role="verifier")
             .add_edge("route", "solve", when="sample").add_edge("route", "check", when="skip")
             .add_edge("solve", "select").add_edge("select", "review")
             .add_edge("review", "solve", when="revise").add_edge("review", "check", when="accept")
             .set_entry("route"))
    rounds = iter([WRONG] * 3 + [tasks[0].solution] * 3)
    lock = threading.Lock()

    def solve(task, prompt):
        with lock:
            return next(rounds)

    _, [run], _ = run_graph(graph, scripted(tasks, review=REVISE, solve=solve, cls=Prefers, label="sample"), suite, store)
    names = nodes(run)
    assert names == ["route"] + ["solve"] * 3 + ["select", "review"] + ["solve"] * 3 + ["select", "review", "check"]
    second_select = run.steps[9]
    assert second_select.parsed["votes"] == {tasks[0].answer: 3}  # the first round's samples no longer vote
    assert all("Critique: step 2 is wrong" in s.prompt_text for s in run.steps[6:9])
    assert run.status == "success"
