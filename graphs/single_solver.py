"""One solver call on the suite's few-shot prompt (what `agentkit run` does without a graph)."""

from agentkit.graph import Graph

graph = Graph("single_solver").add_node("solve", role="solver").set_entry("solve")
