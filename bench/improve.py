"""Evidence that the loop works: `improve` on the embedded model, CPU only, with the
per-round table (held-out success, step accuracy, data, tokens, time) and a learning-curve
PNG written under bench/results/.

    python bench/improve.py                                     # step-dpo, arithmetic 1 -> 2 ops
    python bench/improve.py --method rft --rounds 2 --train-tasks 32 --eval-tasks 50
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

from _common import RESULTS, markdown_table, write_result
from agentkit.llm.transformers import TransformersLLM
from agentkit.memory import TrajectoryStore
from agentkit.train.loop import METHODS, ImproveConfig, RoundResult, improve, plot_curve

HEADERS = ["round", "level", "policy", "candidate", "promoted", "train examples", "held-out success",
           "step accuracy", "candidate success", "p", "sampled tokens", "train s", "round s"]


def row(r: RoundResult) -> list[object]:
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    return [r.round, r.level, r.incumbent, r.candidate or "-", "yes" if r.promoted else "no", r.examples,
            pct(r.heldout_success), pct(r.heldout_step_accuracy), pct(r.candidate_success),
            "-" if r.p_value is None else f"{r.p_value:.3f}", r.sampled_tokens, round(r.train_s, 1), round(r.wall_s, 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=METHODS, default="step-dpo")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--eval-level", type=int, default=None)
    parser.add_argument("--train-tasks", type=int, default=64)
    parser.add_argument("--eval-tasks", type=int, default=100)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--rectifications", type=int, default=8)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--store", default=None, help="SQLite store (default: a fresh temporary file)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="agentkit-improve-"))
    config = ImproveConfig(
        method=args.method, rounds=args.rounds, levels=args.levels, eval_level=args.eval_level,
        train_tasks=args.train_tasks, eval_tasks=args.eval_tasks, samples_per_task=args.samples,
        rectifications=args.rectifications, epochs=args.epochs, lr=args.lr, output_dir=str(work / "rounds"),
    )
    start = time.perf_counter()
    with TransformersLLM("gemma-3-270m") as llm, TrajectoryStore(args.store or work / "runs.db") as store:
        rounds = improve(llm, store, config, on_round=lambda r: print(markdown_table(HEADERS, [row(r)]), flush=True),
                         on_status=lambda m: print(f"[{time.perf_counter() - start:7.1f}s] {m}", flush=True))
    name = f"improve-{args.method}"
    png = plot_curve(rounds, RESULTS / f"{name}.png", title=f"agentkit improve ({args.method}), Gemma 3 270M, CPU")
    cfg = {k: v for k, v in dataclasses.asdict(config).items() if k != "output_dir"}
    body = (f"Config: `{cfg}`\n\nTotal wall time: {(time.perf_counter() - start) / 60:.1f} min (CPU only).\n\n"
            + markdown_table(HEADERS, [row(r) for r in rounds])
            + f"\n\nRound 0 is the starting policy. A candidate is promoted only on a significant paired gain "
              f"(exact one-sided McNemar, alpha {config.alpha}); the held-out columns show the policy active after "
              f"the round. Curve: `{png.name}`.")
    print(body)
    print("wrote", write_result(name, f"agentkit improve --method {args.method}", body), "and", png)


if __name__ == "__main__":
    main()
