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

Machine limits, both measured in the same run, right before and right after every timed
pass (the machine's speed drifts, so each pass is compared with the mean of its brackets):
- compute: achieved FLOP/s = 2 x parameters (LM head included) x generated tokens per
  second, over the faster of the fp32 and bf16 matmul rates (a 1024^3 matmul): the
  roof of this machine, whatever dtype the model runs in;
- memory: bytes of weights read per second = parameters x bytes per parameter x forward
  passes per second (every prefill and decode step reads every weight once; the LM head
  reads the tied embedding whole), over the memory read bandwidth (summing a 512 MB
  buffer, far larger than the caches).
The decode sits at whichever bound it is nearer. The warm concurrent pass is repeated
(--repeats) and the median reported with the range. Prefill work is not counted in the
FLOP/s, so that figure understates the work.

    python bench/throughput.py                      # 16 concurrent vs sequential, auto dtype
    python bench/throughput.py --concurrency 16 64 --dtype fp32
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch

from _common import markdown_table, write_result
from agentkit.llm.transformers import TransformersLLM
from agentkit.store import TrajectoryStore
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


@functools.cache
def _buffer(megabytes: int) -> torch.Tensor:
    return torch.ones(megabytes * 2**20 // 4)


def read_bandwidth(megabytes: int = 512, reps: int = 5) -> float:
    """Bytes per second that summing a buffer far larger than the caches reads (best of reps)."""
    buffer = _buffer(megabytes)
    buffer.sum()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - start)
    return buffer.numel() * 4 / best


def roofs() -> tuple[float, float, float]:
    """(fp32 FLOP/s, bf16 FLOP/s, read bytes/s), measured now."""
    return matmul_flops(torch.float32), matmul_flops(torch.bfloat16), read_bandwidth()


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
    param_bytes = sum(p.numel() * p.element_size() for p in llm.model.parameters())
    forwards = [0]  # model forward passes (prefill or decode step) in the current timed pass

    def count_forward(*_):
        forwards[0] += 1

    llm.model.register_forward_pre_hook(count_forward)
    dtype = str(llm.dtype).replace("torch.", "")
    suite = get_suite("arithmetic")
    agent = SolveAgent(max_tokens=args.max_tokens)
    rows, summary = [], []
    with TrajectoryStore(":memory:") as store:
        run_tasks(llm, suite, suite.tasks("train", 2), store, agent=agent, concurrency=2)  # warm-up
        for concurrency in args.concurrency:
            tasks = suite.tasks("test", concurrency, seed=concurrency)

            def timed(mode: str, runs: list[list]) -> tuple[float, float, float]:
                """Run ``runs`` (batches of tasks, one after another) between two measurements of
                the machine's roofs; add a table row; return (tokens/s, fraction of the faster
                matmul rate, fraction of the read bandwidth)."""
                before = roofs()
                llm.stats["max_rows_in_batch"] = 0
                forwards[0] = 0
                tokens, wall = 0, 0.0
                for batch in runs:
                    r = run_tasks(llm, suite, batch, store, agent=agent, concurrency=len(batch))
                    tokens, wall = tokens + r.completion_tokens, wall + r.wall_s
                fp32, bf16, bandwidth = ((a + b) / 2 for a, b in zip(before, roofs()))
                roof = max(fp32, bf16)
                rate = tokens / wall
                flops, weight_bytes = 2 * params * rate, param_bytes * forwards[0] / wall
                share, read_share = flops / roof, weight_bytes / bandwidth
                rows.append([concurrency, mode, tokens, wall, rate, llm.stats["max_rows_in_batch"], fp32 / 1e9,
                             bf16 / 1e9, flops / 1e9, f"{100 * share:.1f}%", bandwidth / 1e9, weight_bytes / 1e9,
                             f"{100 * read_share:.1f}%", "memory" if read_share > share else "compute"])
                print(markdown_table(HEADERS, rows[-1:]).splitlines()[-1], flush=True)
                return rate, share, read_share

            _, cold, cold_read = timed(f"{concurrency} concurrent, cold", [tasks])
            seq_rate, _, _ = timed("one at a time", [[task] for task in tasks])
            warm_rates, warm, warm_read = zip(*(timed(f"{concurrency} concurrent, warm #{i + 1}", [tasks])
                                                for i in range(args.repeats)))

            def spread(values) -> str:
                return f"{100 * statistics.median(values):.1f}% ({100 * min(values):.1f}-{100 * max(values):.1f}%)"

            summary.append([concurrency, seq_rate, statistics.median(warm_rates),
                            f"{statistics.median(warm_rates) / seq_rate:.2f}x", f"{100 * cold:.1f}%", spread(warm),
                            spread(warm_read), "memory" if statistics.median(warm_read) > statistics.median(warm)
                            else "compute"])
    llm.close()
    fp32, bf16, bandwidth = roofs()
    body = (
        f"Model {args.model}, {params / 1e6:.0f}M parameters, dtype {dtype} ({param_bytes / 1e6:.0f} MB of weights), "
        f"greedy, max {args.max_tokens} new tokens, 3-shot arithmetic prompts. Roofs measured in this run, "
        f"bracketing every timed pass (at the end: fp32 matmul {fp32 / 1e9:.0f} GFLOP/s, bf16 matmul "
        f"{bf16 / 1e9:.0f} GFLOP/s, memory read {bandwidth / 1e9:.1f} GB/s). Achieved FLOP/s is compared with the "
        "faster matmul rate of the two, whatever the model's dtype; bytes of weights read per second with the read "
        "bandwidth. \"bound\" names the roof the decode is nearer to. Warm figures are the median of "
        f"{args.repeats} passes with their range.\n\n"
        + markdown_table(SUMMARY, summary)
        + "\n\nEvery timed pass:\n\n"
        + markdown_table(HEADERS, rows)
        + "\n\nTargets (issue 2): batched >= 4x one-at-a-time tokens/s (warm vs warm); achieved FLOP/s >= 30% of "
        "the matmul rate."
    )
    print(body)
    print("wrote", write_result(args.out, "Batched throughput, transformers backend", body))


HEADERS = ["runs", "mode", "tokens", "wall s", "tok/s", "max rows", "fp32 GFLOP/s", "bf16 GFLOP/s", "achieved GFLOP/s",
           "of faster matmul", "read GB/s", "weights GB/s", "of read bandwidth", "bound"]
SUMMARY = ["runs", "one at a time tok/s", "concurrent tok/s (warm, median)", "speed-up", "of faster matmul, cold",
           "of faster matmul, warm: median (range)", "of read bandwidth, warm: median (range)", "bound"]

if __name__ == "__main__":
    main()
