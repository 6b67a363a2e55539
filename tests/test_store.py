"""Trajectory store: schema, exact round trips, concurrency, durability, refusals."""

from __future__ import annotations

import hashlib
import math
import multiprocessing as mp
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import pytest
import sqlite_utils

from agentkit.errors import StoreError
from agentkit.store import Run, Step, TrajectoryStore
from agentkit.store import db as _sqlite
from agentkit.store import migrations as _schema

# Column -> Python type of its declared SQL type (TEXT str, INTEGER int, REAL float);
# JSON columns are TEXT.
RUN_COLUMNS = {
    "id": int, "graph": str, "suite": str, "task_id": str, "split": str, "model": str,
    "policy_version": str, "status": str, "reward": float, "step_accuracy": float, "tokens": int,
    "calls": int, "cost": float, "wall_s": float, "error": str, "meta": str, "started_at": str,
    "finished_at": str, "owner_pid": int, "owner_host": str, "owner_start": str,
}
STEP_COLUMNS = {
    "id": int, "run_id": int, "node": str, "role": str, "attempt": int, "parent_step_id": int,
    "prompt_text": str, "prompt_ids": str, "completion_text": str, "completion_ids": str,
    "logprobs": str, "finish_reason": str, "parsed": str, "latency_s": float, "prompt_tokens": int,
    "completion_tokens": int, "adapter": str, "policy_version": str, "memory_ids": str,
    "step_values": str, "meta": str, "created_at": str, "revision": int, "route": str,
}
MIGRATION_NAMES = [name for name, _ in _schema.MIGRATIONS]

# Child processes import the store the same way users do; the env keeps them on this checkout.
WRITER = textwrap.dedent(
    """
    import sys
    from agentkit.store import TrajectoryStore
    path, steps = sys.argv[1], int(sys.argv[2])
    with TrajectoryStore(path) as store:
        run_id = store.start_run("child", suite="concurrency")
        if len(sys.argv) > 3:  # start on the parent's signal, so writers overlap
            print("ready", flush=True)
            sys.stdin.readline()
        for i in range(steps):
            step_id = store.add_step(run_id, node="solve", role="solver", attempt=i,
                                     prompt_ids=list(range(200)), completion_ids=[i] * 60,
                                     logprobs=[-0.5] * 60, prompt_text="p" * 450)
            print(step_id, flush=True)
        store.finish_run(run_id, status="success", reward=1.0)
    """
)


def spawn_writer(path, steps, *, wait=False) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(steps), *(["wait"] if wait else [])],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def finish(child, timeout=60) -> tuple[str, str]:
    """Rest of a child's output (communicate() would skip lines already buffered by readline)."""
    out = child.stdout.read()
    err = child.stderr.read()
    child.wait(timeout)
    return out, err


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def bits(values) -> bytes:
    return struct.pack(f"<{len(values)}d", *values)


# -- schema -------------------------------------------------------------------


