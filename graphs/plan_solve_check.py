"""Plan, then solve following the plan, then check the answer with the task's verifier."""

from agentkit.graph import Graph

graph = (
    Graph("plan_solve_check")
    .add_node("plan", role="planner")
    .add_node("solve", role="solver")
    .add_node("check", role="verifier")
    .add_edge("plan", "solve")
    .add_edge("solve", "check")
    .set_entry("plan")
)
