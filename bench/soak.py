"""Soak: many processes on one store, killed at random, and not one committed run lost.

Writer processes each loop: open a run, record three steps, finish it, and only then
append the run's id to their own log (flushed and fsynced): every id in a log is a
commit the writer saw succeed. Each writer holds two store objects on the file, as
`agentkit run` does (the trajectory store and the policy registry). Reader processes
open the store, list and read runs and close it again, over and over. The background
trainer (`agentkit trainer start --foreground`, on the tiny test model, set to collect
only) follows the store the whole time. A killer sends SIGKILL to a random writer or
reader every few seconds and starts a new one in its place.

At the end every logged id must be in the store, finished, with its three steps
(commits lost: must be 0); no process may have seen "database is locked" (lock errors:
must be 0); the runs a kill left half-done must be marked interrupted when the store is
next opened; and PRAGMA integrity_check must say ok.

    python bench/soak.py                          # 10 minutes, 8 writers, 2 readers
    python bench/soak.py --minutes 1 --writers 4  # a quick look
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import markdown_table, write_result  # noqa: E402

STEPS_PER_RUN = 3


def writer(store_path: str, log_path: str, errors_path: str) -> None:
    """Write runs until killed; log each id once its run is committed."""
    from agentkit.store import PolicyRegistry, TrajectoryStore

    log = open(log_path, "a")
    errors = open(errors_path, "a")
    traces, registry = TrajectoryStore(store_path), PolicyRegistry(store_path)
    k = 0
    while True:
        k += 1
        try:
            registry.active()
            run_id = traces.start_run("soak", suite="arithmetic", task_id=f"{os.getpid()}-{k}", split="train",
                                      model="soak", policy_version="base", meta={"writer": os.getpid()})
            for i in range(STEPS_PER_RUN):
                traces.add_step(run_id, node="solve", role="solver", prompt_text=f"prompt {k}",
                                prompt_ids=list(range(40)), completion_text=f"Step {i + 1}: 1 + 1 = 2",
                                completion_ids=list(range(12)), logprobs=[-0.1] * 12, finish_reason="stop")
            traces.finish_run(run_id, status="success", reward=1.0, step_accuracy=1.0)
        except Exception as exc:  # noqa: BLE001 - every error is the soak's finding
            errors.write(f"{type(exc).__name__}: {' '.join(str(exc).split())}\n")
            errors.flush()
            continue
        log.write(f"{run_id}\n")
        log.flush()
        os.fsync(log.fileno())


def reader(store_path: str, errors_path: str) -> None:
    """Open, read and close the store until killed."""
    from agentkit.store import TrajectoryStore

    errors = open(errors_path, "a")
    while True:
        try:
            with TrajectoryStore(store_path) as traces:
                runs = traces.list_runs(20)
                if runs:
                    traces.get_run(runs[-1].id)
                traces.summary()
        except Exception as exc:  # noqa: BLE001
            errors.write(f"{type(exc).__name__}: {' '.join(str(exc).split())}\n")
            errors.flush()
        time.sleep(random.uniform(0, 0.05))


def spawn(role: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--role", role, *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def tiny_model(directory: Path) -> Path:
    """The test suite's tiny random model, saved as a model directory for the trainer."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from conftest import build_tiny_model, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    build_tiny_model(len(tokenizer)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def logged_ids(path: Path) -> list[int]:
    """The ids a writer logged; a line cut short by SIGKILL is not a claim."""
    text = path.read_text() if path.exists() else ""
    return [int(line) for line in text.split("\n")[:-1] if line.strip().isdigit()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--kill-every", type=float, default=5.0, help="mean seconds between kills")
    parser.add_argument("--no-daemon", action="store_true", help="leave the background trainer out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="soak")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "writer":
        return writer(*args.paths)
    if args.role == "reader":
        return reader(*args.paths)

    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="agentkit-soak-"))
    store = work / "runs.db"
    errors = work / "errors.log"
    logs: list[Path] = []
    writers: list[subprocess.Popen] = []
    readers: list[subprocess.Popen] = []

    def new_writer() -> subprocess.Popen:
        logs.append(work / f"writer-{len(logs)}.log")
        return spawn("writer", str(store), str(logs[-1]), str(errors))

    from agentkit.store import TrajectoryStore

    TrajectoryStore(store).close()  # create it once, before the crowd arrives
    daemon = None
    if not args.no_daemon:
        model = tiny_model(work / "tiny-model")
        daemon = subprocess.Popen(
            [sys.executable, "-m", "agentkit.cli", "trainer", "start", "--foreground", "--store", str(store),
             "--model", str(model), "--dtype", "fp32", "--min-pairs", "1000000", "--max-pairs", "1000000", "--poll", "0.5"],
            stdout=open(work / "daemon.log", "w"), stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    writers = [new_writer() for _ in range(args.writers)]
    readers = [spawn("reader", str(store), str(errors)) for _ in range(args.readers)]

    kills = {"writer": 0, "reader": 0}
    start = time.monotonic()
    end = start + 60 * args.minutes
    next_kill = start + rng.expovariate(1 / args.kill_every)
    last_report = start
    while time.monotonic() < end:
        time.sleep(0.05)
        if time.monotonic() >= next_kill:
            next_kill = time.monotonic() + rng.expovariate(1 / args.kill_every)
            pool, role = (writers, "writer") if rng.random() < 0.8 else (readers, "reader")
            i = rng.randrange(len(pool))
            pool[i].send_signal(signal.SIGKILL)
            pool[i].wait()
            kills[role] += 1
            pool[i] = new_writer() if role == "writer" else spawn("reader", str(store), str(errors))
        if time.monotonic() - last_report >= 30:
            last_report = time.monotonic()
            claimed = sum(len(logged_ids(log)) for log in logs)
            print(f"{last_report - start:5.0f} s: {claimed} runs committed, {sum(kills.values())} kills", flush=True)

    for proc in writers + readers:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    daemon_alive = daemon is not None and daemon.poll() is None
    if daemon is not None and not daemon_alive:
        print("the trainer died:", (work / "daemon.log").read_text()[-500:], flush=True)
    if daemon is not None:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()

    # --- verify -------------------------------------------------------------------------------
    claimed = sorted({i for log in logs for i in logged_ids(log)})
    with sqlite3.connect(store) as conn:  # before any agentkit open marks the killed runs
        running_before = conn.execute("SELECT COUNT(*) FROM runs WHERE status = 'running'").fetchone()[0]
    with TrajectoryStore(store) as traces:  # opening marks runs whose writer is gone
        rows = {r.id: r for r in traces.list_runs(None)}
        lost = [i for i in claimed if i not in rows or rows[i].status != "success"
                or len(traces.steps(i)) != STEPS_PER_RUN]
        statuses: dict[str, int] = {}
        for r in rows.values():
            statuses[r.status] = statuses.get(r.status, 0) + 1
    with sqlite3.connect(store) as conn:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    lines = errors.read_text().splitlines() if errors.exists() else []
    lock_errors = [line for line in lines if "locked" in line.lower() or "busy" in line.lower()]
    other_errors = [line for line in lines if line not in lock_errors]
    elapsed = time.monotonic() - start

    rows_out = [
        ["minutes", f"{elapsed / 60:.1f}"],
        ["writer processes (at once) / readers / daemon", f"{args.writers} / {args.readers} / "
         f"{'yes' if daemon else 'no'}{' (alive at the end)' if daemon_alive else ''}"],
        ["kill -9: writers / readers", f"{kills['writer']} / {kills['reader']}"],
        ["runs committed (logged by writers)", len(claimed)],
        ["runs in the store", len(rows)],
        ["**commits lost** (must be 0)", len(lost)],
        ["**lock errors** (must be 0)", len(lock_errors)],
        ["other errors seen by writers and readers", len(other_errors)],
        ["left running at the end, before the final reopen", running_before],
        ["status counts after reopening", ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))],
        ["PRAGMA integrity_check", integrity],
    ]
    table = markdown_table(["", "value"], rows_out)
    body = (
        f"{args.writers} writer processes (each with a trajectory store and a policy registry open on the file, as "
        f"`agentkit run` has) and {args.readers} reader processes (open, read, close, repeatedly) on one store"
        f"{', with the background trainer following it' if daemon else ''}, for {args.minutes:g} minutes; a random "
        f"writer or reader is killed with SIGKILL every {args.kill_every:g} s on average and replaced. A run counts "
        "as committed once its writer logged its id after finish_run returned.\n\n" + table
    )
    if other_errors or lock_errors:
        body += "\n\nFirst errors:\n\n" + "\n".join(f"- `{line}`" for line in (lock_errors + other_errors)[:10])
    if lost:
        body += f"\n\nLost run ids (first 20): {lost[:20]}"
    print(body)
    print("wrote", write_result(args.out, "Soak: concurrent writers, readers and the trainer under kill -9", body))
    sys.exit(1 if lost or lock_errors or integrity != "ok" else 0)


if __name__ == "__main__":
    main()
