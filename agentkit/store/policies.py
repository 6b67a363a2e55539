"""The policy registry: every trained adapter is a version with its lineage, data,
hyper-parameters, held-out metrics and status, in the same SQLite file as the runs.

Exactly one version is active at a time. ``base`` (the base model, no adapter) is created
with the table and is active until something is promoted. Every promotion and rollback is
an event row, so the activation history - and therefore ``rollback`` - is in the store.
Adapters are referenced by path and pinned by a SHA-256 over their files: a version whose
files changed since it was registered is refused when it is activated or loaded.

    with PolicyRegistry("runs.db") as registry:
        v = registry.register("out/adapter", parent="base", config={"beta": 0.4})
        registry.promote(v.version, reason="gate: p=0.01")
        registry.active().version  # "v1"
        registry.rollback().version  # "base"

No torch here: the registry is plain bookkeeping (the trainer and the gate live in
agentkit.train).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agentkit.errors import StoreError

from .db import StoreConnection, dumps, utcnow

__all__ = ["Policy", "PolicyEvent", "PolicyRegistry", "ChecksumError", "POLICY_STATUSES", "BASE", "adapter_checksum"]

BASE = "base"
POLICY_STATUSES = ("candidate", "active", "rejected", "retired")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ChecksumError(StoreError):
    """A version's adapter files differ from what was registered (or are gone)."""


class Policy(BaseModel):
    """One policy version: an adapter (None for ``base``) and everything about how it was made."""

    id: int
    version: str
    parent: str | None = None
    status: str
    base_model: str | None = None
    adapter_path: str | None = None
    checksum: str | None = None
    method: str | None = None
    data: dict[str, Any] | None = None
    """What it was trained on: counts, ids, or the query that selected them."""
    config: dict[str, Any] | None = None
    """The training config (hyper-parameters), as saved with the checkpoints."""
    metrics: dict[str, Any] | None = None
    """Held-out success, step accuracy, confidence interval, the gate's numbers, notes."""
    note: str | None = None
    created_at: str
    activated_at: str | None = None


class PolicyEvent(BaseModel):
    """A change of the active version (or of a version's status), who made it and why."""

    id: int
    event: str  # register | promote | reject | rollback
    version: str
    previous: str | None = None
    actor: str | None = None
    reason: str | None = None
    details: dict[str, Any] | None = None
    created_at: str


_JSON = ("data", "config", "metrics")


def _dumps(value: Any) -> str | None:
    return dumps(value, canonical=True, default=str)


def _to_policy(row: Mapping[str, Any]) -> Policy:
    row = dict(row)
    for key in _JSON:
        row[key] = None if row[key] is None else json.loads(row[key])
    return Policy.model_validate(row)


def _to_event(row: Mapping[str, Any]) -> PolicyEvent:
    row = dict(row)
    row["details"] = None if row["details"] is None else json.loads(row["details"])
    return PolicyEvent.model_validate(row)


def adapter_checksum(path: str | os.PathLike[str]) -> str:
    """SHA-256 over every file under an adapter directory (relative names and contents),
    or over the file itself: a renamed, added, removed or edited file changes it."""
    root = Path(path)
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file())
    else:
        raise ChecksumError(f"adapter path {root} does not exist; pass the directory the trainer saved")
    if not files:
        raise ChecksumError(f"adapter directory {root} is empty; pass the directory the trainer saved")
    digest = hashlib.sha256()
    for file in files:
        name = file.name if file == root else file.relative_to(root).as_posix()
        digest.update(name.encode() + b"\0" + str(file.stat().st_size).encode() + b"\0")
        with file.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _actor() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return "unknown"


