"""A full disk: writing stops with one clear error, and the store still opens afterwards
with every run committed before the disk filled."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from agentkit.errors import StoreError
from agentkit.store import TrajectoryStore


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs: a disk that fills after a few dozen runs."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root with CAP_SYS_ADMIN): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_gives_one_clear_error_and_loses_nothing(small_disk):
    path = small_disk / "runs.db"
    committed = []
    with TrajectoryStore(path) as store:
        with pytest.raises(StoreError) as full:
            for k in range(10_000):
                run_id = store.start_run("solve", suite="arithmetic", task_id=f"t{k}")
                store.add_step(run_id, node="solve", prompt_text="x" * 2000, prompt_ids=list(range(500)),
                               completion_text="Answer: 1", completion_ids=[1, 2], logprobs=[-0.5, -0.5])
                store.finish_run(run_id, status="success", reward=1.0)
                committed.append(run_id)
    message = str(full.value)
    assert "\n" not in message and "full" in message and str(path) in message
    assert "--store" in message  # the fix: another location
    assert len(committed) > 5

    with TrajectoryStore(path) as store:  # opens again, with everything that was committed
        runs = {r.id: r for r in store.list_runs(None)}
        assert all(runs[i].status == "success" for i in committed)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    listed = subprocess.run([sys.executable, "-m", "agentkit.cli", "traces", "list", "--store", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
