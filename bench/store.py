"""Trajectory store write throughput from concurrent writer processes.

Each writer process opens its own TrajectoryStore on one shared file, starts a run and
records a fixed number of steps with realistic payloads (200 prompt ids, 60 completion
ids, 60 logprobs, ~600 characters of text). Writers start together behind a barrier;
seconds run from the barrier to the last writer's final commit. Each configuration runs
--repeat times on a fresh file; the table reports the median run and the range, since
a shared machine's other load moves single runs by tens of percent.

Modes: `add_step` commits every step on its own; `add_steps` commits a batch of
--batch steps per transaction (durable per batch).

    python bench/store.py                       # 4 writers x 5000 steps, writes bench/results/store.md
    python bench/store.py --writers 8 --steps 1000 --batch 32
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import random
import shlex
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from agentkit.store import TrajectoryStore

RESULTS = Path(__file__).parent / "results" / "store.md"
VOCAB = 262_144  # Gemma 3 vocabulary size


def payloads(seed: int, n: int = 16) -> list[dict]:
    rng = random.Random(seed)
    words = "the sum of each term gives a new value so we add carry and check the result".split()

    def text(chars: int) -> str:
        out = ""
        while len(out) < chars:
            out += rng.choice(words) + " "
        return out[:chars]

    return [
        dict(
            node="solve", role="solver", attempt=0,
            prompt_text=text(450), prompt_ids=[rng.randrange(VOCAB) for _ in range(200)],
            completion_text=text(150), completion_ids=[rng.randrange(VOCAB) for _ in range(60)],
            logprobs=[-rng.expovariate(2.0) for _ in range(60)],
            finish_reason="stop", parsed={"answer": rng.randrange(1000)}, latency_s=rng.random(),
            policy_version="base",
        )
        for _ in range(n)
    ]


def writer(path: str, steps: int, batch: int, seed: int, barrier, done) -> None:
    items = payloads(seed)
    latencies = []  # seconds per add_step / add_steps call
    with TrajectoryStore(path) as store:
        run_id = store.start_run("bench", suite="bench", task_id=str(seed), model="none", policy_version="base")
        barrier.wait()
        if batch <= 1:
            for i in range(steps):
                t = time.perf_counter()
                store.add_step(run_id, **items[i % len(items)])
                latencies.append(time.perf_counter() - t)
        else:
            for start in range(0, steps, batch):
                t = time.perf_counter()
                store.add_steps(
                    [dict(run_id=run_id, **items[i % len(items)]) for i in range(start, min(start + batch, steps))]
                )
                latencies.append(time.perf_counter() - t)
        done.put((time.monotonic(), latencies))
        store.finish_run(run_id, status="success", reward=1.0)


def measure(path: str, writers: int, steps: int, batch: int) -> tuple[float, float]:
    """(seconds from start to the last writer's last commit, p99 latency of one call in ms)."""
    ctx = mp.get_context("spawn")
    barrier, done = ctx.Barrier(writers + 1), ctx.Queue()
    procs = [ctx.Process(target=writer, args=(path, steps, batch, seed, barrier, done)) for seed in range(writers)]
    for p in procs:
        p.start()
    barrier.wait()
    start = time.monotonic()
    results = [done.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode != 0:
            sys.exit(f"writer exited with code {p.exitcode}")
    latencies = sorted(lat for _, lats in results for lat in lats)
    return max(end for end, _ in results) - start, latencies[int(0.99 * (len(latencies) - 1))] * 1e3


def count_steps(path: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT COUNT(*) FROM steps").fetchone()[0]
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=4, help="concurrent writer processes")
    parser.add_argument("--steps", type=int, default=5000, help="steps per writer")
    parser.add_argument("--batch", type=int, default=32, help="steps per add_steps transaction")
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration (median reported)")
    parser.add_argument("--dir", default=None, help="directory for the store files (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="markdown results file")
    args = parser.parse_args()

    configs = [
        ("add_step", 1, 1),
        ("add_step", args.writers, 1),
        (f"add_steps (batch {args.batch})", args.writers, args.batch),
    ]
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for i, (mode, writers, batch) in enumerate(configs):
            runs = []
            for r in range(args.repeat):
                path = os.path.join(tmp, f"bench-{i}-{r}.db")
                seconds, p99_ms = measure(path, writers, args.steps, batch)
                recorded = count_steps(path)
                if recorded != writers * args.steps:
                    sys.exit(f"{mode}: expected {writers * args.steps} steps in {path}, found {recorded}")
                runs.append((seconds, p99_ms))
                print(f"{mode:>22}  writers={writers}  steps={recorded}  {seconds:.2f} s  "
                      f"{recorded / seconds:,.0f} steps/s  p99 {p99_ms:.1f} ms")
            runs.sort()
            seconds, p99_ms = runs[len(runs) // 2]
            rates = [recorded / s for s, _ in runs]
            rows.append((writers, mode, recorded, seconds, recorded / seconds, min(rates), max(rates), p99_ms))

    command = "python " + " ".join(shlex.quote(a) for a in [str(Path(sys.argv[0]).as_posix()), *sys.argv[1:]])
    lines = [
        "# Trajectory store: concurrent write throughput",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}; "
        f"1-minute load average {load_before:.2f} before the run "
        "(other work shares the machine, so absolute numbers move between runs)",
        "",
        "Payload per step: 200 prompt ids, 60 completion ids, 60 logprobs, ~600 chars of text. "
        "Each writer is a separate process with its own TrajectoryStore on one shared WAL file.",
        "",
        f"Median of {args.repeat} runs per row; range is the slowest and fastest run; "
        "p99 is the 99th-percentile latency of one add_step/add_steps call in the median run.",
        "",
        "| writers | mode | steps | seconds | steps/s | range steps/s | p99 call ms |",
        "|--------:|:-----|------:|--------:|--------:|:--------------|------------:|",
        *(f"| {w} | {m} | {n} | {s:.2f} | {r:,.0f} | {lo:,.0f} – {hi:,.0f} | {p:.1f} |"
          for w, m, n, s, r, lo, hi, p in rows),
        "",
        "`add_step` commits each step in its own transaction (a killed writer loses at most the step in "
        "flight); `add_steps` commits one transaction per batch (loses at most the batch in flight).",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
