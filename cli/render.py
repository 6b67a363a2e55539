"""What the commands print: rich tables and step listings built from library objects.

Every function takes plain data (a RunReport, Runs and Steps from the store, cached
models) and returns a rich renderable or a JSON-able dict, so tests call them directly.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterable, Sequence

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.table import Table
from rich.text import Text

from agentkit.llm.base import mean_logprob
from agentkit.tasks import split_steps
from agentkit.tasks.base import parse_answer

__all__ = [
    "run_steps",
    "summary_table",
    "report_json",
    "runs_table",
    "run_header",
    "steps_table",
    "node_table",
    "search_table",
    "graph_tables",
    "models_table",
    "suites_table",
    "policies_table",
    "policy_detail",
    "improve_table",
]

_STATUS_STYLE = {"success": "green", "failure": "red", "error": "bold red", "budget": "yellow", "running": "cyan",
                 "interrupted": "magenta"}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def _status(status: str) -> Text:
    return Text(status, style=_STATUS_STYLE.get(status, ""))


# --- agentkit run ------------------------------------------------------------------------


def _mark(check: bool | None) -> Text:
    if check is None:
        return Text("·", style="dim")  # a step line the suite cannot check
    return Text("✓", style="green") if check else Text("✗", style="red")


def _completion_lines(text: str, checks: Sequence[bool] | None) -> list[Text]:
    """The completion's lines, each "Step k:" line marked with its recorded check."""
    marks = iter(checks or [])
    lines = []
    for line in (text or "").splitlines():
        if not line.strip():
            continue
        if split_steps(line):  # a "Step k:" line: checks come one per such line, in order
            mark = _mark(next(marks, None) if checks is not None else None)
        else:
            mark = Text(" ")
        lines.append(Text.assemble("  ", mark, " ", line))
    return lines or [Text("  (empty completion)", style="dim")]


def _search_of(step: Any) -> dict | None:
    """The step's place in a search tree (``meta["search"]``), or None for an ordinary step."""
    meta = getattr(step, "meta", None)
    found = meta.get("search") if isinstance(meta, dict) else None
    return found if isinstance(found, dict) else None


def _search_lines(node: str, tree: list[Any]) -> tuple[list[Text], str | None]:
    """A node's search tree as the user reads it: one line saying what was searched, then the
    chosen path, each "Step k:" line marked ✓/✗ by the step checker that scored it (a
    Monte-Carlo value is no check: ·); and the path's answer."""
    info = _search_of(tree[0]) or {}
    checker = info.get("value_mode") == "checker"
    chosen = [s for s in tree if (_search_of(s) or {}).get("chosen")]  # recorded parents first: path order
    lines = [Text(f"  [{node}: {info.get('strategy', 'search')} search, {len(tree)} tree nodes; the chosen path]",
                  style="dim")]
    answer = None
    for step in chosen:
        here = _search_of(step) or {}
        text = (step.completion_text or "").rstrip("\n")
        if here.get("kind") == "step":
            mark = _mark(here.get("value") == 1.0 if checker and here.get("value") is not None else None)
        else:
            mark = Text(" ")
        lines.append(Text.assemble("  ", mark, " ", text))
        answer = parse_answer(text) or answer
    return (lines if chosen else lines + [Text("  (no path chosen)", style="dim")]), answer


def _gather_trees(steps: Sequence[Any]) -> list[Any]:
    """The steps in order with each search tree gathered into one list: a search writes its
    tree together, depth by depth, so a tree ends where the depth goes back or another node
    records."""
    out: list[Any] = []
    for step in steps:
        here, last = _search_of(step), out[-1] if out else None
        if (here is not None and isinstance(last, list) and last[-1].node == step.node
                and (_search_of(last[-1]) or {}).get("depth", 0) <= here.get("depth", 0)):
            last.append(step)
        else:
            out.append([step] if here is not None else step)
    return out


