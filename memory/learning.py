"""Learning from runs: what the experience library keeps after each batch of verified runs.

``update_from_runs`` accounts finished runs in one library version: node base rates, the
utility of every item a prompt showed (success when shown against the node's base rate),
route statistics, and new exemplars from verified outputs only (a successful run whose
"Step k:" lines all checked). Items whose utility is negative with enough evidence are
retired and the library is capped per family. Every ``reflect_every`` updates, with a
model at hand, it also reflects (``reflect``): a failed run is compared with a successful
run of the most similar task and the model writes an insight {condition, lesson, example,
source runs} (ExpeL, AlphaOPT); insights that were shown but did not help get a narrower
condition; near-duplicates are merged. Reflection calls are recorded as runs of the
``memory.reflect`` graph like any other model call.

    report = run_tasks(llm, suite, tasks, store, agent=SolveAgent(library=library))
    update_from_runs(library, store, [r.run_id for r in report.results], suite, llm=llm)
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agentkit.graph.templates import render, role_prompts
from agentkit.llm.base import LLM, GenerationRequest
from agentkit.store.protocols import RunStore
from agentkit.store.runs import StepRecord
from agentkit.tasks import Suite, Task

from .library import ExperienceLibrary, NewItem, RunOutcome, UpdateResult, family_of, search_text

__all__ = ["LearningConfig", "ReflectReport", "update_from_runs", "reflect", "outcomes_from_runs", "parse_insight",
           "InsightParseError", "REFLECT_GRAPH"]

REFLECT_GRAPH = "memory.reflect"
EXEMPLAR_ROLES = ("solver", "planner")
MAX_FIELD = 300


@dataclass(frozen=True)
class LearningConfig:
    """When and how much the library reflects."""

    reflect_every: int = 4
    """Reflect after every this many updates that accounted runs (0: never)."""
    reflections: int = 2
    """Failed/successful pairs reflected on per reflection."""
    rewrites: int = 1
    """Insights whose condition is rewritten per reflection (shown, not helping)."""
    rewrite_after: int = 4
    """Showings before an unhelpful insight's condition is rewritten."""
    max_tokens: int = 120
    temperature: float = 0.0


@dataclass
class ReflectReport:
    insights: list[int] = field(default_factory=list)
    """Ids of insights added."""
    unparsed: int = 0
    """Reflection replies that held no usable insight."""
    rewritten: list[int] = field(default_factory=list)
    pruned: list[int] = field(default_factory=list)
    """Items merged into a near-duplicate or retired by the prune that closes a reflection."""
    run_ids: list[int] = field(default_factory=list)
    """The recorded reflection runs."""


# --- accounting -------------------------------------------------------------------------------


def _question(run: Any, tasks: dict[str, Task]) -> str | None:
    task = tasks.get(run.task_id or "")
    if task is not None:
        return task.question
    recorded = (run.meta or {}).get("task") or {}
    if recorded.get("question"):
        return recorded["question"]
    for step in run.steps or []:  # the plain solve agent: the prompt ends with the question
        if step.prompt_text and "Question: " in step.prompt_text:
            return step.prompt_text.rsplit("Question: ", 1)[1].split("\n", 1)[0].strip() or None
    return None


def _solution(text: str) -> str:
    """A verified output up to its last "Answer:" line: what follows is not part of it."""
    lines = text.strip().splitlines()
    last = max((i for i, line in enumerate(lines) if re.match(r"\s*\**answer\**\s*:", line, re.IGNORECASE)),
               default=len(lines) - 1)
    return "\n".join(lines[: last + 1]).strip()


def _verified(step: Any) -> bool:
    parsed = step.parsed if isinstance(step.parsed, dict) else {}
    if parsed.get("error"):
        return False
    if step.role == "solver":
        checks = parsed.get("steps")
        return parsed.get("answer") is not None and (checks is None or (bool(checks) and all(checks)))
    return bool(parsed.get("plan"))


def outcomes_from_runs(store: RunStore, run_ids: Sequence[int], suite: Suite | None,
                       tasks: Sequence[Task] | None = None) -> list[RunOutcome]:
    """One RunOutcome per finished run (runs still running are left for a later update)."""
    by_id = {t.id: t for t in tasks or ()}
    outcomes = []
    for run_id in run_ids:
        run = store.get_run(run_id, steps=True)
        if run.status == "running":
            continue
        level = (run.meta or {}).get("level")
        family = family_of(run.suite or getattr(suite, "name", None), level)
        success = run.status == "success"
        steps = run.steps or []
        outcome = RunOutcome(run_id=run.id, family=family, success=success)
        outcome.nodes = list(dict.fromkeys(s.node for s in steps if s.prompt_ids is not None))
        for step in steps:
            for item_id in step.memory_ids or () if step.role != "router" else ():  # routes count below
                if isinstance(item_id, int):
                    outcome.shown.append((item_id, step.node))
            if step.role == "router" and step.route:
                outcome.routes.append((step.node, step.route))
        question = _question(run, by_id)
        if success and question:
            last: dict[str, Any] = {}
            for step in steps:
                if step.role in EXEMPLAR_ROLES and step.completion_text:
                    last[step.node] = step  # the node's final attempt
            for node, step in last.items():
                if _verified(step):
                    outcome.exemplars.append(NewItem.exemplar(
                        family, question, _solution(step.completion_text), role=step.role, node=node,
                        source_runs=[run.id]))
        outcomes.append(outcome)
    return outcomes


