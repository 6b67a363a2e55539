"""Compilation of a validated GraphSpec to a LangGraph StateGraph.

- one LangGraph node per spec node, running its role (roles.py) with the run's
  RunContext passed as LangGraph's runtime context (never checkpointed);
- an unconditional edge is a plain edge; labelled edges out of a router or critic are
  one conditional edge keyed by label, read from the ``route`` the node wrote;
- an edge into a fan-out solver (n > 1) returns n ``Send``s, one per sample, whose
  writes meet in the ``samples`` reducer before the selector runs;
- a node with max_visits ends the run when it would run once more (conditional edge to
  END); a critic stops asking for revisions after max_revisions (roles.run_critic).

LangGraph is imported here, inside ``compile_graph``, never when agentkit is imported.
"""

import operator
from typing import Annotated, Any, Optional, TypedDict

from agentkit.graph.context import RunContext
from agentkit.graph.roles import run_node
from agentkit.graph.spec import GraphSpec, NodeSpec, validate_spec

__all__ = ["GraphState", "compile_graph", "initial_state", "RECURSION_LIMIT"]

RECURSION_LIMIT = 1000
"""LangGraph's super-step cap; bounded loops and the run budget end runs long before."""


def merge_max(old: Optional[dict], new: Optional[dict]) -> dict:
    """Per-key maximum: parallel branches that each count one visit agree on the count."""
    out = dict(old or {})
    for key, value in (new or {}).items():
        out[key] = max(out.get(key, 0), value)
    return out


class GraphState(TypedDict, total=False):
    question: str
    plan: Optional[str]
    draft: Optional[dict]
    critique: Optional[dict]
    route: Optional[str]
    reward: Optional[float]
    last_step: Optional[int]
    sample: Optional[int]
    """Set only in a fan-out branch's input (the Send argument)."""
    visits: Annotated[dict, merge_max]
    revisions: Annotated[dict, merge_max]
    samples: Annotated[list, operator.add]
    trace: Annotated[list, operator.add]
    """Step ids of completed nodes, in completion order."""


def initial_state(question: str) -> dict[str, Any]:
    return {"question": question, "plan": None, "draft": None, "critique": None, "route": None, "reward": None,
            "last_step": None, "visits": {}, "revisions": {}, "samples": [], "trace": []}


def _node_function(node: NodeSpec):
    from langgraph.runtime import Runtime

    def run(state: GraphState, runtime: Runtime[RunContext]) -> dict:
        return run_node(node, state, runtime.context)

    run.__name__ = node.name
    return run


def compile_graph(spec: GraphSpec, *, checkpointer: Any = None) -> Any:
    """Validate ``spec`` and return the compiled LangGraph app (a CompiledStateGraph).

    Invoke it with ``app.invoke(initial_state(question), config, context=RunContext(...))``;
    with a checkpointer, ``config`` needs ``{"configurable": {"thread_id": ...}}``."""
    validate_spec(spec)
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import Send

    nodes = {n.name: n for n in spec.nodes}
    builder = StateGraph(GraphState, context_schema=RunContext)
    for node in spec.nodes:
        builder.add_node(node.name, _node_function(node))

    def needs_branch(target: Optional[str]) -> bool:
        return target is not None and (nodes[target].fan_out or nodes[target].max_visits is not None)

    def go(target: Optional[str], key: Any, state: dict) -> Any:
        """The value a path function returns to reach ``target`` (END when exhausted)."""
        if target is None:
            return key  # mapped to END
        node = nodes[target]
        if node.max_visits is not None and (state.get("visits") or {}).get(target, 0) >= node.max_visits:
            return END
        if node.fan_out:
            return [Send(target, {**state, "sample": i}) for i in range(node.n)]
        return key

    def path_map(routes: dict) -> dict:
        mapping = {key: (END if target is None else target) for key, target in routes.items()}
        if any(target is not None and nodes[target].max_visits is not None for target in routes.values()):
            mapping[END] = END
        return mapping

    # the entry
    if needs_branch(spec.entry):
        builder.add_conditional_edges(START, lambda state: go(spec.entry, spec.entry, state),
                                      path_map({spec.entry: spec.entry}))
    else:
        builder.add_edge(START, spec.entry)

    for node in spec.nodes:
        routes = spec.routes(node.name)
        if None in routes:  # a node without labels: one edge or the end
            target = routes[None]
            if not needs_branch(target):
                builder.add_edge(node.name, END if target is None else target)
                continue
            key_routes = {target: target}
            builder.add_conditional_edges(
                node.name, lambda state, t=target: go(t, t, state), path_map(key_routes)
            )
        else:
            builder.add_conditional_edges(
                node.name, lambda state, r=routes: go(r[state["route"]], state["route"], state), path_map(routes)
            )
    return builder.compile(checkpointer=checkpointer, name=spec.name)