def run_steps(run: Any) -> RenderableType:
    """One run as the user reads it: task id and status, the completion text of each step
    with ✓/✗ per "Step k:" line (from the recorded ``parsed["steps"]``), answer and reward.
    A node that searched shows its tree once, as the path it chose."""
    steps = run.steps or []
    parts: list[RenderableType] = [
        Text.assemble((f"run {run.id} ", "dim"), (run.task_id or "?", "bold"), "  ", _status(run.status))
    ]
    answer = None
    for item in _gather_trees(steps):
        if isinstance(item, list):
            lines, found = _search_lines(item[0].node, item)
            parts.extend(lines)
            answer = found or answer
            continue
        step = item
        parsed = step.parsed if isinstance(step.parsed, dict) else {}
        if len(steps) > 1:
            parts.append(Text(f"  [{step.node}" + (f" attempt {step.attempt}" if step.attempt else "") + "]", style="dim"))
        parts.extend(_completion_lines(_step_text(step), parsed.get("steps")))
        answer = parsed.get("answer", answer)
    tail = Text.assemble(
        "  answer: ", (str(answer) if answer is not None else "(none)", "bold"),
        f"  reward: {_num(run.reward)}",
        f"  step accuracy: {_pct(run.step_accuracy)}" if run.step_accuracy is not None else "",
    )
    parts.append(tail)
    if run.error:
        parts.append(Text(f"  error: {run.error}", style="red"))
    return Group(*parts, Text(""))


