"""Plan, solve, let a critic review (one revision at most), then verify: a graph whose answer a
later model call can change, and whose plan comes before the answering call. Monte-Carlo
credit through the rest of a graph is measured on it (bench/graph_credit.py) and tested on it
(tests/test_graph_credit.py); load it with ``load_graph("bench/plan_solve_review.py")``."""

from agentkit.graph import Graph

graph = (
    Graph("plan_solve_review")
    .add_node("plan", role="planner")
    .add_node("solve", role="solver")
    .add_node("review", role="critic", max_revisions=1)
    .add_node("check", role="verifier")
    .add_edge("plan", "solve")
    .add_edge("solve", "review")
    .add_edge("review", "solve", when="revise")
    .add_edge("review", "check", when="accept")
    .set_entry("plan")
)
