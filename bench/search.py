"""Test-time compute: success against sampled tokens for step-level search (beam and MCTS)
and for sampling N whole outputs, on the base policy and on a trained one. The curve a user
reads to choose a search budget.

    python bench/search.py --level 2 --tasks 40                       # the base policy
    python bench/search.py --level 2 --adapter out/rounds/round-1/adapter --name search-promoted

k is the search's width: beam:(k/8)x8 (k candidate lines per depth, 8 per frontier node;
beam:1xk below 8), mcts:kx4 (k simulations of 4 lines each); sample:k draws k whole outputs
at the lines' temperature and top_p (``--temperature`` 0.8, ``--top-p`` 0.95) and counts a
task solved when any verifies, so it is best-of-k with a perfect outcome verifier: an upper
bound on any best-of-k selection. Search scores lines with the
suite's step checker (``--value checker``) or with Monte-Carlo rollouts (``--value mc``,
what a suite without a step checker gets). Tokens are every sampled token (lines,
duplicates and rollouts included), per task.

Several ``--adapter`` directories (``base`` names the base model) are measured one after
the other on the same tasks, and a last table sets each search against its own policy's
greedy success: the gain in points, its 95% interval, the one-sided exact McNemar p on the
paired task outcomes, and the token multiple. That is the search-at-inference figure over
several trained policies (seeds), side by side in one run.

    python bench/search.py --level 2 --tasks 100 --ks 64 --kinds beam --adapter A B C --name search-seeds
"""

from __future__ import annotations

import argparse
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import RESULTS, markdown_table, write_result
from agentkit.llm.base import GenerationRequest
from agentkit.llm.transformers import TransformersLLM
from agentkit.errors import AgentkitError
from agentkit.graph.search import MCTS, Beam, search
from agentkit.learn.gate import mcnemar_exact, wilson_interval
from agentkit.tasks import get_suite