class PolicyRegistry:
    """Policy versions in a store file (created and migrated on open, like TrajectoryStore)."""

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 60.0, synchronous: str | None = None):
        self.path = str(path) if str(path) == ":memory:" else str(Path(path).expanduser())
        self.timeout = timeout
        self.db = StoreConnection(self.path, timeout=timeout, synchronous=synchronous, owner="PolicyRegistry")

    # -- plumbing ---------------------------------------------------------------

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> PolicyRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PolicyRegistry({self.path!r})"

    # -- reading ----------------------------------------------------------------

    def list(self, status: str | None = None) -> list[Policy]:
        """Every version, oldest first (``base`` first); optionally only one status."""
        if status is not None and status not in POLICY_STATUSES:
            raise StoreError(f"policy status {status!r} is not one of {', '.join(POLICY_STATUSES)}")
        where, params = ("WHERE status = ?", (status,)) if status else ("", ())
        return [_to_policy(r) for r in self.db.read(f"SELECT * FROM policies {where} ORDER BY id", params)]

    def get(self, version: str) -> Policy:
        rows = self.db.read("SELECT * FROM policies WHERE version = ?", (version,))
        if not rows:
            raise self._unknown(version)
        return _to_policy(rows[0])

    def active(self) -> Policy:
        """The one active version (``base`` until something is promoted)."""
        rows = self.db.read("SELECT * FROM policies WHERE status = 'active'")
        if len(rows) != 1:
            raise StoreError(f"store {self.path} has {len(rows)} active policies, expected one; "
                             "repair it with `agentkit policy promote VERSION`")
        return _to_policy(rows[0])

    def events(self, version: str | None = None) -> list[PolicyEvent]:
        """Registration, promotion, rejection and rollback events, oldest first."""
        where, params = ("WHERE version = ? OR previous = ?", (version, version)) if version else ("", ())
        return [_to_event(r) for r in self.db.read(f"SELECT * FROM policy_events {where} ORDER BY id", params)]

    def history(self) -> list[str]:
        """The stack of active versions, oldest first; its last entry is active and
        ``rollback`` pops it. Replayed from the events: promote pushes, rollback pops."""
        stack = [BASE]
        for e in self.events():
            if e.event == "promote":
                stack.append(e.version)
            elif e.event == "rollback" and len(stack) > 1:
                stack.pop()
        return stack

    def verify(self, version: str) -> Policy:
        """The version, after checking its adapter files against the registered checksum."""
        policy = self.get(version)
        if policy.adapter_path is None:
            return policy
        try:
            found = adapter_checksum(policy.adapter_path)
        except ChecksumError:
            raise ChecksumError(
                f"policy {version}: adapter {policy.adapter_path} is missing; restore it or roll back "
                "with `agentkit policy rollback`"
            ) from None
        if found != policy.checksum:
            raise ChecksumError(
                f"policy {version}: adapter files at {policy.adapter_path} changed since registration "
                f"(sha256 {found[:12]} != {str(policy.checksum)[:12]}); refusing to load it - restore the "
                "files or register the new adapter as a new version"
            )
        return policy

    # -- writing ----------------------------------------------------------------

    def register(
        self,
        adapter_path: str | os.PathLike[str],
        *,
        parent: str | None = None,
        version: str | None = None,
        base_model: str | None = None,
        method: str | None = None,
        data: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        note: str | None = None,
    ) -> Policy:
        """Record a trained adapter as a new candidate version (named v1, v2, ... unless given).

        The checksum is taken now; ``parent`` defaults to the active version."""
        path = Path(adapter_path).expanduser().resolve()
        if not (path / "adapter_config.json").is_file():
            raise StoreError(f"adapter path {path} has no adapter_config.json; pass the PEFT directory the trainer saved")
        checksum = adapter_checksum(path)
        if version is not None and not _VERSION.match(version):
            raise StoreError(f"policy version {version!r}: use letters, digits, '.', '_' or '-' (e.g. v3)")

        def txn(c: sqlite3.Connection) -> str:
            name = version or self._next_version(c)
            if c.execute("SELECT 1 FROM policies WHERE version = ?", (name,)).fetchone():
                raise StoreError(f"policy version {name!r} exists in {self.path}; pick another name or omit it")
            par = parent if parent is not None else c.execute(
                "SELECT version FROM policies WHERE status = 'active'").fetchone()[0]
            if not c.execute("SELECT 1 FROM policies WHERE version = ?", (par,)).fetchone():
                raise self._unknown(par)
            now = utcnow()
            c.execute(
                "INSERT INTO policies (version, parent, status, base_model, adapter_path, checksum, method, data, "
                "config, metrics, note, created_at) VALUES (?, ?, 'candidate', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (name, par, base_model, str(path), checksum, method, _dumps(data), _dumps(config),
                 _dumps(metrics), note, now),
            )
            self._event(c, "register", name, par, None, None, None)
            return name

        return self.get(self.db.write(txn))

    def update_metrics(self, version: str, metrics: Mapping[str, Any]) -> Policy:
        """Merge ``metrics`` into the version's metrics (top-level keys replace)."""

        def txn(c: sqlite3.Connection) -> None:
            row = c.execute("SELECT metrics FROM policies WHERE version = ?", (version,)).fetchone()
            if row is None:
                raise self._unknown(version)
            merged = {**(json.loads(row[0]) if row[0] else {}), **metrics}
            c.execute("UPDATE policies SET metrics = ? WHERE version = ?", (_dumps(merged), version))

        self.db.write(txn)
        return self.get(version)

    def promote(
        self, version: str, *, actor: str | None = None, reason: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> Policy:
        """Make ``version`` the active one (its checksum verified first); the previous active
        version is retired. Records who and why."""
        self.verify(version)

        def txn(c: sqlite3.Connection) -> None:
            current = c.execute("SELECT version FROM policies WHERE status = 'active'").fetchone()
            previous = current[0] if current else None
            if previous == version:
                raise StoreError(f"policy {version} is already active; see `agentkit policy list`")
            now = utcnow()
            if previous is not None:
                c.execute("UPDATE policies SET status = 'retired' WHERE version = ?", (previous,))
            c.execute("UPDATE policies SET status = 'active', activated_at = ? WHERE version = ?", (now, version))
            self._event(c, "promote", version, previous, actor or _actor(), reason, details)

        self.db.write(txn)
        return self.get(version)

    def reject(
        self, version: str, *, actor: str | None = None, reason: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> Policy:
        """Mark a candidate as rejected (the gate found no significant gain)."""

        def txn(c: sqlite3.Connection) -> None:
            row = c.execute("SELECT status FROM policies WHERE version = ?", (version,)).fetchone()
            if row is None:
                raise self._unknown(version)
            if row[0] == "active":
                raise StoreError(f"policy {version} is active; roll it back with `agentkit policy rollback` instead")
            c.execute("UPDATE policies SET status = 'rejected' WHERE version = ?", (version,))
            self._event(c, "reject", version, None, actor or _actor(), reason, details)

        self.db.write(txn)
        return self.get(version)

    def rollback(self, *, actor: str | None = None, reason: str | None = None) -> Policy:
        """Re-activate the version that was active before the current one; the current one
        is marked rejected. Refuses when there is nothing to go back to, or when the previous
        version's adapter files changed."""
        stack = self.history()
        if len(stack) < 2:
            raise StoreError(f"nothing to roll back to: {stack[-1]} is the first active policy in {self.path}")
        current, previous = stack[-1], stack[-2]
        self.verify(previous)

        def txn(c: sqlite3.Connection) -> None:
            row = c.execute("SELECT version FROM policies WHERE status = 'active'").fetchone()
            if row is None or row[0] != current:  # someone promoted meanwhile
                raise StoreError(f"the active policy changed during rollback; run `agentkit policy rollback` again")
            now = utcnow()
            c.execute("UPDATE policies SET status = 'rejected' WHERE version = ?", (current,))
            c.execute("UPDATE policies SET status = 'active', activated_at = ? WHERE version = ?", (now, previous))
            self._event(c, "rollback", previous, current, actor or _actor(), reason, None)

        self.db.write(txn)
        return self.get(previous)

    # -- helpers ----------------------------------------------------------------

    @staticmethod
    def _next_version(c: sqlite3.Connection) -> str:
        numbers = [int(m.group(1)) for (v,) in c.execute("SELECT version FROM policies")
                   if (m := re.fullmatch(r"v(\d+)", v))]
        return f"v{max(numbers, default=0) + 1}"

    @staticmethod
    def _event(c: sqlite3.Connection, event: str, version: str, previous: str | None, actor: str | None,
               reason: str | None, details: Mapping[str, Any] | None) -> None:
        c.execute(
            "INSERT INTO policy_events (event, version, previous, actor, reason, details, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (event, version, previous, actor, reason, _dumps(details), utcnow()),
        )

    def _unknown(self, version: str) -> StoreError:
        known = ", ".join(r[0] for r in self.db.read("SELECT version FROM policies ORDER BY id")) if not self.db.closed else ""
        return StoreError(f"no policy version {version!r} in {self.path} (versions: {known or 'none'}); "
                          "see `agentkit policy list`")
