"""Credit assignment: split a node output into its "Step k:" sub-steps, map them onto
the exact token ids, and find the first wrong step of a failed run.

The first wrong step is found, in this order (DESIGN.md, "Credit assignment"):

1. ``checker``: the task's step checker (``suite.check_steps``), exact and free;
2. ``mc``: Monte-Carlo values. V(prefix) = share of K continuations from the node prompt
   + steps 1..j that end in a verified answer — continuing the node's output, or, when
   later model calls of a graph run decide the answer, running the rest of the graph
   (``agentkit.learn.rollouts``); step j is the first error when V drops across it from
   at least ``high`` to at most ``low``;
3. ``critic``: the first step a critic node flagged in a "revise" verdict.

Only tokens are trusted: prefixes are cut from the recorded completion ids and fed back
as ids, so nothing is re-tokenized. Text is used only to find where the steps are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from agentkit.learn.rollouts import graph_mc_values, needs_graph_rollouts
from agentkit.learn.values import (MCConfig, TokenText, derive_seed, first_error_by_values, mc_values,
                                   mc_values_batch, step_token_spans)
from agentkit.llm.base import LLM
from agentkit.store.protocols import RunStore
from agentkit.tasks import Suite, Task
from agentkit.tasks.steps import StepSpan, step_char_spans
from agentkit.train.examples import token_step_index

__all__ = [
    "CREDIT_METHODS",
    "StepSpan",
    "TokenText",
    "MCConfig",
    "ErrorPoint",
    "derive_seed",
    "step_char_spans",
    "step_token_spans",
    "token_step_index",
    "mc_values",
    "mc_values_batch",
    "first_error_by_values",
    "first_error_by_critic",
    "output_step",
    "locate_errors",
]

CREDIT_METHODS = ("auto", "checker", "mc", "critic")

_STEP_REF = re.compile(r"\bstep[ \t]*(\d+)", re.IGNORECASE)


# --- the first wrong step -----------------------------------------------------------------


@dataclass
class ErrorPoint:
    """The first wrong sub-step of a failed run."""

    run_id: int
    step_id: int
    """The model call (Step row) whose output holds the wrong sub-step."""
    index: int
    """0-based: the output's "Step {index + 1}:" line."""
    method: str
    """checker, mc or critic."""
    values: list[float] | None = None
    """Monte-Carlo values V[0..S] when they were computed."""


def _step_ref(parsed: Mapping[str, Any]) -> int | None:
    """A 1-based step number from a critic's parsed output: "step"/"first_error_step"/
    "steps" fields, else the first "Step k" in its critique text."""
    for key in ("first_error_step", "step", "steps"):
        value = parsed.get(key)
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            m = _STEP_REF.search(value) or re.fullmatch(r"\s*(\d+)\s*", value)
            if m:
                return int(m.group(1))
    for key in ("critique", "feedback", "reason", "text"):
        value = parsed.get(key)
        if isinstance(value, str) and (m := _STEP_REF.search(value)):
            return int(m.group(1))
    return None


def first_error_by_critic(steps: Sequence[Any]) -> tuple[int, int] | None:
    """(step id, 0-based index) from the run's first critic call with verdict "revise" that
    names a step of the output it judged; None if no critic flagged a step.

    The judged output is the critic's parent step when recorded, else the last step with
    "Step k:" lines before the critic."""
    by_id = {s.id: s for s in steps}
    for position, step in enumerate(steps):
        parsed = step.parsed
        if step.role != "critic" or not isinstance(parsed, dict):
            continue
        if str(parsed.get("verdict", "")).strip().lower() != "revise":
            continue
        number = _step_ref(parsed)
        if number is None or number < 1:
            continue
        judged = by_id.get(step.parent_step_id)
        if judged is None:
            judged = next((s for s in reversed(steps[:position]) if s.role != "critic" and _has_steps(s)), None)
        if judged is not None and number <= len(step_char_spans(judged.completion_text or "")):
            return judged.id, number - 1
    return None


def _has_steps(step: Any) -> bool:
    return bool(step.completion_ids) and bool(step_char_spans(step.completion_text or ""))


