"""The starting line: the embedded model's few-shot greedy success and step accuracy on
each suite's test split, which later work (graphs, memory, training) must beat.

    python bench/baseline.py                    # 100 test tasks per suite, writes bench/results/baseline.md
    python bench/baseline.py --n 20 --suites arithmetic
"""

from __future__ import annotations

import argparse

from _common import markdown_table, write_result
from agentkit.llm.transformers import TransformersLLM
from agentkit.store import TrajectoryStore
from agentkit.runtime import SolveAgent, run_tasks
from agentkit.tasks import get_suite
from agentkit.learn.gate import wilson_interval

DEFAULT = [("arithmetic", 1), ("arithmetic", 2), ("arithmetic", 3), ("countdown", 3), ("countdown", 4),
           ("blocksworld", 4), ("prontoqa", 2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--shots", type=int, default=3)
    parser.add_argument("--suites", nargs="*", help="suite names (default: every suite at its usual levels)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--store", default=":memory:")
    args = parser.parse_args()
    plan = [(s, lvl) for s, lvl in DEFAULT if not args.suites or s in args.suites]
    rows = []
    with TransformersLLM(args.model, dtype=args.dtype) as llm, TrajectoryStore(args.store) as store:
        for name, level in plan:
            suite = get_suite(name)
            tasks = suite.tasks("test", args.n, level=level)
            report = run_tasks(llm, suite, tasks, store, agent=SolveAgent(shots=args.shots, max_tokens=200),
                               concurrency=args.concurrency)
            wins = sum(r.reward >= 1.0 for r in report.results)
            lo, hi = wilson_interval(wins, report.n)
            step = report.step_accuracy
            rows.append([name, level, report.n, f"{100 * report.success_rate:.1f}%", f"{100 * lo:.0f}-{100 * hi:.0f}%",
                         "-" if step is None else f"{100 * step:.1f}%", report.completion_tokens, report.wall_s])
            print(markdown_table(HEADERS, rows[-1:]), flush=True)
        dtype = str(llm.dtype).replace("torch.", "")
    body = (f"Model {args.model} ({dtype}), {args.shots}-shot, greedy, test split, default SolveAgent prompt.\n\n"
            + markdown_table(HEADERS, rows)
            + "\n\n95% Wilson intervals for success. Step accuracy: correct model steps / max(gold steps, model steps).")
    print(body)
    print("wrote", write_result("baseline", "Starting line: few-shot success of the embedded model", body))


HEADERS = ["suite", "level", "tasks", "success", "95% CI", "step accuracy", "completion tokens", "wall s"]

if __name__ == "__main__":
    main()
