"""Test-time compute: success against sampled tokens for step-level search (beam and MCTS)
and for sampling N whole outputs, on the base policy and on a trained one. The curve a user
reads to choose a search budget.

    python bench/search.py --level 2 --tasks 40                       # the base policy
    python bench/search.py --level 2 --adapter out/rounds/round-1/adapter --name search-promoted

k is the search's width: beam:(k/8)x8 (k candidate lines per depth, 8 per frontier node;
beam:1xk below 8), mcts:k (k simulations of 4 lines each); sample:k draws k whole outputs
at T = 0.8 and counts a task solved when any verifies, so it is best-of-k with a perfect
outcome verifier: an upper bound on any best-of-k selection. Search scores lines with the
suite's step checker (``--value checker``) or with Monte-Carlo rollouts (``--value mc``,
what a suite without a step checker gets). Tokens are every sampled token (lines,
duplicates and rollouts included), per task.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

from _common import RESULTS, markdown_table, write_result
from agentkit.llm.base import GenerationRequest
from agentkit.llm.transformers import TransformersLLM
from agentkit.graph.search import MCTS, Beam, search
from agentkit.tasks import get_suite


def strategy(kind: str, k: int, value: str, share_prefix: bool = True) -> Beam | MCTS:
    if kind == "beam":
        width = max(1, k // 8)
        return Beam(width=width, expand=k // width, value=value, share_prefix=share_prefix)
    return MCTS(simulations=k, expand=4, value=value, share_prefix=share_prefix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="arithmetic")
    parser.add_argument("--level", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0, help="task seed: 0 draws the improve gate set's tasks, "
                        "7919 those of its final test set (FINAL_SEED; the final set also drops "
                        "any question the gate set has)")
    parser.add_argument("--ks", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    parser.add_argument("--kinds", nargs="+", default=["sample", "beam", "mcts"])
    parser.add_argument("--value", choices=["checker", "mc"], default="checker")
    parser.add_argument("--adapter", default=None, help="a trained LoRA adapter directory (default: the base model)")
    parser.add_argument("--concurrency", type=int, default=8, help="tasks searched at once")
    parser.add_argument("--no-share-prefix", dest="share_prefix", action="store_false",
                        help="sample whole lines, not only their uncertain rest (see Beam.share_prefix)")
    parser.add_argument("--name", default=None)
    args = parser.parse_args()

    suite = get_suite(args.suite)
    tasks = suite.tasks("test", args.tasks, level=args.level, seed=args.seed)
    rows, points = [], {}
    with TransformersLLM("gemma-3-270m") as llm:
        adapter = None
        if args.adapter:
            llm.load_adapter("policy", args.adapter)
            adapter = "policy"
        prompts = [llm.tokenize(suite.prompt(t)) for t in tasks]
        t0 = time.perf_counter()
        greedy = llm.generate([GenerationRequest(p, max_tokens=160, stop=suite.stop, adapter=adapter) for p in prompts])
        wins = sum(suite.verify(t, c[0].text) for t, c in zip(tasks, greedy))
        greedy_tokens = sum(len(c[0].token_ids) for c in greedy) / len(tasks)
        rows.append(["greedy", 1, f"{100 * wins / len(tasks):.1f}%", f"{greedy_tokens:.0f}", "1.0x",
                     f"{time.perf_counter() - t0:.0f}"])
        print(markdown_table(["strategy", "k", "success", "tokens/task", "x greedy", "s"], rows[-1:]), flush=True)
        for kind in args.kinds:
            for k in args.ks:
                t0 = time.perf_counter()
                if kind == "sample":
                    out = llm.generate([GenerationRequest(p, n=k, temperature=0.8, top_p=0.95, top_k=64, max_tokens=160,
                                                          stop=suite.stop, seed=i, adapter=adapter)
                                        for i, p in enumerate(prompts)])
                    wins = sum(any(suite.verify(t, c.text) >= 1.0 for c in cs) for t, cs in zip(tasks, out))
                    tokens = sum(len(c.token_ids) for cs in out for c in cs)
                else:  # the tasks' searches on threads: the backend batches their calls together
                    how = strategy(kind, k, args.value, args.share_prefix)
                    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
                        trees = list(pool.map(lambda tp: search(llm, suite, tp[0], tp[1], how, adapter=adapter, seed=0),
                                              zip(tasks, prompts)))
                    wins = sum(suite.verify(t, tree.text()) >= 1.0 for t, tree in zip(tasks, trees))
                    tokens = sum(tree.tokens for tree in trees)
                label = str(strategy(kind, k, args.value)) if kind != "sample" else f"sample:{k}"
                per_task = tokens / len(tasks)
                rows.append([label, k, f"{100 * wins / len(tasks):.1f}%", f"{per_task:.0f}",
                             f"{per_task / greedy_tokens:.1f}x", f"{time.perf_counter() - t0:.0f}"])
                points.setdefault(kind, []).append((per_task, 100 * wins / len(tasks)))
                print(markdown_table(["strategy", "k", "success", "tokens/task", "x greedy", "s"], rows[-1:]), flush=True)

    name = args.name or (f"search-level{args.level}" + ("-adapter" if args.adapter else "")
                         + (f"-seed{args.seed}" if args.seed else ""))
    png = plot(points, float(rows[0][2].rstrip("%")), greedy_tokens, RESULTS / f"{name}.png",
               f"{'trained' if args.adapter else 'base'} Gemma 3 270M, {args.suite} level {args.level}, "
               f"{len(tasks)} tasks")
    body = (f"Policy: {args.adapter or 'base model'}; {len(tasks)} test tasks of level {args.level} (seed {args.seed}); "
            f"search lines scored by {args.value}"
            f"{'' if args.share_prefix else ', whole lines sampled (--no-share-prefix)'}.\n\n"
            + markdown_table(["strategy", "k", "success", "tokens/task", "x greedy", "s"], rows)
            + f"\n\nsample:k counts a task solved when any of k samples verifies (best-of-k with a perfect "
              f"outcome verifier). Curve: `{png.name}`.")
    print(body)
    print("wrote", write_result(name, "Test-time compute: search and sampling against tokens", body), "and", png)


def plot(points: dict, greedy: float, greedy_tokens: float, path, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    for kind, xy in points.items():
        ax.plot(*zip(*xy), marker="o", label=kind)
    ax.scatter([greedy_tokens], [greedy], marker="*", s=80, color="black", label="greedy", zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel("sampled tokens per task")
    ax.set_ylabel("success %")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
