"""How a prompt shows the experience library: what ``ExperienceLibrary.show`` and
``route_prior`` do for a graph node (which reaches them through its run context,
agentkit.graph.context.NodeLibrary) or for the plain solve agent.

A node declared with ``memory=`` retrieves k items for its task and shows them in a marked
section of its prompt (prompts/memory.yaml), placed just before the task's question so that
exemplars read as the nearest few-shot examples. Library text is data: it is cleaned of the
section's own markers and of lines that would start a new question, and an insight is
flattened to one line, so nothing in the library can close the section, pose as the task
or choose a route. A router reads only numbers (its labels' success rates) as a prior; its
choice stays one of its declared labels.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from agentkit.graph.templates import render, role_prompts

__all__ = ["show", "memory_section", "insert_section", "route_prior", "as_data"]

MAX_ITEM_CHARS = 1200
_FORMAT_LINE = re.compile(r"^\s*(question|solution)\s*:", re.IGNORECASE)


def show(library: Any, prompt: str, question: str, *, family: str, kinds: Sequence[str], k: int,
         role: str | None = "solver") -> tuple[str, list[int]]:
    """``prompt`` with up to k text items (exemplars, insights) retrieved for ``question``
    shown in the section before it, and the ids of the items shown."""
    kinds = [kind for kind in kinds if kind != "route"]
    if not kinds or k <= 0:
        return prompt, []
    items = library.retrieve(question, family=family, kinds=kinds, role=role, k=k)
    return insert_section(prompt, question, memory_section(items)), [item.id for item in items]


def as_data(text: str | None, *, one_line: bool = False) -> str:
    """Library text made safe to show: without the section's markers or lines that would
    start a new question or solution; capped; one line if asked."""
    prompts = role_prompts("memory", "agentkit.memory")
    text = (text or "")[:MAX_ITEM_CHARS]
    for marker in (prompts["header"], prompts["footer"]):
        text = re.sub(re.escape(marker.strip()), " ", text, flags=re.IGNORECASE)
    lines = [line for line in text.splitlines() if not _FORMAT_LINE.match(line)]
    if one_line:
        return " ".join(" ".join(lines).split())
    return "\n".join(line.rstrip() for line in lines).strip()


def memory_section(items: Sequence[Any]) -> str:
    """The marked section showing ``items`` ("" for none): exemplars as worked examples in
    the suites' format, insights as one-line notes."""
    if not items:
        return ""
    prompts = role_prompts("memory", "agentkit.memory")
    where = "memory section"
    parts = []
    for item in items:
        if item.kind == "exemplar":
            parts.append(render(prompts["exemplar"], where, question=as_data(item.key, one_line=True),
                                solution=as_data(item.text)))
        elif item.kind == "insight":
            example = as_data(item.example, one_line=True)
            parts.append(render(prompts["insight"], where, condition=as_data(item.condition, one_line=True),
                                lesson=as_data(item.lesson or item.text, one_line=True),
                                example=render(prompts["insight_example"], where, example=example) if example else ""))
    return render(prompts["template"], where, header=prompts["header"], items="".join(parts), footer=prompts["footer"])


def insert_section(prompt: str, question: str, section: str) -> str:
    """``prompt`` with ``section`` just before its last "Question: <question>" (prepended
    when the prompt does not show the question that way)."""
    if not section:
        return prompt
    at = prompt.rfind(f"Question: {question}")
    if at < 0:
        return section + prompt
    return prompt[:at] + section + prompt[at:]


def route_prior(library: Any, family: str, node: str, labels: Sequence[str], weight: float) -> tuple[dict[str, float], list[int]]:
    """label -> weight * log(smoothed success rate of runs that took it), and the ids of the
    route items read. Labels the library has no numbers for get log(1/2); library labels the
    router does not declare are ignored."""
    stats = library.routes(family, node)
    prior, ids = {}, []
    for label in labels:
        item = stats.get(label)
        shown, success = (item.shown, item.shown_success) if item else (0, 0)
        prior[label] = weight * math.log((success + 1) / (shown + 2))
        if item is not None:
            ids.append(item.id)
    return prior, ids
