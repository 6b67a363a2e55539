"""A solver node that searches: ``add_node("solve", role="solver", search=Beam(...))`` is
declared, validated and kept in the spec as JSON, runs a step-level search from the prompt
the role renders, and records the tree as steps of the node (scripted backend)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import agentkit.llm
from agentkit.cli.app import app
from agentkit.errors import GraphSpecError
from agentkit.graph import MCTS, Beam, Graph
from agentkit.graph.search import strategy_dict
from agentkit.llm.scripted import ScriptedLLM
from agentkit.runtime import GraphAgent, restore_agent, run_tasks
from agentkit.store import TrajectoryStore
from agentkit.tasks import get_suite

SUITE = get_suite("arithmetic")
PLAN = "1. Do the first operation.\n2. Do the second operation.\n\n"


def searching(strategy=Beam(width=2, expand=4), *, plan: bool = False) -> Graph:
    graph = Graph("search_check")
    if plan:
        graph.add_node("plan", role="planner").add_edge("plan", "solve").set_entry("plan")
    else:
        graph.set_entry("solve")
    return (graph.add_node("solve", role="solver", search=strategy).add_node("check", role="verifier")
            .add_edge("solve", "check"))


def rare_right(tasks, every: int = 4) -> ScriptedLLM:
    """A weak policy: under the right prefix only every ``every``-th sampled line is the gold
    solution's next line, the others are wrong arithmetic; a plan when asked for one."""
    gold = {t.question: (t.solution + "\n").splitlines(keepends=True) for t in tasks}
    seen: dict[str, int] = {}

    def reply(prompt: str, request) -> str:
        if prompt.endswith("Plan:\n"):
            return PLAN
        lines = gold[prompt.rsplit("Question: ", 1)[1].split("\n", 1)[0]]
        done = prompt.split("Solution:\n")[-1]
        k = done.count("\n")
        seen[done] = seen.get(done, 0) + 1
        if done == "".join(lines[:k]) and seen[done] % every == 0:
            return lines[k]
        return "Answer: 0\n" if k == len(lines) - 1 else f"Step {k + 1}: 1 + 1 = 3\n"

    return ScriptedLLM(reply)


# --- declaring it --------------------------------------------------------------------------------


@pytest.mark.parametrize("given", [Beam(width=4, expand=8), "beam:4x8", strategy_dict(Beam(width=4, expand=8))])
def test_a_solver_takes_a_strategy_or_its_spec_and_the_spec_keeps_it_as_json(given):
    graph = (Graph("g").add_node("solve", role="solver", search=given).add_node("check", role="verifier")
             .add_edge("solve", "check").set_entry("solve").validate())
    solve = graph.spec.node("solve")
    assert solve.search == strategy_dict(Beam(width=4, expand=8)) and solve.strategy == Beam(width=4, expand=8)
    again = Graph.from_spec(graph.spec.model_dump(mode="json"))
    assert again.spec == graph.spec and again.spec.node("solve").strategy == Beam(width=4, expand=8)
    assert solve.options() == {"search": "beam:4x8"}
    assert 'solve["solve<br/><i>solver</i><br/>search=beam:4x8"]' in graph.to_mermaid()


@pytest.mark.parametrize("build, message", [
    (lambda g: g.add_node("solve", role="solver", search="beam:4"),
     "node 'solve': search 'beam:4' is not understood; write beam:WxK (e.g. beam:4x8) or mcts:N (e.g. mcts:32)"),
    (lambda g: g.add_node("solve", role="solver", search="mcts:0"),
     "node 'solve': MCTS simulations 0: must be at least 1"),
    (lambda g: g.add_node("solve", role="solver", search=8),
     "node 'solve': search 8 is not a strategy; pass Beam(...), MCTS(...) or 'beam:4x8' / 'mcts:32'"),
    (lambda g: g.add_node("check", role="verifier", search="beam:4x8").set_entry("check").validate(),
     "node 'check' (verifier): search= is an option of solver nodes; remove it or set role='solver'"),
    (lambda g: g.add_node("solve", role="solver", search="beam:4x8", n=4, temperature=0.8)
     .add_node("select", role="selector").add_edge("solve", "select").set_entry("solve").validate(),
     "node 'solve' (solver): search= keeps the best path of its own tree; drop n=4"),
    (lambda g: g.add_node("solve", role="solver", search="mcts:8", temperature=0.5).set_entry("solve").validate(),
     "a search samples its lines at the strategy's temperature; drop temperature="),
])
def test_a_bad_search_is_one_graph_spec_error_naming_the_node_and_the_fix(build, message):
    with pytest.raises(GraphSpecError) as caught:
        build(Graph("g"))
    assert message in str(caught.value) and "\n" not in str(caught.value)


