"""The one "Step k:" grammar. A solution is lines that begin "Step k:"; the suites read
them (``split_steps``, the step checkers) and credit assignment finds where each one is
(``step_char_spans``) with the same pattern, so both always agree on what a step is."""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = ["STEP_LINE", "StepSpan", "split_steps", "step_char_spans"]

STEP_LINE = re.compile(r"^[ \t]*step[ \t]*\d+[ \t]*:(.*)$", re.IGNORECASE | re.MULTILINE)
"""A step line; group 1 is its content after "Step k:"."""


def split_steps(text: str) -> list[str]:
    """The content of every line that begins "Step k:", stripped, in order."""
    if not isinstance(text, str):
        return []
    return [m.group(1).strip() for m in STEP_LINE.finditer(text)]


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
    for m in STEP_LINE.finditer(text):
        end = m.end() + 1 if m.end() < len(text) else m.end()  # take the "\n"
        spans.append(StepSpan(m.start(), m.start(1), end))
    return spans
