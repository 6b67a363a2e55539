"""A router sends plain arithmetic to the calculator tool and the rest to a solver; then verify."""

from agentkit.graph import Graph

graph = (
    Graph("router_tool")
    .add_node("route", role="router", labels={
        "calculator": "the question is one arithmetic expression to evaluate",
        "reasoning": "anything else: it needs step-by-step reasoning",
    })
    .add_node("calculate", role="tool", tool="calculator")
    .add_node("solve", role="solver")
    .add_node("check", role="verifier")
    .add_edge("route", "calculate", when="calculator")
    .add_edge("route", "solve", when="reasoning")
    .add_edge("calculate", "check")
    .add_edge("solve", "check")
    .set_entry("route")
)
