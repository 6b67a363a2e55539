"""Ctrl-C during `agentkit run` stops at once: nothing new starts, the runs in flight are
closed as interrupted, the finished ones are reported, and `--resume` finishes the rest
in one model load."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from agentkit.llm.scripted import ScriptedLLM
from agentkit.store import TrajectoryStore
from agentkit.runtime import SolveAgent, run_tasks
from agentkit.runtime.runner import RunsInterrupted
from agentkit.tasks import get_suite
from conftest import build_tiny_model, build_tiny_tokenizer

SUITE = get_suite("arithmetic")


def _ctrl_c_when(condition, timeout: float = 60) -> threading.Thread:
    """Send SIGINT to the main thread (where Python raises KeyboardInterrupt) once ``condition()``."""
    main = threading.main_thread().ident

    def watch():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                signal.pthread_kill(main, signal.SIGINT)
                return
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.fixture(autouse=True)
def python_sigint():
    """Python's own SIGINT handler, as a terminal gives it: a shell that starts the tests in
    the background (`pytest &`) leaves SIGINT ignored, and a child inherits that."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _sigint_default() -> None:  # in the child before exec: Python then installs KeyboardInterrupt
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_closes_the_runs_in_flight_and_returns_the_finished_ones(tmp_path):
    tasks = SUITE.tasks("test", 8, level=1)
    release = threading.Event()
    first = tasks[0].question

    class Hanging(ScriptedLLM):  # every task but the first hangs in the backend
        def generate(self, requests):
            if first not in requests[0].prompt.rsplit("Question: ", 1)[-1]:
                release.wait(30)
            return super().generate(requests)

    with TrajectoryStore(tmp_path / "runs.db") as store:
        _ctrl_c_when(lambda: (lambda runs: len(runs) >= 3 and any(r.status != "running" for r in runs))(
            store.list_runs(None)))
        start = time.perf_counter()
        with pytest.raises(RunsInterrupted) as stopped:
            run_tasks(Hanging(["Step 1: 1 + 1 = 2\nAnswer: 2"]), SUITE, tasks, store, agent=SolveAgent(), concurrency=3)
        elapsed = time.perf_counter() - start
        release.set()  # the hung calls now return: they must not reopen their runs
        time.sleep(0.3)
        runs = store.list_runs(None)

    report, interrupted = stopped.value.report, stopped.value.interrupted
    assert elapsed < 2.0
    assert [r.task_id for r in report.results] == [tasks[0].id]
    statuses = {r.id: r.status for r in runs}
    # in flight: the other two first tasks, and the one the first task's thread may have taken next
    assert len(interrupted) in (2, 3) and len(runs) == 1 + len(interrupted)  # later tasks never started
    assert sorted(i for i, s in statuses.items() if s == "interrupted") == interrupted
    assert "running" not in statuses.values()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-model")
    tok = build_tiny_tokenizer()
    build_tiny_model(len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _statuses(db) -> list[str]:
    with sqlite3.connect(db) as conn:
        try:
            return [s for (s,) in conn.execute("SELECT status FROM runs ORDER BY id")]
        except sqlite3.OperationalError:  # the store is still being created
            return []


def test_ctrl_c_on_agentkit_run_then_resume_interrupted(tmp_path, tiny_dir):
    db = tmp_path / "runs.db"
    command = [sys.executable, "-m", "agentkit.cli", "run", "--model", str(tiny_dir), "--dtype", "fp32",
               "--n", "40", "--concurrency", "2", "--store", str(db)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "120"}, preexec_fn=_sigint_default)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists() and any(s not in ("running",) for s in _statuses(db)):
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    while "running" in _statuses(db) and time.monotonic() - sent < 30:
        time.sleep(0.02)
    marked = time.monotonic() - sent
    out, err = proc.communicate(timeout=30)

    assert proc.returncode == 130, err
    assert marked < 2.0, f"Ctrl-C took {marked:.1f} s to close the runs in flight"
    assert "Traceback" not in err
    statuses = _statuses(db)
    assert 0 < len(statuses) < 40 and "running" not in statuses
    finished = [s for s in statuses if s in ("success", "failure", "budget")]
    assert "success rate" in out and f"interrupted: {len(finished)} of 40 runs finished" in err

    interrupted = statuses.count("interrupted")
    if interrupted:  # a run in flight when Ctrl-C came: one command finishes them all
        result = subprocess.run([sys.executable, "-m", "agentkit.cli", "run", "--resume", "interrupted",
                                 "--store", str(db)], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "interrupted" not in _statuses(db) and len(_statuses(db)) == len(statuses)


def test_a_batch_stopped_by_a_backend_error_closes_every_run_it_started(tmp_path):
    """A configuration error (a dead server, an unknown adapter) in one task ends the batch,
    but the runs already in flight finish and are closed; none is left 'running'."""
    from agentkit.errors import BackendError

    tasks = SUITE.tasks("test", 6, level=1)

    class Failing(ScriptedLLM):
        def generate(self, requests):
            if tasks[0].question in requests[0].prompt.rsplit("Question: ", 1)[-1]:
                raise BackendError("the server went away")
            time.sleep(0.5)  # the others are still in flight when it fails
            return super().generate(requests)

    with TrajectoryStore(tmp_path / "runs.db") as store:
        with pytest.raises(BackendError, match="went away"):
            run_tasks(Failing(["Step 1: 1 + 1 = 2\nAnswer: 2"]), SUITE, tasks, store, agent=SolveAgent(), concurrency=3)
        statuses = sorted(r.status for r in store.list_runs(None))
    assert "running" not in statuses and statuses.count("error") == 1
    assert statuses.count("failure") >= 2 and len(statuses) < 6  # later tasks never started
