"""The experience library's records and shared helpers (see memory/library.py)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agentkit.store.db import dumps
from agentkit.tasks.base import family_of

__all__ = ["KINDS", "STATUSES", "MAX_TEXT", "LibraryConfig", "LibraryItem", "LibraryVersion", "NewItem", "RunOutcome",
           "UpdateResult", "family_of", "utility", "search_text"]

KINDS = ("exemplar", "insight", "route")
STATUSES = ("active", "retired")
MAX_TEXT = 4000

_SYMBOLS = {"+": " plus ", "-": " minus ", "−": " minus ", "*": " times ", "×": " times ", "/": " over ",
            "÷": " over ", "=": " equals ", "(": " ", ")": " "}
_WORD = re.compile(r"[a-z0-9]+")


def utility(shown: int, shown_success: int, expected: float, prior: float = 2.0) -> float:
    """Successes beyond what the base rate predicted, per showing, shrunk by ``prior``
    pseudo-showings at exactly the base rate: 0 without evidence, negative when it hurts."""
    return (shown_success - expected) / (shown + prior)


def search_text(*parts: str | None) -> str:
    """What FTS indexes and queries match on: lower case words and numbers, with arithmetic
    symbols spelled out ("23 + 4" -> "23 plus 4"), so the operation counts as a term."""
    text = " ".join(p for p in parts if p).lower()
    for symbol, word in _SYMBOLS.items():
        text = text.replace(symbol, word)
    return " ".join(_WORD.findall(text))


def _fingerprint(kind: str, family: str, node: str | None, role: str | None, key: str, text: str,
                 label: str | None) -> str:
    if kind == "route":
        payload = [kind, family, node, label]
    elif kind == "insight":
        payload = [kind, family, role, key, text]
    else:
        payload = [kind, family, role, " ".join(key.split()), text.strip()]
    return hashlib.sha1(json.dumps(payload).encode()).hexdigest()


# --- records ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LibraryConfig:
    """How the library keeps itself small and useful."""

    max_items: int = 200
    """Active exemplars + insights per family; above it the lowest-utility items are evicted."""
    min_evidence: int = 8
    """Showings before an item may be retired for negative utility."""
    retire_below: float = -0.1
    """Retire an item (with min_evidence showings) whose utility falls below this."""
    prior: float = 2.0
    """Pseudo-showings at the base rate that shrink utility while evidence is thin."""
    utility_weight: float = 0.5
    """Retrieval score = relevance (best match 1.0) + utility_weight * utility."""
    insight_share: float = 0.25
    """Of k retrieved items, at most this share (at least one) are insights."""
    merge_similarity: float = 0.8
    """Insights whose word sets overlap this much (Jaccard) are merged."""


class LibraryItem(BaseModel):
    """One stored item with its utility counts."""

    id: int
    kind: str
    family: str
    node: str | None = None
    role: str | None = None
    key: str
    """What retrieval matches: an exemplar's question, an insight's condition, a route's label."""
    text: str
    """What a prompt shows: an exemplar's solution, an insight's lesson, a route's label."""
    condition: str | None = None
    lesson: str | None = None
    example: str | None = None
    label: str | None = None
    source_runs: list[int] | None = None
    shown: int = 0
    shown_success: int = 0
    expected: float = 0.0
    status: str = "active"
    reason: str | None = None
    meta: dict[str, Any] | None = None
    created_at: str
    updated_at: str

    @property
    def utility(self) -> float:
        return utility(self.shown, self.shown_success, self.expected)

    @property
    def success_rate(self) -> float | None:
        return self.shown_success / self.shown if self.shown else None


class LibraryVersion(BaseModel):
    id: int
    message: str
    changes: dict[str, Any] | None = None
    restored_from: int | None = None
    created_at: str