def test_fresh_store_has_exactly_the_schema(tmp_path):
    path = tmp_path / "store.db"
    TrajectoryStore(path).close()

    db = sqlite_utils.Database(path)
    # sqlite_sequence is SQLite's own bookkeeping for runs.id AUTOINCREMENT.
    library = ["library_fts", "library_fts_config", "library_fts_data", "library_fts_docsize", "library_fts_idx",
               "library_item_versions", "library_items", "library_nodes", "library_runs", "library_versions"]
    assert sorted(db.table_names()) == sorted([
        "agentkit_meta", "improve_rounds", "improve_runs", "policies", "policy_events", "runs", "schema_migrations",
        "sqlite_sequence", "step_pairs", "steps", "trainer_cycles", "trainer_state", *library,
    ])
    assert list(db["agentkit_meta"].columns_dict) == ["key", "value"]
    assert list(db["schema_migrations"].columns_dict) == ["name", "applied_at"]
    assert list(db["runs"].columns_dict.items()) == list(RUN_COLUMNS.items())  # names, order and types
    assert list(db["steps"].columns_dict.items()) == list(STEP_COLUMNS.items())
    assert db["runs"].pks == ["id"] and db["steps"].pks == ["id"]
    assert {(fk.column, fk.other_table, fk.other_column) for fk in db["steps"].foreign_keys} == {
        ("run_id", "runs", "id"),
        ("parent_step_id", "steps", "id"),
    }
    assert [index.columns for index in db["steps"].indexes] == [["run_id"]]
    # the runs still running, indexed alone: every open looks for those of dead processes
    assert [(index.name, index.columns, index.partial) for index in db["runs"].indexes] == [
        ("idx_runs_running", ["id"], 1)]
    plan = db.execute("EXPLAIN QUERY PLAN SELECT id, owner_pid FROM runs WHERE status = 'running'").fetchall()
    assert "idx_runs_running" in plan[0][-1]
    assert list(db["agentkit_meta"].rows) == [{"key": "kind", "value": "agentkit-store"}]
    assert [row["name"] for row in db["schema_migrations"].rows] == MIGRATION_NAMES
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_reopen_applies_only_missing_migrations(tmp_path, monkeypatch):
    path = tmp_path / "store.db"
    TrajectoryStore(path).close()
    first = list(sqlite_utils.Database(path)["schema_migrations"].rows)

    calls = []

    def m0002_labels(conn):
        calls.append("0002")
        conn.execute("CREATE TABLE labels (id INTEGER PRIMARY KEY, name TEXT)")

    monkeypatch.setattr(_schema, "MIGRATIONS", [*_schema.MIGRATIONS, ("0002_labels", m0002_labels)])
    TrajectoryStore(path).close()
    TrajectoryStore(path).close()

    db = sqlite_utils.Database(path)
    rows = list(db["schema_migrations"].rows)
    assert [r["name"] for r in rows] == [*MIGRATION_NAMES, "0002_labels"]
    assert rows[0] == first[0]  # 0001 was not re-applied
    assert calls == ["0002"]
    assert "labels" in db.table_names()

    # An older agentkit that does not know 0002 refuses the store instead of guessing.
    monkeypatch.undo()
    with pytest.raises(StoreError, match="0002_labels"):
        TrajectoryStore(path)


# -- round trips and run lifecycle ----------------------------------------------


def test_token_ids_and_logprobs_round_trip_exactly(tmp_path):
    prompt_ids = [0, 1, 2, 262_143, 2**31 - 1, 2**53 + 1, 7, 7, 7]
    completion_ids = list(range(300))
    logprobs = [
        -0.0, 0.0, -1e-300, -5e-324, 0.1 + 0.2, -math.pi, -1 / 3, -123456.789012345678,
        -float("inf"), -2.2250738585072014e-308, *[-(k * 0.000123456789) for k in range(100)],
    ]
    with TrajectoryStore(tmp_path / "store.db") as store:
        run_id = store.start_run("solve", meta={"seed": 3, "note": "é ✓"})
        step_id = store.add_step(
            run_id, node="solve", role="solver", prompt_text="Q: 2+2=? ✓", prompt_ids=prompt_ids,
            completion_text="Answer: 4", completion_ids=completion_ids, logprobs=logprobs,
            parsed={"answer": 4, "steps": ["2+2=4"]}, memory_ids=[3, "ex-9"], meta={"temp": 0.7},
        )
        store.set_step_values(step_id, [0.25, 1 / 3, -0.0])
        (step,) = store.steps(run_id)

    assert step.prompt_ids == prompt_ids
    assert step.completion_ids == completion_ids
    assert all(type(i) is int for i in step.prompt_ids + step.completion_ids)
    assert step.logprobs == logprobs
    assert bits(step.logprobs) == bits(logprobs)  # == treats -0.0 and 0.0 alike; bits do not
    assert bits(step.step_values) == bits([0.25, 1 / 3, -0.0])
    assert (step.prompt_tokens, step.completion_tokens) == (9, 300)
    assert step.prompt_text == "Q: 2+2=? ✓"
    assert step.parsed == {"answer": 4, "steps": ["2+2=4"]}
    assert step.memory_ids == [3, "ex-9"]
    assert step.meta == {"temp": 0.7}


