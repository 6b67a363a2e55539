"""The node roles. Each turns the graph state into a state update, making its model calls
through the run's Recorder so that every attempt is a recorded step with its place in the
graph (node, role, attempt, parent step, revision count, route).

State keys a role reads and writes (see compile.GraphState): ``question``; ``plan`` (the
planner's numbered plan); ``draft`` (the current answer: node, text, answer, step_id,
mean_logprob); ``critique`` (a pending revise request); ``route`` (the label a router or
critic chose); ``reward``; ``last_step`` (the step id that produced the current state,
the parent of the next node's steps); ``visits``, ``revisions``, ``samples``, ``trace``.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from agentkit.errors import GraphSpecError
from agentkit.graph.parsers import (
    CriticOutput,
    MalformedOutput,
    SelectorOutput,
    answer_key,
    choose_label,
    parse_plan,
    parse_review,
    parse_solution,
)
from agentkit.graph.context import RunContext
from agentkit.graph.search import record_tree, search
from agentkit.graph.spec import NodeSpec
from agentkit.graph.templates import render, role_prompts
from agentkit.graph.tools import ToolError, get_tool
from agentkit.llm.base import GenerationRequest, mean_logprob

__all__ = ["ROLE_RUNNERS", "run_node"]

FAN_OUT_TEMPERATURE = 0.8


# --- shared ---------------------------------------------------------------------------------


def _place(state: dict) -> dict[str, Any]:
    return {"parent_step_id": state.get("last_step"), "revision": sum((state.get("revisions") or {}).values())}


def _visits(node: NodeSpec, state: dict) -> int:
    return (state.get("visits") or {}).get(node.name, 0) + 1


def _seed(ctx: RunContext, node: NodeSpec, visit: int, sample: int) -> int:
    key = f"{ctx.seed or 0}/{getattr(ctx.task, 'id', ctx.question)}/{node.name}/{visit}/{sample}"
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16)


def _max_tokens(node: NodeSpec, ctx: RunContext, default: int) -> int:
    value = node.max_tokens or default
    return min(value, ctx.max_tokens) if ctx.max_tokens else value


def _draft(state: dict) -> dict:
    return state.get("draft") or {}


def _show_memory(node: NodeSpec, ctx: RunContext, prompt: str) -> tuple[str, list[int]]:
    """``prompt`` with the node's library section before the question, and the ids it
    shows (unchanged and [] without memory)."""
    if node.memory is None or ctx.library is None:
        return prompt, []
    return ctx.library.show(prompt, ctx.question, family=ctx.family, kinds=node.memory.kinds_for(node.role),
                            k=node.memory.k, role=node.role)


def generate_with_retry(
    node: NodeSpec,
    ctx: RunContext,
    state: dict,
    prompt: str,
    parse: Callable[[str], Any],
    *,
    prompts: dict,
    stop: tuple[str, ...],
    max_tokens: int,
    temperature: float = 0.0,
    seed: int | None = None,
    parsed_extra: Callable[[str], dict] | None = None,
    route: Callable[[Any], str | None] | None = None,
    cue: str = "",
    memory_ids: list[int] | None = None,
    fallback: str | None = None,
) -> tuple[Any, Any, int, list[int]]:
    """Generate, parse, and on malformed output retry up to ``node.max_retries`` times with a
    prompt that tells the model what was wrong. Every attempt is recorded (attempt 0, 1,
    ...; each retry's parent is the attempt before it). Returns (output or None, the last
    completion, its step id, every step id).

    ``fallback``: what the node does instead when no attempt parses, recorded on the last
    step as ``parsed["fallback"]`` so that the per-node tables count it (never silent)."""
    place = _place(state)
    parent = place["parent_step_id"]
    step_ids: list[int] = []
    for attempt in range(node.max_retries + 1):
        request = GenerationRequest(prompt, temperature=temperature, max_tokens=max_tokens, stop=stop,
                                    adapter=ctx.adapter, seed=seed)
        (completion,) = ctx.recorder.generate(request)
        try:
            output, error = parse(completion.text), None
            parsed = output.model_dump()
        except MalformedOutput as exc:
            output, error = None, str(exc)
            parsed = {"error": error}
        except (ValueError, ValidationError) as exc:  # a hostile reply that slipped past the parser
            output, error = None, f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            parsed = {"error": error}
        if parsed_extra is not None:
            parsed.update(parsed_extra(completion.text))
        last = attempt == node.max_retries
        if output is None and last and fallback:
            parsed["fallback"] = fallback
        step_id = ctx.recorder.record(
            node=node.name, role=node.role, completion=completion, prompt_text=prompt, attempt=attempt,
            parent_step_id=parent, parsed=parsed, revision=place["revision"],
            route=route(output) if route is not None and (output is not None or last) else None,
            memory_ids=memory_ids or None,
        )
        step_ids.append(step_id)
        if output is not None or last:
            return output, completion, step_id, step_ids
        prompt = render(prompts["retry"], f"node '{node.name}' retry prompt", prompt=prompt, previous=completion.text,
                        error=error, instruction=prompts["instruction"], cue=cue)
        parent = step_id
    raise AssertionError("unreachable")


# --- the roles ------------------------------------------------------------------------------


def run_planner(node: NodeSpec, state: dict, ctx: RunContext) -> dict:
    prompts = role_prompts("planner")
    prompt = render(node.prompt or prompts["template"], f"node '{node.name}' prompt", question=ctx.question)
    prompt, memory_ids = _show_memory(node, ctx, prompt)
    output, _, step_id, steps = generate_with_retry(
        node, ctx, state, prompt, parse_plan, prompts=prompts, stop=tuple(prompts["stop"]),
        max_tokens=_max_tokens(node, ctx, prompts["max_tokens"]), temperature=node.temperature or 0.0,
        memory_ids=memory_ids, fallback="no plan parsed: the nodes after it ran without one",
    )
    return {"plan": output.text() if output else None, "last_step": step_id, "trace": steps,
            "visits": {node.name: _visits(node, state)}}


def solver_prompt(node: NodeSpec, state: dict, ctx: RunContext) -> tuple[str, tuple[str, ...], list[int]]:
    """The solver's prompt, stop strings and the library items it shows: the suite's
    few-shot prompt when there is a suite (plan and critique sections go between the
    question and the "Solution:" cue). A memory section goes just before the question."""
    prompts = role_prompts("solver")
    where = f"node '{node.name}' prompt"
    cue = prompts["cue"]
    if ctx.suite is not None and ctx.task is not None:
        context = ctx.suite.prompt(ctx.task, shots=ctx.shots if node.shots is None else node.shots)
        if context.endswith(cue):
            context = context[: -len(cue)]
        stop = tuple(ctx.suite.stop)
    else:
        context = render(prompts["context"], where, question=ctx.question)
        stop = tuple(prompts["stop"])
    context, memory_ids = _show_memory(node, ctx, context)
    plan = state.get("plan")
    critique = state.get("critique")
    values = {
        "context": context, "question": ctx.question, "cue": cue,
        "plan_section": render(prompts["plan_section"], where, plan=plan) if plan else "",
        "revise_section": render(prompts["revise_section"], where, previous=critique["previous"].strip(),
                                 critique=critique["text"] or "(none given)") if critique else "",
    }
    return render(node.prompt or prompts["template"], where, **values), stop, memory_ids


def run_solver(node: NodeSpec, state: dict, ctx: RunContext) -> dict:
    prompts = role_prompts("solver")
    prompt, stop, memory_ids = solver_prompt(node, state, ctx)
    visit = _visits(node, state)
    if node.search is not None:
        return _search_solver(node, state, ctx, prompt, visit)
    sample = state.get("sample") or 0
    temperature = node.temperature if node.temperature is not None else ctx.temperature
    if node.fan_out and node.temperature is None and temperature == 0:
        temperature = FAN_OUT_TEMPERATURE
    seed = _seed(ctx, node, visit, sample) if temperature > 0 else None
    suite, task = ctx.suite, ctx.task
    answer_of = suite.parse_answer if suite is not None else None

    def parse(text: str) -> Any:
        return parse_solution(text, answer_of) if answer_of else parse_solution(text)

    def checks(text: str) -> dict:
        # recorded like the plain solve agent's steps: the suite's judgement of each "Step k:" line
        return {"steps": suite.check_steps(task, text) if suite is not None and task is not None else None}

    output, completion, step_id, steps = generate_with_retry(
        node, ctx, state, prompt, parse, prompts=prompts, stop=stop,
        max_tokens=_max_tokens(node, ctx, prompts["max_tokens"]), temperature=temperature, seed=seed,
        parsed_extra=checks, cue=prompts["cue"], memory_ids=memory_ids,
    )
    draft = {"node": node.name, "text": completion.text, "answer": output.answer if output else None,
             "step_id": step_id, "mean_logprob": mean_logprob(completion.logprobs)}
    update: dict[str, Any] = {"trace": steps, "visits": {node.name: visit}}
    if node.fan_out:
        # parallel branches write only to reducer channels; the selector sets the draft
        update["samples"] = [{**draft, "sample": sample, "round": visit}]
    else:
        update.update(draft=draft, last_step=step_id, critique=None)
    return update


def _search_solver(node: NodeSpec, state: dict, ctx: RunContext, prompt: str, visit: int) -> dict:
    """The solver's call as a step-level search from the prompt it renders: every tree node
    is recorded as a step of this node (the tree's first lines are children of the step
    before the node), and the draft is the path the search chose, ending at its step."""
    if ctx.suite is None or ctx.task is None:
        raise GraphSpecError(f"node '{node.name}' searches under the task's verifier; run the graph on a suite's "
                             "tasks (run_tasks), or drop search=")
    tree = search(ctx.llm, ctx.suite, ctx.task, prompt, node.strategy, adapter=ctx.adapter,
                  seed=_seed(ctx, node, visit, 0))
    tree.nodes[0].step_id = _place(state)["parent_step_id"]  # the root is the prompt: where the graph stands
    steps = record_tree(ctx.recorder, tree, node=node.name, role=node.role)
    path = tree.path(tree.answer)  # empty when the search sampled nothing
    last = path[-1].step_id if path else state.get("last_step")
    text = tree.text()
    draft = {"node": node.name, "text": text, "answer": ctx.suite.parse_answer(text), "step_id": last,
             "mean_logprob": mean_logprob([lp for n in path for lp in n.logprobs])}
    return {"draft": draft, "last_step": last, "critique": None, "trace": list(steps.values()),
            "visits": {node.name: visit}}


def run_critic(node: NodeSpec, state: dict, ctx: RunContext) -> dict:
    prompts = role_prompts("critic")
    draft = _draft(state)
    solution = (draft.get("text") or "").strip() or "(no solution)"
    prompt = render(node.prompt or prompts["template"], f"node '{node.name}' prompt", question=ctx.question,
                    solution=solution)
    prompt, memory_ids = _show_memory(node, ctx, prompt)
    used = (state.get("revisions") or {}).get(node.name, 0)
    budget_left = node.max_revisions is None or used < node.max_revisions

    def route(output: CriticOutput | None) -> str:
        # after max_revisions revisions (or an unreadable review) the critic lets the answer through
        return "revise" if output is not None and output.verdict == "revise" and budget_left else "accept"

    output, _, step_id, steps = generate_with_retry(
        node, ctx, state, prompt, parse_review, prompts=prompts, stop=tuple(prompts["stop"]),
        max_tokens=_max_tokens(node, ctx, prompts["max_tokens"]), temperature=node.temperature or 0.0, route=route,
        memory_ids=memory_ids, fallback="no verdict parsed: routed to accept",
    )
    label = route(output)
    update: dict[str, Any] = {"route": label, "last_step": step_id, "trace": steps,
                              "visits": {node.name: _visits(node, state)}, "critique": None}
    if label == "revise":
        update["revisions"] = {node.name: used + 1}
        update["critique"] = {"node": node.name, "text": output.critique, "score": output.score,
                              "previous": draft.get("text") or ""}
    return update


def score_labels(ctx: RunContext, prompt: str, labels: list[str]) -> dict[str, tuple[list[int], list[int], list[float]]]:
    """Each label scored as the continuation " <label>" of ``prompt``:
    label -> (prompt ids, label ids, per-token logprobs). Where the tokenizer merges the
    label into the prompt's last token, the prompt ids are the shared prefix."""
    llm = ctx.llm
    base = llm.tokenize(prompt)
    out = {}
    for label in labels:
        full = llm.tokenize(prompt + " " + label)
        k = 0
        while k < min(len(base), len(full) - 1) and base[k] == full[k]:
            k += 1
        prompt_ids, label_ids = full[:k], full[k:]
        out[label] = (prompt_ids, label_ids, list(llm.score(prompt_ids, label_ids, adapter=ctx.adapter)))
    return out


