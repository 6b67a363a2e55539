"""Credit assignment: split a node output into its "Step k:" sub-steps, map them onto
the exact token ids, and find the first wrong step of a failed run.

The first wrong step is found, in this order (DESIGN.md, "Credit assignment"):

1. ``checker``: the task's step checker (``suite.check_steps``), exact and free;
2. ``mc``: Monte-Carlo values. V(prefix) = share of K continuations from the node prompt
   + steps 1..j that end in a verified answer — continuing the node's output, or, when
   later model calls of a graph run decide the answer, running the rest of the graph
   (``agentkit.train.rollout``); step j is the first error when V drops across it from
   at least ``high`` to at most ``low``;
3. ``critic``: the first step a critic node flagged in a "revise" verdict.

Only tokens are trusted: prefixes are cut from the recorded completion ids and fed back
as ids, so nothing is re-tokenized. Text is used only to find where the steps are.
"""

from __future__ import annotations

import hashlib
import re
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple, Sequence

from agentkit.llm.base import LLM, GenerationRequest
from agentkit.tasks import Suite, Task

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

# The line pattern of agentkit.tasks.split_steps, with positions: content after "Step k:".
_STEP_LINE = re.compile(r"^[ \t]*step[ \t]*\d+[ \t]*:(.*)$", re.IGNORECASE | re.MULTILINE)
_STEP_REF = re.compile(r"\bstep[ \t]*(\d+)", re.IGNORECASE)


# --- where the steps are ------------------------------------------------------------------


class StepSpan(NamedTuple):
    """Character positions of one "Step k: ..." line in a text."""

    start: int
    """First character of the line."""
    body: int
    """First character after "Step k:" (where a rectification continues)."""
    end: int
    """One past the line's newline (the text's end for a last line without one)."""


def step_char_spans(text: str) -> list[StepSpan]:
    """One span per line that ``split_steps`` reads as a step, in order."""
    spans = []
    for m in _STEP_LINE.finditer(text):
        end = m.end() + 1 if m.end() < len(text) else m.end()  # take the "\n"
        spans.append(StepSpan(m.start(), m.start(1), end))
    return spans


class TokenText:
    """The decoded text of token ids, and which tokens cover which characters.

    ``covered(n)`` is how many characters of ``text`` the first n tokens spell: the length
    of the common prefix of ``decode(ids[:n])`` and ``decode(ids)``. Taking the common
    prefix, not the length, makes it robust to a multi-byte character split over byte
    tokens (its prefix decodes to U+FFFD and covers nothing yet), to tokens that spell
    several characters, and to special tokens that decode to nothing.

    ``boundary(c)`` is the token index where character c falls: the fewest tokens that
    spell text[:c]. A token that straddles c (e.g. ".\\nSt") stays on the left side;
    tokens that spell nothing right after it (the first bytes of a split character, EOS)
    go to the right. So ``ids[:boundary(c)] + ids[boundary(c):]`` is always the original,
    and consecutive steps get contiguous, disjoint token spans.

    Each ``covered`` costs one decode (cached); ``boundary`` bisects, so a few boundaries
    cost O(log T) decodes each — cheap for remote backends whose decode is a request."""

    def __init__(self, llm: Any, token_ids: Sequence[int]):
        self.ids = list(token_ids)
        self._decode = llm.decode
        self.text = self._decode(self.ids) if self.ids else ""
        self._covered: dict[int, int] = {0: 0, len(self.ids): len(self.text)}

    def covered(self, n: int) -> int:
        if n not in self._covered:
            prefix = self._decode(self.ids[:n])
            common = 0
            for a, b in zip(prefix, self.text):
                if a != b:
                    break
                common += 1
            self._covered[n] = common
        return self._covered[n]

    def boundary(self, c: int) -> int:
        if c <= 0:
            return 0
        c = min(c, len(self.text))
        return bisect_left(range(len(self.ids) + 1), c, key=self.covered)

    def text_of(self, start: int, end: int) -> str:
        """The characters spelled by ids[start:end]."""
        return self.text[self.covered(start):self.covered(end)]


def step_token_spans(llm: Any, completion_ids: Sequence[int]) -> list[tuple[int, int]]:
    """Token spans [start, end) of each "Step k:" line of a completion, the line's newline
    included, found by decoding (see ``TokenText`` for how boundaries inside a token fall).
    ``llm`` needs only ``decode``."""
    tt = TokenText(llm, completion_ids)
    return [(tt.boundary(s.start), tt.boundary(s.end)) for s in step_char_spans(tt.text)]


def token_step_index(spans: Sequence[tuple[int, int]], length: int) -> list[int]:
    """For each of ``length`` tokens, the index of the step span holding it, or -1:
    the ``step_index`` input of ``losses.step_advantages``."""
    index = [-1] * length
    for k, (start, end) in enumerate(spans):
        for t in range(start, min(end, length)):
            index[t] = k
    return index


# --- Monte-Carlo values -------------------------------------------------------------------