def test_run_lifecycle_list_and_summary(tmp_path):
    with TrajectoryStore(tmp_path / "store.db") as store:
        a = store.start_run("solve", suite="arithmetic", task_id="t1", split="test", model="m", policy_version="base")
        plan = store.add_step(a, node="plan", role="planner", prompt_ids=[1, 2, 3], completion_ids=[4, 5])
        store.add_step(a, node="solve", role="solver", parent_step_id=plan, prompt_ids=[1] * 10, completion_ids=[2] * 4)
        ids = store.add_steps([
            dict(run_id=a, node="solve", role="solver", attempt=1, prompt_ids=[1], completion_ids=[2]),
            dict(run_id=a, node="verify", role="verifier", prompt_ids=None, completion_ids=None),
        ])
        assert len(ids) == 2 and ids[0] < ids[1]
        store.finish_run(a, status="success", reward=1.0, step_accuracy=0.5, wall_s=2.0)

        b = store.start_run("solve", suite="blocks")
        store.finish_run(b, status="failure", reward=0.0, error="wrong answer")
        c = store.start_run("plan", suite="arithmetic")

        run = store.get_run(a)
        assert isinstance(run, Run) and all(isinstance(s, Step) for s in run.steps)
        assert [s.node for s in run.steps] == ["plan", "solve", "solve", "verify"]
        assert run.steps[1].parent_step_id == plan
        assert (run.tokens, run.calls, run.cost) == (5 + 14 + 2, 4, 21.0)
        assert (run.status, run.reward, run.step_accuracy, run.wall_s) == ("success", 1.0, 0.5, 2.0)
        assert run.finished_at is not None
        assert store.get_run(a, steps=False).steps is None
        assert store.get_run(b).error == "wrong answer" and store.get_run(b).wall_s >= 0

        assert [r.id for r in store.list_runs()] == [c, b, a]
        assert [r.id for r in store.list_runs(limit=1)] == [c]
        assert [r.id for r in store.list_runs(suite="arithmetic")] == [c, a]
        assert [r.id for r in store.list_runs(status="running")] == [c]
        assert [r.id for r in store.list_runs(graph="solve", status="failure")] == [b]

        assert store.summary() == {
            "runs": 3, "success": 1, "success_rate": 1 / 3, "tokens": 21, "wall_s": 2.0 + store.get_run(b).wall_s,
            "mean_step_accuracy": 0.5,
        }
        assert store.summary([a, b]) == {
            "runs": 2, "success": 1, "success_rate": 0.5, "tokens": 21, "wall_s": 2.0 + store.get_run(b).wall_s,
            "mean_step_accuracy": 0.5,
        }
        assert store.summary([]) == {
            "runs": 0, "success": 0, "success_rate": 0.0, "tokens": 0, "wall_s": 0.0, "mean_step_accuracy": None,
        }


def test_bad_ids_and_statuses_name_the_value(tmp_path):
    with TrajectoryStore(tmp_path / "store.db") as store:
        run_id = store.start_run("solve")
        with pytest.raises(StoreError, match="no run with id 999"):
            store.add_step(999, node="solve")
        with pytest.raises(StoreError, match="parent_step_id 12345"):
            store.add_step(run_id, node="solve", parent_step_id=12345)
        with pytest.raises(StoreError, match="no run with id 999"):
            store.get_run(999)
        with pytest.raises(StoreError, match="no run with id 999"):
            store.finish_run(999, status="success")
        with pytest.raises(StoreError, match="no step with id 999"):
            store.set_step_values(999, [1.0])
        with pytest.raises(ValueError, match="'done' is not one of success, failure, error, budget"):
            store.finish_run(run_id, status="done")
        # A failed batch writes nothing.
        with pytest.raises(StoreError):
            store.add_steps([dict(run_id=run_id, node="a"), dict(run_id=999, node="b")])
        assert store.steps(run_id) == []
    with pytest.raises(StoreError, match="closed"):
        store.start_run("solve")