def update_from_runs(library: ExperienceLibrary, store: RunStore, run_ids: Sequence[int], suite: Suite | None = None,
                     *, tasks: Sequence[Task] | None = None, llm: Any = None,
                     config: LearningConfig | None = None) -> UpdateResult:
    """Account finished runs in one library version (see the module doc); with ``llm``,
    reflect every ``config.reflect_every`` updates. A run already accounted is skipped."""
    config = config or LearningConfig()
    outcomes = outcomes_from_runs(store, run_ids, suite, tasks)
    result = library.apply_outcomes(outcomes, f"update from {len(outcomes)} runs")
    if llm is not None and config.reflect_every and result.runs:
        updates = sum(1 for v in library.versions() if v.message.startswith("update from"))
        if updates % config.reflect_every == 0:
            reflect(library, llm, store, run_ids, suite, tasks=tasks, config=config)
    return result


# --- reflection -------------------------------------------------------------------------------


class InsightParseError(ValueError):
    """A reflection reply without a usable condition and lesson."""


_FIELD = re.compile(r"^[\s>*#\-\d.)]*\**\s*(condition|lesson|example)\s*\**\s*[:\-–]\s*(.*)$", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"^<.*>$")


def _clean(value: str) -> str:
    value = " ".join(value.replace("**", "").split()).strip(" \"'`")
    while True:  # "Condition: Condition: ..." when the model repeats the cue
        m = re.match(r"(condition|lesson|example)\s*:\s*(.*)$", value, re.IGNORECASE)
        if not m:
            break
        value = m.group(2).strip()
    return value[:MAX_FIELD]


def parse_insight(text: str) -> dict[str, str | None]:
    """{"condition", "lesson", "example"} from a reflection reply: "Condition: ..." lines
    (bullets, bold, numbering, any case; a field may continue on the next lines) or a JSON
    object with those keys. Raises InsightParseError without a condition and a lesson."""
    if not isinstance(text, str):
        raise InsightParseError("the reply is not text")
    text = text[:8000]
    fields: dict[str, str] = {}
    brace = text.find("{")
    if brace >= 0:
        try:
            data = json.loads(text[brace: text.rfind("}") + 1])
            if isinstance(data, dict):
                fields = {k.lower(): str(v) for k, v in data.items() if k.lower() in ("condition", "lesson", "example")}
        except ValueError:
            fields = {}
    if not fields:
        current = None
        for line in text.splitlines():
            m = _FIELD.match(line)
            if m:
                current = m.group(1).lower()
                if current in fields:  # a second block: the first one is the answer
                    break
                fields[current] = m.group(2)
            elif current and line.strip():
                fields[current] += " " + line.strip()
            elif current and not line.strip():
                current = None
    out = {key: _clean(fields.get(key, "")) or None for key in ("condition", "lesson", "example")}
    for key in ("condition", "lesson"):
        value = out[key]
        if not value or len(value) < 3 or _PLACEHOLDER.match(value):
            raise InsightParseError(f"no {key}: reply with lines 'Condition: ...' and 'Lesson: ...'")
    if out["example"] and _PLACEHOLDER.match(out["example"]):
        out["example"] = None
    return out


def _similarity(a: str, b: str) -> float:
    x, y = set(search_text(a).split()), set(search_text(b).split())
    return len(x & y) / max(1, len(x | y))


def _final_output(run: Any) -> str:
    texts = [s.completion_text for s in run.steps or [] if s.role == "solver" and s.completion_text]
    return (texts[-1] if texts else "").strip()


def _recorded_call(llm: LLM, store: RunStore, *, family: str, task_id: str | None, prompt: str,
                   config: LearningConfig, node: str, source_runs: list[int], parse: Any) -> tuple[Any, int]:
    """One reflection model call, recorded as a run of the memory.reflect graph:
    (parsed output or None, run id)."""
    prompts = _reflect_prompts()
    run_id = store.start_run(REFLECT_GRAPH, task_id=task_id, model=getattr(llm, "model_name", None),
                             meta={"family": family, "source_runs": source_runs, "node": node})
    output = None
    try:
        request = GenerationRequest(prompt, temperature=config.temperature,
                                    max_tokens=config.max_tokens or prompts["max_tokens"], stop=tuple(prompts["stop"]))
        ((completion,),) = llm.generate([request])
        try:
            output = parsed = parse(completion.text)
        except InsightParseError as exc:
            parsed = {"error": str(exc)}
        except Exception as exc:  # a parser bug or hostile text is data, not a crash (as in Recorder.call)
            parsed = {"error": f"{type(exc).__name__}: {exc}"}
        store.add_steps([StepRecord.of_completion(run_id, node, completion, role="reflector", prompt_text=prompt,
                                                  parsed=parsed)])
        store.finish_run(run_id, status="success" if output is not None else "failure",
                         reward=1.0 if output is not None else 0.0)
    except BaseException as exc:
        store.finish_run(run_id, status="error", reward=0.0, error=f"{type(exc).__name__}: {exc}")
        raise
    return output, run_id


