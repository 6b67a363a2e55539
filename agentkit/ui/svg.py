"""Pictures drawn on the server as SVG: the learning curve, a run's path through its graph,
a search tree and a policy lineage. Nothing loads from the network; every label passes
through ``escape`` (labels are model text, node and version names)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from markupsafe import Markup, escape

__all__ = ["Series", "line_chart", "graph_diagram", "TreeNode", "tree_diagram", "value_colour"]


def value_colour(value: float | None) -> str:
    """Red (0) through amber to green (1); grey when unknown."""
    if value is None:
        return "#c8ccd2"
    v = min(1.0, max(0.0, float(value)))
    hue = 120 * v  # 0 red, 60 amber, 120 green
    return f"hsl({hue:.0f}, 62%, 52%)"


# --- line chart with intervals -----------------------------------------------------------------


@dataclass
class Series:
    name: str
    colour: str
    points: list[tuple[float, float, float | None, float | None]]
    """(x, y, low, high): y with its interval; low/high None draws no bar."""
    dashed: bool = False


def line_chart(series: Sequence[Series], *, x_label: str = "round", y_label: str = "success",
               width: int = 680, height: int = 280) -> Markup:
    """Lines with 95% interval bars, y from 0 to 1 as percent, integer x ticks."""
    left, right, top, bottom = 52, 190, 16, 40
    xs = [p[0] for s in series for p in s.points] or [0.0, 1.0]
    x0, x1 = min(xs), max(xs)
    x1 = x1 if x1 > x0 else x0 + 1
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + 14 + (x - x0) / (x1 - x0) * (pw - 28)  # inset: points at the ends stay whole

    def sy(y: float) -> float:
        return top + (1 - y) * ph

    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
           f'aria-label="{escape(y_label)} by {escape(x_label)}">']
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        y = sy(tick)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{tick:.0%}</text>')
    for x in sorted(set(xs)):
        out.append(f'<text x="{sx(x):.1f}" y="{top + ph + 16}" class="tick" text-anchor="middle">{x:g}</text>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 4}" class="axis" text-anchor="middle">'
               f'{escape(x_label)}</text>')
    for i, s in enumerate(series):
        shift = (i - (len(series) - 1) / 2) * 5  # series side by side, so equal values stay visible
        pts = [(x + shift * (x1 - x0) / (pw - 28), y, lo, hi) for x, y, lo, hi in s.points if y is not None]
        dash = ' stroke-dasharray="5 4"' if s.dashed else ""
        for x, y, lo, hi in pts:
            if lo is not None and hi is not None:
                out.append(f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{sy(lo):.1f}" y2="{sy(hi):.1f}" '
                           f'stroke="{s.colour}" class="bar"/>')
                for yy in (lo, hi):
                    out.append(f'<line x1="{sx(x) - 4:.1f}" x2="{sx(x) + 4:.1f}" y1="{sy(yy):.1f}" y2="{sy(yy):.1f}" '
                               f'stroke="{s.colour}" class="bar"/>')
        if len(pts) > 1:
            d = " ".join(f"{'M' if k == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for k, (x, y, _, _) in enumerate(pts))
            out.append(f'<path d="{d}" stroke="{s.colour}" class="line"{dash}/>')
        for x, y, lo, hi in pts:
            interval = f" [{lo:.1%}, {hi:.1%}]" if lo is not None and hi is not None else ""
            out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4" fill="{s.colour}">'
                       f'<title>{escape(s.name)}, {escape(x_label)} {round(x):g}: {y:.1%}{interval}</title></circle>')
        ly = top + 8 + 20 * i
        out.append(f'<line x1="{left + pw + 14}" x2="{left + pw + 34}" y1="{ly}" y2="{ly}" stroke="{s.colour}" '
                   f'class="line"{dash}/><text x="{left + pw + 40}" y="{ly + 4}" class="legend">{escape(s.name)}</text>')
    out.append("</svg>")
    return Markup("".join(out))


# --- a run's graph, with the path it took ---------------------------------------------------


def graph_diagram(nodes: Sequence[tuple[str, int]], edges: Sequence[tuple[str, str, str | None, int]], *,
                  failed: set[str] = frozenset()) -> Markup:
    """Nodes (name, visits) left to right; edges (source, target, label, times this run took
    it). Forward edges arc above, edges back to an earlier node arc below. What the run
    took is drawn strong, the rest of the graph faint; ``failed`` nodes are outlined red."""
    bw, bh, gap = 132, 46, 84  # the gap holds an edge label such as "calculator ×12"
    index = {name: i for i, (name, _) in enumerate(nodes)}
    pairs = [(index[a], index[b]) for a, b, _, _ in edges]
    above = max([24 + 10 * (j - i) for i, j in pairs if j > i + 1] + [40 for i, j in pairs if i == j] + [0])
    below = max([24 + 10 * (i - j) for i, j in pairs if j < i] + [0])
    top = 14 + (above + 14 if above else 0)
    width = max(1, len(nodes)) * (bw + gap) - gap + 40
    height = top + bh + 14 + (below + 14 if below else 0)
    out = [f'<svg class="diagram" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
           'aria-label="the graph and the path this run took">',
           "<defs>" + "".join(
               f'<marker id="{name}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
               f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="{name}"/></marker>'
               for name in ("arrow", "arrow-faint")) + "</defs>"]

    def cx(i: int) -> float:
        return 20 + i * (bw + gap) + bw / 2

    for (i, j), (_, _, label, count) in zip(pairs, edges):
        if j == i + 1:
            d = f"M{cx(i) + bw / 2:.0f},{top + bh / 2} L{cx(j) - bw / 2 - 2:.0f},{top + bh / 2}"
            lx, ly = (cx(i) + cx(j)) / 2, top + bh / 2 - 6
        elif j == i:
            d = (f"M{cx(i) - 16:.0f},{top} C{cx(i) - 30:.0f},{top - 40} {cx(i) + 30:.0f},{top - 40} "
                 f"{cx(i) + 16:.0f},{top - 2}")
            lx, ly = cx(i), top - 34
        else:
            up = j > i
            y0 = top if up else top + bh
            lift = -1 if up else 1
            h = 26 + 12 * abs(j - i)
            d = (f"M{cx(i):.0f},{y0} C{cx(i):.0f},{y0 + lift * h} {cx(j):.0f},{y0 + lift * h} "
                 f"{cx(j):.0f},{y0 + lift * 2}")
            lx, ly = (cx(i) + cx(j)) / 2, y0 + lift * (h * 0.75) + (4 if not up else 0)
        text = " ".join(t for t in (label, f"×{count}" if count else "") if t)
        kind, arrow = ("edge taken", "arrow") if count else ("edge", "arrow-faint")
        out.append(f'<path d="{d}" class="{kind}" marker-end="url(#{arrow})"/>'
                   f'<text x="{lx:.0f}" y="{ly:.0f}" class="edge-label" text-anchor="middle">{escape(text)}</text>')
    for i, (name, visits) in enumerate(nodes):
        x = cx(i) - bw / 2
        cls = "node failed" if name in failed else "node" if visits else "node unvisited"
        out.append(f'<g class="{cls}"><rect x="{x:.0f}" y="{top}" width="{bw}" height="{bh}" rx="8"/>'
                   f'<text x="{cx(i):.0f}" y="{top + 20}" text-anchor="middle" class="node-name">{escape(name)}</text>'
                   f'<text x="{cx(i):.0f}" y="{top + 36}" text-anchor="middle" class="node-visits">'
                   f'{visits} visit{"s" if visits != 1 else ""}</text></g>')
    out.append("</svg>")
    return Markup("".join(out))


# --- trees: a search tree, a policy lineage --------------------------------------------------


@dataclass
class TreeNode:
    key: str | int
    parent: str | int | None
    label: str
    """Short text drawn beside the node."""
    title: str
    """The hover text (the node's line, the version's numbers)."""
    colour: str
    marked: bool = False
    """On the chosen path (search) or active (lineage): drawn thick."""
    href: str | None = None
    children: list[TreeNode] = field(default_factory=list)


def tree_diagram(nodes: Sequence[TreeNode], *, dx: int = 26, dy: int = 64, radius: int = 9,
                 label_width: int = 0, css: str = "tree") -> Markup:
    """A top-down tree: leaves side by side in depth-first order, each parent centred over
    its children; edges on marked paths drawn thick."""
    by_key = {n.key: n for n in nodes}
    for n in nodes:
        n.children = []
    roots = []
    for n in nodes:
        (by_key[n.parent].children if n.parent in by_key else roots).append(n)
    pos: dict[str | int, tuple[float, int]] = {}
    cursor = [0]

    def place(n: TreeNode, depth: int) -> float:
        if n.children:
            xs = [place(c, depth + 1) for c in n.children]
            x = (xs[0] + xs[-1]) / 2
        else:
            x = cursor[0]
            cursor[0] += 1
        pos[n.key] = (x, depth)
        return x

    stack_roots = list(roots)
    for root in stack_roots:
        place(root, 0)
    step = dx + label_width
    width = int(max(1, cursor[0]) * step + 40)
    height = int((max((d for _, d in pos.values()), default=0) + 1) * dy + 20)

    def xy(key: str | int) -> tuple[float, float]:
        x, d = pos[key]
        return 20 + x * step + step / 2 - label_width / 2, 20 + d * dy

    out = [f'<svg class="{css}" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">']
    for n in nodes:
        if n.parent in by_key:
            (x0, y0), (x1, y1) = xy(n.parent), xy(n.key)
            cls = "tree-edge marked" if n.marked and by_key[n.parent].marked else "tree-edge"
            out.append(f'<path d="M{x0:.1f},{y0:.1f} C{x0:.1f},{(y0 + y1) / 2:.1f} {x1:.1f},{(y0 + y1) / 2:.1f} '
                       f'{x1:.1f},{y1:.1f}" class="{cls}"/>')
    for n in nodes:
        x, y = xy(n.key)
        cls = "tree-node marked" if n.marked else "tree-node"
        shape = (f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{radius}" fill="{n.colour}" class="{cls}">'
                 f'<title>{escape(n.title)}</title></circle>')
        if n.label:
            shape += (f'<text x="{x + radius + 4:.1f}" y="{y + 4:.1f}" class="tree-label">{escape(n.label)}</text>')
        out.append(f'<a href="{escape(n.href)}">{shape}</a>' if n.href else shape)
    out.append("</svg>")
    return Markup("".join(out))
