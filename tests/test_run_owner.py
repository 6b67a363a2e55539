"""Runs end honestly: a run whose process died is marked 'interrupted' when the store is
next opened, or by ``agentkit traces repair``; a live run, or one that cannot be checked
from here, is never marked (issue 13)."""

from __future__ import annotations

import errno
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from agentkit.cli.app import app
from agentkit.errors import StoreError
from agentkit.store import TrajectoryStore, _owners
from agentkit.store._owners import this_process

needs_proc = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="process start times come from /proc")

KILLED = textwrap.dedent(
    """
    import os, signal, sys
    from agentkit.store import TrajectoryStore
    store = TrajectoryStore(sys.argv[1])
    run_id = store.start_run("solve", suite="arithmetic")
    store.add_step(run_id, node="solve", prompt_ids=[1, 2, 3], completion_ids=[4, 5])
    print(run_id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # as kill -9 on `agentkit run` would
    """
)


def killed_run(path) -> tuple[int, int]:
    """A run left 'running' by a process killed with SIGKILL: (run id, its pid)."""
    child = subprocess.run([sys.executable, "-c", KILLED, str(path)], capture_output=True, text=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr
    with TrajectoryStore(path) as store:  # the open marks it: read the pid on the row itself
        run_id = int(child.stdout)
        return run_id, store.get_run(run_id, steps=False).owner_pid


def ended_runs(path, n: int = 1) -> list[int]:
    """Runs left 'running' by a forked child that exited without finishing them (its own
    open of the store marks the runs of earlier dead processes: one child makes them all)."""
    queue = mp.get_context("fork").SimpleQueue()

    def child():
        with TrajectoryStore(path) as store:
            queue.put([store.start_run("solve", suite="arithmetic") for _ in range(n)])

    proc = mp.get_context("fork").Process(target=child)
    proc.start()
    proc.join(30)
    assert proc.exitcode == 0
    return queue.get()


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def test_a_run_records_its_process(tmp_path):
    with TrajectoryStore(tmp_path / "runs.db") as store:
        run = store.get_run(store.start_run("solve"), steps=False)
    assert (run.owner_pid, run.owner_host, run.owner_start) == this_process()
    assert run.owner_pid == os.getpid()


def test_a_killed_writers_run_is_marked_interrupted_when_the_store_is_next_opened(tmp_path):
    path = tmp_path / "runs.db"
    with TrajectoryStore(path) as store:
        mine = store.start_run("solve")  # this process lives: its run is left alone
    run_id, pid = killed_run(path)
    with TrajectoryStore(path) as store:
        run = store.get_run(run_id, steps=False)
        assert (run.status, run.calls, run.tokens, run.cost) == ("interrupted", 1, 5, 5.0)
        assert run.finished_at is not None and 0 <= run.wall_s < 60  # to its last step: when it died is unknown
        assert run.error == (f"interrupted: its process (pid {pid} on {run.owner_host}) ended before the run did; "
                             "finish it with `agentkit run --resume interrupted`")
        assert store.get_run(mine, steps=False).status == "running"
        assert [r.id for r in store.list_runs(status="interrupted")] == [run_id]
        store.finish_run(mine, status="interrupted")  # Ctrl-C closes runs with the same status


@needs_proc
def test_only_runs_whose_process_is_surely_gone_are_marked(tmp_path):
    pid, host, start = this_process()
    machine, boot, namespace, ticks = start.split("/")
    if not machine:
        pytest.skip("no /etc/machine-id here")
    later = int(ticks) + 1
    owners = {
        "reused pid": (pid, host, f"{machine}/{boot}/{namespace}/{later}"),  # same pid, a later process
        "before a reboot": (pid, host, f"{machine}/{boot}-old/{namespace}/{ticks}"),
        "recorded without a machine id, reused pid": (pid, host, f"{boot}/{namespace}/{later}"),  # older rows
        "alive": (pid, host, start),
        "recorded without a machine id, alive": (pid, host, f"{boot}/{namespace}/{ticks}"),
        "another host": (pid, f"not-{host}", start),
        "another machine with this host name": (pid, host, f"not-{machine}/{boot}-other/{namespace}/{later}"),
        "another container": (pid, host, f"{machine}/{boot}/pid:[1]/{ticks}"),
        "no process recorded": (None, None, None),
    }
    with TrajectoryStore(tmp_path / "runs.db") as store:
        ids = {name: store.start_run(name) for name in owners}
        with store.db.locked() as conn:
            for name, owner in owners.items():
                conn.execute("UPDATE runs SET owner_pid = ?, owner_host = ?, owner_start = ? WHERE id = ?",
                             (*owner, ids[name]))
        assert store.repair() == [ids["reused pid"], ids["before a reboot"],
                                  ids["recorded without a machine id, reused pid"]]
        assert store.repair() == []
        assert store.repair(unowned=True) == [ids["no process recorded"]]
        assert {r.graph for r in store.list_runs(status="running")} == {
            "alive", "recorded without a machine id, alive", "another host", "another machine with this host name",
            "another container"}


@needs_proc
@pytest.mark.parametrize(("kill_errno", "alive"), [
    (errno.EPERM, True),  # another user's live process
    (errno.ESRCH, False),  # no process has the pid
    (errno.EINVAL, None),  # anything else: cannot tell, so never dead
])
def test_a_process_proc_hides_is_asked_of_the_kernel(tmp_path, monkeypatch, kill_errno, alive):
    """/proc mounted hidepid=1 or 2 hides another user's processes: their start time cannot
    be read, and that alone must not mark their live runs."""
    pid, host, start = this_process()
    with TrajectoryStore(tmp_path / "runs.db") as store:
        run_id = store.start_run("solve")
        read = _owners._read
        monkeypatch.setattr(_owners, "_read", lambda path: None if path == f"/proc/{pid}/stat" else read(path))

        def fake_kill(target, signal):
            assert (target, signal) == (pid, 0)
            raise OSError(kill_errno, os.strerror(kill_errno))

        monkeypatch.setattr(_owners.os, "kill", fake_kill)
        assert _owners.owner_alive(pid, host, start) is alive
        assert store.repair() == ([run_id] if alive is False else [])


def test_ctrl_c_closes_runs_with_their_totals(tmp_path):
    with TrajectoryStore(tmp_path / "runs.db") as store:
        live, finished = store.start_run("solve"), store.start_run("solve")
        store.add_steps([{"run_id": live, "node": "plan", "prompt_ids": [1, 2, 3], "completion_ids": [4]},
                         {"run_id": live, "node": "solve", "prompt_ids": [1, 2], "completion_ids": [5, 6]}])
        store.finish_run(finished, status="success", reward=1.0)
        assert store.interrupt_runs([live, finished, 99], error="interrupted by Ctrl-C") == [live]
        run = store.get_run(live, steps=False)
        assert (run.status, run.reward, run.tokens, run.calls, run.cost, run.error) == (
            "interrupted", 0.0, 8, 2, 8.0, "interrupted by Ctrl-C")
        assert run.finished_at is not None and 0 <= run.wall_s < 60
        assert store.get_run(finished, steps=False).status == "success"  # finished meanwhile: kept
        assert store.interrupt_runs([live], error="again") == []


def test_repair_reports_the_runs_the_open_marked(tmp_path):
    path = tmp_path / "runs.db"
    TrajectoryStore(path).close()
    (dead,) = ended_runs(path)
    with TrajectoryStore(path) as store:  # the first open in this process marks it ...
        assert store.get_run(dead, steps=False).status == "interrupted"
        assert store.repair() == [dead]  # ... and repair says so, once
        assert store.repair() == []


def test_reopen_run_makes_this_process_its_owner(tmp_path):
    path = tmp_path / "runs.db"
    TrajectoryStore(path).close()
    (dead,) = ended_runs(path)
    with TrajectoryStore(path) as store:
        store.reopen_run(dead)
        run = store.get_run(dead, steps=False)
        assert (run.status, run.error, run.finished_at, run.owner_pid) == ("running", None, None, os.getpid())
        assert store.repair() == []  # a resumed run is alive again
        store.finish_run(dead, status="success")
        with pytest.raises(StoreError, match=f"run {dead} already finished \\(success\\)"):
            store.reopen_run(dead)
        with pytest.raises(StoreError, match="no run with id 99"):
            store.reopen_run(99)


def test_a_run_live_in_another_process_does_not_reopen(tmp_path):
    """Two `agentkit run --resume N`, or --resume N while run N runs elsewhere: the second refuses."""
    path = tmp_path / "runs.db"
    TrajectoryStore(path).close()
    ctx = mp.get_context("fork")
    started, done = ctx.SimpleQueue(), ctx.Event()

    def child():
        with TrajectoryStore(path) as store:
            started.put(store.start_run("solve"))
            done.wait(30)  # exits with the run still 'running', as a killed process would

    proc = ctx.Process(target=child)
    proc.start()
    try:
        run_id = started.get()
        with TrajectoryStore(path) as store:
            refused = (f"^run {run_id} is still running in process {proc.pid} on .*wait for it to finish, "
                       f"or stop that process \\(kill {proc.pid}\\)")
            with pytest.raises(StoreError, match=refused):
                store.reopen_run(run_id)
            assert store.get_run(run_id, steps=False).owner_pid == proc.pid  # still the child's
            done.set()
            proc.join(30)
            store.reopen_run(run_id)  # its process is gone now
            assert store.get_run(run_id, steps=False).owner_pid == os.getpid()
            with pytest.raises(StoreError, match=f"run {run_id} is still running in process {os.getpid()}"):
                store.reopen_run(run_id)  # resumed here already
    finally:
        done.set()
        proc.join(30)


def test_a_running_run_whose_process_cannot_be_checked_does_not_reopen(tmp_path):
    with TrajectoryStore(tmp_path / "runs.db") as store:
        elsewhere, unowned = store.start_run("solve"), store.start_run("solve")
        with store.db.locked() as conn:
            conn.execute("UPDATE runs SET owner_host = 'another-host' WHERE id = ?", (elsewhere,))
            conn.execute("UPDATE runs SET owner_pid = NULL, owner_host = NULL, owner_start = NULL WHERE id = ?",
                         (unowned,))
        with pytest.raises(StoreError, match=f"^run {elsewhere} is 'running' in process {os.getpid()} on another-host, "
                                             "which cannot be checked from here .*`agentkit traces repair`"):
            store.reopen_run(elsewhere)
        with pytest.raises(StoreError, match=f"^run {unowned} is 'running' and recorded no process.*"
                                             "`agentkit traces repair --unowned` first"):
            store.reopen_run(unowned)
        assert store.repair(unowned=True) == [unowned]
        store.reopen_run(unowned)  # interrupted now: it resumes
        assert [r.owner_host for r in store.list_runs(status="running")] == [this_process()[1], "another-host"]


def test_traces_repair_says_how_many_runs_it_marked(tmp_path):
    path = tmp_path / "runs.db"
    with TrajectoryStore(path) as store:
        live = store.start_run("solve")
        legacy = store.start_run("solve")
        with store.db.locked() as conn:  # as recorded before runs recorded their process
            conn.execute("UPDATE runs SET owner_pid = NULL, owner_host = NULL, owner_start = NULL WHERE id = ?",
                         (legacy,))
    dead = ended_runs(path, 2)

    result = invoke("traces", "repair", "--store", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"marked 2 runs interrupted in {path}: {dead[0]}, {dead[1]}",
        "finish them with `agentkit run --resume interrupted`, or see them with "
        "`agentkit traces list --status interrupted`",
        "2 still running (1 recorded no process: `agentkit traces repair --unowned` marks them when nothing else runs)",
    ]
    listed = invoke("traces", "list", "--store", str(path), "--status", "interrupted")
    assert listed.exit_code == 0 and listed.stdout.count("interrupted") == 2

    again = invoke("traces", "repair", "--store", str(path), "--unowned")
    assert again.stdout.splitlines()[0] == f"marked 1 run interrupted in {path}: {legacy}"
    assert again.stdout.splitlines()[-1] == "1 still running (their processes are alive, or on another host)"
    with TrajectoryStore(path) as store:
        assert store.get_run(live, steps=False).status == "running"

    missing = invoke("traces", "repair", "--store", str(tmp_path / "none.db"))
    assert missing.exit_code == 1 and "no store at" in missing.stderr
