"""Batched generation throughput of the transformers backend on the embedded model.

16 solve runs on arithmetic test tasks, all in flight at once through one backend (its
dynamic batcher gathers them), against the same 16 runs one at a time. Both use the
same backend object, greedy decoding and the same few-shot prompts, so both enjoy the
shared-prefix KV cache.

Cold and warm: oneDNN compiles a kernel for each new matrix shape, so the first batch a
process runs at a given size pays for compiling kernels for every batch size it passes
through as rows finish. The concurrent runs are timed twice on the same tasks: first
cold (the first batch of that size in the process), then warm, as a serving process
runs them. One at a time is always warm (the untimed warm-up runs batches of 1 and 2).
The speed-up compares warm with warm.

Machine limit: achieved FLOP/s = 2 x parameters (LM head included) x generated tokens
per second, over the matmul FLOP/s of the model's dtype (a 1024x1024x1024 matmul),
measured in this same run before and after the timed runs; the higher of the two is
the peak. Prefill work is not counted, so this understates the work.

    python bench/throughput.py                      # 16 concurrent vs sequential, auto dtype
    python bench/throughput.py --concurrency 16 64 --dtype fp32
"""

from __future__ import annotations

import argparse
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
    parser.add_argument("--out", default="throughput")
    args = parser.parse_args()

    llm = TransformersLLM(args.model, dtype=args.dtype)
    params = sum(p.numel() for p in llm.model.parameters())
    peaks = [matmul_flops(llm.dtype)]
    suite = get_suite("arithmetic")
    agent = SolveAgent(max_tokens=args.max_tokens)
    rows, timed = [], []
    with TrajectoryStore(":memory:") as store:
        run_tasks(llm, suite, suite.tasks("train", 2), store, agent=agent, concurrency=2)  # warm-up
        for concurrency in args.concurrency:
            tasks = suite.tasks("test", concurrency, seed=concurrency)

            def batched() -> tuple[int, float, int]:
                llm.stats["max_rows_in_batch"] = 0
                r = run_tasks(llm, suite, tasks, store, agent=agent, concurrency=concurrency)
                return r.completion_tokens, r.wall_s, llm.stats["max_rows_in_batch"]

            cold = batched()
            seq_tokens, seq_wall = 0, 0.0
            for task in tasks:
                r = run_tasks(llm, suite, [task], store, agent=agent, concurrency=1)
                seq_tokens, seq_wall = seq_tokens + r.completion_tokens, seq_wall + r.wall_s
            warm = batched()
            timed.append((concurrency, (seq_tokens, seq_wall, 1), cold, warm))
            print(f"{concurrency} runs: one at a time {seq_tokens / seq_wall:.1f} tok/s, concurrent cold "
                  f"{cold[0] / cold[1]:.1f}, warm {warm[0] / warm[1]:.1f}", flush=True)
    llm.close()
    peaks.append(matmul_flops(llm.dtype))
    peak = max(peaks)
    fp32_peak = matmul_flops(torch.float32) if llm.dtype != torch.float32 else peak
    for concurrency, seq, cold, warm in timed:
        seq_rate = seq[0] / seq[1]
        for mode, (tokens, wall, rows_in_batch) in (
            ("one at a time", seq), (f"{concurrency} concurrent, cold", cold), (f"{concurrency} concurrent, warm", warm),
        ):
            rate = tokens / wall
            achieved = 2 * params * rate
            rows.append([concurrency, mode, tokens, wall, rate, rows_in_batch, achieved / 1e9,
                         f"{100 * achieved / peak:.1f}%", f"{rate / seq_rate:.2f}x"])
    body = (
        f"Model {args.model}, {params / 1e6:.0f}M parameters, dtype {str(llm.dtype).replace('torch.', '')}, "
        f"greedy, max {args.max_tokens} new tokens, 3-shot arithmetic prompts. "
        f"Measured {str(llm.dtype).replace('torch.', '')} matmul rate in this run: {peak / 1e9:.0f} GFLOP/s "
        f"(before and after the timed runs: {', '.join(f'{p / 1e9:.0f}' for p in peaks)}); "
        f"fp32: {fp32_peak / 1e9:.0f} GFLOP/s.\n\n"
        + markdown_table(HEADERS, rows)
        + "\n\nTargets (issue 2): batched >= 4x one-at-a-time tokens/s (warm vs warm); achieved FLOP/s >= 30% of "
        "the matmul rate."
    )
    print(body)
    print("wrote", write_result(args.out, "Batched throughput, transformers backend", body))


HEADERS = ["runs", "mode", "tokens", "wall s", "tokens/s", "max rows/batch", "GFLOP/s", "of matmul peak", "speed-up"]

if __name__ == "__main__":
    main()