# -- concurrency and durability -------------------------------------------------


def test_threads_and_processes_write_concurrently(tmp_path):
    path = tmp_path / "store.db"
    store = TrajectoryStore(path)
    children = [spawn_writer(path, 300, wait=True) for _ in range(3)]
    for child in children:
        assert child.stdout.readline() == "ready\n"

    errors, step_ids = [], []

    def thread_writer(n):
        try:
            run_id = store.start_run("thread", suite="concurrency")
            for i in range(100):
                step_ids.append(store.add_step(run_id, node="solve", attempt=i, prompt_ids=[n] * 200,
                                               completion_ids=[i] * 60, logprobs=[-0.25] * 60))
            store.finish_run(run_id, status="success")
        except Exception as exc:  # noqa: BLE001 - surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=thread_writer, args=(n,)) for n in range(6)]
    for child in children:
        child.stdin.write("go\n")
        child.stdin.close()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    outputs = [finish(child) for child in children]

    assert errors == []
    for child, (_, stderr) in zip(children, outputs):
        assert child.returncode == 0, stderr
    child_ids = [int(line) for out, _ in outputs for line in out.split()]
    assert len(child_ids) == 3 * 300 and len(step_ids) == 6 * 100
    assert len(set(child_ids) | set(step_ids)) == 3 * 300 + 6 * 100
    runs = store.list_runs(limit=None)
    assert len(runs) == 9 and {r.status for r in runs} == {"success"}
    assert sorted(r.calls for r in runs) == [100] * 6 + [300] * 3
    store.close()


def test_busy_file_is_retried_past_the_busy_timeout(tmp_path, monkeypatch):
    monkeypatch.setattr(_sqlite, "BUSY_TIMEOUT_MS", 10)
    path = tmp_path / "store.db"
    store = TrajectoryStore(path, timeout=0.3)
    run_id = store.start_run("solve")

    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    threading.Timer(0.15, holder.execute, args=("COMMIT",)).start()
    t0 = time.monotonic()
    store.add_step(run_id, node="solve")  # SQLite gives up after 10 ms; the retry loop does not
    assert time.monotonic() - t0 >= 0.1

    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(StoreError, match="stayed locked by another writer for 0.3 s"):
        store.add_step(run_id, node="solve")
    holder.execute("COMMIT")
    holder.close()
    assert len(store.steps(run_id)) == 1
    store.close()


def test_store_object_survives_fork(tmp_path):
    store = TrajectoryStore(tmp_path / "store.db")
    run_id = store.start_run("solve")
    store.add_step(run_id, node="before")
    ctx = mp.get_context("fork")
    child = ctx.Process(target=lambda: store.add_step(run_id, node="child"))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    store.add_step(run_id, node="after")
    assert [s.node for s in store.steps(run_id)] == ["before", "child", "after"]
    store.close()


def test_sigkill_loses_at_most_the_step_in_flight(tmp_path):
    path = tmp_path / "store.db"
    child = spawn_writer(path, 1_000_000)
    reported = []
    for line in child.stdout:
        reported.append(int(line))
        if len(reported) == 300:
            break
    child.send_signal(signal.SIGKILL)
    rest, _ = finish(child)
    reported += [int(line) for line in rest.split()]
    assert child.returncode == -signal.SIGKILL

    with TrajectoryStore(path) as store:
        (run,) = store.list_runs()
        stored = {s.id for s in store.steps(run.id)}
        assert set(reported) <= stored
        assert len(stored) - len(reported) <= 1  # the step committed but not yet printed
        assert run.status == "interrupted"  # its process is gone: opening the store said so
        assert run.owner_pid == child.pid and run.calls == len(stored)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()


