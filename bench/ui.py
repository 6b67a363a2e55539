"""`agentkit ui` response times: the runs page over a store of 100k runs (target < 300 ms)
and the page of one run of 1,000 steps (target < 1 s), through the real server on loopback.

    python bench/ui.py                       # builds /tmp/agentkit-ui-bench.db once, then times
    python bench/ui.py --runs 100000 --repeat 7 --out ui

The 100k runs go in with one executemany (a benchmark fixture: recording them one by one
through TrajectoryStore would take minutes and measure the writer, not the UI); the
1,000-step run is recorded through TrajectoryStore.add_steps, as an agent's recorder does.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import uvicorn

from _common import markdown_table, write_result

from agentkit.store import TrajectoryStore
from agentkit.ui import create_app

SUITES = ["arithmetic", "countdown", "blocksworld", "prontoqa"]
GRAPHS = ["solve", "plan_solve_check", "solve_critic"]
STATUSES = ["success"] * 5 + ["failure"] * 4 + ["error", "budget"]


def build(path: Path, runs: int, steps: int, seed: int = 0) -> int:
    """Fill a new store with ``runs`` runs and one more run of ``steps`` steps; returns its id."""
    rng = random.Random(seed)
    start = datetime(2025, 1, 1, tzinfo=timezone.utc)
    rows = []
    for i in range(runs):
        suite = rng.choice(SUITES)
        status = rng.choice(STATUSES)
        task = {"id": f"{suite}-train-{i}", "question": "Compute (47 + 38) * 3 - 12." * 3, "answer": str(i)}
        rows.append(("solve" if i % 3 else rng.choice(GRAPHS), suite, task["id"], "train", "gemma-3-270m",
                     f"v{min(i // 20000, 4)}" if i >= 20000 else "base", status,
                     1.0 if status == "success" else 0.0, rng.random(), rng.randint(300, 2000), rng.randint(1, 6),
                     rng.random() * 5, json.dumps({"level": 1, "task": task}),
                     (start + timedelta(seconds=30 * i)).isoformat(), (start + timedelta(seconds=30 * i + 9)).isoformat()))
    with TrajectoryStore(path) as store:
        store.db.write(lambda c: c.executemany(
            "INSERT INTO runs (graph, suite, task_id, split, model, policy_version, status, reward, step_accuracy, "
            "tokens, calls, wall_s, meta, started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows))
        run_id = store.start_run("plan_solve_check", suite="arithmetic", task_id="arithmetic-test-big")
        prompt = "Compute the expression one operation at a time.\n" * 30
        nodes = ["plan", "solve", "check"]
        batch = []
        for k in range(steps):
            text = "Step 1: 47 + 38 = 85\nStep 2: 85 * 3 = 255\nStep 3: 255 - 12 = 243\nAnswer: 243\n"
            batch.append(dict(run_id=run_id, node=nodes[k % 3], role="solver", prompt_text=prompt,
                              prompt_ids=list(range(400)), completion_text=text, completion_ids=list(range(60)),
                              logprobs=[-rng.random() * 3 for _ in range(60)], finish_reason="stop",
                              parsed={"answer": "243", "steps": [True, True, k % 7 != 0]}, latency_s=0.4))
            if len(batch) == 100:
                store.add_steps(batch)
                batch = []
        store.add_steps(batch)
        store.finish_run(run_id, status="failure", reward=0.0)
    return run_id


def serve(path: Path) -> tuple[str, uvicorn.Server]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(path), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    while not server.started:
        time.sleep(0.05)
    return url, server


def timed(client: httpx.Client, url: str, repeat: int) -> tuple[float, float, int]:
    """Median and max ms of ``repeat`` GETs after one warm-up, and the page's size in bytes."""
    size = len(client.get(url).content)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - t0) * 1000)
        assert response.status_code == 200, (url, response.status_code)
    return statistics.median(times), max(times), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, default=Path("/tmp/agentkit-ui-bench.db"))
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--rebuild", action="store_true", help="build the store again even if it exists")
    parser.add_argument("--out", default="ui", help="bench/results/<out>.md")
    args = parser.parse_args()

    if args.rebuild or not args.store.exists():
        for p in args.store.parent.glob(args.store.name + "*"):
            p.unlink()
        t0 = time.perf_counter()
        big = build(args.store, args.runs, args.steps)
        print(f"built {args.store} ({args.runs:,} runs + one of {args.steps:,} steps) in {time.perf_counter() - t0:.1f} s")
    with TrajectoryStore(args.store) as store:
        big = store.list_runs(1, graph="plan_solve_check", suite="arithmetic")[0].id
        total = store.db.one("SELECT COUNT(*) FROM runs")[0]
        steps = store.db.one("SELECT COUNT(*) FROM steps WHERE run_id = ?", (big,))[0]

    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    url, server = serve(args.store)
    pages = [
        ("runs page, newest 50", "/", 300),
        ("runs page, status=failure", "/?status=failure", 300),
        ("runs page, suite + policy + status", "/?suite=countdown&policy_version=v2&status=error", 300),
        ("runs page, since a date", "/?since=2025-01-20T00:00", 300),
        ("runs page, 1,000 pages back (keyset)", f"/?before={total - 50_000}", 300),
        ("runs page, a filter nothing matches", "/?suite=nothing", 300),
        (f"one run of {steps:,} steps", f"/runs/{big}", 1000),
    ]
    rows = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for name, path, target in pages:
            median, worst, size = timed(client, path, args.repeat)
            ok = "yes" if median < target else "NO"
            rows.append([name, f"`{path}`", f"{median:.0f}", f"{worst:.0f}", f"{size / 1024:,.0f}", f"< {target}", ok])
            print(f"{name:40s} median {median:7.1f} ms  max {worst:7.1f} ms  {size / 1024:8.0f} KiB  target < {target} ms: {ok}")
    server.should_exit = True

    table = markdown_table(["page", "path", "median ms", "max ms", "KiB", "target ms", "met"], rows)
    body = (f"Store: {total:,} runs (plus one run of {steps:,} steps: plan/solve/check calls of 400 prompt and 60 "
            f"completion tokens each), SQLite WAL file `{args.store}`. Each page is fetched once to warm up, then "
            f"{args.repeat} times over HTTP from the real uvicorn server on loopback (`httpx`); times include "
            "rendering. The runs page walks the primary key backwards and stops at 50 matches (keyset pages), "
            "so a rare filter scans further: \"a filter nothing matches\" is the worst case, a full scan. "
            f"1-minute load average {load} before the run: the 2 cores are shared with other work, so absolute "
            "numbers move between runs.\n\n"
            f"{table}\n")
    print("wrote", write_result(args.out, "agentkit ui: page times over a large store", body))


if __name__ == "__main__":
    main()
