"""The starting line of every prebuilt graph on every suite with the embedded model: success,
step accuracy, model calls and tokens per run, which later work (memory, training) must beat.

    python bench/graph_baseline.py                                  # 50 test tasks per (graph, suite)
    python bench/graph_baseline.py --n 4 --graphs plan_solve_check --suites arithmetic   # smoke
"""

from __future__ import annotations

import argparse

from _common import markdown_table, write_result
from agentkit.graph import load_graph, prebuilt_names
from agentkit.llm.transformers import TransformersLLM
from agentkit.store import TrajectoryStore
from agentkit.runtime import Budget, GraphAgent, run_tasks
from agentkit.tasks import get_suite, list_suites

HEADERS = ["graph", "suite", "tasks", "success", "step accuracy", "calls/run", "tokens/run", "errors", "wall s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--shots", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--graphs", nargs="*", help="prebuilt graph names (default: all)")
    parser.add_argument("--suites", nargs="*", help="suite names at their default level (default: all)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--out", default="graph_baseline")
    args = parser.parse_args()

    rows = []
    with TransformersLLM(args.model, dtype=args.dtype) as llm, TrajectoryStore(":memory:") as store:
        for graph_name in args.graphs or prebuilt_names():
            agent = GraphAgent(load_graph(graph_name), shots=args.shots, max_tokens=args.max_tokens)
            for suite_name in args.suites or list_suites():
                suite = get_suite(suite_name)
                tasks = suite.tasks("test", args.n)
                report = run_tasks(llm, suite, tasks, store, agent=agent, concurrency=args.concurrency,
                                   budget=Budget(max_calls=32, max_tokens=16384))
                step = report.step_accuracy
                rows.append([
                    graph_name, suite_name, report.n, f"{100 * report.success_rate:.1f}%",
                    "-" if step is None else f"{100 * step:.1f}%",
                    sum(r.calls for r in report.results) / report.n, report.tokens / report.n,
                    sum(r.status == "error" for r in report.results), report.wall_s,
                ])
                print(markdown_table(HEADERS, rows[-1:]), flush=True)
        dtype = str(llm.dtype).replace("torch.", "")
    body = (
        f"Model {args.model} ({dtype}), {args.shots}-shot solver, greedy (best_of_n samples at 0.8), "
        f"at most {args.max_tokens} new tokens per call, test split at each suite's default level.\n\n"
        + markdown_table(HEADERS, rows)
        + "\n\ncalls/run counts every recorded step, the checker's and tools' included."
    )
    print(body)
    print("wrote", write_result(args.out, "Starting line of the prebuilt graphs", body))


if __name__ == "__main__":
    main()
