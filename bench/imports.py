"""The import graph of agentkit, read from the source with ``ast``: every ``import`` and
``from ... import`` of an agentkit module, at the top of a module or inside a function
(not those under ``if TYPE_CHECKING:``, which only annotations see).

    python bench/imports.py            # cycles and never-arrows, one line each
    python bench/imports.py --svg docs/imports.svg

tests/test_architecture.py holds the never-arrows of docs/design.md with this module.
"""

from __future__ import annotations

import argparse
import ast
import math
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# source folder -> the package it installs as (pyproject's package-dir)
FOLDERS = {"agentkit": "agentkit", "memory": "agentkit.memory", "cli": "agentkit.cli", "graphs": "agentkit.graphs"}

# (from, to): arrows that must never exist, by package (docs/design.md). "*" is any package.
_NOT_STORE = ("agentkit", "llm", "tasks", "graph", "runtime", "learn", "train", "memory", "cli", "graphs")
NEVER = (
    {("store", to) for to in _NOT_STORE}
    | {("llm", to) for to in _NOT_STORE + ("store",) if to != "llm"}
    | {("tasks", "llm"), ("graph", "store"), ("graph", "memory"), ("runtime", "learn"), ("runtime", "train"),
       ("train", "runtime"), ("train", "graph"), ("train", "store"), ("train", "tasks"),
       ("memory", "learn"), ("memory", "train")}
    | {("*", "cli")}
)


def modules() -> dict[str, Path]:
    """Every agentkit module name and its file."""
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def _nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node, except under ``if TYPE_CHECKING:`` (imports for annotations only)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in [child, *_nodes(child)])
            continue
        yield node
        yield from _nodes(node)


def _imported(name: str, path: Path, tree: ast.AST, known: set[str]) -> Iterator[tuple[str, int]]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in _nodes(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            # "from pkg import mod" imports the module pkg.mod when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target, node.lineno


def imports() -> dict[str, dict[str, int]]:
    """module -> {imported agentkit module: first line}."""
    found = modules()
    graph: dict[str, dict[str, int]] = {}
    for name, path in found.items():
        edges = graph.setdefault(name, {})
        for target, line in _imported(name, path, ast.parse(path.read_text(), str(path)), set(found)):
            edges.setdefault(target, line)
    return graph


def package_of(module: str) -> str:
    """agentkit.store.db -> store; agentkit.errors -> errors; agentkit -> agentkit."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def package_graph(graph: dict[str, dict[str, int]] | None = None) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for source, targets in (graph or imports()).items():
        edges.setdefault(package_of(source), set())
        for target in targets:
            if package_of(target) != package_of(source):
                edges[package_of(source)].add(package_of(target))
    return edges


def cycles(edges: dict[str, set[str]] | dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one member (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


def never_arrows(graph: dict[str, dict[str, int]] | None = None) -> list[str]:
    """'module:line -> module' for each import that is a never-arrow."""
    out = []
    for source, targets in sorted((graph or imports()).items()):
        for target, line in sorted(targets.items()):
            a, b = package_of(source), package_of(target)
            if a != b and ((a, b) in NEVER or ("*", b) in NEVER):
                out.append(f"{source}:{line} -> {target} ({a} -> {b})")
    return out


def svg(edges: dict[str, set[str]]) -> str:
    """The package graph as an SVG: packages in layers (what they import sits lower)."""
    depth: dict[str, int] = {}

    def level(node: str, seen: frozenset[str] = frozenset()) -> int:
        if node not in depth:
            below = [level(n, seen | {node}) for n in edges.get(node, ()) if n not in seen]
            depth[node] = 1 + max(below, default=-1)
        return depth[node]

    for node in edges:
        level(node)
    layers: dict[int, list[str]] = {}
    for node in sorted(edges):
        layers.setdefault(depth[node], []).append(node)
    width, row, box_w, box_h = 760, 90, 92, 30
    height = row * len(layers) + 20
    where = {}
    for d, names in layers.items():
        for i, node in enumerate(names):
            where[node] = ((i + 1) * width / (len(names) + 1), height - 40 - d * row)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           'font-size="13"><defs><marker id="a" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
           'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#666"/></marker></defs>',
           f'<rect width="{width}" height="{height}" fill="white"/>']
    for source in sorted(edges):
        for target in sorted(edges[source]):
            (x1, y1), (x2, y2) = where[source], where[target]
            dx, dy = x2 - x1, y2 - y1
            length = math.hypot(dx, dy) or 1
            # stop at the target box's edge
            t = min(box_w / 2 / abs(dx) if dx else math.inf, box_h / 2 / abs(dy) if dy else math.inf)
            ex, ey = x2 - dx * min(t, 1), y2 - dy * min(t, 1)
            colour = "#c00" if depth[target] >= depth[source] else "#888"
            out.append(f'<line x1="{x1:.0f}" y1="{y1:.0f}" x2="{ex:.0f}" y2="{ey:.0f}" stroke="{colour}" '
                       f'stroke-width="1.2" marker-end="url(#a)" opacity="{0.5 + 0.5 * (length < 200):.1f}"/>')
    for node, (x, y) in sorted(where.items()):
        out.append(f'<rect x="{x - box_w / 2:.0f}" y="{y - box_h / 2:.0f}" width="{box_w}" height="{box_h}" rx="5" '
                   f'fill="#eef3fb" stroke="#345"/><text x="{x:.0f}" y="{y + 4:.0f}" text-anchor="middle">{node}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--svg", help="write the package graph here")
    args = parser.parse_args()
    graph = imports()
    packages = package_graph(graph)
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} imports of agentkit modules")
    print(f"module cycles: {len(cycles(graph))}")
    for component in cycles(graph):
        print("  ", " <-> ".join(component))
    print(f"package cycles: {len(cycles(packages))}")
    for component in cycles(packages):
        print("  ", " <-> ".join(component))
    arrows = never_arrows(graph)
    print(f"never-arrows: {len(arrows)}")
    for arrow in arrows:
        print("  ", arrow)
    if args.svg:
        Path(args.svg).write_text(svg({k: v for k, v in packages.items() if k != "agentkit"}))  # the root imports nothing
        print(f"wrote {args.svg}")


if __name__ == "__main__":
    main()
