"""Graph spec: the builder, every validation error (naming the bad value and the fix), the
registry of prebuilt graphs, and compiled LangGraph topology equal to the spec."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agentkit.errors import GraphSpecError
from agentkit.graph import Graph, load_graph, prebuilt_names, to_mermaid

PREBUILT = ["best_of_n", "plan_solve_check", "router_tool", "single_solver", "solve_critic"]


def plan_solve_review_check() -> Graph:
    # the ten readable lines
    return (
        Graph("plan_solve_check")
        .add_node("plan", role="planner")
        .add_node("solve", role="solver")
        .add_node("review", role="critic", max_revisions=2)
        .add_node("check", role="verifier")
        .add_edge("plan", "solve").add_edge("solve", "review")
        .add_edge("review", "solve", when="revise").add_edge("review", "check", when="accept")
        .set_entry("plan")
    )


def test_the_builder_returns_itself_and_validates():
    graph = plan_solve_review_check()
    assert graph.validate() is graph
    assert [n.name for n in graph.nodes] == ["plan", "solve", "review", "check"]
    assert [str(e) for e in graph.edges] == [
        "plan -> solve", "solve -> review", "review -> solve [revise]", "review -> check [accept]",
    ]
    assert graph.spec.node("review").max_revisions == 2
    assert graph.spec.routes("review") == {"accept": "check", "revise": "solve"}
    assert graph.spec.routes("check") == {None: None}  # no outgoing edge: the run ends


def three_nodes() -> Graph:
    return (Graph("g").add_node("plan", role="planner").add_node("solve", role="solver")
            .add_node("verify", role="verifier").add_edge("plan", "solve").add_edge("solve", "verify").set_entry("plan"))


def router_graph(labels=("calculator", "reasoning")) -> Graph:
    return (Graph("r").add_node("route", role="router", labels=list(labels)).add_node("calc", role="tool")
            .add_node("solve", role="solver").set_entry("route"))


INVALID = {
    "edge to an unknown node": (
        lambda: three_nodes().add_edge("solve", "verifer"),
        "edge 'solve -> verifer': no node named 'verifer' (nodes: plan, solve, verify)",
    ),
    "unreachable node": (
        lambda: three_nodes().add_node("extra", role="critic"),
        "node 'extra' is unreachable from entry 'plan'; add an edge into it or remove it",
    ),
    "cycle without a bound": (
        lambda: (Graph("loop").add_node("solve", role="solver").add_node("review", role="critic")
                 .add_edge("solve", "review").add_edge("review", "solve", when="revise").set_entry("solve")),
        "cycle 'solve -> review -> solve' has no bound; set max_revisions=2 on critic 'review'",
    ),
    "cycle through unconditional edges": (
        lambda: (Graph("loop").add_node("a", role="solver").add_node("b", role="planner")
                 .add_edge("a", "b").add_edge("b", "a").set_entry("a")),
        "cycle 'a -> b -> a' has no bound; set max_visits on one of its nodes (a, b)",
    ),
    "router label with no edge": (
        lambda: router_graph().add_edge("route", "calc", when="calculator"),
        "router 'route' label 'reasoning' has no edge; add .add_edge('route', <node>, when='reasoning')",
    ),
    "edge label the router cannot emit": (
        lambda: router_graph().add_edge("route", "calc", when="calc").add_edge("route", "solve", when="reasoning"),
        "edge 'route -> calc' when='calc': router 'route' cannot emit 'calc' (labels: calculator, reasoning)",
    ),
    "edge label on a node without labels": (
        lambda: three_nodes().add_edge("verify", "plan", when="retry"),
        "node 'verify' (verifier) emits no labels; drop when=",
    ),
    "two unconditional edges": (
        lambda: three_nodes().add_edge("plan", "verify"),
        "node 'plan' has 2 unconditional edges (to solve, verify); keep one",
    ),
    "missing entry point": (
        lambda: Graph("g").add_node("solve", role="solver"),
        "graph 'g' has no entry point; call .set_entry(<node>) (nodes: solve)",
    ),
    "unknown entry": (
        lambda: Graph("g").add_node("solve", role="solver").set_entry("slove"),
        "entry 'slove': no node named 'slove' (nodes: solve)",
    ),
    "no nodes": (lambda: Graph("empty").set_entry("x"), "graph 'empty' has no nodes"),
    "fan-out without a selector": (
        lambda: (Graph("g").add_node("solve", role="solver", n=4, temperature=0.7).add_node("check", role="verifier")
                 .add_edge("solve", "check").set_entry("solve")),
        "solver 'solve' fans out n=4 samples but is not followed by a selector",
    ),
    "selector after a plain solver": (
        lambda: (Graph("g").add_node("solve", role="solver").add_node("select", role="selector")
                 .add_edge("solve", "select").set_entry("solve")),
        "selector 'select' picks among a solver's samples, but 'solve' is not a fan-out solver",
    ),
    "a router with one label": (
        lambda: Graph("g").add_node("route", role="router", labels=["only"]).set_entry("route"),
        "router 'route' needs at least two labels",
    ),
    "an option of another role": (
        lambda: Graph("g").add_node("solve", role="solver", max_revisions=2).set_entry("solve"),
        "node 'solve' (solver): max_revisions= is an option of critic nodes",
    ),
    "greedy fan-out": (
        lambda: (Graph("g").add_node("solve", role="solver", n=3, temperature=0).add_node("s", role="selector")
                 .add_edge("solve", "s").set_entry("solve")),
        "n=3 samples at temperature 0 would be identical; set temperature=0.8",
    ),
    "a prompt with an unknown variable": (
        lambda: Graph("g").add_node("plan", role="planner", prompt="Plan ${task}:").set_entry("plan"),
        "prompt uses ${task}, which a planner does not provide (variables: question)",
    ),
    "an unknown tool": (
        lambda: Graph("g").add_node("t", role="tool", tool="shell").set_entry("t"),
        "unknown tool 'shell'; choose one of: calculator",
    ),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_graphs_name_the_problem_and_the_fix(case):
    build, message = INVALID[case]
    with pytest.raises(GraphSpecError) as info:
        build().validate()
    text = str(info.value)
    assert message in text, text
    assert "\n" not in text
    with pytest.raises(GraphSpecError):  # compile validates too
        build().compile()


BUILDER_ERRORS = {
    "unknown role": (lambda g: g.add_node("solve", role="solverr"), "node 'solve': unknown role 'solverr'; choose one of:"),
    "unknown option": (lambda g: g.add_node("review", role="critic", max_revision=2),
                       "node 'review': unknown option 'max_revision'; options:"),
    "bad option value": (lambda g: g.add_node("review", role="critic", max_revisions=-1),
                         "node 'review': max_revisions=-1 is invalid"),
    "duplicate node": (lambda g: g.add_node("a", role="solver").add_node("a", role="critic"),
                       "node 'a' is already in graph 'g'"),
    "bad node name": (lambda g: g.add_node("my node", role="solver"), "node name 'my node' is not usable"),
}


@pytest.mark.parametrize("case", list(BUILDER_ERRORS))
def test_the_builder_rejects_bad_nodes_at_once(case):
    add, message = BUILDER_ERRORS[case]
    with pytest.raises(GraphSpecError, match=None) as info:
        add(Graph("g"))
    assert message in str(info.value), str(info.value)


def test_bounded_loops_validate():
    plan_solve_review_check().validate()
    # a loop without a critic is fine once one of its nodes has max_visits
    (Graph("g").add_node("a", role="solver").add_node("b", role="planner", max_visits=3)
     .add_edge("a", "b").add_edge("b", "a").set_entry("a").validate())


# --- registry ---------------------------------------------------------------------------------


def test_prebuilt_graphs_are_listed_and_load():
    assert prebuilt_names() == PREBUILT
    for name in PREBUILT:
        graph = load_graph(name)
        assert graph.name == name and graph.source == name
        assert graph.spec.description  # the module docstring's first line


def test_load_graph_from_a_user_file(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(
        "from agentkit.graph import Graph\n"
        "graph = Graph('mine').add_node('solve', role='solver').set_entry('solve')\n"
    )
    graph = load_graph(str(path))
    assert graph.name == "mine" and graph.source == str(path.resolve())


def test_load_graph_errors(tmp_path):
    with pytest.raises(GraphSpecError, match="unknown graph 'plan_solve'; choose one of: best_of_n, plan_solve_check"):
        load_graph("plan_solve")
    with pytest.raises(GraphSpecError, match="does not exist"):
        load_graph(str(tmp_path / "missing.py"))
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(GraphSpecError, match="defines nothing as `graph`"):
        load_graph(str(empty))
    broken = tmp_path / "broken.py"
    broken.write_text("raise ValueError('oops')\n")
    with pytest.raises(GraphSpecError, match="failed to import \\(ValueError: oops\\)"):
        load_graph(str(broken))
    invalid = tmp_path / "invalid.py"
    invalid.write_text("from agentkit.graph import Graph\ngraph = Graph('x').add_node('a', role='solver')\n")
    with pytest.raises(GraphSpecError, match="no entry point"):
        load_graph(str(invalid))


# --- compiled topology ------------------------------------------------------------------------


def expected_topology(graph: Graph) -> set[tuple[str, str, str | None]]:
    """The spec's edges as LangGraph draws them: START -> entry, each edge (labelled edges
    keep their label), END where a node (or one of its labels) has no edge, and END from
    every node that leads into a node with max_visits."""
    spec = graph.spec
    edges = {("__start__", spec.entry, None)}
    for node in spec.nodes:
        for label, target in spec.routes(node.name).items():
            edges.add((node.name, target or "__end__", label))
        bounded = [t for t in spec.routes(node.name).values() if t and spec.node(t).max_visits is not None]
        if bounded:
            edges.add((node.name, "__end__", None))
    return edges


def drawn_topology(app) -> set[tuple[str, str, str | None]]:
    drawn = app.get_graph()
    out = set()
    for e in drawn.edges:
        label = e.data if e.data not in (None, e.target) else None
        out.add((e.source, e.target, label))
    return out


def loop_with_visits() -> Graph:
    return (Graph("visits").add_node("solve", role="solver").add_node("route", role="router", labels=["again", "done"],
                                                                      max_visits=3)
            .add_node("check", role="verifier").add_edge("solve", "route").add_edge("route", "solve", when="again")
            .add_edge("route", "check", when="done").set_entry("solve"))


@pytest.mark.parametrize("name", [*PREBUILT, "plan_review", "visits"])
def test_compiled_langgraph_topology_equals_the_spec(name):
    graph = {"plan_review": plan_solve_review_check(), "visits": loop_with_visits()}.get(name) or load_graph(name)
    app = graph.compile()
    assert type(app).__name__ == "CompiledStateGraph"
    assert set(app.get_graph().nodes) == {"__start__", "__end__", *(n.name for n in graph.nodes)}
    expected = {(s, t, label if label in graph.spec.node(s).emits() else None) if s != "__start__" else (s, t, label)
                for s, t, label in expected_topology(graph)}
    assert drawn_topology(app) == expected


def test_mermaid_has_every_node_and_edge():
    text = to_mermaid(plan_solve_review_check().spec)
    assert text.startswith("flowchart TD\n")
    for line in ("START --> plan", "review -->|revise| solve", "review -->|accept| check", "check --> END",
                 'review["review<br/><i>critic</i><br/>max_revisions=2"]'):
        assert line in text


def test_importing_agentkit_graph_does_not_import_langgraph():
    code = "import sys, agentkit.graph, agentkit.runtime; print('langgraph' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
