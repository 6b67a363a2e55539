"""What the pages show, computed from store records: a run's graph and path, per-node accounting,
step checks, heat maps and search tree; an improve run's curves; a policy lineage; the
marked difference of a pair. Plain functions of records, so they are tested without a server."""

from __future__ import annotations

import difflib
import functools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup, escape

from agentkit.store.policies import Policy
from agentkit.store.runs import Run, Step
from agentkit.tasks.steps import step_char_spans

from .svg import Series, TreeNode, graph_diagram, line_chart, tree_diagram, value_colour

__all__ = ["CallView", "RunView", "run_view", "token_decoder", "heat_map", "improve_chart", "lineage", "marked_diff", "utility"]


# --- one run -----------------------------------------------------------------------------------


@dataclass
class CallView:
    """One model call as the run page shows it."""

    step: Step
    checks: list[tuple[str, bool | None, float | None]]
    """Each "Step k:" line of the completion: (line, checked ok or None, its value or None)."""
    heat: Markup
    search: dict[str, Any] | None
    mean_logprob: float | None


@dataclass
class RunView:
    run: Run
    diagram: Markup
    nodes: list[dict[str, Any]]
    """Per node: calls, visits, prompt/completion tokens, latency."""
    calls: list[CallView]
    tree: Markup | None
    tree_size: int = 0
    checks_ok: int = 0
    checks_bad: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


Decoder = Callable[[list[int]], list[str]]


@functools.lru_cache(maxsize=8)
def token_decoder(model: str | None) -> Decoder | None:
    """Each token id's text under ``model``'s tokenizer, when its tokenizer.json is on this
    machine (the agentkit model cache or a local directory; loaded once, never downloaded
    nor converted: the store keeps ids, not per-token text). None otherwise."""
    from agentkit.llm.models import local_model

    path = local_model(model) if model else None
    if path is None or not (path / "tokenizer.json").is_file():
        return None
    try:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    except Exception:  # not a tokenizer this library reads: the heat map shows ids
        return None
    return lambda ids: tokenizer.decode_batch([[i] for i in ids], skip_special_tokens=False)


def heat_map(step: Step, decode: Decoder | None = None) -> Markup:
    """One cell per completion token, coloured by how unlikely it was (10 shades, classes
    h0..h9 in style.css), holding the token's text when ``decode`` gives it; the hover says
    which token and its log-probability. Built as one short string per cell: a 1,000-call
    run has tens of thousands of them."""
    logprobs = step.logprobs or []
    ids = step.completion_ids or []
    texts: list[str] = []
    if decode is not None and len(ids) == len(logprobs):
        try:
            texts = decode(ids)
        except Exception:  # an id the tokenizer has no text for (another model's run)
            texts = []
    cells = []
    for k, lp in enumerate(logprobs):
        shade = min(9, int((1 - math.exp(max(lp, -30.0))) * 10))
        title = f'#{k + 1} id {ids[k] if k < len(ids) else "?"}: {lp:.2f}'
        if texts:
            text = escape(texts[k]).replace("\n", "↵\n") or "∅"
            cells.append(f'<span class="h{shade}" title="{title}">{text}</span>')
        else:
            cells.append(f'<i class="h{shade}" title="{title}"></i>')
    kind = "heat tokens" if texts else "heat"
    return Markup(f'<div class="{kind}">{"".join(cells)}</div>') if cells else Markup("")


def _checks(step: Step) -> list[tuple[str, bool | None, float | None]]:
    text = step.completion_text or ""
    parsed = step.parsed if isinstance(step.parsed, dict) else {}
    oks = parsed.get("steps") if isinstance(parsed.get("steps"), list) else None
    values = step.step_values or []
    lines = []
    for k, span in enumerate(step_char_spans(text)):
        ok = bool(oks[k]) if oks is not None and k < len(oks) else None
        lines.append((text[span.start:span.end].strip(), ok, values[k] if k < len(values) else None))
    return lines


