"""Monte-Carlo credit through the rest of a graph, on the embedded model.

Runs a graph whose answer a later model call can change (by default plan -> solve -> review ->
check: the critic may send the draft back for revision, and the plan comes before the answering
call, so rollouts replay it from the record), then values every step prefix of each failed run's answering call
twice: by continuing the call's own output (what is exact for a single node) and by replaying
the run to that call and running the rest of the graph (``agentkit.learn.rollouts``). Prints
both value vectors, the first wrong step each finds, and what each cost.

    python bench/graph_credit.py --tasks 8 --samples 4
    python bench/graph_credit.py --graph solve_critic
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import markdown_table, write_result
from agentkit.graph import Graph, load_graph
from agentkit.llm.transformers import TransformersLLM
from agentkit.store import TrajectoryStore
from agentkit.runtime import GraphAgent, run_tasks
from agentkit.tasks import get_suite
from agentkit.learn.credit import MCConfig, first_error_by_values, mc_values_batch, output_step
from agentkit.learn.rollouts import graph_mc_values, needs_graph_rollouts

HEADERS = ["run", "calls in run", "answering call", "node values", "graph values", "first error (node)",
           "first error (graph)"]


def graph_named(name: str) -> Graph:
    """A prebuilt graph, or plan_solve_review (bench/plan_solve_review.py)."""
    return load_graph(Path(__file__).with_name("plan_solve_review.py") if name == "plan_solve_review" else name)


def fmt(values):
    return "-" if values is None else " ".join(f"{v:.2f}" for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graph", default="plan_solve_review",
                        help="a prebuilt graph, or plan_solve_review: plan -> solve -> review (critic) -> check")
    parser.add_argument("--level", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4, help="K rollouts per prefix")
    parser.add_argument("--high", type=float, default=0.25)
    parser.add_argument("--low", type=float, default=0.0)
    parser.add_argument("--out", default="graph_credit")
    args = parser.parse_args()

    suite = get_suite("arithmetic")
    tasks = suite.tasks("train", args.tasks, level=args.level, seed=11)
    by_id = {t.id: t for t in tasks}
    mc = MCConfig(samples=args.samples, high=args.high, low=args.low, max_tokens=96)
    with TransformersLLM("gemma-3-270m") as llm, TrajectoryStore(":memory:") as store:
        report = run_tasks(llm, suite, tasks, store, agent=GraphAgent(graph_named(args.graph), max_tokens=96),
                           concurrency=len(tasks))
        runs = [store.get_run(r.run_id) for r in report.results if r.status == "failure"]
        items = [(run, output_step(run.steps), by_id[run.task_id]) for run in runs]
        items = [(run, step, task) for run, step, task in items if step is not None and needs_graph_rollouts(run, step)]
        start = time.perf_counter()
        node = mc_values_batch(llm, suite, [(task, step.prompt_ids, step.completion_ids) for _, step, task in items], mc)
        node_s = time.perf_counter() - start
        rollouts = TrajectoryStore(":memory:")
        start = time.perf_counter()
        graph = graph_mc_values(llm, suite, items, mc, store=store, rollout_store=rollouts)
        graph_s = time.perf_counter() - start
        rollout_runs = rollouts.list_runs(limit=None)
        rollout_calls = sum(len(rollouts.steps(r.id)) for r in rollout_runs)
        replayed = sum(1 for r in rollout_runs for s in rollouts.steps(r.id) if s.prompt_ids and s.latency_s == 0)
        rows = []
        for (run, step, _), nv, gv in zip(items, node, graph):
            rows.append([run.id, len(run.steps), f"{step.node} (step {step.id})", fmt(nv), fmt(gv),
                         first_error_by_values(nv, mc.high, mc.low) if nv else "-",
                         first_error_by_values(gv, mc.high, mc.low) if gv else "-"])
        differ = sum(1 for nv, gv in zip(node, graph) if gv is not None and nv != gv)
        diverged = sum(r.status == "error" for r in rollout_runs)
    body = (
        f"Graph {args.graph} on {args.tasks} level-{args.level} arithmetic training tasks, greedy, gemma-3-270m; "
        f"{len(runs)} failed runs, {len(items)} of them with a model call after the answering call. "
        f"K = {args.samples} rollouts per prefix at T = {mc.temperature}; first error: V before >= {mc.high} and "
        f"V after <= {mc.low}. V[0] is before step 1, V[j] after step j.\n\n"
        + markdown_table(HEADERS, rows)
        + f"\n\n- node values (continue the call's output): {node_s:.1f} s.\n"
        f"- graph values (replay, force the prefix, run the rest of the graph): {graph_s:.1f} s, {len(rollout_runs)} "
        f"rollouts with {rollout_calls} recorded steps ({replayed} of them replayed from the record at no model cost), "
        f"{diverged} diverged.\n- the two value vectors differ for {differ} of {len(items)} runs.\n"
    )
    print(body)
    print("wrote", write_result(args.out, "Monte-Carlo credit through the rest of a graph", body))


if __name__ == "__main__":
    main()