def _record_choice(node: NodeSpec, ctx: RunContext, state: dict, prompt: str, labels: list[str],
                   parsed_of: Callable[[Any], dict], route: bool, prior: dict[str, float] | None = None,
                   memory_ids: list[int] | None = None) -> tuple[Any, int]:
    ctx.recorder.reserve(1)  # one model call, however many labels it scores
    start = time.perf_counter()
    scored = score_labels(ctx, prompt, labels)
    prior = prior or {}
    totals = {label: sum(lps) + prior.get(label, 0.0) for label, (_, _, lps) in scored.items()}
    choice = choose_label(totals)
    prompt_ids, label_ids, logprobs = scored[choice.route]
    parsed = parsed_of(choice)
    if not any(-math.inf < total < math.inf for total in totals.values()):
        parsed["fallback"] = f"no label could be scored: took '{choice.route}', the first"
    place = _place(state)
    step_id = ctx.recorder.record(
        node=node.name, role=node.role, prompt_text=prompt, prompt_ids=prompt_ids, completion_ids=label_ids,
        completion_text=" " + choice.route, logprobs=logprobs, finish_reason="stop",
        latency_s=time.perf_counter() - start, parsed=parsed, route=choice.route if route else None,
        memory_ids=memory_ids or None, **place,
    )
    return choice, step_id