# --- running it ----------------------------------------------------------------------------------


def test_a_searching_solver_then_a_verifier_records_the_tree_under_the_node(tmp_path):
    tasks = SUITE.tasks("test", 2, level=2)
    with TrajectoryStore(tmp_path / "runs.db") as store:
        report = run_tasks(rare_right(tasks), SUITE, tasks, store, agent=GraphAgent(searching(plan=True)))
        runs = [store.get_run(r.run_id, steps=True) for r in report.results]
        stats = {row["node"]: row for row in store.node_stats(r.id for r in runs)}
    assert [r.status for r in report.results] == ["success", "success"]  # sampling once would rarely be
    for run, task in zip(runs, tasks):
        plan, *tree, check = run.steps
        assert (plan.node, check.node) == ("plan", "check") and {s.node for s in tree} == {"solve"}
        info = {s.id: s.meta["search"] for s in tree}
        assert all(info[s.id]["strategy"] == "beam:2x4" for s in tree)
        # the tree hangs under the plan step; each node's prompt is its parent's plus its line
        assert {s.parent_step_id for s in tree if info[s.id]["depth"] == 1} == {plan.id}
        by_id = {s.id: s for s in tree}
        for s in tree:
            if info[s.id]["depth"] > 1:
                parent = by_id[s.parent_step_id]
                assert s.prompt_ids == parent.prompt_ids + parent.completion_ids
        chosen = [s for s in tree if info[s.id]["chosen"]]
        assert "".join(s.completion_text for s in chosen) == task.solution + "\n"
        assert check.parent_step_id == chosen[-1].id and check.parsed["reward"] == 1.0
        assert "Do the second operation." in ScriptedLLM.decode(tree[0].prompt_ids)  # the role's prompt, plan in it
    assert stats["solve"]["tree_nodes"] == sum(len(r.steps) - 2 for r in runs)
    assert stats["solve"]["strategies"] == ["beam:2x4"] and stats["plan"]["tree_nodes"] == 0


def test_a_searching_graph_run_resumes_with_its_strategy(tmp_path):
    tasks = SUITE.tasks("test", 1, level=2)
    with TrajectoryStore(tmp_path / "runs.db") as store:
        report = run_tasks(rare_right(tasks), SUITE, tasks, store, agent=GraphAgent(searching(MCTS(simulations=12))))
        row = store.get_run(report.results[0].run_id)
    agent, _, task = restore_agent(row, checkpoints=None)
    assert agent.graph.spec.node("solve").strategy == MCTS(simulations=12) and task == tasks[0]


def test_agentkit_run_runs_a_graph_file_whose_solver_searches(monkeypatch, tmp_path):
    tasks = SUITE.tasks("test", 2, level=2)
    path = tmp_path / "g.py"
    path.write_text(
        "from agentkit.graph import Beam, Graph\n"
        "graph = (Graph('search_check').add_node('solve', role='solver', search=Beam(width=2, expand=4))\n"
        "         .add_node('check', role='verifier').add_edge('solve', 'check').set_entry('solve'))\n"
    )
    monkeypatch.setattr(agentkit.llm, "load_backend", lambda *a, **k: rare_right(tasks))
    result = CliRunner().invoke(app, ["run", str(path), "--level", "2", "--n", "2", "--store",
                                      str(tmp_path / "runs.db")], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.stderr
    assert "100.0% (2/2)" in result.stdout and "[solve: beam:2x4 search," in result.stdout
    assert "beam:2x4" in result.stdout.split("\nsearch", 1)[1]  # the search table under the per-node one
    shown = CliRunner().invoke(app, ["graphs", "show", str(path), "--out", str(tmp_path / "g.mmd")])
    assert "search='beam:2x4'" in shown.stdout