def _reflect_prompts() -> dict:
    return role_prompts("reflect", "agentkit.memory")


def reflect(library: ExperienceLibrary, llm: LLM, store: RunStore, run_ids: Sequence[int], suite: Suite | None = None,
            *, tasks: Sequence[Task] | None = None, config: LearningConfig | None = None) -> ReflectReport:
    """Distil insights from the given runs, narrow the conditions of insights that were
    shown without helping, and merge near-duplicates (each change its own version)."""
    config = config or LearningConfig()
    prompts = _reflect_prompts()
    by_id = {t.id: t for t in tasks or ()}
    report = ReflectReport()
    runs = [store.get_run(i, steps=True) for i in run_ids]
    runs = [r for r in runs if r.status in ("success", "failure") and r.graph != REFLECT_GRAPH]
    families: dict[str, list[Any]] = {}
    for run in runs:
        families.setdefault(family_of(run.suite or getattr(suite, "name", None), (run.meta or {}).get("level")),
                            []).append(run)

    # 1. insights from failed runs next to the successful run of the most similar task
    for family, group in families.items():
        good = [(r, _question(r, by_id)) for r in group if r.status == "success"]
        bad = [(r, _question(r, by_id)) for r in group if r.status == "failure"]
        good = [(r, q) for r, q in good if q and _final_output(r)]
        done = 0
        for run, question in bad:
            if done >= config.reflections or not good or not question:
                break
            match, match_q = max(good, key=lambda g: _similarity(question, g[1]))
            task = by_id.get(run.task_id or "") or _task_of(run)
            prompt = render(prompts["template"], "reflect prompt", good_question=match_q,
                            good_solution=_solution(_final_output(match)), bad_question=question,
                            bad_solution=_final_output(run) or "(no solution)",
                            bad_answer=task.answer if task is not None else "(unknown)")
            sources = [match.id, run.id]
            # the prompt ends with the "Condition:" cue, so the reply continues that line
            parsed, reflect_run = _recorded_call(
                llm, store, family=family, task_id=run.task_id, prompt=prompt, config=config, node="reflect",
                source_runs=sources, parse=lambda text: parse_insight("Condition: " + text))
            report.run_ids.append(reflect_run)
            done += 1
            if parsed is None:
                report.unparsed += 1
                continue
            item = NewItem.insight(family, parsed["condition"], parsed["lesson"], parsed["example"],
                                   source_runs=sources)
            _, item_id = library.add_insight(item, f"reflect: insight from runs {sources[0]} and {sources[1]}")
            if item_id not in report.insights:
                report.insights.append(item_id)

    # 2. narrower conditions for insights shown but not helping (AlphaOPT phase 2)
    for family, group in families.items():
        shown: dict[int, tuple[list[str], list[str]]] = {}
        for run in group:
            ids = {i for s in run.steps or [] for i in (s.memory_ids or ())}
            for item_id in ids:
                failed, helped = shown.setdefault(item_id, ([], []))
                (helped if run.status == "success" else failed).append(_question(run, by_id) or "")
        candidates = [i for i in library.items(family=family, kind="insight")
                      if i.id in shown and i.shown >= config.rewrite_after and i.utility < 0]
        for item in sorted(candidates, key=lambda i: i.utility)[: config.rewrites]:
            failed, helped = shown[item.id]
            prompt = render(prompts["rewrite"], "rewrite prompt", condition=item.condition or "",
                            lesson=item.lesson or item.text,
                            failed="\n".join(f"- {q}" for q in failed[:5]) or "- (none)",
                            helped="\n".join(f"- {q}" for q in helped[:5]) or "- (none)")

            def read_condition(text: str) -> str:
                value = _clean(text.strip().splitlines()[0] if text.strip() else "")
                if len(value) < 3 or _PLACEHOLDER.match(value):
                    raise InsightParseError("no condition: reply with one line, the new condition")
                return value

            condition, reflect_run = _recorded_call(
                llm, store, family=family, task_id=None, prompt=prompt, config=config, node="rewrite",
                source_runs=[item.id], parse=read_condition)
            report.run_ids.append(reflect_run)
            if condition is None:
                report.unparsed += 1
            elif condition != item.condition:
                library.rewrite_condition(item.id, condition, f"utility {item.utility:+.2f} after {item.shown} showings")
                report.rewritten.append(item.id)

    # 3. one item per lesson
    for family in families:
        report.pruned += library.prune(family=family).retired
    return report


def _task_of(run: Any) -> Task | None:
    recorded = (run.meta or {}).get("task")
    try:
        return Task.model_validate(recorded) if recorded else None
    except ValueError:
        return None