class NewItem(BaseModel):
    """An item to add (and the line format of an export, which also carries counts)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["exemplar", "insight", "route"]
    family: str = Field(min_length=1, max_length=200)
    node: str | None = Field(None, max_length=200)
    role: str | None = Field(None, max_length=64)
    key: str = Field(max_length=MAX_TEXT)
    text: str = Field(min_length=1, max_length=MAX_TEXT)
    condition: str | None = Field(None, max_length=MAX_TEXT)
    lesson: str | None = Field(None, max_length=MAX_TEXT)
    example: str | None = Field(None, max_length=MAX_TEXT)
    label: str | None = Field(None, max_length=200)
    source_runs: list[int] | None = None
    shown: int = Field(0, ge=0)
    shown_success: int = Field(0, ge=0)
    expected: float = Field(0.0, ge=0)
    status: Literal["active", "retired"] = "active"
    reason: str | None = None
    meta: dict[str, Any] | None = None
    id: int | None = None
    """Ignored on import (ids are the store's); kept in exports for reference."""
    created_at: str | None = None
    updated_at: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> NewItem:
        if self.shown_success > self.shown:
            raise ValueError(f"shown_success={self.shown_success} exceeds shown={self.shown}")
        if self.expected > self.shown + 1e-9:
            raise ValueError(f"expected={self.expected} exceeds shown={self.shown}")
        if self.kind == "insight" and not (self.condition and self.lesson):
            raise ValueError("an insight needs a condition and a lesson")
        if self.kind == "route" and not (self.label and self.node):
            raise ValueError("a route needs a node and a label")
        return self

    @classmethod
    def exemplar(cls, family: str, question: str, solution: str, *, role: str = "solver", node: str | None = None,
                 source_runs: Sequence[int] | None = None) -> NewItem:
        return cls(kind="exemplar", family=family, role=role, node=node, key=question, text=solution,
                   source_runs=list(source_runs) if source_runs else None)

    @classmethod
    def insight(cls, family: str, condition: str, lesson: str, example: str | None = None, *, role: str = "solver",
                source_runs: Sequence[int] | None = None) -> NewItem:
        return cls(kind="insight", family=family, role=role, key=condition, text=lesson, condition=condition,
                   lesson=lesson, example=example, source_runs=list(source_runs) if source_runs else None)

    @property
    def fingerprint(self) -> str:
        return _fingerprint(self.kind, self.family, self.node, self.role, self.key, self.text, self.label)

    @property
    def search(self) -> str:
        if self.kind == "insight":
            return search_text(self.condition, self.lesson, self.example)
        return search_text(self.key)


@dataclass
class RunOutcome:
    """What one verified run teaches the library (built by agentkit.memory.learning)."""

    run_id: int
    family: str
    success: bool
    nodes: list[str] = field(default_factory=list)
    """Nodes that made a model call: their base rates count this run."""
    shown: list[tuple[int, str]] = field(default_factory=list)
    """(item id, node) for every item a node showed in its prompt."""
    routes: list[tuple[str, str]] = field(default_factory=list)
    """(router node, label) for every route taken."""
    exemplars: list[NewItem] = field(default_factory=list)
    """Verified outputs to keep (successful runs only)."""


@dataclass
class UpdateResult:
    version: int | None
    runs: int = 0
    """Runs accounted by this update (runs seen before are skipped)."""
    skipped_runs: int = 0
    added: list[int] = field(default_factory=list)
    updated: int = 0
    retired: list[int] = field(default_factory=list)
    evicted: list[int] = field(default_factory=list)
    over_cap: dict[str, int] = field(default_factory=dict)
    """Families left above the cap because only items added now could have been evicted."""


def _filters(*, alias: str = "", **values: Any) -> tuple[str, list[Any]]:
    clauses, params = [], []
    for column, value in values.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            clauses.append(f"{alias}{column} IN ({', '.join('?' * len(value))})")
            params.extend(value)
        else:
            clauses.append(f"{alias}{column} = ?")
            params.append(value)
    return " AND ".join(clauses) or "1", params


_JSON = ("source_runs", "meta")


def _to_item(row: dict[str, Any]) -> LibraryItem:
    row = dict(row)
    for key in _JSON:
        row[key] = None if row.get(key) is None else json.loads(row[key])
    row.pop("fingerprint", None)
    row.pop("search", None)
    return LibraryItem.model_validate(row)


def _dumps(value: Any) -> str | None:
    return dumps(value, canonical=True)
