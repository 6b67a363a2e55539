"""Evidence that the loop works: `improve` on the embedded model, CPU only, with the
per-round table (held-out success, step accuracy, data, tokens, time) and a learning-curve
PNG written under bench/results/.

    python bench/improve.py                                     # step-dpo, arithmetic 1 -> 2 ops
    python bench/improve.py --method rft --rounds 2 --train-tasks 32 --eval-tasks 50
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import tempfile
import time
from pathlib import Path

from _common import RESULTS, markdown_table, write_result
from agentkit.llm.transformers import TransformersLLM
from agentkit.store import TrajectoryStore
from agentkit.learn.improve import METHODS, ImproveConfig, RoundResult, improve, plot_curve

def cpu_minutes() -> float:
    """User + system CPU time of this process so far (all threads), in minutes."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return (usage.ru_utime + usage.ru_stime) / 60


HEADERS = ["cpu min", "round", "level", "policy", "candidate", "promoted", "train examples", "held-out success",
           "step accuracy", "candidate success", "candidate step acc", "p", "sampled tokens", "train s", "round s"]


CPU: dict[int, float] = {}


def row(r: RoundResult) -> list[object]:
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    return [f"{CPU.get(r.round, cpu_minutes()):.1f}", r.round, r.level, r.incumbent, r.candidate or "-", "yes" if r.promoted else "no", r.examples,
            pct(r.heldout_success), pct(r.heldout_step_accuracy), pct(r.candidate_success),
            pct(r.candidate_step_accuracy),
            "-" if r.p_value is None else f"{r.p_value:.3f}", r.sampled_tokens, round(r.train_s, 1), round(r.wall_s, 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=METHODS, default="step-dpo")
    parser.add_argument("--graph", default=None, help="a prebuilt graph or .py file to improve (default: the solve prompt)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--eval-level", type=int, default=None)
    parser.add_argument("--train-tasks", type=int, default=64)
    parser.add_argument("--eval-tasks", type=int, default=100)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--rectifications", type=int, default=8)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--beta", type=float, default=0.4)
    parser.add_argument("--nll-weight", type=float, default=1.0)
    parser.add_argument("--chosen-by", choices=["outcome", "step"], default="outcome")
    parser.add_argument("--gate-metric", choices=["success", "step-accuracy"], default="success")
    parser.add_argument("--step-advantages", choices=["none", "checker"], default="none")
    parser.add_argument("--memory", type=int, default=0, help="experience-library items per prompt (0: off)")
    parser.add_argument("--no-replay", action="store_true", help="train each round on its own pairs only")
    parser.add_argument("--name", default=None, help="result file name (default improve-<method>)")
    parser.add_argument("--store", default=None, help="SQLite store (default: a fresh temporary file)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="agentkit-improve-"))
    config = ImproveConfig(
        method=args.method, graph=args.graph, rounds=args.rounds, levels=args.levels, eval_level=args.eval_level,
        train_tasks=args.train_tasks, eval_tasks=args.eval_tasks, samples_per_task=args.samples,
        rectifications=args.rectifications, epochs=args.epochs, lr=args.lr, beta=args.beta,
        nll_weight=args.nll_weight, chosen_by=args.chosen_by, gate_metric=args.gate_metric,
        replay=not args.no_replay, memory=args.memory, step_advantages=args.step_advantages, output_dir=str(work / "rounds"),
    )
    start = time.perf_counter()
    with TransformersLLM("gemma-3-270m") as llm, TrajectoryStore(args.store or work / "runs.db") as store:
        def on_round(r: RoundResult) -> None:
            CPU[r.round] = cpu_minutes()
            print(markdown_table(HEADERS, [row(r)]), flush=True)

        rounds = improve(llm, store, config, on_round=on_round,
                         on_status=lambda m: print(f"[{time.perf_counter() - start:7.1f}s] {m}", flush=True))
    name = args.name or f"improve-{args.method}"
    png = plot_curve(rounds, RESULTS / f"{name}.png", title=f"agentkit improve ({args.method}), Gemma 3 270M, CPU")
    cfg = {k: v for k, v in dataclasses.asdict(config).items() if k != "output_dir"}
    body = (f"Config: `{cfg}`\n\nTotal wall time: {(time.perf_counter() - start) / 60:.1f} min, CPU time "
            f"{cpu_minutes():.1f} min (both cores; `cpu min` is cumulative CPU time at the end of each round).\n\n"
            + markdown_table(HEADERS, [row(r) for r in rounds])
            + f"\n\nRound 0 is the starting policy. A candidate is promoted only on a significant paired gain "
              f"({'exact one-sided McNemar on success' if config.gate_metric == 'success' else 'one-sided paired permutation test on per-task step accuracy, and no fewer successes'}, alpha {config.alpha}); the held-out columns show the policy active after "
              f"the round. Curve: `{png.name}`.")
    print(body)
    print("wrote", write_result(name, f"agentkit improve --method {args.method}", body), "and", png)


if __name__ == "__main__":
    main()
