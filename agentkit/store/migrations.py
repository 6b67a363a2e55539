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

__all__ = ["MARKER_KEY", "MARKER_VALUE", "MIGRATIONS", "migrate", "pending_migrations", "utcnow"]

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


def m0002_graph_place(conn: sqlite3.Connection) -> None:
    """A step's place in its graph beyond node and parent step: the run's revision count
    when the node ran, and the route label a router or critic step chose."""
    conn.execute("ALTER TABLE steps ADD COLUMN revision INTEGER")
    conn.execute("ALTER TABLE steps ADD COLUMN route TEXT")


def m0003_step_pairs(conn: sqlite3.Connection) -> None:
    """Preference pairs for DPO: step pairs (Step-DPO) and whole-output pairs (outcome DPO).

    prompt/chosen/rejected keep both the text (for JSONL export) and the exact token ids
    (for training); chosen and rejected ids continue prompt_ids. ``key`` (a hash of the
    three id lists) makes adding the same pair twice a no-op."""
    conn.execute(
        """
        CREATE TABLE step_pairs (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,
            suite TEXT,
            task_id TEXT,
            run_id INTEGER REFERENCES runs(id),
            step_id INTEGER REFERENCES steps(id),
            step_index INTEGER,
            chosen_run_id INTEGER REFERENCES runs(id),
            method TEXT,
            prompt_text TEXT NOT NULL,
            prompt_ids TEXT NOT NULL,
            chosen_text TEXT NOT NULL,
            chosen_ids TEXT NOT NULL,
            rejected_text TEXT NOT NULL,
            rejected_ids TEXT NOT NULL,
            policy_version TEXT,
            key TEXT NOT NULL UNIQUE,
            meta TEXT,
            created_at TEXT NOT NULL
        )
        """
    )
    conn.execute("CREATE INDEX idx_step_pairs_run_id ON step_pairs (run_id)")


def m0004_policies(conn: sqlite3.Connection) -> None:
    """The policy registry: one row per policy version (``base`` = no adapter, active from
    the start), and an event row per registration, promotion, rejection and rollback, from
    which the activation history (and so rollback) is replayed."""
    conn.execute(
        """
        CREATE TABLE policies (
            id INTEGER PRIMARY KEY,
            version TEXT NOT NULL UNIQUE,
            parent TEXT REFERENCES policies(version),
            status TEXT NOT NULL,
            base_model TEXT,
            adapter_path TEXT,
            checksum TEXT,
            method TEXT,
            data TEXT,
            config TEXT,
            metrics TEXT,
            note TEXT,
            created_at TEXT NOT NULL,
            activated_at TEXT
        )
        """
    )
    conn.execute(
        """
        CREATE TABLE policy_events (
            id INTEGER PRIMARY KEY,
            event TEXT NOT NULL,
            version TEXT NOT NULL REFERENCES policies(version),
            previous TEXT,
            actor TEXT,
            reason TEXT,
            details TEXT,
            created_at TEXT NOT NULL
        )
        """
    )
    now = utcnow()
    conn.execute(
        "INSERT INTO policies (version, status, note, created_at, activated_at) VALUES ('base', 'active', ?, ?, ?)",
        ("the base model, no adapter", now, now),
    )


def m0005_experience_library(conn: sqlite3.Connection) -> None:
    """The experience library (memory/library.py): items nodes read into their prompts.

    ``library_items``: one row per exemplar, insight or route statistic, with its utility
    counts (``shown``, ``shown_success`` and ``expected``, the sum of the node's base rate at
    each showing). ``library_fts`` indexes ``search`` (FTS5, BM25), kept in step by triggers.
    ``library_nodes``: per family and node, runs and successes (the base rate).
    ``library_versions``: one row per batch of changes; ``library_item_versions`` the
    state of every item a version touched (NULL: deleted), from which any version is
    restored exactly. ``library_runs``: runs already accounted, so none counts twice."""
    conn.execute(
        """
        CREATE TABLE library_items (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,
            family TEXT NOT NULL,
            node TEXT,
            role TEXT,
            key TEXT NOT NULL,
            text TEXT NOT NULL,
            condition TEXT,
            lesson TEXT,
            example TEXT,
            label TEXT,
            source_runs TEXT,
            shown INTEGER NOT NULL DEFAULT 0,
            shown_success INTEGER NOT NULL DEFAULT 0,
            expected REAL NOT NULL DEFAULT 0,
            status TEXT NOT NULL,
            reason TEXT,
            fingerprint TEXT NOT NULL UNIQUE,
            search TEXT NOT NULL,
            meta TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )
        """
    )
    conn.execute("CREATE INDEX idx_library_items_family ON library_items (family, kind, status)")
    conn.execute(
        "CREATE VIRTUAL TABLE library_fts USING fts5(search, content='library_items', content_rowid='id')"
    )
    conn.execute(
        "CREATE TRIGGER library_items_ai AFTER INSERT ON library_items BEGIN "
        "INSERT INTO library_fts (rowid, search) VALUES (new.id, new.search); END"
    )
    conn.execute(
        "CREATE TRIGGER library_items_ad AFTER DELETE ON library_items BEGIN "
        "INSERT INTO library_fts (library_fts, rowid, search) VALUES ('delete', old.id, old.search); END"
    )
    conn.execute(
        "CREATE TRIGGER library_items_au AFTER UPDATE OF search ON library_items BEGIN "
        "INSERT INTO library_fts (library_fts, rowid, search) VALUES ('delete', old.id, old.search); "
        "INSERT INTO library_fts (rowid, search) VALUES (new.id, new.search); END"
    )
    conn.execute(
        """
        CREATE TABLE library_nodes (
            family TEXT NOT NULL,
            node TEXT NOT NULL,
            runs INTEGER NOT NULL DEFAULT 0,
            successes INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (family, node)
        )
        """
    )
    conn.execute(
        """
        CREATE TABLE library_versions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            message TEXT NOT NULL,
            changes TEXT,
            nodes TEXT,
            restored_from INTEGER,
            created_at TEXT NOT NULL
        )
        """
    )
    conn.execute(
        """
        CREATE TABLE library_item_versions (
            version INTEGER NOT NULL REFERENCES library_versions(id),
            item_id INTEGER NOT NULL,
            row TEXT,
            PRIMARY KEY (item_id, version)
        )
        """
    )
    conn.execute(
        "CREATE TABLE library_runs (run_id INTEGER PRIMARY KEY, version INTEGER REFERENCES library_versions(id))"
    )


