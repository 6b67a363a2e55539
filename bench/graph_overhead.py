"""Framework overhead of an agentkit graph against the same graph written directly in LangGraph.

A zero-latency scripted backend, so only framework time is measured. Both sides run the
same topology — plan -> solve <-> review (three revisions) -> check, 10 node steps per run:
plan, 4 x (solve, review), check — and do the same work per node: build the prompt (the
suite's few-shot prompt for solve), call ``llm.generate``, parse the reply, and record one
step row (token ids, logprobs, parsed output) in an in-memory trajectory store; the check
node runs the suite's checker and records a step. The direct version is what a careful
user would write by hand with StateGraph; agentkit adds spec validation, role templates,
retry plumbing, budgets, the graph-place columns and the GraphAgent wrapper.

    python bench/graph_overhead.py                 # 300 runs each, writes bench/results/graph_overhead.md
    python bench/graph_overhead.py --runs 30       # smoke
"""

from __future__ import annotations

import argparse
import operator
import re
import statistics
import time
from dataclasses import dataclass
from typing import Annotated, Optional, TypedDict

from _common import markdown_table, write_result
from agentkit.graph import Graph
from agentkit.llm.base import GenerationRequest
from agentkit.llm.scripted import ScriptedLLM
from agentkit.store import TrajectoryStore
from agentkit.runtime import Budget, GraphAgent, Recorder
from agentkit.tasks import get_suite

REVISIONS = 3
PLAN = "1. Do the first operation.\n2. Do the second.\n\n"
REVIEW = "Score: 5/10\nCritique: recheck step 2\nVerdict: revise\n\n"


def scripted(task) -> ScriptedLLM:
    def reply(prompt: str, request: GenerationRequest) -> str:
        if prompt.endswith("Plan:\n"):
            return PLAN
        if prompt.endswith("Review:\n"):
            return REVIEW
        return task.solution + "\n"

    return ScriptedLLM(reply)


def agentkit_graph() -> Graph:
    return (
        Graph("overhead")
        .add_node("plan", role="planner")
        .add_node("solve", role="solver")
        .add_node("review", role="critic", max_revisions=REVISIONS)
        .add_node("check", role="verifier")
        .add_edge("plan", "solve").add_edge("solve", "review")
        .add_edge("review", "solve", when="revise").add_edge("review", "check", when="accept")
        .set_entry("plan")
    )


# --- the same graph, directly in LangGraph -------------------------------------------------------

_ANSWER = re.compile(r"^answer:(.*)$", re.IGNORECASE | re.MULTILINE)
_VERDICT = re.compile(r"^verdict:\s*(\w+)", re.IGNORECASE | re.MULTILINE)


class State(TypedDict, total=False):
    plan: Optional[str]
    draft: Optional[str]
    critique: Optional[str]
    verdict: Optional[str]
    revisions: int
    last: Optional[int]
    trace: Annotated[list, operator.add]


@dataclass
class Context:
    llm: object
    store: object
    suite: object
    task: object
    run_id: int