def run_router(node: NodeSpec, state: dict, ctx: RunContext) -> dict:
    prompts = role_prompts("router")
    where = f"node '{node.name}' prompt"
    labels = list(node.labels or {})
    options = "\n".join(
        render(prompts["option"], where, label=label, description=description or label).rstrip()
        for label, description in (node.labels or {}).items()
    )
    prompt = render(node.prompt or prompts["template"], where, question=ctx.question, options=options)
    prior, memory_ids = {}, []
    if node.memory is not None and ctx.library is not None:
        # numbers only: a success-rate prior per declared label, never text in the prompt
        prior, memory_ids = ctx.library.route_prior(ctx.family, node.name, labels, node.memory.weight)

    def parsed(choice: Any) -> dict:
        return {**choice.model_dump(), **({"prior": prior} if prior else {})}

    choice, step_id = _record_choice(node, ctx, state, prompt, labels, parsed, route=True, prior=prior,
                                     memory_ids=memory_ids)
    return {"route": choice.route, "last_step": step_id, "trace": [step_id], "visits": {node.name: _visits(node, state)}}


def run_verifier(node: NodeSpec, state: dict, ctx: RunContext) -> dict:
    draft = _draft(state)
    text = draft.get("text") or ""
    if ctx.suite is not None and ctx.task is not None and not node.judge:
        # the task's own checker: no model call, but a step all the same, so accounting shows it
        start = time.perf_counter()
        reward = float(ctx.suite.verify(ctx.task, text))
        step_id = ctx.recorder.record(
            node=node.name, role=node.role, parsed={"reward": reward, "checker": ctx.suite.name},
            latency_s=time.perf_counter() - start, **_place(state),
        )
    else:
        prompts = role_prompts("verifier")
        prompt = render(node.prompt or prompts["template"], f"node '{node.name}' prompt", question=ctx.question,
                        solution=text.strip() or "(no solution)")
        yes, no = prompts["labels"]
        choice, step_id = _record_choice(
            node, ctx, state, prompt, [yes, no],
            lambda c: {"reward": c.distribution[yes], "distribution": c.distribution, "judge": True}, route=False,
        )
        reward = choice.distribution[yes]
    return {"reward": reward, "last_step": step_id, "trace": [step_id], "visits": {node.name: _visits(node, state)}}


