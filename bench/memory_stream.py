"""Evo-Memory style stream: the embedded model solves a stream of tasks in order, memory off
vs memory on (the experience library learns after every chunk; no weight updates), then a
held-out test split with the library frozen.

Memory on: SolveAgent(library=..., memory=k) shows the k retrieved exemplars/insights in a
marked section before the question (after the suite's usual few-shot examples, which memory off
shows alone). After each chunk of the stream, update_from_runs adds the verified exemplars,
updates utilities and (with --reflect) lets the model write insights every few chunks.

    python bench/memory_stream.py                         # arithmetic level 1 (200 + 100) and countdown level 3
    python bench/memory_stream.py --stream 32 --heldout 16 --suites arithmetic --name memory_stream_smoke
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from _common import RESULTS, markdown_table, write_result
from agentkit.llm.transformers import TransformersLLM
from agentkit.memory import ExperienceLibrary
from agentkit.store import TrajectoryStore
from agentkit.runtime import SolveAgent, run_tasks
from agentkit.memory.learning import LearningConfig, update_from_runs
from agentkit.tasks import get_suite
from agentkit.learn.gate import wilson_interval

PLANS = {"arithmetic": 1, "countdown": 3}


def run_or_reuse(llm, suite, tasks, store, agent, concurrency):
    """The chunk's results, reusing the finished runs of an interrupted bench in the same
    store (greedy decoding: a re-run would give the same text) so a restart resumes."""
    done = {}
    for run in store.list_runs(None, suite=suite.name):
        if run.status in ("success", "failure", "budget"):
            done.setdefault(run.task_id, run)
    if all(t.id in done for t in tasks):
        return [done[t.id].id for t in tasks], [done[t.id].status == "success" for t in tasks]
    report = run_tasks(llm, suite, tasks, store, agent=agent, concurrency=concurrency)
    return [r.run_id for r in report.results], [r.reward >= 1.0 for r in report.results]


def run_stream(llm, suite, stream, heldout, args, memory: bool, store_path: str) -> dict:
    """Success per stream task (in order) and on the held-out split, for one condition."""
    outcomes, stats = [], {}
    with TrajectoryStore(store_path) as store:
        library = ExperienceLibrary(store) if memory else None
        agent = SolveAgent(shots=args.shots, max_tokens=args.max_tokens, library=library, memory=args.k)
        config = LearningConfig(reflect_every=args.reflect_every if args.reflect else 0)
        start = time.perf_counter()
        for i in range(0, len(stream), args.chunk):
            chunk = stream[i:i + args.chunk]
            run_ids, wins = run_or_reuse(llm, suite, chunk, store, agent, args.chunk)
            outcomes += wins  # the curve counts first (greedy) attempts only
            failed = [t for t, won in zip(chunk, wins) if not won]
            for attempt in range(args.explore if library is not None else 0):
                # ExpeL-style experience gathering: retry failed stream tasks with samples; a
                # verified one becomes an exemplar. Held-out stays one greedy attempt.
                explorer = replace(agent, temperature=0.8, seed=attempt + 1)
                report = run_tasks(llm, suite, failed, store, agent=explorer, concurrency=args.chunk)
                run_ids += [r.run_id for r in report.results]
                failed = [t for t, r in zip(failed, report.results) if r.reward < 1.0]
            if library is not None:  # a run accounted before (a resumed bench) is skipped
                update_from_runs(library, store, run_ids, suite, tasks=chunk,
                                 llm=llm if args.reflect else None, config=config)
            print(f"  {suite.name} memory={'on' if memory else 'off'} {len(outcomes)}/{len(stream)}: "
                  f"{100 * sum(outcomes) / len(outcomes):.1f}% so far", flush=True)
        stats["stream_s"] = time.perf_counter() - start
        start = time.perf_counter()
        run_ids, stats["heldout"] = run_or_reuse(llm, suite, heldout, store, agent, args.chunk)
        stats["heldout_s"] = time.perf_counter() - start
        stats["stream"] = outcomes
        if library is not None:
            items = library.items(status=None)
            stats["library"] = {
                "exemplars": sum(i.kind == "exemplar" and i.status == "active" for i in items),
                "insights": sum(i.kind == "insight" and i.status == "active" for i in items),
                "retired": sum(i.status == "retired" for i in items),
                "versions": library.version(),
            }
            shown = [len(s.memory_ids or []) for run_id in run_ids for s in store.steps(run_id)]
            stats["shown_per_prompt"] = sum(shown) / max(1, len(shown))
    return stats


def plot(curves: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4), squeeze=False)
    for ax, (name, by_condition) in zip(axes[0], curves.items()):
        for condition, outcomes in by_condition.items():
            cumulative = [100 * sum(outcomes[: i + 1]) / (i + 1) for i in range(len(outcomes))]
            ax.plot(range(1, len(outcomes) + 1), cumulative, label=f"memory {condition}")
        ax.set_title(f"{name}: success along the stream")
        ax.set_xlabel("tasks seen")
        ax.set_ylabel("cumulative success (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--suites", nargs="*", default=list(PLANS))
    parser.add_argument("--stream", type=int, default=200, help="arithmetic stream length")
    parser.add_argument("--heldout", type=int, default=100, help="arithmetic held-out tasks")
    parser.add_argument("--countdown-stream", type=int, default=64)
    parser.add_argument("--countdown-heldout", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=16, help="tasks run together; the library updates after each chunk")
    parser.add_argument("--k", type=int, default=4, help="library items per prompt")
    parser.add_argument("--shots", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--reflect", action="store_true", help="let the model write insights every few chunks")
    parser.add_argument("--reflect-every", type=int, default=4)
    parser.add_argument("--explore", type=int, default=0,
                        help="memory on: retry each failed stream task this many times with sampling (experience gathering)")
    parser.add_argument("--name", default="memory_stream")
    parser.add_argument("--fresh", action="store_true", help="start over instead of resuming from the stores")
    args = parser.parse_args()

    rows, curves, notes = [], {}, []
    tmp = RESULTS / f".{args.name}-stores"
    tmp.mkdir(parents=True, exist_ok=True)
    with TransformersLLM(args.model, dtype=args.dtype) as llm:
        dtype = str(llm.dtype).replace("torch.", "")
        for name in args.suites:
            suite, level = get_suite(name), PLANS[name]
            n_stream, n_heldout = ((args.stream, args.heldout) if name == "arithmetic"
                                   else (args.countdown_stream, args.countdown_heldout))
            stream = suite.tasks("train", n_stream, level=level, seed=1)
            heldout = suite.tasks("test", n_heldout, level=level, seed=2)
            curves[f"{name} L{level}"] = {}
            results = {}
            for memory in (False, True):
                store = tmp / f"{name}-{'on' if memory else 'off'}.db"
                if args.fresh:
                    for suffix in ("", "-wal", "-shm"):
                        store.with_name(store.name + suffix).unlink(missing_ok=True)
                stats = run_stream(llm, suite, stream, heldout, args, memory, str(store))
                results[memory] = stats
                curves[f"{name} L{level}"]["on" if memory else "off"] = stats["stream"]
            for memory in (False, True):
                s = results[memory]
                wins, n = sum(s["heldout"]), len(s["heldout"])
                lo, hi = wilson_interval(wins, n)
                half = len(s["stream"]) // 2
                rows.append([name, level, "on" if memory else "off", len(s["stream"]),
                             f"{100 * sum(s['stream'][:half]) / half:.1f}%",
                             f"{100 * sum(s['stream'][half:]) / (len(s['stream']) - half):.1f}%",
                             n, f"{100 * wins / n:.1f}%", f"{100 * lo:.0f}-{100 * hi:.0f}%",
                             s["stream_s"] + s["heldout_s"]])
            off, on = results[False]["heldout"], results[True]["heldout"]
            gain = 100 * (sum(on) - sum(off)) / len(on)
            both = sum(a and b for a, b in zip(off, on))
            lib = results[True]["library"]
            notes.append(f"- {name} level {level}: held-out gain {gain:+.1f} points (memory on {sum(on)}/{len(on)}, off "
                         f"{sum(off)}/{len(off)}; {sum(b and not a for a, b in zip(off, on))} tasks won only with memory, "
                         f"{sum(a and not b for a, b in zip(off, on))} lost, {both} solved by both). Library after the "
                         f"stream: {lib['exemplars']} exemplars, {lib['insights']} insights, {lib['retired']} retired, "
                         f"{lib['versions']} versions; {results[True]['shown_per_prompt']:.1f} items shown per held-out prompt.")
            print(notes[-1], flush=True)
            write(args, rows, curves, notes, dtype)


def write(args, rows, curves, notes, dtype) -> None:
    png = RESULTS / f"{args.name}.png"
    plot(curves, png)
    headers = ["suite", "level", "memory", "stream tasks", "stream 1st half", "stream 2nd half", "held-out tasks",
               "held-out success", "95% CI", "wall s"]
    body = (f"Model {args.model} ({dtype}), greedy, {args.shots}-shot suite examples in every prompt; memory on adds "
            f"k={args.k} library items (verified exemplars{', insights' if args.reflect else ''}) retrieved by BM25 "
            f"in a marked section before the question. The stream is processed in chunks of {args.chunk} tasks run "
            f"together; the library is updated (update_from_runs) after each chunk, so a task sees what the chunks "
            f"before it taught. No weight updates. Held-out: test split (disjoint questions), library frozen."
            + (f" Memory on also retried each failed stream task up to {args.explore} times with sampling "
               f"(temperature 0.8) to gather verified exemplars (ExpeL-style experience gathering); the stream "
               f"columns count first greedy attempts only." if args.explore else "") + "\n\n"
            + markdown_table(headers, rows) + "\n\n" + "\n".join(notes)
            + f"\n\nCurve: ![success along the stream]({png.name})\n")
    print(body)
    print("wrote", write_result(args.name, "Experience library on a task stream (Evo-Memory style)", body))


if __name__ == "__main__":
    main()
