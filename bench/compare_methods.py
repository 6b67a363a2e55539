"""Every training method on the same footing: one `improve` round each from the base
model, on the same training tasks with the same sampling budget, judged on the same
held-out tasks with the same greedy decoding. "none" is the base model itself.

Each method's round is gated against the base on the held-out tasks, so the paired tests
come for free: McNemar on success and a sign-flip permutation test on per-task step
accuracy, both one-sided ("the method beats no training"). Success carries a 95% Wilson
interval; step accuracy a 95% normal interval of the per-task mean. CPU minutes count
everything a method did (sampling, credit, training, gating) in this process.

    python bench/compare_methods.py                                   # all methods
    python bench/compare_methods.py --methods step-dpo dpo --train-tasks 32 --eval-tasks 50
"""

from __future__ import annotations

import argparse
import math
import resource
import statistics
import tempfile
import time
from pathlib import Path

from _common import RESULTS, markdown_table, write_result
from agentkit.llm.transformers import TransformersLLM
from agentkit.store import TrajectoryStore
from agentkit.learn.gate import paired_permutation_p, wilson_interval
from agentkit.learn.improve import METHODS, ImproveConfig, improve

HEADERS = ["method", "train examples", "held-out success (95% CI)", "step accuracy (95% CI)", "p success",
           "p step acc", "sampled tokens", "train s", "CPU min", "wall min"]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def per_task(store: TrajectoryStore, version: str, task_ids: list[str]) -> tuple[list[bool], list[float]]:
    """Success and step accuracy of ``version``'s held-out runs, in ``task_ids`` order."""
    runs = {r.task_id: r for r in store.list_runs(None) if r.policy_version == version and r.split == "test"}
    ok = [runs[t].status == "success" for t in task_ids]
    steps = [runs[t].step_accuracy or 0.0 for t in task_ids]
    return ok, steps


def describe(ok: list[bool], steps: list[float]) -> tuple[str, str]:
    lo, hi = wilson_interval(sum(ok), len(ok))
    mean = statistics.fmean(steps)
    half = 1.96 * statistics.stdev(steps) / math.sqrt(len(steps)) if len(steps) > 1 else 0.0
    return (f"{100 * sum(ok) / len(ok):.1f}% ({100 * lo:.0f}-{100 * hi:.0f})",
            f"{100 * mean:.1f}% ({100 * max(0.0, mean - half):.0f}-{100 * min(1.0, mean + half):.0f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--level", type=int, default=1, help="training level")
    parser.add_argument("--eval-level", type=int, default=2)
    parser.add_argument("--train-tasks", type=int, default=64)
    parser.add_argument("--eval-tasks", type=int, default=100)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--rectifications", type=int, default=16)
    parser.add_argument("--chosen-by", choices=["outcome", "step"], default="step")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--step-advantages", choices=["none", "checker"], default="none",
                        help="grpo/rloo: add per-step progress from the step checker")
    parser.add_argument("--name", default="compare_methods", help="result file name")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="agentkit-compare-"))
    rows, base = [], None
    start = time.perf_counter()
    with TransformersLLM("gemma-3-270m") as llm:
        for method in args.methods:
            for name in llm.list_adapters():
                llm.unload_adapter(name)
            config = ImproveConfig(
                method=method, explore="sample", rounds=1, levels=[args.level], eval_level=args.eval_level,
                train_tasks=args.train_tasks, eval_tasks=args.eval_tasks, samples_per_task=args.samples,
                rectifications=args.rectifications, chosen_by=args.chosen_by, epochs=args.epochs,
                step_advantages=args.step_advantages if method in ("grpo", "rloo") else "none",
                output_dir=str(work / method / "rounds"),
            )
            cpu0, wall0 = cpu_seconds(), time.perf_counter()
            with TrajectoryStore(work / method / "runs.db") as store:
                log = lambda m: print(f"[{time.perf_counter() - start:7.1f}s] {method}: {m}", flush=True)  # noqa: E731
                r0, r1 = improve(llm, store, config, on_status=log)
                task_ids = [t.id for t in _held_out(config)]
                if base is None:
                    base = per_task(store, "base", task_ids)
                    rows.append(["none (base)", 0, *describe(*base), "-", "-", 0, 0.0, "-", "-"])
                if r1.candidate is None:
                    rows.append([method, r1.examples, "no candidate", "-", "-", "-", r1.sampled_tokens,
                                 round(r1.train_s), "-", "-"])
                    continue
                ok, steps = per_task(store, r1.candidate, task_ids)
            cpu_min = (cpu_seconds() - cpu0) / 60
            wall_min = (time.perf_counter() - wall0) / 60
            diffs = [a - b for a, b in zip(steps, base[1])]
            rows.append([method, r1.examples, *describe(ok, steps), f"{r1.p_value:.3g}",
                         f"{paired_permutation_p(diffs):.3g}", r1.sampled_tokens, round(r1.train_s),
                         f"{cpu_min:.1f}", f"{wall_min:.1f}"])
            print(markdown_table(HEADERS, rows[-1:]), flush=True)

    body = (
        f"One round per method from the base Gemma 3 270M (CPU, bf16): {args.train_tasks} level-{args.level} "
        f"arithmetic training tasks, {args.samples} samples each (step-dpo: {args.rectifications} "
        f"rectifications per first wrong step, chosen by {args.chosen_by}; grpo/rloo step advantages: "
        f"{args.step_advantages}), {args.epochs:g} epochs of LoRA r=16; "
        f"judged on the same {args.eval_tasks} held-out level-{args.eval_level} tasks, greedy. p values are "
        f"one-sided paired tests against no training (exact McNemar on success, sign-flip permutation on "
        f"step accuracy). CPU minutes are user + system time of both cores.\n\n"
        + markdown_table(HEADERS, rows)
        + f"\n\nTotal wall time {(time.perf_counter() - start) / 60:.1f} min."
    )
    print(body)
    print("wrote", write_result(args.name, "Training methods compared at one round", body))


def _held_out(config: ImproveConfig):
    from agentkit.tasks import get_suite

    return get_suite(config.suite).tasks("test", config.eval_tasks, level=config.eval_level or config.levels[-1],
                                         seed=config.seed)


if __name__ == "__main__":
    main()
