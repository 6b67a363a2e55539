"""`agentkit memory`: every command over a small library, and bad input as one error line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from agentkit.cli.app import app
from agentkit.memory import ExperienceLibrary
from agentkit.memory.library import NewItem, RunOutcome

FAMILY = "arithmetic/1"


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "240"})


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "runs.db"
    with ExperienceLibrary(path) as library:
        library.add([NewItem.exemplar(FAMILY, "Compute 47 * 3.", "Step 1: 47 * 3 = 141\nAnswer: 141"),
                     NewItem.exemplar(FAMILY, "Compute 20 - 5.", "Step 1: 20 - 5 = 15\nAnswer: 15"),
                     NewItem.insight(FAMILY, "multiplying by a digit", "multiply tens and units apart", "47 * 3 = 141")])
        library.apply_outcomes([RunOutcome(1, FAMILY, False, ["solve"], [(2, "solve")]),
                                RunOutcome(2, FAMILY, True, ["solve"], [(1, "solve")])])
    return path


def test_list_show_search_and_stats(store):
    out = invoke("memory", "list", "--store", str(store), "--sort", "utility")
    assert out.exit_code == 0, out.output
    assert "3 items" in out.output and "version 2" in out.output
    assert out.output.index("Compute 47 * 3.") < out.output.index("Compute 20 - 5.")  # most useful first
    out = invoke("memory", "show", "3", "--store", str(store))
    assert out.exit_code == 0 and "condition: multiplying by a digit" in out.output and "example: 47 * 3" in out.output
    out = invoke("memory", "search", "Compute 47 * 8.", "--store", str(store), "-k", "2")
    assert out.exit_code == 0 and "2 items" in out.output
    assert out.output.index("47 * 3") < out.output.index("multiplying")
    out = invoke("memory", "stats", "--store", str(store))
    assert out.exit_code == 0
    for text in ("exemplar", "insight", "node base rates", "update from runs", "50.0%"):
        assert text in out.output


def test_prune_export_import_rollback(store, tmp_path):
    out = invoke("memory", "prune", "--store", str(store), "--max-items", "2")
    assert out.exit_code == 0 and "evicted 1" in out.output
    with ExperienceLibrary(store) as library:
        assert len(library.items()) == 2 and library.get(2).status == "retired"
    path = tmp_path / "lib.jsonl"
    out = invoke("memory", "export", str(path), "--store", str(store))
    assert out.exit_code == 0 and "wrote 3 items" in out.output
    assert json.loads(path.read_text().splitlines()[0])["format"] == "agentkit-library"
    other = tmp_path / "other.db"
    ExperienceLibrary(other).close()
    out = invoke("memory", "import", str(path), "--store", str(other))
    assert out.exit_code == 0 and "added 3 items" in out.output
    out = invoke("memory", "rollback", "2", "--store", str(store))
    assert out.exit_code == 0 and "as it was at version 2" in out.output
    with ExperienceLibrary(store) as library:
        assert len(library.items()) == 3
    assert "already" in invoke("memory", "rollback", "2", "--store", str(store)).output


def bad_inputs(tmp_path, store):
    corrupt = tmp_path / "corrupt.jsonl"
    with ExperienceLibrary(store) as library:
        library.export_jsonl(corrupt)
    lines = corrupt.read_text().splitlines()
    corrupt.write_text("\n".join(lines[:2] + ['{"kind": "exemplar", "family": '] + lines[3:]) + "\n")
    s = ["--store", str(store)]
    return {
        "unknown item": (["memory", "show", "99", *s], "no library item 99"),
        "unknown kind": (["memory", "list", "--kind", "lesson", *s], "--kind lesson"),
        "unknown version": (["memory", "rollback", "42", *s], "no library version 42"),
        "corrupt import": (["memory", "import", str(corrupt), *s], "line 3"),
        "missing import": (["memory", "import", str(tmp_path / "nope.jsonl"), *s], "nope.jsonl"),
        "no store": (["memory", "stats", "--store", str(tmp_path / "none.db")], "none.db"),
        "bad retriever": (["memory", "search", "x", "--retriever", "tfidf", *s], "--retriever tfidf"),
        "bad cap": (["memory", "prune", "--max-items", "0", *s], "--max-items 0"),
    }


@pytest.mark.parametrize("case", ["unknown item", "unknown kind", "unknown version", "corrupt import",
                                  "missing import", "no store", "bad retriever", "bad cap"])
def test_bad_input_is_one_error_line_and_changes_nothing(case, tmp_path, store):
    args, needle = bad_inputs(tmp_path, store)[case]
    with ExperienceLibrary(store) as library:
        before = library.version()
    result = invoke(*args)
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.output
    with ExperienceLibrary(store) as library:
        assert library.version() == before


def test_a_corrupt_import_in_a_real_process_prints_one_line(tmp_path, store):
    args, _ = bad_inputs(tmp_path, store)["corrupt import"]
    result = subprocess.run([sys.executable, "-m", "agentkit.cli", *args], capture_output=True, text=True, timeout=60,
                            env={**os.environ})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "line 3" in result.stderr and "nothing was imported" in result.stderr
