"""Many processes on one store: nothing committed is lost (issue 13).

Each writer holds two store objects on the file, as ``agentkit run`` does (runs and the
policy registry); readers open, read and close the store over and over meanwhile, as
``agentkit traces list`` and ``agentkit trainer status`` do. Opening a second store
object used to read the file's header through a Python file handle, which dropped the
process's SQLite locks; the next reader to close then checkpointed and deleted the WAL
the writers were still appending to, and their later commits vanished.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from agentkit.errors import StoreError
from agentkit.store import TrajectoryStore
from agentkit.store import db as _sqlite
from agentkit.store._owners import this_process
from agentkit.store.policies import PolicyRegistry
from agentkit.store.trainer import TrainerStore

needs_proc = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="process start times come from /proc")

WRITERS = 4
COMMITS = 150  # per writer; each is one run (start_run) and one step (add_step)
READERS = 2

WRITER = textwrap.dedent(
    """
    import sys
    from agentkit.store import TrajectoryStore
    from agentkit.store.policies import PolicyRegistry
    path, commits = sys.argv[1], int(sys.argv[2])
    runs = TrajectoryStore(path)
    steps = TrajectoryStore(path)  # a second store object on the same file, in the same process
    registry = PolicyRegistry(path)
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(commits):
        run_id = runs.start_run("writer", suite="concurrency", task_id=str(i))
        steps.add_step(run_id, node="solve", prompt_ids=[i] * 50, completion_ids=[i] * 20)
        print(run_id, flush=True)
        registry.active()
    for store in (runs, steps, registry):
        store.close()
    """
)

READER = textwrap.dedent(
    """
    import os, sys
    from agentkit.store import TrajectoryStore
    path, stop = sys.argv[1], sys.argv[2]
    opened, errors = 0, []
    while not os.path.exists(stop):
        try:
            with TrajectoryStore(path) as store:
                store.list_runs(5)
        except Exception as exc:  # counted: the test asserts there are none
            errors.append(f"{type(exc).__name__}: {exc}")
        opened += 1
        if opened == 1:
            print("ready", flush=True)
    print(opened, len(errors), *errors[-1:], sep="\t", flush=True)
    """
)


def _spawn(script: str, *args: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_writers_with_two_store_objects_lose_nothing_while_readers_open_and_close(tmp_path):
    path = tmp_path / "runs.db"
    stop = tmp_path / "stop"
    TrajectoryStore(path).close()
    writers = [_spawn(WRITER, path, COMMITS) for _ in range(WRITERS)]
    for writer in writers:
        assert writer.stdout.readline() == "ready\n", writer.stderr.read()
    readers = [_spawn(READER, path, stop) for _ in range(READERS)]
    for reader in readers:  # opening and closing before the first commit
        assert reader.stdout.readline() == "ready\n", reader.stderr.read()
    for writer in writers:
        writer.stdin.write("go\n")
        writer.stdin.close()

    committed, errors = [], []
    for writer in writers:
        out, err = writer.stdout.read(), writer.stderr.read()
        writer.wait(120)
        committed += [int(line) for line in out.split()]
        if writer.returncode != 0:
            errors.append(err.strip().splitlines()[-1])
    stop.touch()
    opens, read_errors = 0, []
    for reader in readers:
        out, err = reader.communicate(timeout=60)
        assert reader.returncode == 0, err
        opened, failed, *last = out.strip().split("\t")
        opens += int(opened)
        read_errors += [f"{failed} failed opens, the last: {last[0]}"] if int(failed) else []

    db = sqlite3.connect(path)
    stored_runs = {r for (r,) in db.execute("SELECT id FROM runs")}
    stored_steps = db.execute("SELECT COUNT(*) FROM steps").fetchone()[0]
    integrity = db.execute("PRAGMA integrity_check").fetchall()
    db.close()
    made = WRITERS * COMMITS
    kept = len(stored_runs & set(committed))
    assert opens > 0
    assert (kept, len(committed), errors) == (made, made, []), f"kept {kept} of {len(committed)} commits made"
    assert (len(stored_runs), stored_steps) == (made, made)
    assert integrity == [("ok",)]
    assert read_errors == []


# -- one connection per file per process ------------------------------------------------


def _my_locks(path) -> list[str]:
    """This process's POSIX locks on ``path``, from /proc/locks."""
    inode = os.stat(path).st_ino
    with open("/proc/locks") as f:
        return [line for line in f if f":{inode} " in line and line.split()[4] == str(os.getpid())]


@pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="reads the process's locks from /proc/locks")
def test_opening_a_store_keeps_the_locks_this_process_holds_on_it(tmp_path):
    path = tmp_path / "runs.db"
    TrajectoryStore(path).close()
    held = sqlite3.connect(path)  # any other connection of this process, e.g. a user's own
    held.execute("SELECT COUNT(*) FROM runs").fetchone()  # WAL: it keeps a read lock while open
    before = _my_locks(path)
    assert before
    _sqlite.connect(str(path), 5.0).close()  # inspects the existing file: through SQLite only
    with TrajectoryStore(path) as store:
        store.start_run("solve")
    assert _my_locks(path) == before
    held.close()


# -- opening reads; it writes only when it must ---------------------------------------------


