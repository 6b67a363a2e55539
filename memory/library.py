"""The experience library: what nodes read into their prompts, learned from verified runs.

Three kinds of item, stored beside the trajectories in the same SQLite file:

- ``exemplar``: a verified successful node output (question + solution), shown as a
  few-shot example (Self-Generated In-Context Examples);
- ``insight``: a lesson {condition, lesson, example, source runs} distilled by reflection
  on failed and successful runs of similar tasks (ExpeL, AlphaOPT);
- ``route``: per family, router node and label, how often that route was taken and how
  often the run then succeeded, a prior for the router (PriorDynaFlow).

Every item counts how often it was shown (``shown``), how often the run then succeeded
(``shown_success``) and how many successes the node's base rate predicted
(``expected``: the sum of the base rate at each showing). Its utility is the lift over the
base rate, shrunk towards 0 while evidence is thin: (shown_success - expected) / (shown + prior).

Every batch of changes is one library version; ``rollback(v)`` restores version v exactly
(and is itself a new version, so it can be undone). Retrieval is SQLite FTS5 (BM25) by
default, or sentence embeddings (``EmbeddingRetriever``) behind the same interface.

    with ExperienceLibrary("runs.db") as library:
        library.add([NewItem.exemplar("arithmetic/1", "Compute 12 + 30.", "Step 1: 12 + 30 = 42\\nAnswer: 42")])
        library.retrieve("Compute 12 + 31.", family="arithmetic/1", k=4)
        library.rollback(0)  # empty again
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agentkit.errors import StoreError

from ._items import (KINDS, STATUSES, LibraryConfig, LibraryItem, LibraryVersion, NewItem, RunOutcome, UpdateResult,
                     _dumps, _filters, _JSON, _to_item, family_of, search_text, utility)
from agentkit.store import TrajectoryStore
from agentkit.store.db import utcnow

from . import prompting
from .retrieval import Bm25Retriever, EmbeddingRetriever, Retriever

__all__ = [
    "KINDS", "STATUSES", "LibraryConfig", "LibraryItem", "LibraryVersion", "NewItem", "RunOutcome", "UpdateResult",
    "ExperienceLibrary", "Retriever", "Bm25Retriever", "EmbeddingRetriever", "family_of", "utility", "search_text",
    "read_export",
]

EXPORT_FORMAT = "agentkit-library"

# --- the library ------------------------------------------------------------------------------


class _Batch:
    """The changes of one version, applied inside one write transaction."""

    def __init__(self, conn: sqlite3.Connection, columns: list[str]):
        self.conn, self.columns = conn, columns
        self.touched: set[int] = set()
        self.nodes_changed = False
        self.runs: list[int] = []
        self.changes: dict[str, int] = {}
        self.now = utcnow()

    def count(self, what: str, n: int = 1) -> None:
        self.changes[what] = self.changes.get(what, 0) + n

    def row(self, item_id: int) -> dict[str, Any] | None:
        cursor = self.conn.execute("SELECT * FROM library_items WHERE id = ?", (item_id,))
        found = cursor.fetchone()
        return None if found is None else dict(zip([d[0] for d in cursor.description], found))

    def insert(self, item: NewItem) -> tuple[int, bool]:
        """(id, created): an item with the same fingerprint is not stored twice."""
        fingerprint = item.fingerprint
        found = self.conn.execute("SELECT id FROM library_items WHERE fingerprint = ?", (fingerprint,)).fetchone()
        if found is not None:
            return found[0], False
        values = {
            "kind": item.kind, "family": item.family, "node": item.node, "role": item.role, "key": item.key,
            "text": item.text, "condition": item.condition, "lesson": item.lesson, "example": item.example,
            "label": item.label, "source_runs": _dumps(item.source_runs), "shown": item.shown,
            "shown_success": item.shown_success, "expected": item.expected, "status": item.status,
            "reason": item.reason, "fingerprint": fingerprint, "search": item.search, "meta": _dumps(item.meta),
            "created_at": item.created_at or self.now, "updated_at": item.updated_at or self.now,
        }
        cursor = self.conn.execute(
            f"INSERT INTO library_items ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
            list(values.values()),
        )
        self.touched.add(cursor.lastrowid)
        self.count(f"added {item.kind}")
        return cursor.lastrowid, True

    def update(self, item_id: int, **values: Any) -> None:
        for key in _JSON:
            if key in values:
                values[key] = _dumps(values[key])
        values["updated_at"] = self.now
        sets = ", ".join(f"{k} = ?" for k in values)
        self.conn.execute(f"UPDATE library_items SET {sets} WHERE id = ?", [*values.values(), item_id])
        self.touched.add(item_id)

    def use(self, item_id: int, success: bool, expected: float) -> None:
        self.conn.execute(
            "UPDATE library_items SET shown = shown + 1, shown_success = shown_success + ?, expected = expected + ?, "
            "updated_at = ? WHERE id = ?",
            (int(success), expected, self.now, item_id),
        )
        self.touched.add(item_id)

    def retire(self, item_id: int, reason: str, what: str = "retired") -> None:
        self.update(item_id, status="retired", reason=reason)
        self.count(what)

    def delete(self, item_id: int) -> None:
        self.conn.execute("DELETE FROM library_items WHERE id = ?", (item_id,))
        self.touched.add(item_id)
        self.count("deleted")

    def node_run(self, family: str, node: str, success: bool) -> None:
        self.conn.execute(
            "INSERT INTO library_nodes (family, node, runs, successes) VALUES (?, ?, 1, ?) "
            "ON CONFLICT (family, node) DO UPDATE SET runs = runs + 1, successes = successes + excluded.successes",
            (family, node, int(success)),
        )
        self.nodes_changed = True

    def base_rate(self, family: str, node: str) -> float:
        row = self.conn.execute("SELECT runs, successes FROM library_nodes WHERE family = ? AND node = ?",
                                (family, node)).fetchone()
        runs, successes = row or (0, 0)
        return (successes + 1) / (runs + 2)  # Laplace: 0.5 before any run

    def commit(self, message: str, restored_from: int | None = None) -> int | None:
        if not self.touched and not self.nodes_changed and not self.runs:
            return None
        nodes = [list(r) for r in self.conn.execute(
            "SELECT family, node, runs, successes FROM library_nodes ORDER BY family, node")]
        version = self.conn.execute(
            "INSERT INTO library_versions (message, changes, nodes, restored_from, created_at) VALUES (?, ?, ?, ?, ?)",
            (message, _dumps(self.changes), _dumps(nodes), restored_from, self.now),
        ).lastrowid
        for item_id in sorted(self.touched):
            row = self.row(item_id)
            self.conn.execute("INSERT INTO library_item_versions (version, item_id, row) VALUES (?, ?, ?)",
                              (version, item_id, None if row is None else _dumps(row)))
        self.conn.executemany("INSERT INTO library_runs (run_id, version) VALUES (?, ?)",
                              [(run_id, version) for run_id in self.runs])
        return version


class ExperienceLibrary:
    """The library tables of a trajectory store.

    ``store``: an open TrajectoryStore (the library shares its connection and lock) or a
    path, opened here and closed by ``close``. ``retriever``: Bm25Retriever (default) or
    EmbeddingRetriever."""

    def __init__(self, store: TrajectoryStore | str | os.PathLike[str], *, retriever: Retriever | None = None,
                 config: LibraryConfig | None = None):
        self._owns = not isinstance(store, TrajectoryStore)
        self.store = TrajectoryStore(store) if self._owns else store
        self.retriever = retriever or Bm25Retriever()
        self.config = config or LibraryConfig()
        self._columns: list[str] | None = None

    @property
    def path(self) -> str:
        return self.store.path

    def close(self) -> None:
        if self._owns:
            self.store.close()

    def __enter__(self) -> ExperienceLibrary:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ExperienceLibrary({self.path!r}, retriever={self.retriever.name!r})"

    # -- plumbing ---------------------------------------------------------------------

    def _select(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return self.store.db.select(sql, params)

    def _change(self, message: str, fn: Callable[[_Batch], Any], restored_from: int | None = None) -> tuple[int | None, Any]:
        """Apply fn to one batch in one transaction; returns (new version or None, fn's result)."""

        def txn(conn: sqlite3.Connection) -> tuple[int | None, Any]:
            if self._columns is None:
                self._columns = [r[1] for r in conn.execute("PRAGMA table_info(library_items)")]
            batch = _Batch(conn, self._columns)
            result = fn(batch)
            return batch.commit(message, restored_from), result

        return self.store.db.write(txn)

    # -- reading ----------------------------------------------------------------------

    def get(self, item_id: int) -> LibraryItem:
        rows = self._select("SELECT * FROM library_items WHERE id = ?", (item_id,))
        if not rows:
            raise StoreError(f"no library item {item_id} in {self.path}; see the ids with `agentkit memory list`")
        return _to_item(rows[0])

    def items(self, *, family: str | None = None, kind: str | Sequence[str] | None = None, role: str | None = None,
              node: str | None = None, status: str | None = "active", limit: int | None = None,
              order: str = "id") -> list[LibraryItem]:
        """Items oldest first (``order="utility"``: best first); status=None for every status."""
        _check_kind(kind)
        if status is not None and status not in STATUSES:
            raise StoreError(f"library status {status!r} is not one of {', '.join(STATUSES)}")
        where, params = _filters(family=family, kind=kind, role=role, node=node, status=status)
        by = ("(shown_success - expected) / (shown + ?) DESC, id" if order == "utility" else "id")
        if order == "utility":
            params.append(self.config.prior)
        sql = f"SELECT * FROM library_items WHERE {where} ORDER BY {by}" + (" LIMIT ?" if limit else "")
        return [_to_item(r) for r in self._select(sql, [*params, *([limit] if limit else [])])]

    def families(self) -> list[str]:
        return [r["family"] for r in self._select("SELECT DISTINCT family FROM library_items ORDER BY family")]

    def retrieve(self, query: str, *, family: str, kinds: Sequence[str] = ("exemplar", "insight"),
                 role: str | None = None, k: int = 4, fill: bool = True,
                 exclude_same: bool = True) -> list[LibraryItem]:
        """Up to k active items of ``family`` for ``query``, best first: relevance plus a
        utility bonus. Insights take at most ``insight_share`` of the places. With ``fill``,
        places no item matched go to the family's most useful exemplars (they still show the
        format). ``exclude_same``: never an exemplar of the query itself (its answer)."""
        _check_kind(list(kinds))
        if k <= 0:
            return []
        weight = self.config.utility_weight
        quota = {"insight": max(1, int(k * self.config.insight_share))} if len(kinds) > 1 else {}
        same = " ".join(query.split()) if exclude_same else None

        def allowed(item: LibraryItem) -> bool:
            return not (item.kind == "exemplar" and " ".join(item.key.split()) == same)

        chosen: list[tuple[float, LibraryItem]] = []
        for kind in kinds:
            if kind == "route":
                continue
            ranked = self.retriever.rank(self, query, family=family, kind=kind, role=role, limit=4 * k + 1)
            scored = sorted(((rel + weight * item.utility, item) for item, rel in ranked if allowed(item)),
                            key=lambda s: -s[0])
            chosen += scored[: quota.get(kind, k)]
        chosen.sort(key=lambda s: -s[0])
        items = [item for _, item in chosen][:k]
        if fill and len(items) < k and "exemplar" in kinds:
            have = {i.id for i in items}
            for item in self.items(family=family, kind="exemplar", role=role, order="utility", limit=4 * k + 1):
                if len(items) >= k:
                    break
                if item.id not in have and allowed(item):
                    items.append(item)
        return items

    def search(self, query: str, *, family: str | None = None, kind: str | None = None,
               limit: int = 10) -> list[tuple[LibraryItem, float]]:
        """Active items matching ``query`` with their relevance, across families unless one is given."""
        _check_kind(kind)
        families = [family] if family else self.families()
        kinds = [kind] if kind else ["exemplar", "insight", "route"]
        found = [hit for f in families for kd in kinds
                 for hit in self.retriever.rank(self, query, family=f, kind=kd, role=None, limit=limit)]
        return sorted(found, key=lambda hit: -hit[1])[:limit]

    def routes(self, family: str, node: str) -> dict[str, LibraryItem]:
        """label -> route statistics of a router node in a family."""
        return {item.label: item for item in self.items(family=family, kind="route", node=node) if item.label}

    def show(self, prompt: str, question: str, *, family: str, kinds: Sequence[str], k: int,
             role: str | None = "solver") -> tuple[str, list[int]]:
        """``prompt`` with up to k items retrieved for ``question`` in a marked section just
        before it, and the ids shown (what a node declared with memory= reads; prompting.py)."""
        return prompting.show(self, prompt, question, family=family, kinds=kinds, k=k, role=role)

    def route_prior(self, family: str, node: str, labels: Sequence[str],
                    weight: float) -> tuple[dict[str, float], list[int]]:
        """A router's prior per declared label from its routes' success rates, and the ids
        of the route items read (prompting.route_prior)."""
        return prompting.route_prior(self, family, node, labels, weight)

    def base_rate(self, family: str, node: str) -> float:
        rows = self._select("SELECT runs, successes FROM library_nodes WHERE family = ? AND node = ?", (family, node))
        runs, successes = (rows[0]["runs"], rows[0]["successes"]) if rows else (0, 0)
        return (successes + 1) / (runs + 2)

    def node_stats(self) -> list[dict[str, Any]]:
        return self._select("SELECT family, node, runs, successes FROM library_nodes ORDER BY family, node")

    def version(self) -> int:
        """The current version (0: nothing was ever changed)."""
        return self._select("SELECT COALESCE(MAX(id), 0) AS v FROM library_versions")[0]["v"]

    def versions(self, limit: int | None = None) -> list[LibraryVersion]:
        """Versions newest first."""
        rows = self._select("SELECT id, message, changes, restored_from, created_at FROM library_versions "
                            "ORDER BY id DESC" + (" LIMIT ?" if limit else ""), [limit] if limit else [])
        for row in rows:
            row["changes"] = json.loads(row["changes"]) if row["changes"] else None
        return [LibraryVersion.model_validate(r) for r in rows]

    def stats(self) -> list[dict[str, Any]]:
        """Per family and kind: active and retired counts, showings, successes and mean utility."""
        rows = self._select(
            "SELECT family, kind, SUM(status = 'active') AS active, SUM(status = 'retired') AS retired, "
            "SUM(shown) AS shown, SUM(shown_success) AS shown_success, SUM(expected) AS expected, "
            "AVG(CASE WHEN status = 'active' THEN (shown_success - expected) / (shown + ?) END) AS mean_utility "
            "FROM library_items GROUP BY family, kind ORDER BY family, kind",
            (self.config.prior,),
        )
        return rows

    def seen_runs(self, run_ids: Iterable[int]) -> set[int]:
        ids = sorted(set(run_ids))
        seen: set[int] = set()
        for chunk in (ids[i:i + 500] for i in range(0, len(ids), 500)):
            seen |= {r["run_id"] for r in self._select(
                f"SELECT run_id FROM library_runs WHERE run_id IN ({', '.join('?' * len(chunk))})", chunk)}
        return seen

    # -- writing: each call is at most one version -------------------------------------

    def add(self, items: Iterable[NewItem], message: str = "add items") -> UpdateResult:
        """Insert items (a duplicate of a stored item is skipped), then enforce the cap
        without evicting any of them."""
        items = list(items)

        def fn(batch: _Batch) -> UpdateResult:
            result = UpdateResult(None)
            for item in items:
                item_id, created = batch.insert(item)
                if created:
                    result.added.append(item_id)
            self._enforce_caps(batch, {i.family for i in items}, set(result.added), result)
            return result

        version, result = self._change(message, fn)
        result.version = version
        return result

    def apply_outcomes(self, outcomes: Sequence[RunOutcome], message: str = "update from runs") -> UpdateResult:
        """Account verified runs in one version: node base rates, the utility of every item
        shown, route statistics and new exemplars; then retire items whose utility is
        negative with enough evidence, and enforce the cap per family (never evicting an
        item added now). A run accounted before (by any process) is skipped, so concurrent
        or repeated updates neither lose nor double-count a run."""
        outcomes = list(outcomes)

        def fn(batch: _Batch) -> UpdateResult:
            result = UpdateResult(None)
            ids = [o.run_id for o in outcomes]
            seen = {run_id for (run_id,) in batch.conn.execute(
                f"SELECT run_id FROM library_runs WHERE run_id IN ({', '.join('?' * len(ids))})", ids)} if ids else set()
            fresh = []
            for o in outcomes:
                if o.run_id not in seen:
                    seen.add(o.run_id)
                    fresh.append(o)
            result.skipped_runs = len(outcomes) - len(fresh)
            result.runs = len(fresh)
            for o in fresh:
                for node in dict.fromkeys(o.nodes):
                    batch.node_run(o.family, node, o.success)
            for o in fresh:
                for item_id, node in dict.fromkeys(o.shown):
                    if batch.conn.execute("SELECT 1 FROM library_items WHERE id = ?", (item_id,)).fetchone():
                        batch.use(item_id, o.success, batch.base_rate(o.family, node))
                        result.updated += 1
                for node, label in dict.fromkeys(o.routes):
                    route = NewItem(kind="route", family=o.family, node=node, role="router", key=label, text=label,
                                    label=label)
                    item_id, _ = batch.insert(route)
                    batch.use(item_id, o.success, batch.base_rate(o.family, node))
                if o.success:
                    for exemplar in o.exemplars:
                        item_id, created = batch.insert(exemplar)
                        if created:
                            result.added.append(item_id)
                batch.runs.append(o.run_id)
            if result.updated:
                batch.count("utility updates", result.updated)
            families = {o.family for o in fresh}
            result.retired = self._retire_negative(batch, families)
            self._enforce_caps(batch, families, set(result.added), result)
            return result

        version, result = self._change(message, fn)
        result.version = version
        return result

    def add_insight(self, item: NewItem, message: str = "reflect: new insight") -> tuple[int | None, int]:
        """(version, item id); an insight already stored is not added twice."""
        holder: dict[str, int] = {}

        def fn(batch: _Batch) -> None:
            holder["id"], _ = batch.insert(item)
            self._enforce_caps(batch, {item.family}, {holder["id"]}, UpdateResult(None))

        version, _ = self._change(message, fn)
        return version, holder["id"]

    def rewrite_condition(self, item_id: int, condition: str, reason: str) -> int | None:
        """Give an insight a new applicability condition (AlphaOPT's refinement). Its counts
        restart, since they measured the old condition; the old ones go to meta.rewrites."""
        item = self.get(item_id)
        if item.kind != "insight":
            raise StoreError(f"library item {item_id} is a {item.kind}, not an insight; only insights have a condition")
        history = list((item.meta or {}).get("rewrites", []))
        history.append({"condition": item.condition, "shown": item.shown, "shown_success": item.shown_success,
                        "expected": item.expected, "reason": reason})
        new = NewItem.insight(item.family, condition, item.lesson or item.text, item.example, role=item.role or "solver")

        def fn(batch: _Batch) -> None:
            batch.update(item_id, key=condition, condition=condition, search=new.search, fingerprint=new.fingerprint,
                         shown=0, shown_success=0, expected=0.0, meta={**(item.meta or {}), "rewrites": history})
            batch.count("rewritten conditions")

        return self._change(f"reflect: rewrite the condition of insight {item_id}", fn)[0]

    def prune(self, *, family: str | None = None, purge: bool = False, merge: bool = True) -> UpdateResult:
        """Maintenance in one version: merge near-duplicate items, retire items whose utility
        is negative with enough evidence, enforce the cap; with ``purge``, delete retired items."""

        def fn(batch: _Batch) -> UpdateResult:
            result = UpdateResult(None)
            families = [family] if family else [r[0] for r in batch.conn.execute(
                "SELECT DISTINCT family FROM library_items")]
            if merge:
                for f in families:
                    result.retired += self._merge_duplicates(batch, f)
            result.retired += self._retire_negative(batch, set(families))
            self._enforce_caps(batch, set(families), set(), result)
            if purge:
                where, params = _filters(family=family, status="retired")
                for (item_id,) in batch.conn.execute(f"SELECT id FROM library_items WHERE {where}", params).fetchall():
                    batch.delete(item_id)
            return result

        version, result = self._change("prune" + (f" {family}" if family else "") + (" --purge" if purge else ""), fn)
        result.version = version
        return result

    def rollback(self, version: int) -> int | None:
        """Restore the items and base rates exactly as they were at ``version`` (0: empty),
        as a new version; returns it (None: nothing differed)."""
        current = self.version()
        if not isinstance(version, int) or version < 0 or version > current:
            raise StoreError(f"no library version {version} in {self.path} (versions 0-{current}); "
                             "see them with `agentkit memory stats`")

        def fn(batch: _Batch) -> None:
            target: dict[int, str] = {}
            for item_id, row in batch.conn.execute(
                "SELECT v.item_id, v.row FROM library_item_versions v JOIN ("
                "  SELECT item_id, MAX(version) AS version FROM library_item_versions WHERE version <= ? GROUP BY item_id"
                ") last ON v.item_id = last.item_id AND v.version = last.version",
                (version,),
            ):
                if row is not None:
                    target[item_id] = row
            now: dict[int, str] = {}
            cursor = batch.conn.execute("SELECT * FROM library_items")
            names = [d[0] for d in cursor.description]
            for values in cursor.fetchall():
                row = dict(zip(names, values))
                now[row["id"]] = _dumps(row)
            differ = sorted(i for i in set(target) | set(now) if target.get(i) != now.get(i))
            for item_id in differ:  # delete first: a restored row may reuse a fingerprint
                if item_id in now:
                    batch.conn.execute("DELETE FROM library_items WHERE id = ?", (item_id,))
            for item_id in differ:
                if item_id in target:
                    row = json.loads(target[item_id])
                    batch.conn.execute(f"INSERT INTO library_items ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                                       list(row.values()))
            batch.touched.update(differ)
            batch.count("restored items", len(differ))
            nodes_row = batch.conn.execute("SELECT nodes FROM library_versions WHERE id = ?", (version,)).fetchone()
            nodes = json.loads(nodes_row[0]) if nodes_row and nodes_row[0] else []
            old = [list(r) for r in batch.conn.execute(
                "SELECT family, node, runs, successes FROM library_nodes ORDER BY family, node")]
            if old != nodes:
                batch.conn.execute("DELETE FROM library_nodes")
                batch.conn.executemany("INSERT INTO library_nodes (family, node, runs, successes) VALUES (?, ?, ?, ?)",
                                       nodes)
                batch.nodes_changed = True

        return self._change(f"rollback to version {version}", fn, restored_from=version)[0]

    # -- export / import --------------------------------------------------------------

    def export_jsonl(self, path: str | os.PathLike[str], *, family: str | None = None,
                     status: str | None = None) -> int:
        """A header line, then one item per line (with its counts); returns the item count."""
        items = self.items(family=family, status=status)
        path = Path(path).expanduser()
        header = {"format": EXPORT_FORMAT, "schema": 1, "version": self.version(), "items": len(items),
                  "family": family, "exported_at": utcnow()}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", encoding="utf-8") as f:
                f.write(json.dumps(header) + "\n")
                for item in items:
                    f.write(json.dumps(item.model_dump(), ensure_ascii=False, sort_keys=True) + "\n")
        except OSError as exc:
            raise StoreError(f"cannot write {path} ({exc.strerror}); pass a writable path") from None
        return len(items)

    def import_jsonl(self, path: str | os.PathLike[str]) -> UpdateResult:
        """Read and check the whole export first: a corrupt line is refused with its line
        number and nothing changes. Then one version: new items are added, items already
        stored (same fingerprint) take the imported counts and status."""
        items = read_export(path)

        def fn(batch: _Batch) -> UpdateResult:
            result = UpdateResult(None)
            for item in items:
                item_id, created = batch.insert(item)
                if created:
                    result.added.append(item_id)
                else:
                    batch.update(item_id, shown=item.shown, shown_success=item.shown_success, expected=item.expected,
                                 status=item.status, reason=item.reason, meta=item.meta)
                    result.updated += 1
            if result.updated:
                batch.count("updated by import", result.updated)
            return result

        version, result = self._change(f"import {Path(path).name} ({len(items)} items)", fn)
        result.version = version
        return result

    # -- maintenance inside a batch ------------------------------------------------------

    def _retire_negative(self, batch: _Batch, families: set[str]) -> list[int]:
        cfg = self.config
        retired = []
        for family in sorted(families):
            for item_id, shown, success, expected in batch.conn.execute(
                "SELECT id, shown, shown_success, expected FROM library_items WHERE family = ? AND status = 'active' "
                "AND kind != 'route' AND shown >= ?", (family, cfg.min_evidence),
            ).fetchall():
                value = utility(shown, success, expected, cfg.prior)
                if value < cfg.retire_below:
                    batch.retire(item_id, f"utility {value:+.2f} after {shown} showings")
                    retired.append(item_id)
        return retired

    def _enforce_caps(self, batch: _Batch, families: set[str], protected: set[int], result: UpdateResult) -> None:
        cfg = self.config
        for family in sorted(families):
            rows = batch.conn.execute(
                "SELECT id, (shown_success - expected) / (shown + ?) AS u, shown FROM library_items "
                "WHERE family = ? AND status = 'active' AND kind != 'route' ORDER BY u, shown, id",
                (cfg.prior, family),
            ).fetchall()
            surplus = len(rows) - cfg.max_items
            for item_id, value, _ in rows:
                if surplus <= 0:
                    break
                if item_id in protected:
                    continue
                batch.retire(item_id, f"evicted at the cap of {cfg.max_items} (utility {value:+.2f})", "evicted")
                result.evicted.append(item_id)
                surplus -= 1
            if surplus > 0:
                result.over_cap[family] = surplus
                batch.count(f"over cap in {family}", surplus)

    def _merge_duplicates(self, batch: _Batch, family: str) -> list[int]:
        """Exemplars of the same question, and insights whose words overlap by
        merge_similarity, become one item: the most useful keeps everyone's counts."""
        cursor = batch.conn.execute(
            "SELECT * FROM library_items WHERE family = ? AND status = 'active' AND kind IN ('exemplar', 'insight') "
            "ORDER BY id", (family,))
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, r)) for r in cursor.fetchall()]
        keepers: list[dict[str, Any]] = []
        merged = []
        for row in sorted(rows, key=lambda r: (-utility(r["shown"], r["shown_success"], r["expected"]), r["id"])):
            words = set(row["search"].split())
            twin = None
            for keep in keepers:
                if keep["kind"] != row["kind"] or keep["role"] != row["role"]:
                    continue
                if row["kind"] == "exemplar":
                    same = " ".join(keep["key"].split()) == " ".join(row["key"].split())
                else:
                    other = set(keep["search"].split())
                    same = len(words & other) / max(1, len(words | other)) >= self.config.merge_similarity
                if same:
                    twin = keep
                    break
            if twin is None:
                keepers.append(row)
                continue
            sources = sorted(set(json.loads(twin["source_runs"] or "[]")) | set(json.loads(row["source_runs"] or "[]")))
            for key in ("shown", "shown_success", "expected"):
                twin[key] += row[key]
            batch.update(twin["id"], shown=twin["shown"], shown_success=twin["shown_success"],
                         expected=twin["expected"], source_runs=sources or None)
            batch.retire(row["id"], f"merged into {twin['id']}", "merged")
            merged.append(row["id"])
        return merged


