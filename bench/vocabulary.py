"""Decoding and training over a suite's vocabulary against the whole vocabulary, side by side
in one process, on the embedded model (CPU).

`agentkit improve --vocabulary suite` decodes only the suite's tokens (21 for arithmetic on
Gemma's 262k-token vocabulary) and trains the softmax over the same ids. This measures
the three workloads of a round, each pass in both vocabularies on the same tasks:

- greedy: the solve prompt of --tasks test tasks at once through one backend (the
  gate's and the final test's workload);
- sample: 8 samples per task at temperature 1 (the shape of search's expansions);
- train: SFT on --examples gold solutions, one epoch, batch 8 (a candidate's training).

Decoding passes alternate between the vocabularies, after one untimed warm-up pass of each;
the table gives the median of --repeats and the range. `cpu s` is the process's user +
system time over the pass.

    python bench/vocabulary.py                  # writes bench/results/vocabulary.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import markdown_table, write_result  # noqa: E402


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def decode(llm, suite, tasks, allowed, n: int, temperature: float) -> dict[str, float]:
    from agentkit.llm.base import GenerationRequest

    requests = [GenerationRequest(suite.prompt(task), n=n, temperature=temperature, seed=i, max_tokens=96,
                                  stop=suite.stop, allowed_token_ids=allowed) for i, task in enumerate(tasks)]
    wall, cpu = time.perf_counter(), cpu_seconds()
    out = llm.generate(requests)
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    tokens = sum(len(c.token_ids) for samples in out for c in samples)
    right = sum(suite.verify(task, c.text) for task, samples in zip(tasks, out) for c in samples)
    return {"wall": wall, "cpu": cpu, "tokens": tokens, "right": right / (len(tasks) * n)}


def train(examples, allowed, out: Path) -> dict[str, float]:
    from agentkit.train.configs import SFTConfig
    from agentkit.train.trainer import Trainer

    config = SFTConfig(output_dir=str(out), epochs=1.0, batch_size=8, checkpoint_every=0,
                       allowed_token_ids=list(allowed or []))
    trainer = Trainer(config, "gemma-3-270m")
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = trainer.train(examples)
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    tokens = sum(len(x.completion_ids) for x in examples)
    return {"wall": wall, "cpu": cpu, "tokens": tokens, "nll": result.history[-1]["nll"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=64, help="test tasks per decoding pass")
    parser.add_argument("--examples", type=int, default=128, help="gold solutions trained on")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--level", type=int, default=1)
    args = parser.parse_args()

    import tempfile

    from agentkit.learn.improve import _continuation_ids, suite_vocabulary
    from agentkit.llm.transformers import TransformersLLM
    from agentkit.tasks import get_suite
    from agentkit.train.examples import SFTExample

    suite = get_suite("arithmetic")
    tasks = suite.tasks("test", args.tasks, level=args.level, seed=11)
    rows, lines = {}, []
    with TransformersLLM("gemma-3-270m") as llm:
        allowed, missing = suite_vocabulary(llm, suite, tasks)
        assert not missing, f"the suite's vocabulary cannot write these tasks' solutions: {missing}"
        allowed = tuple(allowed)
        vocabularies = {"full": None, "suite": allowed}
        for name, (n, temperature) in {"greedy": (1, 0.0), "sample": (8, 1.0)}.items():
            for allowed_ids in vocabularies.values():  # warm-up: kernels for every batch size, first touches
                decode(llm, suite, tasks, allowed_ids, n, temperature)
            runs = {v: [] for v in vocabularies}
            for i in range(args.repeats):
                for v, allowed_ids in vocabularies.items():
                    runs[v].append(decode(llm, suite, tasks, allowed_ids, n, temperature))
                    print(f"{name} {v} pass {i + 1}: {runs[v][-1]}", flush=True)
            rows[name] = runs
        examples = [SFTExample(llm.tokenize(suite.prompt(t)), _continuation_ids(llm, t.solution + "\n\nQuestion:"))
                    for t in suite.tasks("train", args.examples, level=args.level, seed=12)]
        dtype = str(llm.dtype).replace("torch.", "")
    with tempfile.TemporaryDirectory() as tmp:
        rows["train"] = {v: [train(examples, allowed_ids, Path(tmp) / v)] for v, allowed_ids in vocabularies.items()}
        print(f"train: {rows['train']}", flush=True)

    def median(runs, key):
        values = [r[key] for r in runs]
        spread = f" ({min(values):.1f}-{max(values):.1f})" if len(values) > 1 else ""
        return f"{statistics.median(values):.1f}{spread}"

    for name, runs in rows.items():
        full, sub = (statistics.median(r["wall"] for r in runs[v]) for v in vocabularies)
        for v in vocabularies:
            tokens = statistics.median(r["tokens"] for r in runs[v])
            quality = (f"{100 * statistics.median(r['right'] for r in runs[v]):.1f}% right" if name != "train"
                       else f"nll {runs[v][0]['nll']:.3f}")
            lines.append([name, v, median(runs[v], "wall"), median(runs[v], "cpu"), f"{tokens:,.0f}",
                          f"{tokens / statistics.median(r['wall'] for r in runs[v]):,.0f}", quality,
                          f"{full / sub:.2f}x" if v == "suite" else "-"])
    table = markdown_table(["workload", "vocabulary", "wall s", "cpu s", "tokens", "tokens/s", "quality", "speed-up"],
                           lines)
    body = (f"{len(tasks)} level-{args.level} arithmetic test tasks per decoding pass; the suite's vocabulary is "
            f"{len(allowed)} token ids; backend dtype {dtype}, training dtype chosen the same way (`choose_dtype`). "
            f"Median of {args.repeats} passes (range); training one pass of {len(examples)} gold solutions "
            f"({sum(len(x.completion_ids) for x in examples):,} completion tokens).\n\n{table}\n\n"
            "`tokens` are generated tokens (decoding) or trained completion tokens (training). `quality`: the share "
            "of samples whose answer verifies, or the training run's last logged NLL, each in its own vocabulary's "
            f"softmax (the suite's NLL is over {len(allowed)} ids, so the two NLLs are not comparable).")
    print(body)
    print("wrote", write_result("vocabulary", "Decoding and training over the suite's vocabulary", body))


if __name__ == "__main__":
    main()
