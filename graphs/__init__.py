"""Prebuilt agent graphs, one module-level ``graph`` per file; ``agentkit graphs list`` lists them
and ``agentkit.graph.load_graph(name)`` loads one."""