def run_tool(node: NodeSpec, state: dict, ctx: RunContext) -> dict:
    tool = get_tool(node.tool or "calculator")
    start = time.perf_counter()
    raw: dict[str, Any] = {}
    output = error = None
    try:
        raw = tool.read(ctx.question, _draft(state).get("text"))
        output = str(tool.fn(tool.input_model.model_validate(raw)))
    except ValidationError as exc:
        first = exc.errors()[0]
        error = f"invalid input {'.'.join(map(str, first['loc']))}: {first['msg']}"
    except ToolError as exc:
        error = str(exc)
    parsed = {"tool": tool.name, "input": raw, "output": output, "error": error}
    if error is not None:
        parsed["fallback"] = "the tool failed: the answer before it stands"
    step_id = ctx.recorder.record(node=node.name, role=node.role, parsed=parsed,
                                  latency_s=time.perf_counter() - start, **_place(state))
    update: dict[str, Any] = {"last_step": step_id, "trace": [step_id], "visits": {node.name: _visits(node, state)}}
    if output is not None:
        update["draft"] = {"node": node.name, "text": f"Answer: {output}", "answer": output, "step_id": step_id,
                           "mean_logprob": None}
    return update


def run_selector(node: NodeSpec, state: dict, ctx: RunContext) -> dict:
    """Majority vote over the latest round of samples' parsed answers; ties go to the
    answer whose best sample has the highest mean logprob. The gold answer is never read."""
    samples = state.get("samples") or []
    latest: dict[str, int] = {}
    for s in samples:
        latest[s["node"]] = max(latest.get(s["node"], 0), s["round"])
    pool = sorted((s for s in samples if s["round"] == latest[s["node"]]), key=lambda s: (s["node"], s["sample"]))
    start = time.perf_counter()

    def confidence(s: dict) -> float:
        return s["mean_logprob"] if s.get("mean_logprob") is not None else float("-inf")

    votes = Counter(answer_key(s["answer"]) for s in pool if answer_key(s["answer"]) is not None)
    if votes:
        top = max(votes.values())
        tied = [s for s in pool if votes.get(answer_key(s["answer"])) == top]
    else:
        tied = pool
    chosen = max(tied, key=confidence) if tied else None
    shown: dict[str, int] = {}
    for s in pool:
        if s["answer"] is not None and answer_key(s["answer"]) is not None:
            shown.setdefault(s["answer"], votes[answer_key(s["answer"])])
    index = pool.index(chosen) if chosen else -1
    parsed = SelectorOutput(answer=chosen["answer"] if chosen else None, votes=shown, chosen=index).model_dump()
    place = _place(state)
    if chosen:
        place["parent_step_id"] = chosen["step_id"]
    step_id = ctx.recorder.record(node=node.name, role=node.role, parsed=parsed,
                                  latency_s=time.perf_counter() - start, **place)
    draft = {k: chosen[k] for k in ("node", "text", "answer", "step_id", "mean_logprob")} if chosen else None
    return {"draft": draft, "last_step": step_id, "trace": [step_id], "critique": None,
            "visits": {node.name: _visits(node, state)}}


ROLE_RUNNERS: dict[str, Callable[[NodeSpec, dict, RunContext], dict]] = {
    "planner": run_planner,
    "solver": run_solver,
    "critic": run_critic,
    "router": run_router,
    "verifier": run_verifier,
    "tool": run_tool,
    "selector": run_selector,
}


def run_node(node: NodeSpec, state: dict, ctx: RunContext) -> dict:
    return ROLE_RUNNERS[node.role](node, state, ctx)
