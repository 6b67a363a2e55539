"""A suite over the user's own tasks, one JSON object per line:

    {"question": "What is the capital of France?", "answer": "Paris"}

Optional keys: "id", "level" (an integer, default 1) and "split" ("train" or "test"). If no
line gives a split, one line in five (by a hash of its question) is train and the rest
test; if some lines do, the others are test. Train lines serve as few-shot examples;
``tasks("all", n)`` takes every line, and ``describe`` says in one line what a run does
with the lines.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from decimal import Decimal
from pathlib import Path
from typing import Literal

from agentkit.errors import TaskError
from agentkit.tasks.base import SPLITS, Suite, Task, parse_number, split_of

__all__ = ["JsonlSuite", "load_jsonl", "CHECKERS"]

CHECKERS = ("exact", "numeric", "regex")
ALL = "all"
"""The split of every line of the file, train and test alike."""
_EXAMPLE = 'each line must be an object like {"question": "...", "answer": "..."}'
_MAX_ANSWER_CHARS = 1000  # bounds the work a user regex does on model text


class JsonlSuite(Suite):
    """Tasks read from a file. No step checker: ``check_steps`` returns None.

    Deviations from generated suites: ``tasks(level=None)`` means every level, ``seed=0``
    keeps file order (other seeds shuffle deterministically), asking for more tasks than
    the file holds returns all of them, and the split "all" is every line.

    ``given_splits``: how many lines of the file gave their "split" (None: unknown)."""

    stop = ("\nQuestion:", "\n\n\n")

    def __init__(self, name: str, tasks: list[Task], checker: str, given_splits: int | None = None):
        self.name = name
        self.checker = checker
        self._all = tasks
        self.given_splits = given_splits
        self.levels = tuple(sorted({t.level for t in tasks}))
        self.default_level = self.levels[0]
        has_train = any(t.split == "train" for t in tasks) and checker != "regex"
        self.instructions = (
            "Answer the question. You may reason first, one 'Step k:' per line; "
            "end with one line 'Answer: <answer>'."
            + (" Follow the format of the examples." if has_train else "")
        )

    def tasks(self, split: str, n: int, level: int | None = None, seed: int = 0) -> list[Task]:
        if split != ALL and split not in SPLITS:
            raise TaskError(f"unknown split {split!r}; choose one of: {', '.join((*SPLITS, ALL))}")
        if level is not None:
            self._check_level(level)
        if not isinstance(n, int) or n < 0:
            raise TaskError(f"n={n!r}: the number of tasks must be an integer >= 0")
        chosen = [t for t in self._all if split in (ALL, t.split) and (level is None or t.level == level)]
        if not chosen:
            which = f"{split} tasks" + (f" at level {level}" if level is not None else "")
            raise TaskError(f"{self.name}: no {which}; add lines with \"split\": \"{split}\" to the file, "
                            "or run every line with split all (--split all)")
        if seed != 0:
            chosen = list(chosen)
            random.Random(seed).shuffle(chosen)
        return chosen[:n]

    def describe(self, split: str, running: int, shots: int) -> str:
        """One line on what a run does with the file's lines: how many are train and test and
        why, how many it runs, and whether its prompts show worked examples."""
        train = sum(t.split == "train" for t in self._all)
        test = len(self._all) - train
        if self.given_splits == 0:
            rule = 'no line gives "split": 1 in 5, by a hash of the question, is train'
        elif self.given_splits is not None and self.given_splits < len(self._all):
            rule = 'lines without "split" are test'
        else:
            rule = 'as the lines give "split"'
        which = f"all {running} lines" if split == ALL else f"{running} {split} lines"
        if shots <= 0:
            examples = "no worked examples"
        elif self.checker == "regex":
            examples = "no worked examples: a regex answer is a pattern, not an example"
        elif train == 0:
            examples = f"no worked examples although --shots {shots}: the file has no train lines"
        else:
            examples = f"up to {min(shots, train)} train lines as worked examples in each prompt"
        hint = "; --split all runs every line" if split != ALL and running < len(self._all) else ""
        return (f"{self.name}: {len(self._all)} lines, {train} train and {test} test ({rule}); "
                f"running {which}, with {examples}{hint}")

    def _shots(self, task: Task, shots: int) -> list[Task]:
        # a regex answer is a pattern, not an example of an answer: no shots then
        if self.checker == "regex":
            return []
        train = [t for t in self._all if t.split == "train" and t.question != task.question]
        train.sort(key=lambda t: t.level != task.level)  # same level first, file order kept
        return train[:shots]

    def _reward(self, task: Task, text: str) -> float:
        answer = self.parse_answer(text)
        if answer is None or len(answer) > _MAX_ANSWER_CHARS:
            return 0.0
        if self.checker == "exact":
            ok = answer.strip().casefold() == task.answer.strip().casefold()
        elif self.checker == "numeric":
            got, gold = parse_number(answer), parse_number(task.answer)
            ok = got is not None and gold is not None and math.isclose(got, gold, rel_tol=0, abs_tol=1e-6)
        else:
            try:
                ok = re.fullmatch(task.answer, answer.strip()) is not None  # re caches the compiled pattern
            except re.error:
                return 0.0
        return 1.0 if ok else 0.0


def load_jsonl(
    path: str | Path, checker: Literal["exact", "numeric", "regex"] = "exact", name: str | None = None
) -> Suite:
    """A Suite over the tasks in a .jsonl file; every problem raises a one-line TaskError
    naming the file, the line and the fix."""
    if checker not in CHECKERS:
        raise TaskError(f"unknown checker {checker!r}; choose one of: {', '.join(CHECKERS)}")
    path = Path(path)
    try:
        # JSON Lines ends a line at "\n" only; str.splitlines would also cut at U+2028, \x85
        # and the like, which JSON strings may hold unescaped
        lines = path.read_text(encoding="utf-8-sig").split("\n")  # utf-8-sig: a leading BOM (Windows editors) is dropped
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
        raise TaskError(f"cannot read tasks file '{path}' ({reason}); pass a readable UTF-8 .jsonl file") from None
    name = name or path.stem
    rows = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    if not rows:
        raise TaskError(f"{path}: no tasks (the file is empty); {_EXAMPLE}")

    records = [_read_line(path, number, line, checker) for number, line in rows]
    any_split = any(r["split"] is not None for r in records)
    tasks: list[Task] = []
    first_line: dict[str, int] = {}
    for (number, _), r in zip(rows, records):
        split = r["split"] or ("test" if any_split else _default_split(r["question"]))
        task_id = r["id"] or f"{name}-{_content_hash(r['question'], r['answer'])}"
        if task_id in first_line:
            raise TaskError(
                f"{path} line {number}: duplicate id {task_id!r} (first on line {first_line[task_id]}); "
                "remove the line or give each line its own \"id\""
            )
        first_line[task_id] = number
        tasks.append(
            Task(id=task_id, suite=name, split=split, level=r["level"], question=r["question"],
                 answer=r["answer"], solution=f"Answer: {r['answer']}", data={"line": number})
        )  # fmt: skip
    return JsonlSuite(name, tasks, checker, given_splits=sum(r["split"] is not None for r in records))


def _content_hash(question: str, answer: str) -> str:
    return hashlib.sha1(f"{question}\0{answer}".encode()).hexdigest()[:10]


def _default_split(question: str) -> str:
    # the reverse of the generated suites' rule: a user file is mostly for evaluation
    return "train" if split_of(question) == "test" else "test"


def _unpaired_surrogate(text: str) -> str | None:
    """The first lone surrogate in ``text`` (JSON's "\\ud800" decodes to one), which no
    tokenizer or hash can encode; None when there is none."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return text[e.start]
    return None


def _read_line(path: Path, number: int, line: str, checker: str) -> dict:
    where = f"{path} line {number}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise TaskError(f"{where}: not valid JSON ({e.msg}); {_EXAMPLE}") from None
    except ValueError:  # an integer past Python's 4300-digit conversion limit
        raise TaskError(f"{where}: a number has too many digits to read; write it as a string") from None
    except RecursionError:
        raise TaskError(f"{where}: arrays or objects nested too deeply to read; {_EXAMPLE}") from None
    if not isinstance(obj, dict):
        raise TaskError(f"{where}: expected a JSON object, got {type(obj).__name__}; {_EXAMPLE}")
    for key in ("question", "answer"):
        if key not in obj:
            raise TaskError(f'{where}: missing "{key}"; {_EXAMPLE}')
    question, answer = obj["question"], obj["answer"]
    if not isinstance(question, str) or not question.strip():
        raise TaskError(f'{where}: "question" must be a non-empty string, got {question!r}; {_EXAMPLE}')
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise TaskError(f'{where}: "answer" must be a string or a number, got {answer!r}; {_EXAMPLE}')
    if isinstance(answer, float) and math.isfinite(answer):
        # 0.00001 as written, not Python's 1e-05, which no checker reads as a number
        answer = format(Decimal(repr(answer)), "f")
    answer = str(answer).strip()
    for key, text in (("question", question), ("answer", answer), ("id", obj.get("id"))):
        if isinstance(text, str) and (bad := _unpaired_surrogate(text)) is not None:
            raise TaskError(f'{where}: "{key}" holds {bad!r}, half of a surrogate pair and not a character; '
                            "fix the \\u escape")
    split = obj.get("split")
    if split is not None and split not in SPLITS:
        raise TaskError(f'{where}: "split" is {split!r}; choose one of: {", ".join(SPLITS)}')
    level = obj.get("level", 1)
    if isinstance(level, bool) or not isinstance(level, int):
        raise TaskError(f'{where}: "level" must be an integer, got {level!r}; remove it or write e.g. "level": 2')
    task_id = obj.get("id")
    if task_id is not None and (not isinstance(task_id, (str, int)) or isinstance(task_id, bool)):
        raise TaskError(f'{where}: "id" must be a string or an integer, got {task_id!r}')
    record = {"question": question, "answer": answer, "split": split, "level": level,
              "id": None if task_id is None else str(task_id)}  # fmt: skip
    if checker == "numeric" and parse_number(answer) is None:
        raise TaskError(f"{where}: answer {answer!r} is not a number; fix it or use checker='exact'")
    if checker == "regex":
        try:
            re.compile(answer)
        except (re.error, OverflowError, RecursionError) as e:  # "a{99999999999}", 2000 nested groups
            raise TaskError(
                f"{where}: answer {answer!r} is not a valid regex ({e}); fix the pattern or use checker='exact'"
            ) from None
    return record
