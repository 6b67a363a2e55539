"""Verified solutions per CPU-minute: the search strategies a round of `agentkit improve
--explore search` can collect with, on the same fresh training tasks and the same policy.

    python bench/search_yield.py --level 1 --tasks 96 --specs mcts:8x8 mcts:8x4 beam:1x8 beam:2x8
    python bench/search_yield.py --adapter /tmp/run/rounds/round-1/adapter --name search-yield-v1

Each spec searches every task as the collector does (the searching SolveAgent, 32 tasks in
flight, no per-run budget) into a scratch store. A task counts as solved when its tree holds
a verified answer: a training example for rft. `cpu s` is this process's user + system time
for that spec's searches alone (the model loads once, before the first), so it counts both
cores; what the loop spends per example. The tasks are the first round's fresh pool of
`agentkit improve --seed 1` (train split, seed 1001), the curriculum's pick aside.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from _common import markdown_table, write_result
from agentkit.learn.improve import _cpu_seconds as cpu_seconds
from agentkit.learn.improve import suite_vocabulary
from agentkit.learn.trees import search_tokens, solution_example
from agentkit.llm.transformers import TransformersLLM
from agentkit.llm.views import PolicyLLM, VocabularyLLM
from agentkit.runtime import Budget, SolveAgent, run_tasks
from agentkit.store import TrajectoryStore
from agentkit.tasks import get_suite

HEADERS = ["search", "solved", "tokens/task", "cpu s", "wall s", "solved / cpu min"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="arithmetic")
    parser.add_argument("--level", type=int, default=1)
    parser.add_argument("--tasks", type=int, default=96)
    parser.add_argument("--specs", nargs="+", default=["mcts:8x8", "mcts:8x4", "mcts:4x8", "beam:1x8", "beam:2x8"])
    parser.add_argument("--adapter", default=None, help="a trained LoRA adapter directory (default: the base model)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--vocabulary", choices=["full", "suite"], default="suite",
                        help="decode over the suite's tokens (as improve's default does where they write "
                             "every gold solution) or the whole vocabulary")
    parser.add_argument("--name", default=None)
    args = parser.parse_args()

    suite = get_suite(args.suite)
    tasks = suite.tasks("train", args.tasks, level=args.level, seed=1001)
    rows = []
    with TransformersLLM("gemma-3-270m") as llm, tempfile.TemporaryDirectory() as scratch:
        adapter = None
        if args.adapter:
            llm.load_adapter("policy", args.adapter)
            adapter = "policy"
        policy = PolicyLLM(llm, adapter)
        if args.vocabulary == "suite":
            allowed, missing = suite_vocabulary(llm, suite, tasks)
            if missing:
                parser.error(f"--vocabulary suite: {suite.name}'s solutions use {len(missing)} tokens its "
                             "vocabulary lacks; use --vocabulary full")
            policy = PolicyLLM(VocabularyLLM(llm, allowed), adapter)
        with TrajectoryStore(f"{scratch}/runs.db") as store:
            for spec in args.specs:
                agent = SolveAgent(shots=3, max_tokens=96, search=spec, seed=1001)
                cpu0, t0 = cpu_seconds(), time.perf_counter()
                report = run_tasks(policy, suite, tasks, store, agent=agent,
                                   concurrency=args.concurrency, budget=Budget(max_calls=None, max_tokens=None))
                cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - t0
                runs = [store.get_run(r.run_id, steps=True) for r in report.results]
                solved = sum(solution_example(run) is not None for run in runs)
                tokens = sum(search_tokens(run) for run in runs) / len(runs)
                rows.append([spec, f"{solved}/{len(tasks)}", f"{tokens:.0f}", f"{cpu:.0f}", f"{wall:.0f}",
                             f"{60 * solved / cpu:.1f}"])
                print(markdown_table(HEADERS, rows[-1:]), flush=True)

    name = args.name or (f"search-yield-level{args.level}" + ("-adapter" if args.adapter else "")
                         + ("-suite" if args.vocabulary == "suite" else ""))
    body = (f"Policy: {args.adapter or 'base model'}; {len(tasks)} fresh training tasks of level {args.level} "
            f"(train split, seed 1001), {args.concurrency} in flight; decoding over the {args.vocabulary} vocabulary.\n\n" + markdown_table(HEADERS, rows)
            + "\n\n`solved`: tasks whose tree holds a verified answer (an rft training example). `tokens/task`: "
              "every sampled token (lines and rollouts), per task. `cpu s`: user + system time of the searches (both cores).")
    print(body)
    print("wrote", write_result(name, "Search yield: verified solutions per CPU-minute", body))


if __name__ == "__main__":
    main()
