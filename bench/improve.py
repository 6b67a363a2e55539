"""Does the loop learn? `improve` on the embedded model, CPU only, on several independent
seeds (training tasks, sampling, search, LoRA init), each measured on the same final test
set that no decision reads, with 95% intervals. Writes a table per seed, a summary across
seeds (mean, median, min, max: never the best run alone) and the learning-curve PNG.

    python bench/improve.py --seeds 3                                   # the default configuration
    python bench/improve.py --explore sample --method step-dpo --seeds 3 --name improve-step-dpo
    python bench/improve.py --seeds 3 --jobs 3        # the seeds side by side, one process each
    python bench/improve.py --seeds 2 --jobs 4 --collect-with active best   # two arms, paired by seed
    python bench/improve.py --seeds 3 --jobs 3 --vocabulary full suite      # (one knob's values at a time)
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import pickle
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from _common import RESULTS, markdown_table, write_result
from agentkit.errors import AgentkitError
from agentkit.learn.gate import ALPHA_SPENDING
from agentkit.learn.improve import (COLLECT_WITH, CURRICULA, EXPLORE, METHODS, VOCABULARIES, ImproveConfig, RoundResult,
                                    improve, plot_curve)
from agentkit.llm.transformers import TransformersLLM
from agentkit.store import TrajectoryStore

ARM_KNOBS = ("collect_with", "vocabulary", "incremental")  # the knobs whose values can run as arms side by side
SWITCH = {"off": False, "on": True}  # an on/off knob's arms
HEADERS = ["round", "lvl", "policy", "examples", "gate", "cand", "p", "p adj", "final [95% CI]", "final step",
           "cpu min"]


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def final(r: RoundResult) -> str:
    if r.final_success is None:
        return "-"
    low, high = r.final_ci95
    return f"{100 * r.final_success:.1f}% [{100 * low:.0f}-{100 * high:.0f}]"


def row(r: RoundResult) -> list[object]:
    return [r.round, r.level, r.incumbent + (" (new)" if r.promoted else ""), r.examples, pct(r.heldout_success),
            pct(r.candidate_success), "-" if r.p_value is None else f"{r.p_value:.3g}",
            "-" if r.p_adjusted is None else f"{r.p_adjusted:.3g}", final(r), pct(r.final_step_accuracy),
            f"{r.cpu_s / 60:.1f}"]


def curriculum(rounds: list[RoundResult]) -> str:
    """What the curriculum searched and believed, round by round (--curriculum mopps)."""
    lines = [f"- round {r.round}: picked {r.new_data['picked']}; posterior means {r.new_data['curriculum']}"
             for r in rounds if "picked" in r.new_data]
    if not lines:
        return ""
    return "\n\nCurriculum (tasks searched per family; the bandit's solve rates after the round):\n\n" + "\n".join(lines)


def summary(runs: list[list[RoundResult]]) -> str:
    """Final test success per round across seeds: mean, median, min and max."""
    lines = []
    for k in range(len(runs[0])):
        finals = [100 * run[k].final_success for run in runs if len(run) > k and run[k].final_success is not None]
        steps = [100 * run[k].final_step_accuracy for run in runs
                 if len(run) > k and run[k].final_step_accuracy is not None]
        cpu = [run[k].cpu_s / 60 for run in runs if len(run) > k]
        promoted = sum(run[k].promoted for run in runs if len(run) > k)
        lines.append([k, f"{statistics.mean(finals):.1f}%", f"{statistics.median(finals):.1f}%",
                      f"{min(finals):.1f}-{max(finals):.1f}%",
                      f"{statistics.mean(steps):.1f}%" if steps else "-", f"{promoted}/{len(runs)}",
                      f"{statistics.mean(cpu):.1f} ({min(cpu):.1f}-{max(cpu):.1f})"])
    return markdown_table(["round", "final mean", "median", "min-max", "step acc mean", "promoted", "cpu min"], lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = ImproveConfig()
    parser.add_argument("--seeds", type=int, default=3, help="independent runs, seeds 1..N")
    parser.add_argument("--explore", choices=EXPLORE, default=None, help="default: search where the method trains "
                        "on search trees, else sample (ImproveConfig)")
    parser.add_argument("--search", default=defaults.search)
    parser.add_argument("--method", choices=METHODS, default=defaults.method)
    parser.add_argument("--collect-with", choices=COLLECT_WITH, nargs="+", default=[defaults.collect_with],
                        help="the policy that collects: the active one or the best on the gate set so far; "
                             "several values run as arms side by side on the same seeds")
    parser.add_argument("--vocabulary", choices=VOCABULARIES, nargs="+", default=[defaults.vocabulary],
                        help="the tokens the policy writes with: the whole vocabulary or the suite's; "
                             "several values run as arms side by side on the same seeds")
    parser.add_argument("--incremental", choices=list(SWITCH), nargs="+", default=[None],
                        help="continue the active policy on the solutions it has not learnt (on), or train every "
                             "candidate afresh (off); default: ImproveConfig's, on for rft on search trees; several "
                             "values run as arms side by side on the same seeds")
    parser.add_argument("--alpha-spending", choices=ALPHA_SPENDING, default=defaults.alpha_spending,
                        help="how the rounds' gates share alpha: equal, or rising with the round")
    parser.add_argument("--rounds", type=int, default=None, help="default: ImproveConfig's, 7 where rounds search, else 3")
    parser.add_argument("--levels", type=int, nargs="+", default=defaults.levels)
    parser.add_argument("--eval-level", type=int, default=None)
    parser.add_argument("--train-tasks", type=int, default=None, help="default: ImproveConfig's, 320 where rounds search, else 96")
    parser.add_argument("--eval-tasks", type=int, default=defaults.eval_tasks)
    parser.add_argument("--final-tasks", type=int, default=defaults.final_tasks)
    parser.add_argument("--final-seed", type=int, default=None,
                        help="the final test set's seed (default: ImproveConfig's, the eval seed + 7919)")
    parser.add_argument("--samples", type=int, default=defaults.samples_per_task)
    parser.add_argument("--epochs", type=float, default=defaults.epochs)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--chosen-by", choices=["outcome", "step"], default=defaults.chosen_by)
    parser.add_argument("--gate-metric", choices=["success", "step-accuracy"], default=defaults.gate_metric)
    parser.add_argument("--advance-at", type=float, default=defaults.advance_at,
                        help="with several --levels: move up once search solves this share of fresh tasks")
    parser.add_argument("--curriculum", choices=CURRICULA, default=None,
                        help="mopps: search the fresh tasks whose family search solves neither always nor never "
                             "(default: ImproveConfig's, mopps where the round searches)")
    parser.add_argument("--pool", type=int, default=defaults.pool,
                        help="with --curriculum mopps: candidate tasks per round, as a multiple of --train-tasks")
    parser.add_argument("--from-base", action=argparse.BooleanOptionalAction, default=None,
                        help="train every candidate from the base model on the replay buffer "
                             "(default: ImproveConfig's, on for rft on search trees with --incremental off)")
    parser.add_argument("--name", default=None, help="result file name (default improve-<explore>-<method>)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="seeds run side by side, one process each, the cores shared between them")
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: give at least 1")

    several = [knob for knob in ARM_KNOBS if len(getattr(args, knob)) > 1]
    if len(several) > 1:
        parser.error(f"{' and '.join(flag(k) for k in several)} both have several values: compare one knob at a time")
    args.knob = several[0] if several else ARM_KNOBS[0]
    args.arms = getattr(args, args.knob)
    if len(set(args.arms)) < len(args.arms):
        parser.error(f"{flag(args.knob)} {' '.join(args.arms)}: name each arm once")
    for arm in args.arms:  # every arm's settings, before hours go into the others
        try:
            config_of(args, arm, seed=1)
        except AgentkitError as exc:
            parser.error(str(exc))

    # seed by seed, each seed's arms side by side: a run stopped early still has pairs
    runs = [(arm, seed) for seed in range(1, args.seeds + 1) for arm in args.arms]
    threads = threads_per_job(args)
    done: dict[tuple[str, int], list[RoundResult]] = {}
    start = time.time()
    if args.jobs == 1:
        for arm, seed in runs:
            done[arm, seed] = run_seed(args, arm, seed, start, threads=None)
            report(args, done, start)  # after every seed: a stopped run keeps what it measured
        return
    warn_memory(args.jobs)
    kept = Path(tempfile.mkdtemp(prefix="agentkit-improve-kept-"))
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_seed, args, arm, seed, start, threads, kept / f"{arm}-{seed}.pkl"): (arm, seed)
                   for arm, seed in runs}
        for future in as_completed(futures):
            arm, seed = futures[future]
            try:
                done[arm, seed] = future.result()
            except Exception as exc:  # a crashed run (a killed one breaks the pool): report the rounds it finished
                print(f"seed {seed} ({arm}) failed: {type(exc).__name__}: {exc}", flush=True)
                if rounds := kept_rounds(kept / f"{arm}-{seed}.pkl"):
                    done[arm, seed] = rounds
            report(args, done, start)


def threads_per_job(args: argparse.Namespace) -> int:
    """The torch threads of each side-by-side run: the cores shared between the runs at once."""
    return max(1, (os.cpu_count() or 1) // min(args.jobs, len(args.arms) * args.seeds))


def flag(knob: str) -> str:
    return "--" + knob.replace("_", "-")


def warn_memory(jobs: int, per_job_gb: float = 6.5) -> None:
    """Side-by-side runs each hold a model, its adapters and training activations: a
    two-operation run's process was killed holding 6.4 GB (improve-2op-collect-with.md)."""
    try:
        free = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                    if line.startswith("MemAvailable:")) / 2**20
    except (OSError, StopIteration):
        return
    if jobs * per_job_gb > free:
        print(f"warning: --jobs {jobs} may need ~{jobs * per_job_gb:.0f} GB and {free:.0f} GB are free; the kernel "
              f"kills a run that does not fit, so run fewer jobs (--jobs {max(1, int(free // per_job_gb))})",
              file=sys.stderr, flush=True)