def m0006_trainer(conn: sqlite3.Connection) -> None:
    """The background trainer's bookkeeping (store/trainer.py): per suite, the highest run
    id examined and pair id trained on, and its live status as JSON; one row per cycle
    that did work (runs examined, pairs built, the candidate and the gate's decision)."""
    conn.execute(
        """
        CREATE TABLE trainer_state (
            suite TEXT PRIMARY KEY,
            run_cursor INTEGER NOT NULL DEFAULT 0,
            pair_cursor INTEGER NOT NULL DEFAULT 0,
            status TEXT,
            updated_at TEXT NOT NULL
        )
        """
    )
    conn.execute(
        """
        CREATE TABLE trainer_cycles (
            id INTEGER PRIMARY KEY,
            suite TEXT NOT NULL,
            policy_version TEXT,
            run_from INTEGER,
            run_to INTEGER,
            runs INTEGER,
            failed INTEGER,
            pairs INTEGER,
            pending INTEGER,
            candidate TEXT,
            decision TEXT,
            p_value REAL,
            collect_s REAL,
            train_s REAL,
            gate_s REAL,
            error TEXT,
            details TEXT,
            started_at TEXT NOT NULL,
            finished_at TEXT
        )
        """
    )


def m0007_run_owner(conn: sqlite3.Connection) -> None:
    """The process that runs a run (store/_owners.py): its pid, host name and start
    identity (boot id / pid namespace / start time in clock ticks), so a run left
    'running' by a process that is gone can be told from a live one and marked
    'interrupted'. NULL on runs recorded before this migration."""
    conn.execute("ALTER TABLE runs ADD COLUMN owner_pid INTEGER")
    conn.execute("ALTER TABLE runs ADD COLUMN owner_host TEXT")
    conn.execute("ALTER TABLE runs ADD COLUMN owner_start TEXT")


def m0008_running_runs(conn: sqlite3.Connection) -> None:
    """The runs still 'running', indexed alone: every process's first open of the store
    looks for those whose process is gone (store/_owners.py), and most runs are finished."""
    conn.execute("CREATE INDEX idx_runs_running ON runs (id) WHERE status = 'running'")


def m0009_improve(conn: sqlite3.Connection) -> None:
    """``agentkit improve`` runs and their rounds (store/improve.py): one row per run with
    its config, one per round with the round's numbers as JSON (RoundResult: gate p-values,
    final-test success and interval, examples, tokens, CPU), so the UI draws the curve."""
    conn.execute(
        """
        CREATE TABLE improve_runs (
            id INTEGER PRIMARY KEY,
            suite TEXT,
            graph TEXT,
            method TEXT,
            status TEXT NOT NULL,
            config TEXT,
            started_at TEXT NOT NULL,
            finished_at TEXT
        )
        """
    )
    conn.execute(
        """
        CREATE TABLE improve_rounds (
            id INTEGER PRIMARY KEY,
            improve_id INTEGER NOT NULL REFERENCES improve_runs(id),
            round INTEGER NOT NULL,
            result TEXT NOT NULL,
            created_at TEXT NOT NULL,
            UNIQUE (improve_id, round)
        )
        """
    )


MIGRATIONS: list[tuple[str, Callable[[sqlite3.Connection], None]]] = [
    ("0001_initial", m0001_initial),
    ("0002_graph_place", m0002_graph_place),
    ("0003_step_pairs", m0003_step_pairs),
    ("0004_policies", m0004_policies),
    ("0005_experience_library", m0005_experience_library),
    ("0006_trainer", m0006_trainer),
    ("0007_run_owner", m0007_run_owner),
    ("0008_running_runs", m0008_running_runs),
    ("0009_improve", m0009_improve),
]


def pending_migrations(conn: sqlite3.Connection) -> list[str]:
    """The names of the migrations the store lacks (all of them on a new file): a read, so
    an up-to-date store opens without taking the write lock."""
    tables = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    if conn.execute(tables).fetchone() is None:
        return [name for name, _ in MIGRATIONS]
    applied = {name for (name,) in conn.execute("SELECT name FROM schema_migrations")}
    return [name for name, _ in MIGRATIONS if name not in applied]


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