def direct_app():
    """Compiled once; each run passes its backend, store, task and run id as the context."""
    from langgraph.graph import END, START, StateGraph
    from langgraph.runtime import get_runtime

    def call(node: str, role: str, prompt: str, stop, parse, parent):
        ctx = get_runtime(Context).context
        (c,) = ctx.llm.generate([GenerationRequest(prompt, max_tokens=160, stop=stop)])[0]
        step = ctx.store.add_step(ctx.run_id, node=node, role=role, parent_step_id=parent, prompt_text=prompt,
                              prompt_ids=c.prompt_ids, completion_text=c.text, completion_ids=c.token_ids,
                              logprobs=c.logprobs, finish_reason=c.finish_reason, parsed=parse(c.text),
                              latency_s=c.latency_s)
        return c.text, step

    def plan(state):
        task = get_runtime(Context).context.task
        prompt = f"Write a short plan.\n\nQuestion: {task.question}\nPlan:\n"
        text, step = call("plan", "planner", prompt, ("\n\n",), lambda t: {"plan": t.splitlines()}, state.get("last"))
        return {"plan": text, "last": step, "trace": [step]}

    def solve(state):
        ctx = get_runtime(Context).context
        suite, task = ctx.suite, ctx.task
        head = suite.prompt(task, shots=3)[: -len("Solution:\n")]
        critique = f"Previous solution:\n{state['draft']}\nCritique: {state['critique']}\n" if state.get("critique") else ""
        prompt = f"{head}Plan:\n{state['plan']}\n{critique}Solution:\n"
        parse = lambda t: {"answer": (_ANSWER.findall(t) or [None])[-1], "steps": suite.check_steps(task, t)}  # noqa: E731
        text, step = call("solve", "solver", prompt, suite.stop, parse, state.get("last"))
        return {"draft": text, "critique": None, "last": step, "trace": [step]}

    def review(state):
        task = get_runtime(Context).context.task
        prompt = f"Check the solution.\n\nQuestion: {task.question}\nSolution:\n{state['draft']}\nReview:\n"
        text, step = call("review", "critic", prompt, ("\n\n",), lambda t: {"verdict": _VERDICT.findall(t)[-1]},
                          state.get("last"))
        revise = _VERDICT.findall(text)[-1] == "revise" and state["revisions"] < REVISIONS
        return {"verdict": "revise" if revise else "accept", "critique": text if revise else None,
                "revisions": state["revisions"] + revise, "last": step, "trace": [step]}

    def check(state):
        ctx = get_runtime(Context).context
        reward = ctx.suite.verify(ctx.task, state["draft"])
        step = ctx.store.add_step(ctx.run_id, node="check", role="verifier", parent_step_id=state.get("last"),
                              parsed={"reward": reward})
        return {"last": step, "trace": [step]}

    builder = StateGraph(State, context_schema=Context)
    for name, fn in (("plan", plan), ("solve", solve), ("review", review), ("check", check)):
        builder.add_node(name, fn)
    builder.add_edge(START, "plan")
    builder.add_edge("plan", "solve")
    builder.add_edge("solve", "review")
    builder.add_conditional_edges("review", lambda s: s["verdict"], {"revise": "solve", "accept": "check"})
    builder.add_edge("check", END)
    return builder.compile()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--out", default="graph_overhead")
    args = parser.parse_args()

    suite = get_suite("arithmetic")
    tasks = suite.tasks("test", args.runs, level=2)
    agent = GraphAgent(agentkit_graph())
    direct = direct_app()
    budget = Budget(max_calls=None, max_tokens=None)
    times = {"agentkit": [], "langgraph": []}
    with TrajectoryStore(":memory:") as store:
        # warm-up: imports, compilation, the suite's shot cache
        for mode in ("agentkit", "langgraph"):
            one_run(mode, agent, direct, suite, tasks[0], store, budget)
        for task in tasks:  # interleaved, so drift in machine speed hits both alike
            for mode in ("agentkit", "langgraph"):
                times[mode].append(one_run(mode, agent, direct, suite, task, store, budget))
        steps = {m: len(store.steps(store.list_runs(1, graph=m)[0].id)) for m in ("agentkit", "langgraph")}
    a, d = statistics.mean(times["agentkit"]), statistics.mean(times["langgraph"])
    rows = [
        ["agentkit (GraphAgent, roles, recorder)", steps["agentkit"], a * 1e3, statistics.median(times["agentkit"]) * 1e3],
        ["LangGraph written directly", steps["langgraph"], d * 1e3, statistics.median(times["langgraph"]) * 1e3],
    ]
    headers = ["implementation", "steps/run", "mean ms/run", "median ms/run"]
    body = (
        f"{args.runs} runs each of plan -> solve <-> review (x{REVISIONS + 1}) -> check on arithmetic level 2, "
        "zero-latency scripted backend, every step recorded in an in-memory store, no checkpointer.\n\n"
        + markdown_table(headers, rows)
        + f"\n\nRatio agentkit / direct LangGraph: **{a / d:.2f}x** (target <= 1.5x)."
    )
    print(body)
    print("wrote", write_result(args.out, "Graph overhead: agentkit vs direct LangGraph", body))


def one_run(mode: str, agent: GraphAgent, direct, suite, task, store, budget) -> float:
    llm = scripted(task)
    start = time.perf_counter()
    run_id = store.start_run(mode, suite=suite.name, task_id=task.id)
    if mode == "agentkit":
        agent(task, suite, Recorder(llm, store, run_id, budget=budget))
    else:
        direct.invoke({"plan": None, "draft": None, "critique": None, "revisions": 0, "last": None, "trace": []},
                      context=Context(llm, store, suite, task, run_id))
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