@dataclass(frozen=True)
class MCConfig:
    """Monte-Carlo step values: how many rollouts per prefix and how to read them.

    At K = 8 the thresholds read "at least 4 of 8 rollouts succeeded before the step, none
    after it". A weak policy rarely reaches 4 of 8 from any prefix: lower ``high`` there
    (RESEARCH.md: 5% success for the base model), or use a step checker."""

    samples: int = field(default=8, metadata={"help": "K rollouts per prefix: one request with n=K per prefix."})
    high: float = field(default=0.5, metadata={"help": "V before the wrong step is at least this (still on track)."})
    low: float = field(default=0.1, metadata={"help": "V after the wrong step is at most this (lost)."})
    temperature: float = field(default=0.8, metadata={"help": "Rollout sampling temperature (Step-DPO's)."})
    top_p: float = field(default=0.95, metadata={"help": "Rollout nucleus cut."})
    top_k: int = field(default=64, metadata={"help": "Rollouts sample among the top-k tokens (see StepDPOConfig)."})
    max_tokens: int = field(default=160, metadata={"help": "Longest rollout."})
    seed: int | None = field(default=0, metadata={"help": "Base seed (same seed, same rollouts); None: fresh."})


def derive_seed(base: int | None, *parts: Any) -> int | None:
    """A request seed from a base seed and what the request is for (None stays None).
    32 bits: backends derive per-sample seeds from it (seed * 1_000_003 + i) in 64 bits."""
    if base is None:
        return None
    digest = hashlib.sha1(repr((base, *parts)).encode()).hexdigest()
    return int(digest[:8], 16)


def mc_values_batch(
    llm: LLM,
    suite: Suite,
    items: Sequence[tuple[Task, Sequence[int], Sequence[int]]],
    config: MCConfig = MCConfig(),
    *,
    adapter: str | None = None,
) -> list[list[float]]:
    """Monte-Carlo values of every step prefix of several outputs, in ONE generate call.

    ``items``: (task, prompt_ids, completion_ids) per output. For an output with S steps
    the result has S + 1 values: V[0] from the prompt with the completion's text before
    step 1 (the bare prompt when it has no steps), V[j] from the prompt + steps 1..j
    (through step j's newline). Each prefix is one request with n = K, so a batching
    backend samples them all together, sharing the prompt's KV cache. A continuation
    succeeds when ``suite.verify`` of the prefix's text + the continuation gives reward 1.
    """
    requests: list[GenerationRequest] = []
    owners: list[tuple[int, str]] = []  # (item, prefix text) per request
    for i, (task, prompt_ids, completion_ids) in enumerate(items):
        tt = TokenText(llm, completion_ids)
        spans = step_char_spans(tt.text)
        cuts = [tt.boundary(spans[0].start) if spans else 0]
        cuts += [tt.boundary(s.end) for s in spans]
        for j, cut in enumerate(cuts):
            requests.append(GenerationRequest(
                list(prompt_ids) + tt.ids[:cut], n=config.samples, temperature=config.temperature,
                top_p=config.top_p, top_k=config.top_k, max_tokens=config.max_tokens, stop=suite.stop,
                seed=derive_seed(config.seed, "mc", task.id, tuple(completion_ids), j), adapter=adapter,
            ))
            owners.append((i, tt.text_of(0, cut)))
    results = llm.generate(requests) if requests else []
    values: list[list[float]] = [[] for _ in items]
    for (i, prefix_text), completions in zip(owners, results):
        task = items[i][0]
        wins = sum(suite.verify(task, prefix_text + c.text) >= 1.0 for c in completions)
        values[i].append(wins / len(completions))
    return values


def mc_values(
    llm: LLM,
    suite: Suite,
    task: Task,
    prompt_ids: Sequence[int],
    completion_ids: Sequence[int],
    config: MCConfig = MCConfig(),
    *,
    adapter: str | None = None,
) -> list[float]:
    """V[0..S] for one output (see ``mc_values_batch``)."""
    return mc_values_batch(llm, suite, [(task, prompt_ids, completion_ids)], config, adapter=adapter)[0]


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


def first_error_by_values(values: Sequence[float], high: float = 0.5, low: float = 0.1) -> int | None:
    """The first step j (0-based) with V[j] >= high and V[j + 1] <= low, where V[j] is the
    value before step j + 1 and V[j + 1] after it; None if the values never drop like that.

    Both thresholds, not just "V falls": a step taken from an already hopeless prefix is not
    the error, and a drop from 0.6 to 0.4 is noise at K = 8."""
    for j in range(len(values) - 1):
        if values[j] >= high and values[j + 1] <= low:
            return j
    return None


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


def output_step(steps: Sequence[Any]) -> Any | None:
    """The model call whose output carries the run's answer: the last solver call with
    "Step k:" lines, else the last call with any. None if no call wrote steps."""
    solvers = [s for s in steps if s.role == "solver" and _has_steps(s)]
    if solvers:
        return solvers[-1]
    return next((s for s in reversed(steps) if s.role != "critic" and _has_steps(s)), None)


def locate_errors(
    llm: LLM,
    suite: Suite,
    tasks: Mapping[str, Task],
    store: Any,
    run_ids: Sequence[int],
    *,
    method: str = "auto",
    mc: MCConfig = MCConfig(),
    adapter: str | None = None,
    rollout_store: Any = None,
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
        from agentkit.train.rollout import graph_mc_values, needs_graph_rollouts

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
