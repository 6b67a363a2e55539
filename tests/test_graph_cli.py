"""The graph commands: `agentkit run GRAPH`, `agentkit run --resume`, `agentkit graphs list/show`,
and the per-node tables of `run` and `traces show` (scripted backend, no model loads)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import agentkit.llm
from agentkit.cli.app import app
from agentkit.llm.scripted import ScriptedLLM
from agentkit.store import TrajectoryStore
from agentkit.tasks import get_suite

PLAN = "1. Do the first operation.\n2. Do the second operation.\n\n"


def invoke(*args: str, columns: int = 200):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": str(columns)})


def gold(tasks, crash_solver_once: bool = False):
    by_question = {t.question: t for t in tasks}
    crashed = []

    def reply(prompt: str, request) -> str:
        if prompt.endswith("Plan:\n"):
            return PLAN
        if crash_solver_once and not crashed:
            crashed.append(True)
            raise RuntimeError("backend died")
        return by_question[prompt.rsplit("Question: ", 1)[1].split("\n", 1)[0]].solution + "\n"

    return ScriptedLLM(reply)


def test_graphs_list_prints_one_line_per_prebuilt_graph():
    result = invoke("graphs", "list")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["best_of_n", "plan_solve_check", "router_tool", "single_solver",
                                                    "solve_critic"]
    assert "[plan, solve, check]" in lines[1]


def test_graphs_show_prints_nodes_and_edges_and_writes_mermaid(tmp_path):
    out = tmp_path / "sc.mmd"
    result = invoke("graphs", "show", "solve_critic", "--out", str(out))
    assert result.exit_code == 0, result.stderr
    for text in ("solve (entry)", "critic", "max_revisions=2", "review", "revise", "accept", "check", "(end)"):
        assert text in result.stdout, text
    assert result.stdout.rstrip().endswith(f"wrote {out}")
    assert "review -->|revise| solve" in out.read_text()


def test_graphs_show_never_creates_directories(tmp_path):
    out = tmp_path / "nonexistent" / "dir" / "x.mmd"
    result = invoke("graphs", "show", "solve_critic", "--out", str(out))
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: cannot write {out}: no directory {out.parent}"), result.stderr
    assert "--out" in result.stderr and not (tmp_path / "nonexistent").exists()


def test_graphs_show_a_user_file(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text("from agentkit.graph import Graph\ngraph = Graph('mine').add_node('solve', role='solver').set_entry('solve')\n")
    result = invoke("graphs", "show", str(path), "--out", str(tmp_path / "mine.mmd"))
    assert result.exit_code == 0 and "mine" in result.stdout and (tmp_path / "mine.mmd").exists()


@pytest.mark.parametrize("args, needle", [
    (["graphs", "show", "plan_solv"], "unknown graph 'plan_solv'; choose one of: best_of_n"),
    (["run", "plan_solv"], "unknown graph 'plan_solv'"),
    (["run", "--resume", "5", "plan_solve_check"], "--resume 5 continues the graph each run started with"),
])
def test_graph_errors_are_one_line(args, needle, tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTKIT_STORE", str(tmp_path / "runs.db"))
    result = invoke(*args)
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: ") and needle in result.stderr, result.stderr


def test_run_a_graph_prints_steps_summary_and_per_node_table(monkeypatch, tmp_path):
    tasks = get_suite("arithmetic").tasks("test", 2)
    monkeypatch.setattr(agentkit.llm, "load_backend", lambda *a, **k: gold(tasks))
    store = tmp_path / "runs.db"
    result = invoke("run", "plan_solve_check", "--n", "2", "--store", str(store))
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "[plan]" in out and "[solve]" in out and "[check]" in out
    assert out.index("summary") < out.index("per node")
    table = out[out.index("per node"):]
    for node, role in (("plan", "planner"), ("solve", "solver"), ("check", "verifier")):
        assert node in table and role in table
    with TrajectoryStore(store) as s:
        runs = s.list_runs(None)
        assert {r.graph for r in runs} == {"plan_solve_check"} and {r.status for r in runs} == {"success"}
        assert runs[0].meta["suite"] == {"source": "arithmetic", "checker": None}


def test_run_and_traces_show_count_fallbacks_per_node(monkeypatch, tmp_path):
    """The small model's plan ("1. ... 21.") does not parse, so the solver runs without one:
    the per-node tables of `run` and `traces show` count it and say what the graph did instead."""
    tasks = get_suite("arithmetic").tasks("test", 2)
    by_question = {t.question: t for t in tasks}

    def reply(prompt: str, request) -> str:
        if prompt.endswith("Plan:\n"):
            return "".join(f"{k}.\n" for k in range(1, 22))
        return by_question[prompt.rsplit("Question: ", 1)[1].split("\n", 1)[0]].solution + "\n"

    monkeypatch.setattr(agentkit.llm, "load_backend", lambda *a, **k: ScriptedLLM(reply))
    store = tmp_path / "runs.db"
    result = invoke("run", "plan_solve_check", "--n", "2", "--store", str(store))
    assert result.exit_code == 0, result.stderr
    table = result.stdout[result.stdout.index("per node"):]
    assert "un-" in table and "parsed" in table and "fall-" in table and "backs" in table  # two-line headers
    plan_row = next(line for line in table.splitlines() if line.split()[:2] == ["plan", "planner"])
    assert plan_row.split()[2:6] == ["2", "4", "2", "4"]  # runs, calls, retries, unparsed
    assert plan_row.split()[6] == "2"  # fallbacks
    assert "plan: 2 fallbacks (no plan parsed: the nodes after it ran without one)" in " ".join(table.split())
    data = json.loads(invoke("run", "plan_solve_check", "--n", "2", "--json", "--store", str(store)).stdout)
    assert [(n["node"], n["unparsed"], n["fallbacks"]) for n in data["nodes"]] == [
        ("plan", 4, 2), ("solve", 0, 0), ("check", 0, 0)]
    with TrajectoryStore(store) as s:
        run_id = s.list_runs(1)[0].id
    shown = invoke("traces", "show", str(run_id), "--store", str(store))
    assert shown.exit_code == 0, shown.stderr
    assert "plan: 1 fallback (no plan parsed: the nodes after it ran without one)" in " ".join(shown.stdout.split())


def test_run_a_graph_file_with_json(monkeypatch, tmp_path):
    tasks = get_suite("arithmetic").tasks("test", 1)
    monkeypatch.setattr(agentkit.llm, "load_backend", lambda *a, **k: gold(tasks))
    path = tmp_path / "g.py"
    path.write_text("from agentkit.graph import Graph\n"
                    "graph = (Graph('solve_check').add_node('solve', role='solver').add_node('check', role='verifier')\n"
                    "         .add_edge('solve', 'check').set_entry('solve'))\n")
    result = invoke("run", str(path), "--n", "1", "--json", "--store", str(tmp_path / "runs.db"))
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["graph"] == "solve_check" and data["success_rate"] == 1.0
    assert [(n["node"], n["calls"]) for n in data["nodes"]] == [("solve", 1), ("check", 1)]


def test_run_resume_finishes_an_interrupted_run(monkeypatch, tmp_path):
    tasks = get_suite("arithmetic").tasks("test", 1)
    store = tmp_path / "runs.db"
    monkeypatch.setattr(agentkit.llm, "load_backend", lambda *a, **k: gold(tasks, crash_solver_once=True))
    first = invoke("run", "plan_solve_check", "--n", "1", "--store", str(store))
    assert first.exit_code == 0, first.stderr
    with TrajectoryStore(store) as s:
        [run] = s.list_runs()
        assert run.status == "error" and [st.node for st in s.steps(run.id)] == ["plan"]
    assert (tmp_path / "runs.checkpoints.sqlite").exists()

    calls = []

    def backend(name, model, **kwargs):
        calls.append((name, model, kwargs))
        return gold(tasks)

    monkeypatch.setattr(agentkit.llm, "load_backend", backend)
    result = invoke("run", "--resume", str(run.id), "--store", str(store))
    assert result.exit_code == 0, result.stderr
    assert calls == [("transformers", "scripted", {"base_url": None, "dtype": "auto"})]  # the run's own model
    assert "success" in result.stdout and "per node" in result.stdout
    with TrajectoryStore(store) as s:
        assert s.get_run(run.id).status == "success"
        assert [st.node for st in s.steps(run.id)] == ["plan", "solve", "check"]
    again = invoke("run", "--resume", str(run.id), "--store", str(store))
    assert again.exit_code == 1 and f"run {run.id} already finished (success)" in again.stderr


def test_run_resume_of_an_unknown_run(tmp_path):
    store = tmp_path / "runs.db"
    TrajectoryStore(store).close()
    result = invoke("run", "--resume", "42", "--store", str(store))
    assert result.exit_code == 1 and "no run with id 42" in result.stderr


def test_traces_show_has_graph_places_and_a_per_node_table(monkeypatch, tmp_path):
    tasks = get_suite("arithmetic").tasks("test", 1)
    monkeypatch.setattr(agentkit.llm, "load_backend", lambda *a, **k: gold(tasks))
    store = tmp_path / "runs.db"
    assert invoke("run", "plan_solve_check", "--n", "1", "--store", str(store)).exit_code == 0
    with TrajectoryStore(store) as s:
        [run] = s.list_runs()
        steps = s.steps(run.id)
    result = invoke("traces", "show", str(run.id), "--store", str(store))
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "parent" in out and "route" in out and "per node" in out
    assert '{"reward": 1.0, "checker": "arithmetic"}' in out  # the checker step shows its parsed output
    assert str(steps[0].id) in out and "planner" in out and "verifier" in out