def config_of(args: argparse.Namespace, arm: str, seed: int, output_dir: str = "") -> ImproveConfig:
    return ImproveConfig(
        explore=args.explore, search=args.search, method=args.method, rounds=args.rounds, levels=args.levels,
        eval_level=args.eval_level, train_tasks=args.train_tasks, eval_tasks=args.eval_tasks,
        final_tasks=args.final_tasks, final_seed=args.final_seed, samples_per_task=args.samples, epochs=args.epochs, lr=args.lr,
        chosen_by=args.chosen_by, gate_metric=args.gate_metric, from_base=args.from_base,
        advance_at=args.advance_at, curriculum=args.curriculum, pool=args.pool, alpha_spending=args.alpha_spending,
        seed=seed, output_dir=output_dir, **{knob: value(knob, arm if knob == args.knob else getattr(args, knob)[0])
                                             for knob in ARM_KNOBS},
    )


def value(knob: str, arm: str) -> Any:
    """An arm's value of ``knob``, as ImproveConfig takes it."""
    return SWITCH.get(arm) if knob == "incremental" else arm  # None: ImproveConfig's default


def run_seed(args: argparse.Namespace, arm: str, seed: int, start: float, threads: int | None,
             kept: Path | None = None) -> list[RoundResult]:
    """One independent run of one arm. With ``threads`` (--jobs > 1) it runs in its own
    process on that many torch threads, so each seed's CPU time is its own, and it keeps
    the rounds done so far in the file ``kept`` (``kept_rounds``)."""
    work = Path(tempfile.mkdtemp(prefix=f"agentkit-improve-{arm}-{seed}-"))
    config = config_of(args, arm, seed, str(work / "rounds"))
    tag = f"seed {seed}" + (f" ({arm})" if len(args.arms) > 1 else "")
    print(f"== {tag} of {args.seeds}", flush=True)
    rounds: list[RoundResult] = []

    def on_round(r: RoundResult) -> None:
        print(f"{tag}\n" + markdown_table(HEADERS, [row(r)]), flush=True)
        rounds.append(r)
        if kept is not None:
            kept.write_bytes(pickle.dumps(rounds))

    with TransformersLLM("gemma-3-270m", threads=threads) as llm, TrajectoryStore(work / "runs.db") as store:
        return improve(llm, store, config, on_round=on_round,
                       on_status=lambda m: print(f"[{time.time() - start:7.1f}s] {tag}: {m}", flush=True))