def strategy(kind: str, k: int, value: str, share_prefix: bool = True, **sampling: float) -> Beam | MCTS:
    """``sampling``: the lines' temperature and top_p, where they differ from the strategies' defaults."""
    if kind == "beam":
        width = max(1, k // 8)
        return Beam(width=width, expand=k // width, value=value, share_prefix=share_prefix, **sampling)
    return MCTS(simulations=k, expand=4, value=value, share_prefix=share_prefix, **sampling)


MARKERS = {"beam": "o", "mcts": "s", "sample": "^"}
HEADERS = ["strategy", "k", "success [95% CI]", "tokens/task", "x greedy", "s"]


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
    parser.add_argument("--adapter", nargs="+", default=["base"],
                        help="trained LoRA adapter directories, measured one after the other on the same tasks "
                             "('base': the base model, the default)")
    parser.add_argument("--concurrency", type=int, default=8, help="tasks searched at once")
    parser.add_argument("--no-share-prefix", dest="share_prefix", action="store_false",
                        help="sample whole lines, not only their uncertain rest (see Beam.share_prefix)")
    parser.add_argument("--temperature", type=float, default=Beam.temperature,
                        help="sampling temperature of every candidate line and whole output")
    parser.add_argument("--top-p", type=float, default=Beam.top_p,
                        help="nucleus of every candidate line and whole output (1: the whole distribution)")
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    try:  # the strategies own the sampling checks; whole-output samples use the same settings
        strategy("beam", 8, args.value, temperature=args.temperature, top_p=args.top_p)
    except AgentkitError as exc:
        raise SystemExit(f"--temperature {args.temperature} --top-p {args.top_p}: {exc}") from None
    missing = [a for a in args.adapter if a != "base" and not Path(a, "adapter_config.json").is_file()]
    if missing:
        raise SystemExit(f"--adapter {missing[0]}: no adapter_config.json there; pass a PEFT adapter "
                         "directory (a round's .../adapter) or 'base'")

    suite = get_suite(args.suite)
    tasks = suite.tasks("test", args.tasks, level=args.level, seed=args.seed)
    sections, summary, curves = [], [], []
    with TransformersLLM("gemma-3-270m") as llm:
        for i, path in enumerate(args.adapter):
            adapter = None if path == "base" else f"policy-{i}"
            if adapter:
                llm.load_adapter(adapter, path)
            print(f"== policy {path}", flush=True)
            rows, points, greedy, outcomes = measure(llm, suite, tasks, adapter, args)
            sections.append(f"### Policy: {path}\n\n" + markdown_table(HEADERS, rows))
            summary += [[path, label, f"{100 * _mean(greedy):.1f}%", f"{100 * _mean(won):.1f}%",
                         *_gain(greedy, won), f"{x:.1f}x"] for label, won, x in outcomes]
            curves.append((path, points, 100 * _mean(greedy), float(rows[0][3])))

    n_policies = len(args.adapter)
    name = args.name or (f"search-level{args.level}" + ("" if args.adapter == ["base"] else "-adapter")
                         + (f"-seed{args.seed}" if args.seed else ""))
    png = plot(curves, RESULTS / f"{name}.png", f"Gemma 3 270M, {args.suite} level {args.level}, {len(tasks)} tasks")
    body = (f"{len(tasks)} test tasks of level {args.level} (seed {args.seed}); search lines scored by {args.value}"
            f"{'' if args.share_prefix else ', whole lines sampled (--no-share-prefix)'}; lines and samples at "
            f"temperature {args.temperature}, top_p {args.top_p}; "
            f"{n_policies} {'policy' if n_policies == 1 else 'policies'}, one after the other on the same tasks.\n\n"
            + "\n\n".join(sections)
            + "\n\n### Each search against its own policy's greedy (paired, same tasks)\n\n"
            + markdown_table(["policy", "strategy", "greedy", "search", "gain [95% CI]", "p", "x tokens"], summary)
            + "\n\nsample:k counts a task solved when any of k samples verifies (best-of-k with a perfect outcome "
              "verifier). The gain's interval is a normal interval on the paired difference; p is the one-sided "
              f"exact McNemar test that search solves more tasks than greedy. Curve: `{png.name}`.")
    print(body)
    print("wrote", write_result(name, "Test-time compute: search and sampling against tokens", body), "and", png)


def measure(llm: TransformersLLM, suite, tasks: list, adapter: str | None, args: argparse.Namespace):
    """One policy: greedy, then every kind at every k. Returns the table rows, the curve points
    by kind, greedy's per-task outcomes and, per strategy, (label, per-task outcomes, x greedy tokens)."""
    prompts = [llm.tokenize(suite.prompt(t)) for t in tasks]
    t0 = time.perf_counter()
    out = llm.generate([GenerationRequest(p, max_tokens=160, stop=suite.stop, adapter=adapter) for p in prompts])
    greedy = [suite.verify(t, c[0].text) >= 1.0 for t, c in zip(tasks, out)]
    greedy_tokens = sum(len(c[0].token_ids) for c in out) / len(tasks)
    rows = [["greedy", 1, _rate(greedy), f"{greedy_tokens:.0f}", "1.0x", f"{time.perf_counter() - t0:.0f}"]]
    print(markdown_table(HEADERS, rows[-1:]), flush=True)
    points: dict[str, list[tuple[float, float]]] = {}
    outcomes = []
    for kind in args.kinds:
        for k in args.ks:
            t0 = time.perf_counter()
            if kind == "sample":
                out = llm.generate([GenerationRequest(p, n=k, temperature=args.temperature, top_p=args.top_p,
                                                      top_k=Beam.top_k, max_tokens=160,
                                                      stop=suite.stop, seed=i, adapter=adapter)
                                    for i, p in enumerate(prompts)])
                won = [any(suite.verify(t, c.text) >= 1.0 for c in cs) for t, cs in zip(tasks, out)]
                tokens = sum(len(c.token_ids) for cs in out for c in cs)
            else:  # the tasks' searches on threads: the backend batches their calls together
                how = strategy(kind, k, args.value, args.share_prefix, temperature=args.temperature, top_p=args.top_p)
                with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
                    trees = list(pool.map(lambda tp: search(llm, suite, tp[0], tp[1], how, adapter=adapter, seed=0),
                                          zip(tasks, prompts)))
                won = [suite.verify(t, tree.text()) >= 1.0 for t, tree in zip(tasks, trees)]
                tokens = sum(tree.tokens for tree in trees)
            label = str(how) if kind != "sample" else f"sample:{k}"
            per_task = tokens / len(tasks)
            rows.append([label, k, _rate(won), f"{per_task:.0f}", f"{per_task / greedy_tokens:.1f}x",
                         f"{time.perf_counter() - t0:.0f}"])
            points.setdefault(kind, []).append((per_task, 100 * _mean(won)))
            outcomes.append((label, won, per_task / greedy_tokens))
            print(markdown_table(HEADERS, rows[-1:]), flush=True)
    return rows, points, greedy, outcomes


def _mean(xs: list[bool]) -> float:
    return sum(xs) / len(xs)


def _rate(won: list[bool]) -> str:
    lo, hi = wilson_interval(sum(won), len(won))
    return f"{100 * _mean(won):.1f}% [{100 * lo:.0f}-{100 * hi:.0f}]"


def _gain(greedy: list[bool], won: list[bool]) -> list[str]:
    """The paired gain of ``won`` over ``greedy`` in points with its 95% interval, and the
    one-sided exact McNemar p that ``won`` solves more."""
    d = [int(w) - int(g) for g, w in zip(greedy, won)]
    n, mean = len(d), _mean(d)
    half = 1.959964 * math.sqrt(sum((x - mean) ** 2 for x in d) / max(1, n - 1) / n)
    gained, lost = d.count(1), d.count(-1)
    return [f"{100 * mean:+.1f} [{100 * (mean - half):+.0f} to {100 * (mean + half):+.0f}]",
            f"{mcnemar_exact(lost, gained):.2g}"]


def plot(curves: list, path: Path, title: str) -> Path:
    """Success against tokens per task: one line per kind of each policy, its greedy a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    for i, (policy, points, greedy, greedy_tokens) in enumerate(curves):
        where = Path(policy)
        prefix = f"{where.parent.name if where.name == 'adapter' else where.name}: " if len(curves) > 1 else ""
        color = f"C{i}" if len(curves) > 1 else None
        for j, (kind, xy) in enumerate(points.items()):
            ax.plot(*zip(*xy), marker=MARKERS.get(kind, "o"), linestyle=["-", "--", ":"][j % 3],
                    color=color or f"C{j}", label=prefix + kind)
        ax.scatter([greedy_tokens], [greedy], marker="*", s=80, color=color or "black", zorder=3,
                   label=prefix + "greedy")
    ax.set_xscale("log")
    ax.set_xlabel("sampled tokens per task")
    ax.set_ylabel("success %")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
