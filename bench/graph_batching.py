"""Batching across graph runs: 16 plan_solve_check runs in flight at once through one
transformers backend, against the same 16 runs one at a time.

Each graph run makes two model calls in sequence (plan, then solve; the check node runs the
suite's checker), so concurrent runs reach the backend's dynamic batcher together only if
the runtime keeps them in flight: this measures that, in completion tokens per second.
Both modes use the same backend object, greedy decoding and the same prompts; an untimed
warm-up run fills the shared-prefix cache and picks the kernels first.

    python bench/graph_batching.py                          # 16 runs, gemma-3-270m
    python bench/graph_batching.py --runs 4 --max-tokens 16 # smoke
"""

from __future__ import annotations

import argparse

from _common import markdown_table, write_result
from agentkit.graph import load_graph
from agentkit.llm.transformers import TransformersLLM
from agentkit.store import TrajectoryStore
from agentkit.runtime import GraphAgent, run_tasks
from agentkit.tasks import get_suite

HEADERS = ["mode", "runs", "model calls", "completion tokens", "wall s", "tokens/s", "max rows/batch", "speed-up"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--graph", default="plan_solve_check")
    parser.add_argument("--runs", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--shots", type=int, default=3)
    parser.add_argument("--out", default="graph_batching")
    args = parser.parse_args()

    llm = TransformersLLM(args.model, dtype=args.dtype)
    suite = get_suite("arithmetic")
    agent = GraphAgent(load_graph(args.graph), shots=args.shots, max_tokens=args.max_tokens)
    tasks = suite.tasks("test", args.runs, seed=1)
    rows = []
    with TrajectoryStore(":memory:") as store:
        run_tasks(llm, suite, suite.tasks("train", 2), store, agent=agent, concurrency=2)  # warm-up

        def calls(report) -> int:
            return sum(r.calls for r in report.results)

        seq_tokens, seq_wall, seq_calls = 0, 0.0, 0
        for task in tasks:
            r = run_tasks(llm, suite, [task], store, agent=agent, concurrency=1)
            seq_tokens, seq_wall, seq_calls = seq_tokens + r.completion_tokens, seq_wall + r.wall_s, seq_calls + calls(r)
        seq_rate = seq_tokens / seq_wall
        rows.append(["one at a time", args.runs, seq_calls, seq_tokens, seq_wall, seq_rate, 1, "1.00x"])
        llm.stats["max_rows_in_batch"] = 0
        batched = run_tasks(llm, suite, tasks, store, agent=agent, concurrency=args.runs)
        rate = batched.tokens_per_s
        rows.append([f"{args.runs} concurrent", args.runs, calls(batched), batched.completion_tokens, batched.wall_s,
                     rate, llm.stats["max_rows_in_batch"], f"{rate / seq_rate:.2f}x"])
    dtype = str(llm.dtype).replace("torch.", "")
    llm.close()
    body = (
        f"Graph {args.graph} on arithmetic (default level), model {args.model} ({dtype}), greedy, "
        f"{args.shots}-shot solver, at most {args.max_tokens} new tokens per node call.\n\n"
        + markdown_table(HEADERS, rows)
        + "\n\nmodel calls counts every recorded step (the checker's included). Speed-up: tokens/s over one at a time."
    )
    print(body)
    print("wrote", write_result(args.out, "Batching across graph runs", body))


if __name__ == "__main__":
    main()
