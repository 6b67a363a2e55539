"""The graph builder: declare nodes with roles and edges with conditions, then compile.

    graph = (Graph("plan_solve_check")
        .add_node("plan", role="planner")
        .add_node("solve", role="solver")            # or search=Beam(width=4, expand=8)
        .add_node("review", role="critic", max_revisions=2)
        .add_node("check", role="verifier")
        .add_edge("plan", "solve").add_edge("solve", "review")
        .add_edge("review", "solve", when="revise").add_edge("review", "check", when="accept")
        .set_entry("plan"))
    app = graph.compile()          # a LangGraph CompiledStateGraph

A node with no outgoing edge ends the run. ``validate()`` and ``compile()`` raise
GraphSpecError naming the problem and its fix.
"""

from __future__ import annotations

from typing import Any

from agentkit.errors import GraphSpecError
from agentkit.graph.spec import EdgeSpec, GraphSpec, NodeSpec, check_graph_name, graph_spec, node_spec, validate_spec

__all__ = ["Graph", "to_mermaid"]


class Graph:
    """A graph under construction; every builder method returns ``self``."""

    def __init__(self, name: str, description: str = ""):
        check_graph_name(name)
        if not isinstance(description, str):
            raise GraphSpecError(f"graph '{name}': description={description!r} is not text; describe it in one string")
        self.spec = GraphSpec(name=name, description=description)
        self.source: str | None = None
        """Where load_graph found it: a prebuilt name or a file path (None: built in code)."""

    @classmethod
    def from_spec(cls, spec: GraphSpec | dict) -> Graph:
        """A graph over ``spec``, a GraphSpec or its dict form; ``validate()`` checks it."""
        graph = cls.__new__(cls)
        graph.spec = spec if isinstance(spec, GraphSpec) else graph_spec(spec)
        graph.source = None
        return graph

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def nodes(self) -> list[NodeSpec]:
        return list(self.spec.nodes)

    @property
    def edges(self) -> list[EdgeSpec]:
        return list(self.spec.edges)

    def add_node(self, name: str, role: str, **options: Any) -> Graph:
        """Add a node; ``options`` are NodeSpec fields (max_retries, max_revisions, n, search, ...)."""
        if any(n.name == name for n in self.spec.nodes):
            raise GraphSpecError(f"node '{name}' is already in graph '{self.name}'; give the new node another name")
        self.spec.nodes.append(node_spec(name, role, options))
        return self

    def add_edge(self, source: str, target: str, when: str | None = None) -> Graph:
        """source -> target always, or only when ``source`` (a router or critic) emits ``when``."""
        for value, what in ((source, "source"), (target, "target")):
            if not isinstance(value, str):
                raise GraphSpecError(f"edge {what} {value!r} is not a node name; pass the name as a string")
        if when is not None and not isinstance(when, str):
            raise GraphSpecError(f"edge {f'{source} -> {target}'!r}: when={when!r} is not a label; pass a label "
                                 "string such as when='revise', or drop when=")
        self.spec.edges.append(EdgeSpec(source=source, target=target, when=when))
        return self

    def set_entry(self, name: str) -> Graph:
        if not isinstance(name, str):
            raise GraphSpecError(f"entry {name!r} is not a node name; pass the name as a string")
        self.spec.entry = name
        return self

    def validate(self) -> Graph:
        validate_spec(self.spec)
        return self

    def compile(self, *, checkpointer: Any = None) -> Any:
        """The validated graph as a compiled LangGraph app (see agentkit.graph.compile)."""
        from agentkit.graph.compile import compile_graph

        return compile_graph(self.spec, checkpointer=checkpointer)

    def to_mermaid(self) -> str:
        return to_mermaid(self.spec)

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, nodes={[n.name for n in self.spec.nodes]})"


_SHAPES = {"router": ("{", "}"), "verifier": ("([", "])"), "tool": ("[[", "]]"), "selector": ("[/", "/]")}


def to_mermaid(spec: GraphSpec) -> str:
    """A Mermaid flowchart of the spec: nodes labelled with role and bounds, edges with labels."""
    lines = ["flowchart TD", "    START((START))"]
    for node in spec.nodes:
        bounds = [f"{k}={v}" for k, v in node.options().items()
                  if k in ("n", "max_revisions", "max_visits", "tool", "search")]
        label = f"{node.name}<br/><i>{node.role}</i>" + (f"<br/>{', '.join(bounds)}" if bounds else "")
        left, right = _SHAPES.get(node.role, ("[", "]"))
        lines.append(f'    {node.name}{left}"{label}"{right}')
    lines.append("    END((END))")
    if spec.entry:
        lines.append(f"    START --> {spec.entry}")
    for edge in spec.edges:
        arrow = f"-->|{edge.when}|" if edge.when else "-->"
        lines.append(f"    {edge.source} {arrow} {edge.target}")
    for node in spec.nodes:
        for key, target in spec.routes(node.name).items():
            if target is None:
                lines.append(f"    {node.name} -->|{key}| END" if key else f"    {node.name} --> END")
    return "\n".join(lines) + "\n"