# -- what may be opened ---------------------------------------------------------


def _text_file(path):
    path.write_text("shopping list\neggs\n")


def _other_sqlite(path):
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO users (name) VALUES ('ada')")
    conn.commit()
    conn.close()


def _marker_table_without_marker(path):
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE agentkit_meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute("INSERT INTO agentkit_meta VALUES ('kind', 'something-else')")
    conn.commit()
    conn.close()


def _other_sqlite_in_wal_mode(path):
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("make, reason", [
    (_text_file, "not a SQLite database"),
    (_other_sqlite, "tables users"),
    (_other_sqlite_in_wal_mode, "tables notes"),
    (_marker_table_without_marker, "no agentkit marker"),
])
def test_foreign_file_is_refused_and_left_untouched(tmp_path, make, reason):
    path = tmp_path / "precious.db"
    make(path)
    before = sha256(path)
    with pytest.raises(StoreError, match=reason) as info:
        TrajectoryStore(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "not an agentkit store" in message
    assert sha256(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.db"]  # no -wal/-shm left behind


def test_empty_file_and_new_path_are_initialised(tmp_path):
    empty = tmp_path / "empty.db"
    empty.touch()
    nested = tmp_path / "a" / "b" / "store.db"
    for path in (empty, nested):
        with TrajectoryStore(path) as store:
            store.start_run("solve")
        with TrajectoryStore(path) as store:  # and reopens as a store
            assert len(store.list_runs()) == 1


def test_writers_creating_a_new_store_at_once_migrate_it_once(tmp_path):
    path = tmp_path / "new.db"
    barrier = threading.Barrier(6)
    errors = []

    def open_and_write():
        try:
            barrier.wait()
            with TrajectoryStore(path) as store:  # one store object, one connection, per thread
                store.add_step(store.start_run("solve"), node="solve")
        except Exception as exc:  # noqa: BLE001 - surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=open_and_write) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    db = sqlite_utils.Database(path)
    assert [r["name"] for r in db["schema_migrations"].rows] == MIGRATION_NAMES
    assert db["runs"].count == 6 and db["steps"].count == 6


def _unwritable_paths(tmp_path):
    if os.geteuid() == 0:
        # root ignores chmod; /proc refuses new files to everyone.
        return [os.path.join("/proc", "agentkit.db"), os.path.join("/proc", "no-such-dir", "agentkit.db")]
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    return [str(locked / "agentkit.db"), str(locked / "sub" / "agentkit.db")]


def test_unwritable_location_names_path_and_fix(tmp_path):
    try:
        for path in _unwritable_paths(tmp_path):
            with pytest.raises(StoreError) as info:
                TrajectoryStore(path)
            message = str(info.value)
            assert "\n" not in message
            assert path in message
            assert "pass --store PATH to a writable location" in message
    finally:
        (tmp_path / "locked").exists() and (tmp_path / "locked").chmod(0o700)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to drop to another uid")
def test_read_only_directory_as_an_unprivileged_user():
    # As root, chmod does not stop writes; a forked child that drops to uid 65534 sees it.
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)
        locked = os.path.join(tmp, "locked")
        os.mkdir(locked, 0o555)
        path = os.path.join(locked, "agentkit.db")
        queue = mp.get_context("fork").SimpleQueue()

        def child():
            os.setgid(65534)
            os.setuid(65534)
            try:
                TrajectoryStore(path)
                queue.put("opened")
            except StoreError as exc:
                queue.put(str(exc))

        proc = mp.get_context("fork").Process(target=child)
        proc.start()
        proc.join(30)
        message = queue.get()
        assert path in message and "pass --store PATH to a writable location" in message, message
        assert os.listdir(locked) == []