def _check_kind(kind: str | Sequence[str] | None) -> None:
    for k in [kind] if isinstance(kind, str) else (kind or []):
        if k not in KINDS:
            raise StoreError(f"library item kind {k!r} is not one of {', '.join(KINDS)}")


def read_export(path: str | os.PathLike[str]) -> list[NewItem]:
    """Every item of an export, or StoreError naming the first bad line (nothing is written)."""
    path = Path(path).expanduser()
    fix = "fix that line or export the library again; nothing was imported"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise StoreError(f"no file {path}; pass a file written by `agentkit memory export`") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(f"cannot read {path} ({getattr(exc, 'strerror', None) or exc}); {fix}") from None
    if not lines:
        raise StoreError(f"{path} is empty; pass a file written by `agentkit memory export`")
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or header.get("format") != EXPORT_FORMAT:
        raise StoreError(f"{path} line 1 is not an agentkit library export header; "
                         "pass a file written by `agentkit memory export`")
    items = []
    for number, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise StoreError(f"{path} line {number}: not valid JSON ({exc.msg}); {fix}") from None
        if not isinstance(data, dict):
            raise StoreError(f"{path} line {number}: expected a JSON object, got {type(data).__name__}; {fix}")
        try:
            items.append(NewItem.model_validate(data))
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(p) for p in error["loc"]) or "item"
            raise StoreError(f"{path} line {number}: {where}: {error['msg']}; {fix}") from None
    expected = header.get("items")
    if isinstance(expected, int) and expected != len(items):
        raise StoreError(f"{path} line {len(lines) + 1}: the header promises {expected} items but the file has "
                         f"{len(items)} (truncated?); {fix}")
    return items
