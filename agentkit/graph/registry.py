"""Finding graphs: a prebuilt name from graphs/ (agentkit.graphs) or a user's .py file that
defines a module-level ``graph``."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path

from agentkit.errors import GraphSpecError
from agentkit.graph.graph import Graph

__all__ = ["load_graph", "list_graphs", "prebuilt_names"]


PREBUILT = "agentkit.graphs"
"""The prebuilt graphs, found and loaded by name like plugins: they import agentkit.graph,
so agentkit.graph never imports them."""


def prebuilt_names() -> list[str]:
    spec = importlib.util.find_spec(PREBUILT)
    where = spec.submodule_search_locations if spec is not None else None
    return sorted(m.name for m in pkgutil.iter_modules(where or []) if not m.name.startswith("_"))


def list_graphs() -> list[tuple[str, str]]:
    """(name, one-line description) of every prebuilt graph."""
    out = []
    for name in prebuilt_names():
        graph = load_graph(name)
        out.append((name, graph.spec.description))
    return out


def load_graph(name_or_path: str | Path) -> Graph:
    """A validated Graph: a prebuilt name ("plan_solve_check") or a path to a .py file."""
    text = str(name_or_path)
    if text.endswith(".py") or "/" in text or "\\" in text:
        graph = _from_file(Path(text).expanduser())
    else:
        names = prebuilt_names()
        if text not in names:
            raise GraphSpecError(
                f"unknown graph {text!r}; choose one of: {', '.join(names)}, or pass a path to a .py file defining `graph`"
            )
        shared = _graph_of(importlib.import_module(f"{PREBUILT}.{text}"), f"prebuilt graph '{text}'")
        graph = Graph.from_spec(shared.spec.model_copy(deep=True))  # a caller's edits stay its own
        graph.source = text
    return graph.validate()


def _from_file(path: Path) -> Graph:
    if not path.is_file():
        raise GraphSpecError(f"graph file {path} does not exist; pass a prebuilt name ({', '.join(prebuilt_names())}) or a .py file")
    module_name = f"agentkit_user_graph_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise GraphSpecError(f"cannot import {path} as Python; pass a .py file that defines `graph = Graph(...)`")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except GraphSpecError:
        raise
    except Exception as exc:  # the user's file is user code: report where it broke, in one line
        raise GraphSpecError(f"{path} failed to import ({type(exc).__name__}: {exc}); fix the file and retry") from None
    graph = _graph_of(module, str(path))
    graph.source = str(path.resolve())
    return graph


def _graph_of(module: object, where: str) -> Graph:
    graph = getattr(module, "graph", None)
    if not isinstance(graph, Graph):
        found = "nothing" if graph is None else type(graph).__name__
        raise GraphSpecError(f"{where} defines {found} as `graph`; define graph = Graph('name').add_node(...) at module level")
    if not graph.spec.description and getattr(module, "__doc__", None):
        graph.spec.description = module.__doc__.strip().splitlines()[0]
    return graph
