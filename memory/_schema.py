"""The store's schema as named migrations, applied in order and recorded.

Plain SQL DDL that a server database can follow: TEXT for JSON and ISO-8601 UTC
timestamps, INTEGER/REAL for numbers, ordinary foreign keys and indexes. A new schema
change is a new function appended to MIGRATIONS; a store records each applied name in
`schema_migrations`, and re-opening applies only the missing ones.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import datetime, timezone

__all__ = ["MARKER_KEY", "MARKER_VALUE", "MIGRATIONS", "migrate", "utcnow"]

MARKER_KEY = "kind"
MARKER_VALUE = "agentkit-store"


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat()


def m0001_initial(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            graph TEXT NOT NULL,
            suite TEXT,
            task_id TEXT,
            split TEXT,
            model TEXT,
            policy_version TEXT,
            status TEXT NOT NULL,
            reward REAL,
            step_accuracy REAL,
            tokens INTEGER,
            calls INTEGER,
            cost REAL,
            wall_s REAL,
            error TEXT,
            meta TEXT,
            started_at TEXT NOT NULL,
            finished_at TEXT
        )
        """
    )
    conn.execute(
        """
        CREATE TABLE steps (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs(id),
            node TEXT NOT NULL,
            role TEXT,
            attempt INTEGER NOT NULL,
            parent_step_id INTEGER REFERENCES steps(id),
            prompt_text TEXT,
            prompt_ids TEXT,
            completion_text TEXT,
            completion_ids TEXT,
            logprobs TEXT,
            finish_reason TEXT,
            parsed TEXT,
            latency_s REAL,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            adapter TEXT,
            policy_version TEXT,
            memory_ids TEXT,
            step_values TEXT,
            meta TEXT,
            created_at TEXT NOT NULL
        )
        """
    )
    conn.execute("CREATE INDEX idx_steps_run_id ON steps (run_id)")


MIGRATIONS: list[tuple[str, Callable[[sqlite3.Connection], None]]] = [
    ("0001_initial", m0001_initial),
]


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Create the bookkeeping tables and apply missing migrations; returns their names.

    Runs inside the caller's write transaction (BEGIN IMMEDIATE), so two processes
    opening a new store at once apply each migration exactly once.
    """
    conn.execute("CREATE TABLE IF NOT EXISTS agentkit_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
    )
    if conn.execute("SELECT 1 FROM agentkit_meta WHERE key = ?", (MARKER_KEY,)).fetchone() is None:
        conn.execute("INSERT INTO agentkit_meta (key, value) VALUES (?, ?)", (MARKER_KEY, MARKER_VALUE))
    applied = {name for (name,) in conn.execute("SELECT name FROM schema_migrations")}
    done = []
    for name, fn in MIGRATIONS:
        if name in applied:
            continue
        fn(conn)
        conn.execute("INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)", (name, utcnow()))
        done.append(name)
    return done