def _dead_run(path) -> int:
    """A run left 'running' by a process that is gone: this one's pid, given to a later process."""
    with TrajectoryStore(path) as store:
        run_id = store.start_run("solve")
        *identity, ticks = this_process()[2].split("/")
        with store.db.locked() as conn:
            conn.execute("UPDATE runs SET owner_start = ? WHERE id = ?",
                         ("/".join([*identity, str(int(ticks) + 1)]), run_id))
    return run_id


def test_an_up_to_date_store_opens_while_another_process_writes(tmp_path):
    """`agentkit traces list` beside a long write: opening reads, and waits for no writer."""
    path = tmp_path / "runs.db"
    with TrajectoryStore(path) as store:
        live = store.start_run("solve")  # this process lives: nothing to mark
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # the write lock, as another process's transaction holds it
    try:
        with TrajectoryStore(path, timeout=0.5) as store:
            assert [(r.id, r.status) for r in store.list_runs()] == [(live, "running")]
    finally:
        writer.execute("ROLLBACK")
        writer.close()


@needs_proc
def test_an_open_waiting_for_the_write_lock_holds_up_no_other_store_in_the_process(tmp_path):
    dead = _dead_run(tmp_path / "a.db")  # so opening a.db must write, and waits for the lock
    writer = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    opened = []
    waiting = threading.Thread(target=lambda: opened.append(TrajectoryStore(tmp_path / "a.db", timeout=30)))
    other = threading.Thread(target=lambda: TrajectoryStore(tmp_path / "b.db").close())
    try:
        waiting.start()
        time.sleep(0.5)  # a.db's open is waiting now
        other.start()
        other.join(5)
        assert not other.is_alive(), "opening b.db waited for a.db's open"
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        waiting.join(30)
        other.join(30)
    (store,) = opened
    assert store.get_run(dead, steps=False).status == "interrupted"
    assert store.repair() == [dead]  # the open's marks are reported
    store.close()


def test_store_objects_on_one_file_share_one_connection_until_the_last_closes(tmp_path):
    path = tmp_path / "runs.db"
    (tmp_path / "link.db").symlink_to(path)
    runs = TrajectoryStore(path)
    registry = PolicyRegistry(tmp_path / "link.db")
    book = TrainerStore(tmp_path / "." / "runs.db")
    shared = runs.db._shared
    assert registry.db._shared is shared and book.db._shared is shared and shared.refs == 3
    assert TrajectoryStore(tmp_path / "other.db").db._shared is not shared

    runs.close()
    runs.close()  # twice is once
    assert shared.refs == 2
    assert registry.active().version == "base"  # still open for the others
    book.save("arithmetic", run_cursor=3)
    with pytest.raises(StoreError, match="closed"):
        runs.list_runs()
    registry.close()
    book.close()
    with pytest.raises(sqlite3.ProgrammingError):
        shared.conn.execute("SELECT 1")  # the last close closed it
    with TrajectoryStore(path) as again:  # and a new open gets a new one
        assert again.db._shared is not shared and again.list_runs() == []


def test_a_deleted_store_opened_again_is_a_new_store(tmp_path):
    path = tmp_path / "runs.db"
    old = TrajectoryStore(path)
    old.start_run("solve")
    for name in ("runs.db", "runs.db-wal", "runs.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    with TrajectoryStore(path) as new:  # not the connection to the deleted file
        assert new.db._shared is not old.db._shared and new.list_runs() == []
    old.close()


def test_a_forked_child_opens_its_own_connection(tmp_path):
    store = TrajectoryStore(tmp_path / "runs.db")
    parent = store.db._shared
    queue = mp.get_context("fork").SimpleQueue()

    def child():
        run_id = store.start_run("child")
        queue.put((store.db._shared is not parent, store.db._shared.pid == os.getpid(), run_id))

    proc = mp.get_context("fork").Process(target=child)
    proc.start()
    proc.join(30)
    assert proc.exitcode == 0 and queue.get() == (True, True, 1)
    assert parent.refs == 1 and [r.graph for r in store.list_runs()] == ["child"]
    store.close()


def _synchronous(store) -> int:
    with store.db.locked() as conn:
        return conn.execute("PRAGMA synchronous").fetchone()[0]


def test_durability_is_normal_by_default_and_full_on_request(tmp_path, monkeypatch):
    monkeypatch.delenv(_sqlite.SYNCHRONOUS_ENV, raising=False)
    normal, full = 1, 2  # PRAGMA synchronous values
    with TrajectoryStore(tmp_path / "a.db") as store:
        assert _synchronous(store) == normal
        with TrajectoryStore(tmp_path / "a.db", synchronous="full"):  # the strongest asked for wins
            assert _synchronous(store) == full
    monkeypatch.setenv(_sqlite.SYNCHRONOUS_ENV, "FULL")
    with TrajectoryStore(tmp_path / "b.db") as store:
        assert _synchronous(store) == full
    monkeypatch.setenv(_sqlite.SYNCHRONOUS_ENV, "fast")
    with pytest.raises(StoreError, match="AGENTKIT_SYNCHRONOUS='fast' is not a durability level; set it to full or normal"):
        TrajectoryStore(tmp_path / "c.db")
    with pytest.raises(StoreError, match="synchronous='off' is not a durability level; pass 'full' or 'normal'"):
        PolicyRegistry(tmp_path / "c.db", synchronous="off")
    assert not (tmp_path / "c.db").exists()
