"""Search on the command line: `agentkit run --search`, what the run prints of a search (the
chosen path, its tree's cost per node), `--resume` of a searching run, `agentkit improve
--explore search` and the improve table (scripted backend, no model loads)."""

from __future__ import annotations

import json

import pytest
from rich.console import Console
from typer.testing import CliRunner

import agentkit.llm
from agentkit.cli.app import app
from agentkit.cli.render import improve_table, node_table
from agentkit.learn.improve import RoundResult
from agentkit.llm.scripted import ScriptedLLM
from agentkit.runtime import SolveAgent, restore_agent, run_tasks
from agentkit.graph.search import MCTS
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
    (["--search", "mcts:8", "--temperature", "0.5"],
     "--temperature 0.5: a search samples its lines at its own temperature (0.8 unless the spec sets it); set it "
     "in the spec instead, "
     "e.g. --search mcts:8,temperature=0.5"),
    (["--search", "beam:4x8,temprature=1"], "--search beam:4x8,temprature=1: search 'beam:4x8,temprature=1': option "
                                            "'temprature=1' is not understood"),
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


def test_run_reports_a_spec_with_options_as_one_strategy(monkeypatch, tmp_path):
    tasks = SUITE.tasks("test", 1)
    monkeypatch.setattr(agentkit.llm, "load_backend", lambda *a, **k: gold_lines(tasks))
    spec = "beam:2x4,temperature=1.0,top_p=0.99"
    result = invoke("run", "--n", "1", "--search", spec, "--json", "--store", str(tmp_path / "runs.db"))
    assert result.exit_code == 0, result.stderr
    [node] = json.loads(result.stdout)["nodes"]
    assert node["strategies"] == [spec]  # its commas do not split it


# --- agentkit improve --explore search ------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--explore", "sample", "--method", "expert"], "--method expert trains on search trees; add --explore search"),
    (["--explore", "search", "--method", "dpo"],
     "--method dpo does not train on search trees; with --explore search choose one of rft, step-dpo, expert, grpo, rloo"),
    (["--explore", "dig"], "--explore dig: choose one of sample, search"),
    (["--explore", "search", "--search", "mcts:x"], "--search mcts:x: search 'mcts:x' is not understood"),
    (["--explore", "sample", "--search", "mcts:8"],
     "--search mcts:8 is the strategy of --explore search; add --explore search"),
    (["--method", "grpo", "--search", "mcts:8"],  # grpo trains on sampled groups: it explores by sampling
     "--search mcts:8 is the strategy of --explore search; add --explore search"),
    (["--advance-at", "0.5", "--method", "grpo"], "--advance-at 0.5 reads search's success"),
    (["--advance-at", "2"], "--advance-at 2.0: give a share of tasks in [0, 1]"),
    (["--final-tasks", "-1"], "--final-tasks -1: give 0 (off) or more tasks"),
    (["--curriculum", "mopps", "--method", "grpo"], "--curriculum mopps learns from search's solved tasks"),
    (["--curriculum", "easy"], "--curriculum easy: choose one of none, mopps"),
    (["--pool", "0"], "--pool 0: must be at least 1"),
])
def test_improve_rejects_bad_search_options_before_loading_a_model(args, message, monkeypatch, tmp_path):
    monkeypatch.setattr(agentkit.llm, "load_backend", lambda *a, **k: pytest.fail("the model loaded"))
    result = invoke("improve", *args, "--store", str(tmp_path / "runs.db"))
    assert result.exit_code == 1 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert message in result.stderr, result.stderr


def rounds() -> list[RoundResult]:
    return [
        RoundResult(0, 2, "base", None, False, 0, {}, 0.41, 0.62, None, None, None, 0, 0.0, 90.0,
                    final_success=0.14, final_ci95=(0.095, 0.197), final_n=200, cpu_s=95.0),
        RoundResult(1, 1, "v1", "v1", True, 512, {}, 0.47, 0.66, 0.47, 0.66, 0.0123, 1_234_567, 300.0, 500.0,
                    p_adjusted=0.0369, final_success=0.18, final_ci95=(0.131, 0.240), final_n=200, cpu_s=3600.0),
        RoundResult(2, 2, "v1", "v2", False, 640, {}, 0.47, 0.66, 0.44, 0.65, 0.71, 23_456, 300.0, 500.0,
                    p_adjusted=1.0, final_success=0.18, final_ci95=(0.131, 0.240), final_n=200, cpu_s=7260.0),
    ]


def test_improve_table_shows_final_interval_both_p_values_and_cpu_in_80_columns():
    text = text_of(improve_table(rounds()), 80)
    lines = text.splitlines()
    assert all(len(line.rstrip()) <= 80 for line in lines), text
    assert "…" not in text  # nothing cut to fit
    header = " ".join(lines[1:3])
    for name in ("round", "policy", "gate", "p adj", "final", "sampled", "CPU"):
        assert name in header, name
    row = {line.split()[0]: line.split() for line in lines if line.split() and line.split()[0] in "012"}
    assert row["0"] == ["0", "2", "base", "-", "41.0%", "-", "62.0%", "-", "-", "14.0%", "[10-20]", "0", "1.6"]
    assert row["1"][3:] == ["v1", "✓", "47.0%", "47.0%", "66.0%", "0.012", "0.037", "18.0%", "[13-24]", "1.2M", "60"]
    assert row["2"][3:] == ["v2", "✗", "47.0%", "44.0%", "66.0%", "0.710", "1.000", "18.0%", "[13-24]", "23k", "121"]
