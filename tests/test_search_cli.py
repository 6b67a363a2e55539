"""Search on the command line: `agentkit run --search`, what the run prints of a search (the
chosen path, its tree's cost per node) and `--resume` of a searching run (scripted backend,
no model loads)."""

from __future__ import annotations

import json

import pytest
from rich.console import Console
from typer.testing import CliRunner

import agentkit.llm
from agentkit.cli.app import app
from agentkit.cli.render import node_table
from agentkit.llm.scripted import ScriptedLLM
from agentkit.runtime import SolveAgent, restore_agent, run_tasks
from agentkit.runtime.search import MCTS
from agentkit.store import TrajectoryStore
from agentkit.tasks import get_suite

SUITE = get_suite("arithmetic")


def invoke(*args: str, columns: int = 200):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": str(columns)})


def gold_lines(tasks) -> ScriptedLLM:
    """Every sampled line is the gold solution's next line: a search's siblings are all one
    line (merged, with its count), so a tree is the solution's lines and nothing else."""
    gold = {t.question: t.solution + "\n" for t in tasks}

    def reply(prompt: str, request) -> str:
        question = prompt.rsplit("Question: ", 1)[1].split("\n", 1)[0]
        return gold[question][len(prompt.split("Solution:\n")[-1]):]  # the stop at "\n" keeps one line

    return ScriptedLLM(reply)


def text_of(renderable, width: int) -> str:
    console = Console(record=True, width=width, file=open("/dev/null", "w"))
    console.print(renderable)
    return console.export_text()


# --- agentkit run --search -----------------------------------------------------------------------


def test_run_search_records_the_tree_and_prints_its_cost(monkeypatch, tmp_path):
    tasks = SUITE.tasks("test", 2, level=2)
    monkeypatch.setattr(agentkit.llm, "load_backend", lambda *a, **k: gold_lines(tasks))
    store = tmp_path / "runs.db"
    result = invoke("run", "--level", "2", "--n", "2", "--search", "beam:2x4", "--store", str(store), columns=80)
    assert result.exit_code == 0, result.stderr
    with TrajectoryStore(store) as traces:
        runs = [traces.get_run(r.id, steps=True) for r in traces.list_runs(None)]
        [stats] = traces.node_stats(r.id for r in runs)
    for run, task in zip(sorted(runs, key=lambda r: r.id), tasks):
        assert run.status == "success" and run.meta["agent"]["search"]["kind"] == "beam"
        lines = task.solution.count("\n") + 1
        assert [s.node for s in run.steps] == ["solve"] * lines  # one tree node per line: siblings merged
        # the root's 2 x 4 samples, then 8 under the one node of the frontier, at every depth
        assert [s.meta["search"]["count"] for s in run.steps] == [8] * lines
        assert "".join(s.completion_text for s in run.steps) == task.solution + "\n"
    sampled = sum(8 * len(s.completion_ids) for run in runs for s in run.steps)
    assert (stats["tree_nodes"], stats["sampled_tokens"], stats["strategies"]) == (
        sum(len(run.steps) for run in runs), sampled, ["beam:2x4"])
    out = result.stdout
    assert "[solve: beam:2x4 search, 3 tree nodes; the chosen path]" in out
    assert f"answer: {tasks[0].answer}" in out
    table = out.split("\nsearch", 1)[1]  # the search table, under the per-node one
    assert f"{sampled:,}" in table and "beam:2x4" in table
    assert all(len(line) <= 80 for line in out.splitlines())


def test_node_stats_of_a_node_that_did_not_search_are_zero(tmp_path):
    tasks = SUITE.tasks("test", 1)
    with TrajectoryStore(tmp_path / "runs.db") as store:
        report = run_tasks(gold_lines(tasks), SUITE, tasks, store)
        [stats] = store.node_stats(r.run_id for r in report.results)
    assert (stats["tree_nodes"], stats["sampled_tokens"], stats["strategies"]) == (0, 0, [])
    assert "search" not in text_of(node_table([stats]), 80)


def test_a_searching_run_resumes_with_its_strategy(tmp_path):
    tasks = SUITE.tasks("test", 1)
    with TrajectoryStore(tmp_path / "runs.db") as store:
        agent = SolveAgent(search=MCTS(simulations=5, expand=3), seed=4)
        report = run_tasks(gold_lines(tasks), SUITE, tasks, store, agent=agent)
        row = store.get_run(report.results[0].run_id)
    restored, _, task = restore_agent(row, checkpoints=None)
    assert restored.search == MCTS(simulations=5, expand=3) and restored.seed == 4 and task == tasks[0]


@pytest.mark.parametrize("args, message", [
    (["--search", "beam:4"], "--search beam:4: search 'beam:4' is not understood; write beam:WxK (e.g. beam:4x8)"),
    (["--search", "beam:0x8"], "--search beam:0x8: beam width 0: must be at least 1"),
    (["--search", "mcts:8", "--temperature", "0.5"], "--temperature 0.5: a search samples its lines at its own"),
    (["solve_critic", "--search", "beam:4x8"],
     "graph solve_critic declares search on its solver node, e.g. .add_node('solve', role='solver', "
     "search='beam:4x8'); drop --search"),
])
def test_run_rejects_a_bad_search_in_one_line_before_the_model_loads(args, message, monkeypatch, tmp_path):
    monkeypatch.setattr(agentkit.llm, "load_backend", lambda *a, **k: pytest.fail("the model loaded"))
    result = invoke("run", *args, "--store", str(tmp_path / "runs.db"))
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert message in result.stderr, result.stderr


def test_run_json_reports_the_search_per_node(monkeypatch, tmp_path):
    tasks = SUITE.tasks("test", 1)
    monkeypatch.setattr(agentkit.llm, "load_backend", lambda *a, **k: gold_lines(tasks))
    result = invoke("run", "--n", "1", "--search", "mcts:4", "--json", "--store", str(tmp_path / "runs.db"))
    assert result.exit_code == 0, result.stderr
    [node] = json.loads(result.stdout)["nodes"]
    assert node["strategies"] == ["mcts:4"] and node["tree_nodes"] == tasks[0].solution.count("\n") + 1
