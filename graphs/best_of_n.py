"""Four solver samples in parallel, a majority vote picks the answer, the verifier scores it."""

from agentkit.graph import Graph

graph = (
    Graph("best_of_n")
    .add_node("solve", role="solver", n=4, temperature=0.8)
    .add_node("select", role="selector")
    .add_node("check", role="verifier")
    .add_edge("solve", "select")
    .add_edge("select", "check")
    .set_entry("solve")
)
