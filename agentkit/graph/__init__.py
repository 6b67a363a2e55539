"""Declarative agent graphs: nodes with roles (planner, solver, critic, router, verifier,
tool, selector), edges with conditions and bounds, compiled to LangGraph.

    from agentkit.graph import Graph
    graph = (Graph("solve_check").add_node("solve", role="solver").add_node("check", role="verifier")
             .add_edge("solve", "check").set_entry("solve"))
    app = graph.compile()

A solver node searches instead of sampling once with ``search=Beam(width=4, expand=8)``,
``search=MCTS(simulations=32)`` or ``search="beam:4x8"`` (agentkit.graph.search).

Importing this package does not import LangGraph; ``compile`` does.
"""

from agentkit.graph.graph import Graph, to_mermaid
from agentkit.graph.registry import list_graphs, load_graph, prebuilt_names
from agentkit.graph.context import RunContext
from agentkit.graph.search import MCTS, Beam
from agentkit.graph.spec import ROLES, EdgeSpec, GraphSpec, NodeSpec, validate_spec
from agentkit.graph.tools import Tool, ToolError, get_tool, register_tool

__all__ = [
    "Graph",
    "GraphSpec",
    "NodeSpec",
    "EdgeSpec",
    "ROLES",
    "RunContext",
    "Beam",
    "MCTS",
    "Tool",
    "ToolError",
    "register_tool",
    "get_tool",
    "load_graph",
    "list_graphs",
    "prebuilt_names",
    "to_mermaid",
    "validate_spec",
]