def run_view(run: Run, decode: Decoder | None = None) -> RunView:
    """The run page's content; ``decode`` gives the heat maps their token text."""
    steps = run.steps or []
    # A visit is a stretch of consecutive steps of one node (retries and a search tree's
    # many calls included); the path is the sequence of visits.
    visits: list[str] = []
    for s in steps:
        if not visits or visits[-1] != s.node:
            visits.append(s.node)
    roles, declared = _declared_graph(run)
    order = list(dict.fromkeys([*roles, *visits]))  # the graph's nodes as declared, then any other visited
    taken: dict[tuple[str, str], int] = {}
    for a, b in zip(visits, visits[1:]):
        taken[(a, b)] = taken.get((a, b), 0) + 1
    edges = [(a, b, when, taken.pop((a, b), 0)) for a, b, when in declared if a in roles and b in roles]
    edges += [(a, b, None, count) for (a, b), count in taken.items()]  # taken, though not declared
    nodes: dict[str, dict[str, Any]] = {
        name: {"node": name, "visits": visits.count(name), "calls": 0, "retries": 0, "prompt_tokens": 0,
               "completion_tokens": 0, "latency_s": None, "role": roles.get(name)} for name in order}
    calls, failed = [], set()
    ok_count = bad_count = 0
    for s in steps:
        row = nodes[s.node]
        row["role"] = row["role"] or s.role
        row["calls"] += 1
        row["retries"] += int(s.attempt > 0)
        row["prompt_tokens"] += s.prompt_tokens or 0
        row["completion_tokens"] += s.completion_tokens or 0
        if s.latency_s:  # search calls record none: their node shows "–", not "0 ms"
            row["latency_s"] = (row["latency_s"] or 0.0) + s.latency_s
        checks = _checks(s)
        ok_count += sum(ok is True for _, ok, _ in checks)
        bad_count += sum(ok is False for _, ok, _ in checks)
        if any(ok is False for _, ok, _ in checks):
            failed.add(s.node)
        search = (s.meta or {}).get("search") if isinstance(s.meta, dict) else None
        lps = s.logprobs or []
        calls.append(CallView(s, checks, heat_map(s, decode), search, sum(lps) / len(lps) if lps else None))
    tree_steps = [c for c in calls if c.search is not None]
    return RunView(
        run=run,
        diagram=graph_diagram([(n, nodes[n]["visits"]) for n in order], edges, failed=failed),
        nodes=list(nodes.values()),
        calls=calls,
        tree=search_tree(tree_steps) if tree_steps else None,
        tree_size=len(tree_steps),
        checks_ok=ok_count,
        checks_bad=bad_count,
    )


def _declared_graph(run: Run) -> tuple[dict[str, str], list[tuple[str, str, str | None]]]:
    """The nodes (name -> role) and edges (source, target, label) of the graph a graph
    agent's run recorded (``meta.graph.spec``); none for other runs."""
    graph = run.meta.get("graph") if isinstance(run.meta, dict) else None
    spec = graph.get("spec") if isinstance(graph, dict) else None
    if not isinstance(spec, dict):
        return {}, []
    roles = {n["name"]: n.get("role") for n in spec.get("nodes") or [] if isinstance(n, dict) and "name" in n}
    edges = [(e["source"], e["target"], e.get("when")) for e in spec.get("edges") or []
             if isinstance(e, dict) and "source" in e and "target" in e]
    return roles, edges


