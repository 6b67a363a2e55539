"""Step-DPO pairs, built on-policy as the paper builds them (Lai et al. 2024), and
whole-output pairs for outcome DPO.

    sample N solutions per task ── failed runs ── first wrong step k (credit.py)
        └─ from prompt + steps 1..k-1 + "Step k:" sample M continuations
             └─ each that verifies gives a chosen step k; rejected = the original step k

Everything is batched: the N samples of all tasks are one generate call, the
rectifications of all error points another, so the transformers backend fills its
batches and shares the few-shot prompt's KV cache. Chosen and rejected ids are cut from
sampled token ids, never re-tokenized: the prefix is the recorded prompt ids plus the
recorded completion ids up to the token where "Step k:" ends (``credit.TokenText``), and
chosen ids are the continuation's own tokens through the newline that ends its first line.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from agentkit.llm.base import LLM, GenerationRequest
from agentkit.store.pairs import Pair, PairStore
from agentkit.store.protocols import RunStore
from agentkit.store.runs import StepRecord
from agentkit.tasks import Suite, Task
from agentkit.train.configs import field_of
from agentkit.learn.credit import (
    CREDIT_METHODS,
    ErrorPoint,
    MCConfig,
    TokenText,
    derive_seed,
    locate_errors,
    output_step,
    step_char_spans,
)

__all__ = [
    "StepDPOConfig",
    "PairStats",
    "build_step_pairs",
    "build_outcome_pairs",
    "sample_solutions",
    "rectify",
    "normalize_step",
]

log = logging.getLogger(__name__)

CHOSEN_BY = ("outcome", "step")


@dataclass(frozen=True)
class StepDPOConfig:
    """How Step-DPO pairs are sampled. Defaults follow the paper (temperature 0.8, top_p
    0.95, ~20 rectifications) and our CPU measurements (RESEARCH.md).

    ``top_k`` = 64 is the big speed lever on a CPU: with Gemma's 262k-token vocabulary a
    sampling step over the top 64 costs 7 ms against 336 ms over the full vocabulary at
    batch 64, and the tail it drops is almost never sampled at top_p 0.95 anyway.
    Rectifications are cheap (they share the prefix's KV cache) and only ~5% of them verify
    on a weak base, so take many."""

    samples_per_task: int = field(default=8, metadata={"help": "N solutions per task (n=N, all tasks in one call)."})
    rectifications: int = field(default=16, metadata={"help": "M continuations sampled from each error prefix."})
    # how everything samples, rollouts too: MCConfig's knobs, declared there (mc_config passes them on)
    temperature: float = field_of(MCConfig, "temperature")
    top_p: float = field_of(MCConfig, "top_p")
    top_k: int = field_of(MCConfig, "top_k")
    max_tokens: int = field_of(MCConfig, "max_tokens")
    shots: int = field(default=3, metadata={"help": "Worked examples in the solver prompt."})
    seed: int | None = field_of(MCConfig, "seed")
    credit: str = field(default="auto", metadata={"help": "First wrong step by: auto, checker, mc or critic."})
    # credit mc (or auto): MCConfig's knobs; the rollouts sample as above (mc_config)
    mc_samples: int = field_of(MCConfig, "samples")
    mc_high: float = field_of(MCConfig, "high")
    mc_low: float = field_of(MCConfig, "low")
    check_chosen: bool = field(default=True, metadata={"help": "A chosen step must also pass the step checker."})
    chosen_by: str = field(default="outcome", metadata={
        "help": "outcome: a rectification must reach a verified answer (the paper); step: the step checker "
                "accepting step k suffices, and rectifications stop at the end of step k's line."})
    max_chosen_per_error: int | None = field(default=None, metadata={"help": "Distinct chosen per error (None: all)."})

    def __post_init__(self) -> None:
        if self.credit not in CREDIT_METHODS:
            raise ValueError(f"credit={self.credit!r}: choose one of {', '.join(CREDIT_METHODS)}")
        if self.samples_per_task < 1 or self.rectifications < 1:
            raise ValueError("samples_per_task and rectifications must be >= 1")
        if self.chosen_by not in CHOSEN_BY:
            raise ValueError(f"chosen_by={self.chosen_by!r}: choose one of {', '.join(CHOSEN_BY)}")

    def mc_config(self) -> MCConfig:
        return MCConfig(
            samples=self.mc_samples, high=self.mc_high, low=self.mc_low, temperature=self.temperature,
            top_p=self.top_p, top_k=self.top_k, max_tokens=self.max_tokens, seed=self.seed,
        )


@dataclass
class PairStats:
    """What one round of pair building did; ``as_dict`` for logs and policy records."""

    tasks: int = 0
    samples: int = 0
    successes: int = 0
    failures: int = 0
    error_points: int = 0
    by_method: dict[str, int] = field(default_factory=dict)
    no_error_found: int = 0
    """Failed runs where no method located a wrong step."""
    rectifications: int = 0
    """Continuations sampled from error prefixes."""
    correct_rectifications: int = 0
    """Of those, how many ended in a verified answer."""
    rectification_tokens: int = 0
    """Tokens sampled for the rectifications (the solutions' are in their runs)."""
    chosen_failed_check: int = 0
    """Verified continuations whose step k the checker still rejects (not used as chosen)."""
    unterminated: int = 0
    """Verified continuations whose step k never ended in a newline (not used)."""
    dedup_removed: int = 0
    """Chosen steps dropped as duplicates (same normalised text as another chosen or as the rejected step)."""
    pairs: int = 0
    """New pairs stored."""
    already_stored: int = 0
    """Pairs identical (token ids) to ones stored earlier."""
    run_ids: list[int] = field(default_factory=list)
    pair_ids: list[int] = field(default_factory=list)
    wall_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("run_ids")
        out.pop("pair_ids")
        return out


def normalize_step(text: str) -> str:
    """The text two chosen steps are compared by: whitespace runs collapsed, ends stripped."""
    return " ".join(text.split())


# --- (i, ii) sample and record ------------------------------------------------------------


def sample_solutions(
    llm: LLM,
    suite: Suite,
    tasks: Sequence[Task],
    store: RunStore,
    config: StepDPOConfig = StepDPOConfig(),
    policy_version: str | None = "base",
    *,
    adapter: str | None = None,
    agent: Any = None,
) -> list[int]:
    """Sample ``config.samples_per_task`` solutions of every task in ONE generate call
    (one request per task with n = N) and record each as a run with one solver step, the
    way ``run_tasks`` with a ``SolveAgent`` records them. ``agent`` (a SolveAgent) builds
    the prompts when given, with its experience-library section and the ids it showed;
    else the suite's few-shot prompt. Returns the run ids, task-major."""
    prompts = [agent.prompt(task, suite) if agent is not None else (suite.prompt(task, shots=config.shots), [])
               for task in tasks]
    requests = [
        GenerationRequest(
            prompt, n=config.samples_per_task, temperature=config.temperature,
            top_p=config.top_p, top_k=config.top_k, max_tokens=config.max_tokens, stop=suite.stop,
            seed=derive_seed(config.seed, "sample", task.id, policy_version), adapter=adapter,
        )
        for task, (prompt, _) in zip(tasks, prompts)
    ]
    results = llm.generate(requests) if requests else []
    run_ids = []
    for task, request, (_, memory_ids), completions in zip(tasks, requests, prompts, results):
        for c in completions:
            run_id = store.start_run(
                "solve", suite=suite.name, task_id=task.id, split=task.split,
                model=getattr(llm, "model_name", None), policy_version=policy_version,
                meta={"level": task.level, "sampled_for": "step_dpo"},
            )
            store.add_steps([StepRecord.of_completion(
                run_id, "solve", c, role="solver", prompt_text=request.prompt, policy_version=policy_version,
                memory_ids=memory_ids or None,
                parsed={"answer": suite.parse_answer(c.text), "steps": suite.check_steps(task, c.text)},
            )])
            reward = suite.verify(task, c.text)
            store.finish_run(
                run_id, status="success" if reward >= 1.0 else "failure", reward=reward,
                step_accuracy=suite.step_accuracy(task, c.text), wall_s=c.latency_s,
            )
            run_ids.append(run_id)
    return run_ids


# --- (iv) rectify -------------------------------------------------------------------------


@dataclass
class _Prefix:
    """An error point cut into token ids: prompt + steps 1..k-1 + "Step k:" | step k."""

    error: ErrorPoint
    task: Task
    prompt_ids: list[int]
    prompt_text: str
    prefix_text: str
    """The output's text before step k's body (what a continuation is appended to)."""
    rejected_ids: list[int]
    rejected_text: str


def _cut(llm: LLM, step: Any, error: ErrorPoint, task: Task) -> _Prefix | None:
    tt = TokenText(llm, step.completion_ids or [])
    spans = step_char_spans(tt.text)
    if error.index >= len(spans):
        return None
    span = spans[error.index]
    body, end = tt.boundary(span.body), tt.boundary(span.end)
    if end <= body:
        return None  # an empty step k: nothing to reject
    head = tt.text_of(0, body)
    prompt_text = step.prompt_text if step.prompt_text is not None else llm.decode(step.prompt_ids or [])
    return _Prefix(
        error=error, task=task, prompt_ids=list(step.prompt_ids or []) + tt.ids[:body],
        prompt_text=prompt_text + head, prefix_text=head,
        rejected_ids=tt.ids[body:end], rejected_text=tt.text_of(body, end),
    )


def rectify(
    llm: LLM,
    suite: Suite,
    tasks: dict[str, Task],
    store: RunStore,
    errors: Sequence[ErrorPoint],
    config: StepDPOConfig = StepDPOConfig(),
    policy_version: str | None = "base",
    *,
    adapter: str | None = None,
    stats: PairStats | None = None,
) -> list[Pair]:
    """Step-DPO pairs for the given error points: ``config.rectifications`` continuations
    from each distinct prefix (prompt + steps 1..k-1 + "Step k:"), all in ONE generate call; each
    continuation whose final answer verifies gives a chosen step k (its first line, newline
    included), deduplicated by normalised text, against the rejected original step k.
    Counts go into ``stats`` when given.

    With ``config.chosen_by == "step"`` (suites with a step checker only) a continuation is
    cut at the end of step k's line and counts when the checker accepts step k: the chosen
    step is then right by construction, a rectification costs one line instead of the rest
    of the solution, and on a weak base many more of them verify (a correct step k is
    needed, not a correct step k and every step after it)."""
    stats = stats if stats is not None else PairStats()
    by_step = config.chosen_by == "step"
    if by_step and not suite.has_step_checker:
        raise ValueError(f"chosen_by='step' needs a step checker, and suite '{suite.name}' has none; use 'outcome'")
    prefixes: list[_Prefix] = []
    for error in errors:
        step = next((s for s in store.steps(error.run_id) if s.id == error.step_id), None)
        task = tasks.get(store.get_run(error.run_id, steps=False).task_id)
        cut = _cut(llm, step, error, task) if step is not None and task is not None else None
        if cut is not None:
            prefixes.append(cut)
    # error points with the same prefix (failed samples of one task that went wrong at the
    # same place after the same steps) share one set of rectifications: the continuations
    # depend only on the prefix, and each member pairs them with its own rejected step
    groups: dict[tuple[int, ...], list[_Prefix]] = {}
    for p in prefixes:
        groups.setdefault(tuple(p.prompt_ids), []).append(p)
    requests = [
        GenerationRequest(
            head.prompt_ids, n=config.rectifications, temperature=config.temperature, top_p=config.top_p,
            top_k=config.top_k, max_tokens=config.max_tokens, stop=[*suite.stop, "\n"] if by_step else suite.stop,
            seed=derive_seed(config.seed, "rectify", head.error.run_id, head.error.step_id, head.error.index),
            adapter=adapter,
        )
        for head, *_ in groups.values()
    ]
    results = llm.generate(requests) if requests else []

    pairs: list[Pair] = []
    seen: set[tuple] = set()  # (prompt ids, chosen, rejected) over the whole call
    for members, completions in zip(groups.values(), results):
        stats.rectification_tokens += sum(len(c.token_ids) for c in completions)
        chosen = [c for c in (_chosen_step(llm, suite, members[0], c, config, stats) for c in completions) if c]
        for p in members:
            rejected_key = normalize_step(p.rejected_text)
            kept = 0
            for chosen_text, chosen_ids in chosen:
                key = (tuple(p.prompt_ids), normalize_step(chosen_text), rejected_key)
                if key[1] == rejected_key or key in seen:
                    stats.dedup_removed += 1
                    continue
                if config.max_chosen_per_error is not None and kept >= config.max_chosen_per_error:
                    continue
                seen.add(key)
                kept += 1
                pairs.append(Pair(
                    kind="step", suite=suite.name, task_id=p.task.id, run_id=p.error.run_id,
                    step_id=p.error.step_id, step_index=p.error.index, method=p.error.method,
                    prompt_text=p.prompt_text, prompt_ids=p.prompt_ids,
                    chosen_text=chosen_text, chosen_ids=chosen_ids,
                    rejected_text=p.rejected_text, rejected_ids=p.rejected_ids,
                    policy_version=policy_version,
                    meta={"values": p.error.values} if p.error.values is not None else None,
                ))
    return pairs


def _chosen_step(llm: LLM, suite: Suite, p: _Prefix, c: Any, config: StepDPOConfig,
                 stats: PairStats) -> tuple[str, list[int]] | None:
    """The step k a rectification ``c`` of prefix ``p`` offers as chosen (its first line,
    newline included, text and exact sampled ids), or None if it does not qualify."""
    stats.rectifications += 1
    by_step = config.chosen_by == "step"
    if not by_step and suite.verify(p.task, p.prefix_text + c.text) < 1.0:
        return None
    ct = TokenText(llm, c.token_ids)
    newline = ct.text.find("\n")
    if newline < 0:
        stats.unterminated += 1
        return None
    end = ct.boundary(newline + 1)
    text = ct.text_of(0, end)
    checks = suite.check_steps(p.task, p.prefix_text + text) if (by_step or config.check_chosen) else None
    step_ok = checks is None or (p.error.index < len(checks) and checks[p.error.index])
    if by_step and not step_ok:
        return None
    stats.correct_rectifications += 1
    if not step_ok:
        stats.chosen_failed_check += 1
        return None
    return text, list(ct.ids[:end])


# --- the whole round ----------------------------------------------------------------------


def build_step_pairs(
    llm: LLM,
    suite: Suite,
    tasks: Sequence[Task],
    store: RunStore,
    config: StepDPOConfig = StepDPOConfig(),
    policy_version: str | None = "base",
    *,
    run_ids: Sequence[int] | None = None,
    adapter: str | None = None,
    pair_store: PairStore | None = None,
    agent: Any = None,
) -> PairStats:
    """One round of Step-DPO data: (i) sample ``samples_per_task`` solutions per task in
    one batched call, (ii) record them as runs, (iii) find the first wrong step of each
    failed run (``config.credit``), (iv) rectify from each error prefix in one batched call,
    (v) store the pairs (``step_pairs`` table, via ``pair_store`` or a PairStore over
    ``store``).

    With ``run_ids`` the runs already recorded are used instead of (i)-(ii); ``tasks`` must
    then hold their tasks. ``policy_version`` and ``adapter`` name the sampling policy;
    ``agent`` (a SolveAgent) builds the sampling prompts, e.g. with experience-library items.
    """
    start = time.perf_counter()
    stats = PairStats(tasks=len(tasks))
    by_id = {task.id: task for task in tasks}
    if run_ids is None:
        run_ids = sample_solutions(llm, suite, tasks, store, config, policy_version, adapter=adapter, agent=agent)
    stats.run_ids = list(run_ids)
    stats.samples = len(run_ids)
    statuses = [store.get_run(run_id, steps=False).status for run_id in run_ids]
    stats.successes = statuses.count("success")
    stats.failures = statuses.count("failure")
    log.info("step pairs: %d samples, %d failed", stats.samples, stats.failures)

    errors = locate_errors(llm, suite, by_id, store, run_ids, method=config.credit, mc=config.mc_config(), adapter=adapter)
    points = [e for e in errors if e is not None]
    stats.error_points = len(points)
    stats.no_error_found = stats.failures - len(points)
    for point in points:
        stats.by_method[point.method] = stats.by_method.get(point.method, 0) + 1

    pairs = rectify(llm, suite, by_id, store, points, config, policy_version, adapter=adapter, stats=stats)
    pair_store = pair_store or PairStore(store)
    ids = pair_store.add_pairs(pairs)
    stats.pair_ids = [i for i in ids if i is not None]
    stats.pairs = len(stats.pair_ids)
    stats.already_stored = len(ids) - stats.pairs
    stats.wall_s = time.perf_counter() - start
    log.info("step pairs: %s", stats.as_dict())
    return stats


def build_outcome_pairs(
    llm: LLM,
    store: RunStore,
    run_ids: Sequence[int],
    *,
    pairs_per_task: int = 4,
    policy_version: str | None = None,
    pair_store: PairStore | None = None,
) -> list[int]:
    """Whole-output pairs for outcome DPO, the baseline Step-DPO is compared with.

    Runs of the same task whose final solver call had the same prompt are grouped; within a
    group, distinct successful outputs are paired with distinct failed ones in order
    (success i with failure i), at most ``pairs_per_task``. Chosen and rejected are the
    outputs' text and its tokens (the stop string the backend also sampled is left out).
    ``policy_version`` defaults to the runs'. Returns the ids of the new pairs."""
    groups: dict[tuple, dict[str, list]] = defaultdict(lambda: {"success": [], "failure": []})
    for run_id in run_ids:
        run = store.get_run(run_id, steps=True)
        step = output_step(run.steps, with_steps=False)
        if step is None or run.status not in ("success", "failure"):
            continue
        groups[(run.task_id, tuple(step.prompt_ids or []))][run.status].append((run, step))

    def distinct(entries: list) -> list:
        out, seen = [], set()
        for run, step in entries:
            key = normalize_step(step.completion_text or "")
            if key not in seen:
                seen.add(key)
                out.append((run, step))
        return out

    def output(step: Any) -> tuple[list[int], str]:
        tt = TokenText(llm, step.completion_ids)
        text = step.completion_text or ""
        end = tt.boundary(len(text)) if tt.text.startswith(text) else len(tt.ids)
        return tt.ids[:end], tt.text_of(0, end)

    pairs = []
    for (task_id, prompt_ids), group in groups.items():
        for (good_run, good), (bad_run, bad) in list(zip(distinct(group["success"]), distinct(group["failure"])))[:pairs_per_task]:
            chosen_ids, chosen_text = output(good)
            rejected_ids, rejected_text = output(bad)
            prompt_text = bad.prompt_text if bad.prompt_text is not None else llm.decode(list(prompt_ids))
            pairs.append(Pair(
                kind="outcome", suite=bad_run.suite, task_id=task_id, run_id=bad_run.id, step_id=bad.id,
                chosen_run_id=good_run.id, prompt_text=prompt_text, prompt_ids=list(prompt_ids),
                chosen_text=chosen_text, chosen_ids=chosen_ids, rejected_text=rejected_text,
                rejected_ids=rejected_ids, policy_version=policy_version or bad_run.policy_version,
            ))
    ids = (pair_store or PairStore(store)).add_pairs(pairs)
    return [i for i in ids if i is not None]
