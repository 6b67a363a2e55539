"""The background trainer on the embedded model, CPU only: record greedy runs of the base
policy on arithmetic training tasks, run the trainer's cycles over them (first wrong step ->
Step-DPO pairs -> LoRA candidate -> gate on held-out tasks -> promote or reject), then keep
running tasks through ``ActivePolicy`` and show which version each run used.

    python bench/daemon_demo.py                              # 64 runs, level 1, 50 held-out tasks
    python bench/daemon_demo.py --runs 96 --gate-metric success

The trainer cycles run in this process on the same backend (one copy of the model for
sampling and gating, one for training), as `agentkit trainer start --foreground` would.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from collections import Counter
from pathlib import Path

from _common import markdown_table, write_result
from agentkit.llm import load_backend
from agentkit.store import TrajectoryStore
from agentkit.store.policies import PolicyRegistry
from agentkit.runtime import ActivePolicy, SolveAgent, run_tasks
from agentkit.tasks import get_suite
from agentkit.learn.daemon import TrainerConfig, TrainerDaemon


def cpu_minutes() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return (usage.ru_utime + usage.ru_stime) / 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=64, help="greedy base-policy runs recorded before the trainer looks")
    parser.add_argument("--after", type=int, default=32, help="runs recorded after the trainer's cycles")
    parser.add_argument("--level", type=int, default=1)
    parser.add_argument("--eval-tasks", type=int, default=50)
    parser.add_argument("--min-pairs", type=int, default=16)
    parser.add_argument("--rectifications", type=int, default=8)
    parser.add_argument("--chosen-by", choices=["outcome", "step"], default="step")
    parser.add_argument("--gate-metric", choices=["success", "step-accuracy"], default="step-accuracy")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--name", default="daemon_demo")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="agentkit-daemon-"))
    suite = get_suite("arithmetic")
    start = time.perf_counter()
    clock = lambda: f"[{time.perf_counter() - start:6.1f}s]"  # noqa: E731
    llm = load_backend("transformers", "gemma-3-270m")
    store = TrajectoryStore(work / "runs.db")
    registry = PolicyRegistry(store.path)
    follow = ActivePolicy(llm, registry)
    agent = SolveAgent(max_tokens=96)

    # 1. an application records runs with the active policy (base)
    tasks = suite.tasks("train", args.runs + args.after, level=args.level, seed=11)
    t0 = time.perf_counter()
    before = run_tasks(llm, suite, tasks[:args.runs], store, agent=agent, concurrency=16, policy=follow)
    record_s = time.perf_counter() - t0
    print(f"{clock()} recorded {before.n} runs: success {100 * before.success_rate:.1f}%, "
          f"step accuracy {100 * (before.step_accuracy or 0):.1f}%", flush=True)

    # 2. the trainer's cycles over them
    config = TrainerConfig(suite="arithmetic", min_pairs=args.min_pairs, eval_tasks=args.eval_tasks,
                           eval_level=args.level, rectifications=args.rectifications, chosen_by=args.chosen_by,
                           gate_metric=args.gate_metric, epochs=args.epochs, max_tokens=96,
                           output_dir=str(work / "trainer"))
    cpu0 = cpu_minutes()
    with TrainerDaemon(store.path, config, llm=llm) as daemon:
        cycles = []
        while True:
            result = daemon.cycle()
            cycles.append(result)
            print(f"{clock()} cycle: runs {result.runs}, failed {result.failed}, pairs {result.pairs}, "
                  f"pending {result.pending}, candidate {result.candidate}: {result.decision}", flush=True)
            if not result.more and (result.candidate is not None or result.runs == 0):
                break
        status = daemon.book.state("arithmetic").status
    trainer_cpu = cpu_minutes() - cpu0

    # 3. the application keeps going and picks up what was promoted
    after = run_tasks(llm, suite, tasks[args.runs:], store, agent=agent, concurrency=16, policy=follow)
    versions = Counter(store.get_run(r.run_id, steps=False).policy_version for r in after.results)
    adapters = Counter(store.get_run(r.run_id).steps[0].adapter or "base" for r in after.results)
    print(f"{clock()} {after.n} more runs: versions {dict(versions)}, answered by {dict(adapters)}, "
          f"success {100 * after.success_rate:.1f}%, step accuracy {100 * (after.step_accuracy or 0):.1f}%")
    llm.close()

    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    gate = next((c.gate for c in cycles if c.gate), None) or {}
    trained = next((c for c in cycles if c.candidate), None)
    rows = [[
        sum(c.runs for c in cycles), sum(c.failed for c in cycles), sum(c.pairs for c in cycles),
        f"{sum(c.collect_s for c in cycles):.0f}", f"{sum(c.train_s for c in cycles):.0f}",
        f"{sum(c.gate_s for c in cycles):.0f}", f"{trainer_cpu:.1f}",
        trained.candidate if trained else "-", trained.decision if trained else "-",
        f"{pct(gate.get('incumbent_success'))} -> {pct(gate.get('candidate_success'))}",
        f"{pct(gate.get('incumbent_step_accuracy'))} -> {pct(gate.get('candidate_step_accuracy'))}",
        "-" if gate.get("p_value") is None else f"{gate['p_value']:.3g}",
    ]]
    headers = ["runs seen", "failed", "pairs", "pairs s", "train s", "gate s", "trainer CPU min", "candidate",
               "decision", f"gate success (n={gate.get('n', '-')})", "gate step accuracy", "p"]
    table = markdown_table(headers, rows)
    body = (
        f"Gemma 3 270M (embedded, bf16 where the CPU runs it), arithmetic level {args.level}, greedy 3-shot runs.\n\n"
        f"1. {before.n} runs of the base policy recorded by `run_tasks` with `ActivePolicy` "
        f"({record_s:.0f} s): success {pct(before.success_rate)}, step accuracy {pct(before.step_accuracy)}.\n"
        f"2. The trainer's cycles over the store (Step-DPO pairs chosen by {args.chosen_by}, {args.rectifications} "
        f"rectifications per first wrong step; train once >= {args.min_pairs} pairs; gate on {args.eval_tasks} "
        f"held-out level-{args.level} tasks, metric {args.gate_metric}):\n\n{table}\n\n"
        f"Runs passed over or without a pair: {dict(sum((Counter(c.skipped) for c in cycles), Counter()))}.\n\n"
        f"3. {after.n} more runs through the same `ActivePolicy`: versions used {dict(versions)}, answered by "
        f"{dict(adapters)}; success {pct(after.success_rate)}, step accuracy {pct(after.step_accuracy)}.\n\n"
        f"Trainer status afterwards: candidates {status.get('candidates', 0)}, promoted {status.get('promoted', 0)}, "
        f"rejected {status.get('rejected', 0)}, pairs built {status.get('pairs_built', 0)}, "
        f"runs seen {status.get('runs_seen', 0)} (the gate's own held-out runs are seen and never learned from). "
        f"Total wall time {(time.perf_counter() - start) / 60:.1f} min, CPU {cpu_minutes():.1f} min."
    )
    print(body)
    print("wrote", write_result(args.name, "The background trainer on Gemma 3 270M", body))


if __name__ == "__main__":
    main()