def output_step(steps: Sequence[Any], *, with_steps: bool = True) -> Any | None:
    """The model call whose output carries the run's answer: the last solver call, else the
    last other call but a critic's. ``with_steps`` (credit: a step to blame) counts only
    calls whose output has "Step k:" lines; without, any call with output tokens (a whole
    output to pair). None if no call counts."""
    wrote = _has_steps if with_steps else (lambda s: bool(s.completion_ids))
    solvers = [s for s in steps if s.role == "solver" and wrote(s)]
    if solvers:
        return solvers[-1]
    return next((s for s in reversed(steps) if s.role != "critic" and wrote(s)), None)


def locate_errors(
    llm: LLM,
    suite: Suite,
    tasks: Mapping[str, Task],
    store: RunStore,
    run_ids: Sequence[int],
    *,
    method: str = "auto",
    mc: MCConfig = MCConfig(),
    adapter: str | None = None,
    rollout_store: RunStore | None = None,
) -> list[ErrorPoint | None]:
    """The first wrong step of each failed run, aligned with ``run_ids`` (None: not found).

    ``method``: "auto" uses the step checker when the suite has one (and trusts it: if
    every written step checks, the run failed for another reason and gets None), else
    Monte-Carlo values (when mc.samples > 0), else the critic; or force one of "checker",
    "mc", "critic". ``tasks`` maps task ids to tasks. Successful runs get None.

    Monte-Carlo values continue the output step's own text when nothing but that text
    decides the run's answer (one batched generate call for all runs); when model calls
    followed it in a graph run (a critic, a judge, a later node), each rollout replays the
    run to that step and runs the rest of the graph (``rollout.graph_mc_values``; rollouts
    are recorded in ``rollout_store`` when given). The values are saved on the step
    (``store.set_step_values``, V[0..S]).
    """
    if method not in CREDIT_METHODS:
        raise ValueError(f"credit method {method!r} is not one of {', '.join(CREDIT_METHODS)}")
    found: list[ErrorPoint | None] = [None] * len(run_ids)
    pending: list[tuple[int, Any, Any, Task]] = []  # (position, run, output step, task)
    for position, run_id in enumerate(run_ids):
        run = store.get_run(run_id, steps=True)
        if run.status != "failure":
            continue
        step = output_step(run.steps)
        task = tasks.get(run.task_id)
        if step is None or task is None:
            continue
        if method in ("auto", "checker"):
            checks = suite.check_steps(task, step.completion_text or "")
            if checks is not None:
                index = next((k for k, ok in enumerate(checks) if not ok), None)
                if index is not None and index < len(step_char_spans(step.completion_text or "")):
                    found[position] = ErrorPoint(run_id, step.id, index, "checker")
                continue
            if method == "checker":
                continue
        pending.append((position, run, step, task))

    if method in ("auto", "mc") and mc.samples > 0 and pending:
        through_graph = [needs_graph_rollouts(run, step) for _, run, step, _ in pending]
        node_items = [(task, step.prompt_ids or [], step.completion_ids)
                      for (_, _, step, task), g in zip(pending, through_graph) if not g]
        graph_items = [(run, step, task) for (_, run, step, task), g in zip(pending, through_graph) if g]
        node_values = iter(mc_values_batch(llm, suite, node_items, mc, adapter=adapter) if node_items else [])
        graph_values = iter(graph_mc_values(llm, suite, graph_items, mc, adapter=adapter, store=store,
                                            rollout_store=rollout_store) if graph_items else [])
        all_values = [next(graph_values) if g else next(node_values) for g in through_graph]
        still = []
        for (position, run, step, task), values in zip(pending, all_values):
            if values is None:  # every rollout diverged from the record
                still.append((position, run, step, task))
                continue
            store.set_step_values(step.id, values)
            index = first_error_by_values(values, mc.high, mc.low)
            if index is not None:
                found[position] = ErrorPoint(run.id, step.id, index, "mc", values)
            else:
                still.append((position, run, step, task))
        pending = still if method == "auto" else []

    if method in ("auto", "critic"):
        for position, run, _, _ in pending:
            flagged = first_error_by_critic(run.steps)
            if flagged is not None:
                found[position] = ErrorPoint(run.id, flagged[0], flagged[1], "critic")
    return found
