"""Preference pairs for DPO, stored next to the runs they came from.

A pair is (prompt, chosen, rejected) with both texts and exact token ids: chosen and
rejected ids continue ``prompt_ids``, exactly as the policy produced them, so training
never re-tokenizes. Two kinds:

- ``step``: Step-DPO. The prompt is the node prompt plus the output's steps 1..k-1 and
  the head "Step k:"; chosen is a step k that led to a verified answer, rejected the
  original wrong step k.
- ``outcome``: whole-output DPO. Same node prompt; chosen a successful output, rejected a
  failed one.

    with TrajectoryStore("runs.db") as store:
        pairs = PairStore(store)
        pairs.add_pairs([Pair(kind="step", prompt_text="...Step 2:", prompt_ids=[...], ...)])
        pairs.export_jsonl("pairs.jsonl")  # {"prompt", "chosen", "rejected"} per line
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, field_validator

from .db import dumps as _dumps
from .db import loads as _loads
from .db import utcnow
from .runs import TrajectoryStore

__all__ = ["Pair", "PairStore", "PAIR_KINDS"]

PAIR_KINDS = ("step", "outcome")

_JSON = ("prompt_ids", "chosen_ids", "rejected_ids", "meta")
_COLUMNS = (
    "kind", "suite", "task_id", "run_id", "step_id", "step_index", "chosen_run_id", "method",
    "prompt_text", "prompt_ids", "chosen_text", "chosen_ids", "rejected_text", "rejected_ids",
    "policy_version", "key", "meta", "created_at",
)
_INSERT = (
    f"INSERT OR IGNORE INTO step_pairs ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_COLUMNS))})"
)


class Pair(BaseModel):
    """One preference pair and where it came from."""

    kind: str
    """"step" (Step-DPO) or "outcome" (whole-output DPO)."""
    prompt_text: str
    prompt_ids: list[int]
    chosen_text: str
    chosen_ids: list[int]
    """Continue prompt_ids; chosen_text is their text (the prompt is not repeated)."""
    rejected_text: str
    rejected_ids: list[int]
    suite: str | None = None
    task_id: str | None = None
    run_id: int | None = None
    """The run whose output is rejected."""
    step_id: int | None = None
    """The model call (Step row) whose output is rejected."""
    step_index: int | None = None
    """0-based index of the rejected sub-step ("Step k:" line k-1) in that output; None for outcome pairs."""
    chosen_run_id: int | None = None
    """Outcome pairs: the successful run."""
    method: str | None = None
    """How the rejected step was found: checker, mc or critic."""
    policy_version: str | None = None
    """The policy that sampled the pair."""
    meta: dict[str, Any] | None = None
    id: int | None = None
    created_at: str | None = None

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in PAIR_KINDS:
            raise ValueError(f"pair kind {kind!r} is not one of {', '.join(PAIR_KINDS)}")
        return kind

    @property
    def key(self) -> str:
        """Identity of the training example: the same token ids make the same pair."""
        payload = json.dumps([self.prompt_ids, self.chosen_ids, self.rejected_ids], separators=(",", ":"))
        return hashlib.sha1(payload.encode()).hexdigest()

    def trl_record(self) -> dict[str, str]:
        """The row TRL's DPOTrainer reads: explicit prompt, completions without the prompt."""
        return {"prompt": self.prompt_text, "chosen": self.chosen_text, "rejected": self.rejected_text}


def _row(pair: Pair) -> tuple:
    return (
        pair.kind, pair.suite, pair.task_id, pair.run_id, pair.step_id, pair.step_index,
        pair.chosen_run_id, pair.method, pair.prompt_text, _dumps(pair.prompt_ids),
        pair.chosen_text, _dumps(pair.chosen_ids), pair.rejected_text, _dumps(pair.rejected_ids),
        pair.policy_version, pair.key, _dumps(pair.meta), utcnow(),
    )


def _to_pair(row: dict[str, Any]) -> Pair:
    row.pop("key", None)
    for column in _JSON:
        row[column] = _loads(row[column])
    return Pair.model_validate(row)


class PairStore:
    """The ``step_pairs`` table of a trajectory store.

    ``store``: an open TrajectoryStore (the pair store shares its connection and lock) or
    a path, which is opened here and closed by ``close``."""

    def __init__(self, store: TrajectoryStore | str | os.PathLike[str]):
        self._owns = not isinstance(store, TrajectoryStore)
        self.store = TrajectoryStore(store) if self._owns else store

    def close(self) -> None:
        if self._owns:
            self.store.close()

    def __enter__(self) -> PairStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PairStore({self.store.path!r})"

    def add_pairs(self, pairs: Iterable[Pair]) -> list[int | None]:
        """Insert pairs in one transaction; returns each new id, or None for a pair already
        stored (same prompt, chosen and rejected token ids)."""
        rows = [_row(pair) for pair in pairs]

        def txn(c: sqlite3.Connection) -> list[int | None]:
            ids = []
            for row in rows:
                cursor = c.execute(_INSERT, row)
                ids.append(cursor.lastrowid if cursor.rowcount else None)
            return ids

        return self.store.db.write(txn) if rows else []

    def add(self, pair: Pair) -> int | None:
        return self.add_pairs([pair])[0]

    def pairs(
        self,
        *,
        kind: str | None = None,
        policy_version: str | None = None,
        suite: str | None = None,
        run_id: int | None = None,
        limit: int | None = None,
    ) -> list[Pair]:
        """Stored pairs, oldest first, filtered by any of the given fields."""
        where, params = self._where(kind=kind, policy_version=policy_version, suite=suite, run_id=run_id)
        return [_to_pair(row) for row in self.store.db.rows("step_pairs", where, params, order_by="id", limit=limit)]

    def count(self, *, kind: str | None = None, policy_version: str | None = None) -> int:
        where, params = self._where(kind=kind, policy_version=policy_version)
        sql = "SELECT COUNT(*) FROM step_pairs" + (f" WHERE {where}" if where else "")
        return self.store.db.one(sql, params)[0]

    def export_jsonl(
        self, path: str | os.PathLike[str], *, kind: str | None = None, policy_version: str | None = None
    ) -> int:
        """Write one {"prompt", "chosen", "rejected"} object per line; returns the count.

        That is TRL's standard preference format with an explicit prompt, which its
        DPOTrainer accepts unchanged: three strings, chosen and rejected without the prompt.
        TRL re-tokenizes them (and appends EOS to both completions); agentkit's own trainer
        reads the stored token ids instead."""
        pairs = self.pairs(kind=kind, policy_version=policy_version)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            for pair in pairs:
                f.write(json.dumps(pair.trl_record(), ensure_ascii=False) + "\n")
        return len(pairs)

    @staticmethod
    def _where(**filters: Any) -> tuple[str | None, Sequence[Any]]:
        if filters.get("kind") is not None and filters["kind"] not in PAIR_KINDS:
            raise ValueError(f"pair kind {filters['kind']!r} is not one of {', '.join(PAIR_KINDS)}")
        clauses, params = [], []
        for column, value in filters.items():
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        return " AND ".join(clauses) or None, params
