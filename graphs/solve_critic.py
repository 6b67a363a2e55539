"""Solve, let a critic review; revise with its critique at most twice, then verify."""

from agentkit.graph import Graph

graph = (
    Graph("solve_critic")
    .add_node("solve", role="solver")
    .add_node("review", role="critic", max_revisions=2)
    .add_node("check", role="verifier")
    .add_edge("solve", "review")
    .add_edge("review", "solve", when="revise")
    .add_edge("review", "check", when="accept")
    .set_entry("solve")
)