def kept_rounds(path: Path) -> list[RoundResult]:
    """The rounds a run finished before its process died (run_seed's ``kept``)."""
    return pickle.loads(path.read_bytes()) if path.exists() else []


def report(args: argparse.Namespace, done: dict[tuple[str, int], list[RoundResult]], start: float) -> None:
    arms = args.arms
    config = config_of(args, arms[0], seed=1)
    name = args.name or f"improve-{config.explore}-{config.method}"
    sections, pngs = [], []
    for arm in arms:
        seeds = sorted(seed for a, seed in done if a == arm)
        if not seeds:
            continue
        runs = [done[arm, seed] for seed in seeds]
        h = "##" if len(arms) == 1 else "###"  # with several arms, each is a section of its own
        tables = [f"{h}# Seed {seed}\n\n" + markdown_table(HEADERS, [row(r) for r in done[arm, seed]])
                  + curriculum(done[arm, seed]) for seed in seeds]
        label = "" if len(arms) == 1 else f"-{arm}"
        pngs.append(plot_curve(runs, RESULTS / f"{name}{label}.png",
                               title=f"improve --explore {config.explore} --method {config.method}"
                                     f"{f' {flag(args.knob)} {arm}' if label else ''}: Gemma 3 270M, CPU"))
        sections.append(("" if len(arms) == 1 else f"## Arm: {args.knob}={arm}\n\n")
                        + f"{h} Across seeds (final test set)\n\n{summary(runs)}\n\n{h} Per seed\n\n"
                        + "\n\n".join(tables))
    if len(arms) > 1:
        sections.insert(0, head_to_head(args.knob, arms, done))
    cfg = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("output_dir", "seed")}
    if len(arms) > 1:  # every field the arms set apart (a knob's value may resolve others), one value per arm
        per_arm = [dataclasses.asdict(config_of(args, arm, seed=1)) for arm in arms]
        cfg.update({k: [c[k] for c in per_arm] for k in cfg if len({repr(c[k]) for c in per_arm}) > 1})
    total = len(arms) * args.seeds
    ran = ", ".join((f"{arm} seed {seed}" if len(arms) > 1 else f"seed {seed}")
                    + ("" if len(done[arm, seed]) > config.rounds else f" (stopped after round {len(done[arm, seed]) - 1})")
                    for arm, seed in sorted(done, key=lambda run: (run[1], arms.index(run[0]))))
    ran += "" if len(done) == total else f" ({len(done)} of {total} runs: stopped early)"
    side = ""
    if args.jobs > 1:
        side = f"; {args.jobs} side by side on {os.cpu_count()} cores, {threads_per_job(args)} torch thread(s) each"
    spending = ("alpha / rounds each" if config.alpha_spending == "equal"
                else "round r's proportional to r, fixed before the run")
    body = (
        f"Config ({ran}{side}): `{cfg}`\n\n"
        f"Wall time {(time.time() - start) / 60:.1f} min for these runs. `cpu min` is the user + system "
        "CPU time of the improve run up to the end of the round (both cores count), training and all measuring "
        "included.\n\n"
        "Three disjoint task sets: fresh training tasks every round (from the seed), a fixed gate set "
        f"({config.eval_tasks} test tasks, eval seed {config.eval_seed}) that every promotion decides on, and a "
        f"final test set ({config.final_tasks} test tasks, seed {config.final_seed}, none in the gate set) that no "
        "decision reads. The gate is a one-sided exact McNemar test that spends alpha "
        f"{config.alpha} over the {config.rounds} rounds: each gate has a share of its own ({spending}), and a "
        "promotion passes its gate's level on to the next gate (Wiens' fallback procedure; p adj = p / (share + "
        "carried)). `final` is the policy active after "
        "the round on the final test set, with its 95% Wilson interval.\n\n"
        + "\n\n".join(sections) + f"\n\nCurve: {', '.join(f'`{png.name}`' for png in pngs)}."
    )
    print(body)
    print("wrote", write_result(name, f"agentkit improve --explore {config.explore} --method {config.method}", body),
          "and", ", ".join(map(str, pngs)))


def head_to_head(knob: str, arms: list[str], done: dict[tuple[str, int], list[RoundResult]]) -> str:
    """The arms on the same seeds (the same training tasks and the same final test set):
    final test success after the last round every run reached, per seed and on average."""
    last = min(len(rounds) for rounds in done.values()) - 1
    seeds = sorted({seed for _, seed in done})
    lines = []
    for seed in seeds:
        lines.append([seed] + [final(done[arm, seed][last]) if (arm, seed) in done else "-" for arm in arms])
    paired = [seed for seed in seeds
              if all((arm, seed) in done and done[arm, seed][last].final_success is not None for arm in arms)]
    if paired:
        means = [statistics.mean(100 * done[arm, seed][last].final_success for seed in paired) for arm in arms]
        lines.append([f"mean ({len(paired)} paired)"] + [f"{m:.1f}%" for m in means])
    return (f"## Head to head (final test set, after round {last})\n\n"
            + markdown_table(["seed"] + [f"{knob}={arm}" for arm in arms], lines))


if __name__ == "__main__":
    main()
