"""Batched generation throughput of the transformers backend on the embedded model.

16 solve runs on arithmetic test tasks, all in flight at once through one backend (its
dynamic batcher gathers them), against the same 16 runs one at a time. Both use the
same backend object, greedy decoding and the same few-shot prompts, so both enjoy the
shared-prefix KV cache.

Cold and warm: the first batch a process runs at a given size compiles oneDNN kernels
for every batch size it passes through as rows finish, and first-touches its memory. The
concurrent pass runs first cold (the first batch of that size in the process), then
warm, as a serving process runs it, on the same tasks. One at a time is always warm (the untimed warm-up runs batches of 1 and 2).
The speed-up compares warm with warm.

Machine limit: achieved FLOP/s = 2 x parameters (LM head included) x generated tokens
per second, over the matmul FLOP/s of the model's dtype (a 1024x1024x1024 matmul). The
machine's speed drifts, so the matmul rate is measured right before and right after
every timed pass and the pass is compared with their mean. The warm concurrent pass is
repeated (--repeats) and the median reported. Prefill work is not counted, so this
understates the work.

    python bench/throughput.py                      # 16 concurrent vs sequential, auto dtype
    python bench/throughput.py --concurrency 16 64 --dtype fp32
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from _common import markdown_table, write_result
from agentkit.llm.transformers import TransformersLLM
from agentkit.memory import TrajectoryStore
from agentkit.runtime import SolveAgent, run_tasks
from agentkit.tasks import get_suite


def matmul_flops(dtype: torch.dtype, n: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="warm concurrent passes (the median is reported)")
    parser.add_argument("--out", default="throughput")
    args = parser.parse_args()

    llm = TransformersLLM(args.model, dtype=args.dtype)
    params = sum(p.numel() for p in llm.model.parameters())
    dtype = str(llm.dtype).replace("torch.", "")
    suite = get_suite("arithmetic")
    agent = SolveAgent(max_tokens=args.max_tokens)
    rows, summary = [], []
    with TrajectoryStore(":memory:") as store:
        run_tasks(llm, suite, suite.tasks("train", 2), store, agent=agent, concurrency=2)  # warm-up
        for concurrency in args.concurrency:
            tasks = suite.tasks("test", concurrency, seed=concurrency)

            def timed(mode: str, runs: list[list]) -> tuple[float, float]:
                """Run ``runs`` (batches of tasks, one after another) between two matmul-rate
                measurements; add a table row; return (tokens/s, fraction of the matmul rate)."""
                before = matmul_flops(llm.dtype)
                llm.stats["max_rows_in_batch"] = 0
                tokens, wall = 0, 0.0
                for batch in runs:
                    r = run_tasks(llm, suite, batch, store, agent=agent, concurrency=len(batch))
                    tokens, wall = tokens + r.completion_tokens, wall + r.wall_s
                peak = (before + matmul_flops(llm.dtype)) / 2
                rate = tokens / wall
                share = 2 * params * rate / peak
                rows.append([concurrency, mode, tokens, wall, rate, llm.stats["max_rows_in_batch"], peak / 1e9,
                             2 * params * rate / 1e9, f"{100 * share:.1f}%"])
                print(markdown_table(HEADERS, rows[-1:]).splitlines()[-1], flush=True)
                return rate, share

            _, cold = timed(f"{concurrency} concurrent, cold", [tasks])
            seq_rate, _ = timed("one at a time", [[task] for task in tasks])
            warm_rates, warm = zip(*(timed(f"{concurrency} concurrent, warm #{i + 1}", [tasks])
                                     for i in range(args.repeats)))
            summary.append([concurrency, seq_rate, statistics.median(warm_rates),
                            f"{statistics.median(warm_rates) / seq_rate:.2f}x", f"{100 * cold:.1f}%",
                            f"{100 * statistics.median(warm):.1f}% ({100 * min(warm):.1f}-{100 * max(warm):.1f}%)"])
    llm.close()
    fp32_peak = matmul_flops(torch.float32)
    body = (
        f"Model {args.model}, {params / 1e6:.0f}M parameters, dtype {dtype}, greedy, max {args.max_tokens} new "
        f"tokens, 3-shot arithmetic prompts. The machine's speed drifts by up to a third over minutes here, so "
        f"every timed pass is bracketed by two {dtype} matmul-rate measurements (1024^3) and compared with "
        f"their mean. fp32 matmul rate at the end: {fp32_peak / 1e9:.0f} GFLOP/s.\n\n"
        + markdown_table(SUMMARY, summary)
        + "\n\nEvery timed pass:\n\n"
        + markdown_table(HEADERS, rows)
        + "\n\nTargets (issue 2): batched >= 4x one-at-a-time tokens/s (warm vs warm); achieved FLOP/s >= 30% of "
        "the matmul rate."
    )
    print(body)
    print("wrote", write_result(args.out, "Batched throughput, transformers backend", body))


HEADERS = ["runs", "mode", "tokens", "wall s", "tokens/s", "max rows/batch", "matmul GFLOP/s", "achieved GFLOP/s",
           "of matmul rate"]
SUMMARY = ["runs", "one at a time tok/s", "concurrent tok/s (warm, median)", "speed-up", "of matmul rate, cold",
           "of matmul rate, warm: median (range)"]

if __name__ == "__main__":
    main()