def search_tree(calls: Sequence[CallView]) -> Markup:
    """The search tree recorded by graph.search.record_tree: one circle per node, coloured by
    its value, the chosen root-to-answer path thick."""
    nodes = [TreeNode(key="root", parent=None, label="", title="the prompt", colour="#8a94a6", marked=True)]
    for c in calls:
        meta = c.search or {}
        value = meta.get("value")
        kind = meta.get("kind", "")
        title = (f"step {c.step.id} · depth {meta.get('depth')} · {kind} · value "
                 f"{'-' if value is None else f'{value:.2f}'} · visits {meta.get('visits', 0)}\n"
                 f"{(c.step.completion_text or '').strip()}")
        parent = c.step.parent_step_id if c.step.parent_step_id is not None else "root"
        nodes.append(TreeNode(key=c.step.id, parent=parent, label="", title=title, colour=value_colour(value),
                              marked=bool(meta.get("chosen")), href=f"#step-{c.step.id}"))
    return tree_diagram(nodes, dx=22, dy=54, radius=8)


# --- improve runs ------------------------------------------------------------------------------


def improve_chart(rounds: Sequence[dict[str, Any]]) -> Markup:
    """Final-test success (with its 95% interval) and the gate set's success of the active
    policy, and each candidate's gate success, by round."""
    final, gate, cand = [], [], []
    for r in rounds:
        x = float(r.get("round", 0))
        if r.get("final_success") is not None:
            lo, hi = (r.get("final_ci95") or (None, None))
            final.append((x, r["final_success"], lo, hi))
        if r.get("heldout_success") is not None:
            gate.append((x, r["heldout_success"], None, None))
        if r.get("candidate_success") is not None:
            cand.append((x, r["candidate_success"], None, None))
    series = [Series("gate set, active", "#059669", gate), Series("gate set, candidate", "#d97706", cand, dashed=True),
              Series("final test (95% CI)", "#2563eb", final)]  # drawn last: on top
    return line_chart([s for s in series if s.points], width=1000, height=300)


# --- policies ----------------------------------------------------------------------------------

_STATUS_COLOUR = {"active": "#059669", "candidate": "#d97706", "rejected": "#dc2626", "retired": "#8a94a6"}


def lineage(policies: Sequence[Policy]) -> Markup:
    """Versions as a tree of parents, coloured by status; the active version's line thick."""
    by_version = {p.version: p for p in policies}
    active_line: set[str] = set()
    current = next((p.version for p in policies if p.status == "active"), None)
    while current is not None and current not in active_line:
        active_line.add(current)
        current = by_version[current].parent if current in by_version else None
    nodes = []
    for p in policies:
        held = (p.metrics or {}).get("heldout_success")
        title = f"{p.version} ({p.status})" + (f", held-out {held:.1%}" if isinstance(held, (int, float)) else "")
        nodes.append(TreeNode(key=p.version, parent=p.parent, label=p.version, title=title,
                              colour=_STATUS_COLOUR.get(p.status, "#8a94a6"), marked=p.version in active_line,
                              href=f"/policies/{p.version}"))
    return tree_diagram(nodes, dx=30, dy=56, radius=9, label_width=46, css="tree lineage")


# --- pairs -------------------------------------------------------------------------------------

_TOKENS = re.compile(r"\s+|\w+|[^\w\s]")


def marked_diff(chosen: str, rejected: str) -> tuple[Markup, Markup]:
    """Both texts, with the words that differ wrapped in <mark> (chosen: ins, rejected: del)."""
    a, b = _TOKENS.findall(chosen), _TOKENS.findall(rejected)
    left: list[str] = []
    right: list[str] = []
    for op, i0, i1, j0, j1 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        x, y = escape("".join(a[i0:i1])), escape("".join(b[j0:j1]))
        if op == "equal":
            left.append(x)
            right.append(y)
        else:
            if x:
                left.append(Markup('<mark class="ins">{}</mark>').format(x))
            if y:
                right.append(Markup('<mark class="del">{}</mark>').format(y))
    return Markup("".join(left)), Markup("".join(right))


# --- memory ------------------------------------------------------------------------------------


def utility(item: dict[str, Any]) -> float | None:
    """Success when shown minus the nodes' base rate at those showings, per showing."""
    shown = item.get("shown") or 0
    return (item["shown_success"] - item["expected"]) / shown if shown else None
