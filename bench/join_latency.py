"""Continuous batching: how long a short request waits when it arrives during a long batch.

16 long requests (64 tokens each, no stop) start decoding together; one second later a
short request (one arithmetic solve, at most 16 tokens) arrives. With continuous batching it
joins the running batch and is answered when its own rows finish; without (the backend's
admission turned off), it waits for the whole batch and then runs alone. Greedy, the
embedded model, the same backend object for every repetition.

    python bench/join_latency.py --repeats 2
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

from _common import markdown_table, write_result
from agentkit.llm.base import GenerationRequest
from agentkit.llm.transformers import TransformersLLM
from agentkit.tasks import get_suite

HEADERS = ["mode", "repeats", "short request answered after (s)", "long batch done after (s)", "rows joined"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--delay", type=float, default=1.0, help="seconds between the long batch and the short request")
    parser.add_argument("--out", default="join_latency")
    args = parser.parse_args()

    llm = TransformersLLM(args.model)
    suite = get_suite("arithmetic")
    tasks = suite.tasks("test", 17, seed=3)
    long_requests = [GenerationRequest(suite.prompt(t), max_tokens=64) for t in tasks[:16]]
    short = GenerationRequest(suite.prompt(tasks[16]), max_tokens=16, stop=suite.stop)
    llm.generate(long_requests[:2])  # warm-up: kernels and the shared few-shot prefix
    admit = llm._admit
    measured: dict[str, list[tuple[float, float, int]]] = {"continuous batching": [], "batch to the end": []}
    for _ in range(args.repeats):
        for mode in measured:
            llm._admit = admit if mode == "continuous batching" else (lambda *a, **k: [])
            joined = llm.stats["joined_rows"]
            worker = threading.Thread(target=llm.generate, args=(long_requests,))
            start = time.perf_counter()
            worker.start()
            time.sleep(args.delay)
            asked = time.perf_counter()
            llm.generate([short])
            answered = time.perf_counter() - asked
            worker.join()
            measured[mode].append((answered, time.perf_counter() - start, llm.stats["joined_rows"] - joined))
            print(mode, measured[mode][-1], flush=True)
    llm.close()
    rows = [[mode, len(v), statistics.median(a for a, _, _ in v), statistics.median(b for _, b, _ in v),
             sum(j for _, _, j in v)] for mode, v in measured.items()]
    body = (
        f"Model {args.model}, dtype {str(llm.dtype).replace('torch.', '')}, greedy. 16 long requests of 64 "
        f"tokens start together; a short request (at most 16 tokens) arrives {args.delay:.0f} s later. Medians.\n\n"
        + markdown_table(HEADERS, rows)
        + "\n\nWith continuous batching the short request joins the running batch between two decode steps "
        "(its prompt prefilled, its KV rows left-padded to the batch's length) and is answered as soon as its own "
        "row stops; without it, it waits for the long batch to finish. Tested for exactness in "
        "`tests/test_transformers.py::test_a_request_joins_the_running_batch_and_is_answered_before_it_ends`.\n"
    )
    print(markdown_table(HEADERS, rows))
    print("wrote", write_result(args.out, "Continuous batching: latency of a request that arrives mid-batch", body))


if __name__ == "__main__":
    main()