def summary_table(report: Any, store: str | Path) -> Table:
    """The run command's closing table."""
    table = Table(title="summary", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    successes = sum(r.reward >= 1.0 for r in report.results)
    table.add_row("runs", str(report.n))
    table.add_row("success rate", f"{_pct(report.success_rate)} ({successes}/{report.n})")
    table.add_row("step accuracy", _pct(report.step_accuracy))
    table.add_row("tokens", f"{report.tokens:,}")
    table.add_row("completion tokens/s", f"{report.tokens_per_s:.1f}")
    table.add_row("wall time", f"{report.wall_s:.1f} s")
    if report.memory:
        m = report.memory
        table.add_row("library", f"version {m['version']}: +{m['added']} exemplars, +{m['insights']} insights, "
                                 f"{m['retired']} retired")
    errors = report.as_dict()["errors"]
    if errors:
        table.add_row("errors", Text(str(errors), style="red"))
    table.add_row("store", str(store))
    return table


def report_json(report: Any, **context: Any) -> dict[str, Any]:
    """``RunReport.as_dict()`` plus ``context`` (suite, model, store...) and one dict per run."""
    return {
        **context,
        **report.as_dict(),
        "results": [dataclasses.asdict(r) for r in report.results],
    }


# --- agentkit traces ---------------------------------------------------------------------


def runs_table(runs: Iterable[Any], store: str | Path) -> Table:
    table = Table(title=f"runs in {store}", title_justify="left", box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
    for name in ("id", "graph", "suite", "task", "status", "reward", "step acc", "calls", "tokens", "wall"):
        if name == "task":
            table.add_column(name, overflow="fold", ratio=1)
        else:
            numeric = name in ("id", "reward", "step acc", "calls", "tokens", "wall")
            table.add_column(name, justify="right" if numeric else "left", no_wrap=True)
    for run in runs:
        table.add_row(
            str(run.id), run.graph, run.suite or "-", run.task_id or "-", _status(run.status),
            _num(run.reward), _pct(run.step_accuracy), _num(run.calls, "d"), _num(run.tokens, ","),
            "-" if run.wall_s is None else f"{run.wall_s:.1f}s",
        )
    return table


def run_header(run: Any) -> Table:
    """The fields of one Run, as a two-column grid."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    rows = [
        ("run", str(run.id)), ("graph", run.graph), ("suite", run.suite), ("task", run.task_id),
        ("split", run.split), ("model", run.model), ("policy", run.policy_version), ("status", _status(run.status)),
        ("reward", _num(run.reward)), ("step accuracy", _pct(run.step_accuracy)),
        ("calls", _num(run.calls, "d")), ("tokens", _num(run.tokens, ",")),
        ("wall", "-" if run.wall_s is None else f"{run.wall_s:.2f} s"),
        ("started", run.started_at), ("finished", run.finished_at), ("error", run.error),
    ]
    for name, value in rows:
        if value is not None:
            grid.add_row(name, value)
    return grid


_WIDE = 110  # below this many columns the completion text goes under the table, not in it


def steps_table(steps: Sequence[Any]) -> RenderableType:
    """One row per model call of a run: ids, token counts, mean logprob, finish reason,
    latency and the completion text (on a narrow terminal the texts follow the table)."""
    return _StepsTable(list(steps))


class _StepsTable:
    def __init__(self, steps: list[Any]):
        self.steps = steps

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        wide = options.max_width >= _WIDE
        # graph runs: where each step sits (parent step, revision count, route chosen)
        placed = any(getattr(s, "parent_step_id", None) is not None or getattr(s, "route", None) for s in self.steps)
        table = Table(title="steps", title_justify="left", box=box.SIMPLE_HEAD, show_lines=wide, collapse_padding=True, pad_edge=False)
        headers = ("step", "node", "role", "attempt", *(("parent", "rev", "route") if placed else ()),
                   "prompt\ntokens", "compl.\ntokens", "mean\nlogprob", "finish", "latency")
        for name in headers:
            numeric = name not in ("node", "role", "finish", "route")
            table.add_column(name, justify="right" if numeric else "left", no_wrap=True)
        if wide:
            table.add_column("completion", overflow="fold", ratio=1)
        for step in self.steps:
            place = [_num(step.parent_step_id, "d"), _num(step.revision, "d"), step.route or "-"] if placed else []
            row = [
                str(step.id), step.node, step.role or "-", str(step.attempt), *place,
                _num(step.prompt_tokens, "d"), _num(step.completion_tokens, "d"),
                _num(mean_logprob(step.logprobs or []), ".3f"), step.finish_reason or "-",
                "-" if step.latency_s is None else f"{step.latency_s:.2f}s",
            ]
            # Text: model output is never read as rich markup
            table.add_row(*row, *([Text(_step_text(step))] if wide else []))
        yield table
        if not wide:
            for step in self.steps:
                yield Text(f"step {step.id} ({step.node}) completion:", style="bold")
                yield Text(_step_text(step) or "(empty)")
                yield Text("")


def _step_text(step: Any) -> str:
    """The completion, or for a step without one (a checker, tool or selector) its parsed output."""
    if step.completion_text is not None or step.parsed is None:
        return (step.completion_text or "").rstrip()
    import json

    return json.dumps(step.parsed, ensure_ascii=False)


# --- per-node accounting and graphs --------------------------------------------------------


def node_table(stats: Sequence[dict], runs: int | None = None) -> RenderableType:
    """Per-node accounting from ``TrajectoryStore.node_stats``: calls (retries), outputs that
    did not parse, fallbacks, tokens and latency, with per-run averages over ``runs`` runs
    (default: the runs that reached each node). Under the table, what each node fell back to,
    and when a node searched, what its trees cost (``search_table``)."""
    # one space between columns, so that eleven fit in 80
    table = Table(title="per node", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 0), pad_edge=False,
                  caption_justify="left", caption_style="yellow")
    for name in ("node", "role", "runs", "calls", "retries", "un-\nparsed", "fall-\nbacks", "tokens", "tokens\n/run",
                 "latency", "latency\n/call"):
        table.add_column(name, justify="left" if name in ("node", "role") else "right", no_wrap=True)
    notes = []
    for row in stats:
        per = runs or row["runs"] or 1
        unparsed, fallbacks = row.get("unparsed", 0), row.get("fallbacks", 0)
        table.add_row(
            row["node"], row["role"] or "-", str(row["runs"]), str(row["calls"]), str(row["retries"]),
            Text(str(unparsed), style="yellow" if unparsed else ""), Text(str(fallbacks), style="yellow" if fallbacks else ""),
            f"{row['tokens']:,}", f"{row['tokens'] / per:,.0f}", f"{row['latency_s']:.2f}s",
            f"{row['latency_s'] / row['calls']:.3f}s" if row["calls"] else "-",
        )
        if fallbacks:
            why = "; ".join(row.get("fallback_reasons") or []) or "see `agentkit traces show`"
            notes.append(f"{row['node']}: {fallbacks} fallback{'' if fallbacks == 1 else 's'} ({why})")
    if notes:
        table.caption = "\n".join(notes)
    searched = [row for row in stats if row.get("tree_nodes")]
    return Group(table, search_table(searched, runs)) if searched else table


def search_table(stats: Sequence[dict], runs: int | None = None) -> Table:
    """What each searching node's trees cost, from ``node_stats``: its tree nodes (the lines
    kept, duplicates merged, one step each; they are its calls above) and its sampled tokens
    (every line drawn, duplicates included), in all and per run. A search's tokens above
    count each node's prompt and prefix as well, as a backend without a prefix cache pays."""
    table = Table(title="search", title_justify="left", box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
    for name in ("node", "strategy", "runs", "tree\nnodes", "nodes\n/run", "sampled\ntokens", "sampled\n/run"):
        table.add_column(name, justify="left" if name in ("node", "strategy") else "right", no_wrap=True)
    for row in stats:
        per = runs or row["runs"] or 1
        table.add_row(
            row["node"], ", ".join(row.get("strategies") or ()) or "-", str(row["runs"]), f"{row['tree_nodes']:,}",
            f"{row['tree_nodes'] / per:,.1f}", f"{row['sampled_tokens']:,}", f"{row['sampled_tokens'] / per:,.0f}",
        )
    return table


def graph_tables(graph: Any) -> Group:
    """A graph's nodes (role, options) and edges (from, to, when) as two tables."""
    nodes = Table(title=f"graph {graph.name}: {graph.spec.description}", title_justify="left", box=box.SIMPLE_HEAD,
                  collapse_padding=True, pad_edge=False)
    for name in ("node", "role", "options"):
        nodes.add_column(name, no_wrap=name != "options", overflow="fold")
    for node in graph.nodes:
        options = ", ".join(f"{k}={v!r}" for k, v in node.options().items())
        entry = " (entry)" if node.name == graph.spec.entry else ""
        nodes.add_row(node.name + entry, node.role, Text(options or "-"))
    edges = Table(title="edges", title_justify="left", box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
    for name in ("from", "to", "when"):
        edges.add_column(name, no_wrap=True)
    for edge in graph.edges:
        edges.add_row(edge.source, edge.target, edge.when or "always")
    for node in graph.nodes:
        for label, target in graph.spec.routes(node.name).items():
            if target is None:
                edges.add_row(node.name, "(end)", label or "always")
    return Group(nodes, edges)


# --- agentkit models / suites ------------------------------------------------------------


def models_table(models: Sequence[Any]) -> Table:
    table = Table(title="cached models", title_justify="left")
    table.add_column("name", style="bold")
    table.add_column("path", overflow="fold")
    table.add_column("size", justify="right")
    for m in models:
        table.add_row(m.name, str(m.path), f"{m.size_mb:,.0f} MB")
    return table


def suites_table(suites: Sequence[Any]) -> Table:
    """Built-in suites with their levels, default level and one example test question."""
    table = Table(title="task suites", title_justify="left")
    table.add_column("suite", style="bold")
    table.add_column("levels")
    table.add_column("default", justify="right")
    table.add_column("example (test split, default level)", overflow="fold")
    for suite in suites:
        example = suite.tasks("test", 1)[0].question
        table.add_row(suite.name, ", ".join(map(str, suite.levels)), str(suite.default_level), example)
    return table


# --- agentkit policy ---------------------------------------------------------------------

_POLICY_STYLE = {"active": "bold green", "candidate": "cyan", "rejected": "red", "retired": "dim"}


def policies_table(policies: Sequence[Any], store: str | Path) -> Table:
    """One row per policy version: status, parent, created, held-out success, checksum prefix."""
    table = Table(title=f"policies in {store}", title_justify="left", box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
    for name in ("version", "status", "parent", "method", "created", "held-out success", "checksum"):
        table.add_column(name, justify="right" if name == "held-out success" else "left", no_wrap=True)
    for p in policies:
        metrics = p.metrics or {}
        success = metrics.get("heldout_success")
        n = metrics.get("heldout_n")
        table.add_row(
            p.version, Text(p.status, style=_POLICY_STYLE.get(p.status, "")), p.parent or "-", p.method or "-",
            p.created_at[:19].replace("T", " "),
            _pct(success) + (f" (n={n})" if success is not None and n else ""),
            (p.checksum or "-")[:12],
        )
    return table


def policy_detail(policy: Any, events: Sequence[Any]) -> Group:
    """Every field of one policy version, its JSON fields pretty-printed, then its events."""
    import json

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for name in ("version", "status", "parent", "base_model", "method", "adapter_path", "checksum", "note",
                 "created_at", "activated_at"):
        value = getattr(policy, name)
        grid.add_row(name.replace("_", " "), Text("-" if value is None else str(value)))
    for name in ("data", "config", "metrics"):
        value = getattr(policy, name)
        grid.add_row(name, Text("-" if value is None else json.dumps(value, indent=2, sort_keys=True)))
    history = Table(title="events", title_justify="left", box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
    for name in ("when", "event", "version", "previous", "by", "reason"):
        history.add_column(name, overflow="fold" if name == "reason" else "ellipsis", no_wrap=name != "reason")
    for e in events:
        history.add_row(e.created_at[:19].replace("T", " "), e.event, e.version, e.previous or "-", e.actor or "-",
                        Text(e.reason or "-"))
    return Group(grid, Text(""), history)


def improve_table(rounds: list) -> Table:
    """One row per `agentkit improve` round, in 80 columns: the policy active after it and the
    round's candidate (✓ promoted, ✗ not); success on the gate tasks of both, and the
    policy's step accuracy; the gate's p-value raw and corrected for the run's gates; the
    policy's success on the final test tasks, which no decision reads, with its 95%
    interval; tokens sampled to collect the round's data; CPU minutes since the start."""
    table = Table(title="agentkit improve", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 0),
                  pad_edge=False, show_edge=False, caption_justify="left", caption_style="dim",
                  caption="final: success on test tasks that no decision reads [95% interval]")
    for name in ("round", "level", "policy", "cand-\nidate", "gate", "cand.\ngate", "step\nacc", "p", "p adj",
                 "final", "sampled\ntokens", "CPU\nmin"):
        table.add_column(name, justify="right", no_wrap=True)
    for r in rounds:
        candidate = "-" if r.candidate is None else f"{r.candidate} {'✓' if r.promoted else '✗'}"
        final = "-"
        if r.final_success is not None:
            low, high = r.final_ci95 or (0.0, 1.0)
            final = f"{_pct(r.final_success)} [{100 * low:.0f}-{100 * high:.0f}]"
        minutes = r.cpu_s / 60
        table.add_row(
            str(r.round), str(r.level), r.incumbent, candidate, _pct(r.heldout_success), _pct(r.candidate_success),
            _pct(r.heldout_step_accuracy), _num(r.p_value, ".3f"), _num(r.p_adjusted, ".3f"), final,
            _count(r.sampled_tokens), f"{minutes:.1f}" if minutes < 10 else f"{minutes:.0f}",
        )
    return table


def _count(n: int) -> str:
    """A token count in at most five characters: 9,999, 123k, 4.5M."""
    if n < 10_000:
        return f"{n:,}"
    return f"{n / 1e3:.0f}k" if n < 999_500 else f"{n / 1e6:.1f}M"
