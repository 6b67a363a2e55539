"""Fuzz (issue 13): generated graph specs, task files, model outputs for every parser, CLI
argument vectors and server request bodies. Each case either works or fails with its one
line: an AgentkitError (or the parser's documented error), `error: ...` and a non-zero
exit, a 4xx JSON error. Anything else (another exception, a traceback, a 500, a dropped
connection, a hang) is a crash, and every group must end with none.

The inputs come from tests/_fuzz_inputs.py. Each group runs every generated case (no
early stop, no shrinking) and counts it, so the counts are exact; a failing group lists its
crashing inputs. The runs are deterministic (derandomize, no example database). With
AGENTKIT_FUZZ_REPORT=1 the counts are written to bench/results/fuzz.md:

    AGENTKIT_FUZZ_REPORT=1 python -m pytest tests/test_fuzz.py
"""

from __future__ import annotations

import http.client
import json
import math
import os
import socket
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pytest
from _fuzz_inputs import (
    BODY_LIMIT, SUITE_TASKS, argv_vectors, builder_programs, label_scores, long_chain, model_outputs, mutated_prebuilt,
    regression_file, requests, spec_dicts, task_files,
)
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from typer.testing import CliRunner

from agentkit.errors import AgentkitError, BackendError, TaskError
from agentkit.graph import Graph
from agentkit.graph.parsers import MalformedOutput, answer_key, choose_label, parse_plan, parse_review, parse_solution
from agentkit.graph.tools import CalculatorInput, ToolError, calculate, find_expression
from agentkit.llm.scripted import ScriptedLLM
from agentkit.llm.server import ServerLimits, make_server
from agentkit.tasks import get_suite, load_jsonl
from agentkit.tasks.base import parse_answer, parse_equation, parse_expression, parse_number
from agentkit.tasks.steps import split_steps

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(300)

GROUPS = ("graph specs", "task files", "parser calls", "CLI argument vectors", "server request bodies")
TALLY: dict[str, Counter] = {group: Counter() for group in GROUPS}
SECONDS: Counter = Counter()
CRASHES: dict[str, dict[str, str]] = {group: {} for group in GROUPS}
"""group -> what crashed -> the shortest input that did it (for the results file)."""


class Crash(Exception):
    """A case that neither worked nor failed with its one-line error."""


class Outcomes(Counter):
    """The outcomes of a case that is several cases (one text through every parser):
    counts of "ok", "error" and "crash", and what each crash was."""

    def __init__(self) -> None:
        super().__init__()
        self.crashes: list[str] = []


def one_line(text: str) -> bool:
    return bool(text.strip()) and text.splitlines() == [text]


def expect_one_line(exc: BaseException) -> str:
    message = str(exc)
    if not one_line(message):
        raise Crash(f"{type(exc).__name__} whose message is not one line: {message[:300]!r}")
    return "error"


def fuzz(group: str, strategy: st.SearchStrategy, check: Callable[[Any], str | Outcomes], *, examples: int,
         regressions: tuple = ()) -> None:
    """Run ``check`` on ``examples`` generated cases plus the ``regressions``; ``check``
    returns "ok" or "error" (a one-line error), or the Outcomes of several cases, and
    raises for anything else. Fails with the crashing inputs after every case has run."""
    crashes: list[str] = []

    def case(value: Any) -> None:
        outcomes = Outcomes()
        try:
            result = check(value)
        except Crash as exc:
            outcomes["crash"] += 1
            outcomes.crashes.append(str(exc))
        except Exception as exc:  # noqa: BLE001 - any other exception is what the fuzz looks for
            outcomes["crash"] += 1
            outcomes.crashes.append(f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
        else:
            if isinstance(result, Outcomes):
                outcomes = result
            else:
                outcomes[result] += 1
        TALLY[group].update(outcomes)
        TALLY[group]["tried"] += sum(outcomes.values())
        crashes.extend(f"{detail}\n    input: {value!r}"[:1200] for detail in outcomes.crashes)
        for detail in outcomes.crashes:
            shown, seen = repr(value), CRASHES[group].get(detail[:150])
            if seen is None or len(shown) < len(seen):
                CRASHES[group][detail[:150]] = shown

    run = settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                   phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))(given(strategy)(case))
    for value in regressions:
        run = example(value)(run)
    start = time.perf_counter()
    run()
    SECONDS[group] += time.perf_counter() - start
    if crashes:
        pytest.fail(f"{len(crashes)} crash(es) in {group} of {TALLY[group]['tried']} cases; the first ones:\n"
                    + "\n".join(crashes[:8]), pytrace=False)


# --- 1. graph specs ---------------------------------------------------------------------------


def check_graph(graph: Graph) -> str:
    """Validate and compile; a graph that compiles must also draw and route every node."""
    try:
        graph.validate()
        app = graph.compile()
    except AgentkitError as exc:
        return expect_one_line(exc)
    assert app is not None
    graph.to_mermaid()
    for node in graph.nodes:
        graph.spec.routes(node.name)
    return "ok"


def build_program(program: dict) -> str:
    """Replay a builder program; each builder call either works or raises its one line."""
    try:
        graph = Graph(program["name"])
    except AgentkitError as exc:
        return expect_one_line(exc)
    calls: list[Callable[[], Any]] = [lambda n=n, r=r, o=o: graph.add_node(n, role=r, **o) for n, r, o in program["nodes"]]
    calls += [lambda a=a, b=b, w=w: graph.add_edge(a, b, when=w) for a, b, w in program["edges"]]
    if program["entry"] is not None:
        calls.append(lambda: graph.set_entry(program["entry"]))
    for call in calls:
        try:
            call()
        except AgentkitError as exc:
            expect_one_line(exc)
    return check_graph(graph)


def from_dict(spec: Any) -> str:
    try:
        graph = Graph.from_spec(spec)
    except AgentkitError as exc:
        return expect_one_line(exc)
    return check_graph(graph)


def test_graph_builder_programs():
    fuzz("graph specs", builder_programs, build_program, examples=300, regressions=(
        # each of these leaked a pydantic ValidationError or a TypeError before it was a GraphSpecError
        {"name": "fuzz", "nodes": [("solve", "solver", {})], "edges": [("solve", "solve", 3)], "entry": "solve"},
        {"name": "fuzz", "nodes": [("solve", "solver", {})], "edges": [], "entry": ["solve"]},
        {"name": "a\nb", "nodes": [], "edges": [], "entry": None},
        {"name": "fuzz", "nodes": [("solve", "solver", {})], "edges": [("solve", "a\nb", None)], "entry": "solve"},
    ))


def test_graph_prebuilt_mutations():
    fuzz("graph specs", mutated_prebuilt(), from_dict, examples=200)


def test_graph_spec_dicts():
    fuzz("graph specs", spec_dicts, from_dict, examples=100, regressions=(
        {"name": 1},  # a ValidationError, not a GraphSpecError, before
        {"name": "g", "nodes": [{"name": "a b", "role": "nope"}], "entry": "a b"},  # validated as fine before
        {"name": "g", "nodes": [{"name": "r", "role": "router", "labels": {"a": 1, "b": ""}}], "entry": "r"},
        long_chain(1200),  # RecursionError in the cycle check before
    ))


# --- 2. task files ----------------------------------------------------------------------------


def make_task_check(tmp: Path) -> Callable[[dict], str]:
    path = tmp / "tasks.jsonl"

    def check(case: dict) -> str:
        path.write_bytes(case["data"])
        try:
            suite = load_jsonl(path, checker=case["checker"])
            tasks = suite.tasks(case["split"], case["n"], level=case["level"], seed=case["seed"])
            if isinstance(case["shots"], int):
                assert one_line(suite.describe(case["split"], len(tasks), case["shots"]))
            for task in tasks[:2]:
                assert isinstance(suite.prompt(task, shots=case["shots"]), str)
                reward = suite.verify(task, case["reply"])
                assert 0.0 <= reward <= 1.0, reward
                assert suite.check_steps(task, case["reply"]) is None
                assert suite.step_accuracy(task, case["reply"]) is None
        except TaskError as exc:
            return expect_one_line(exc)
        return "ok"

    return check


def test_task_files(tmp_path):
    fuzz("task files", task_files(), make_task_check(tmp_path), examples=400, regressions=(
        # a 5000-digit integer: ValueError from json, not JSONDecodeError
        regression_file('{"question": "q", "answer": ' + "9" * 5000 + "}"),
        regression_file("[" * 5000 + "]" * 5000),  # RecursionError from json
        regression_file('{"question": "\\ud800", "answer": "1"}'),  # UnicodeEncodeError when hashing the question
        regression_file('{"question": "q", "answer": "a{99999999999}"}', checker="regex"),  # OverflowError from re
        regression_file('{"question": "q", "answer": "' + "(" * 2000 + ")" * 2000 + '"}', checker="regex"),
        regression_file('{"id": "a\\nb", "question": "q", "answer": 1}', '{"id": "a\\nb", "question": "r", "answer": 2}'),
    ))


def test_generated_suites_bound_n_and_shots():
    suite = get_suite("countdown")
    with pytest.raises(TaskError, match="at most 10000"):
        suite.tasks("test", 10**20, level=5)
    task = suite.tasks("test", 1)[0]
    with pytest.raises(TaskError, match="at most 9999"):
        suite.prompt(task, shots=10**20)


def test_a_raw_u2028_in_a_question_stays_in_its_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"question": "a\u2028b", "answer": 1, "split": "test"}\n', encoding="utf-8")
    (task,) = load_jsonl(path).tasks("test", 5)
    assert task.question == "a\u2028b"


def test_a_bom_and_a_float_answer_read_as_written(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('\ufeff{"question": "q", "answer": 0.00001, "split": "test"}\n', encoding="utf-8")
    suite = load_jsonl(path, checker="numeric")  # was: line 1 not valid JSON (BOM), answer '1e-05' is not a number
    (task,) = suite.tasks("test", 1)
    assert task.answer == "0.00001"
    assert suite.verify(task, "Answer: 0.00001") == 1.0


# --- 3. model outputs for every parser --------------------------------------------------------


def parser_calls(text: str) -> list[tuple[str, Callable[[], Any], tuple[type[BaseException], ...]]]:
    """(name, call, documented errors) for every parser on ``text``."""
    calls: list[tuple[str, Callable[[], Any], tuple]] = [
        ("parse_plan", lambda: parse_plan(text), (MalformedOutput,)),
        ("parse_review", lambda: parse_review(text), (MalformedOutput,)),
        ("parse_solution", lambda: parse_solution(text), (MalformedOutput,)),
        ("answer_key", lambda: answer_key(text), ()),
        ("answer_key(parse_answer)", lambda: answer_key(parse_answer(text)), ()),
        ("find_expression", lambda: find_expression(text), (ToolError,)),
        ("calculator", lambda: calculate(CalculatorInput.model_validate(find_expression(text))), (ToolError, ValidationError)),
        ("calculate", lambda: calculate(CalculatorInput.model_validate({"expression": text})), (ToolError, ValidationError)),
        ("split_steps", lambda: split_steps(text), ()),
        ("parse_number", lambda: parse_number(text), ()),
        ("parse_equation", lambda: parse_equation(text), ()),
        ("parse_expression", lambda: parse_expression(text), ()),
    ]
    for suite, task in SUITE_TASKS:
        where = f"{suite.name} level {task.level}"

        def judged(suite=suite, task=task) -> None:
            reward = suite.verify(task, text)
            assert isinstance(reward, float) and 0.0 <= reward <= 1.0, reward
            checks = suite.check_steps(task, text)
            assert checks is None or (len(checks) == len(split_steps(text)) and all(isinstance(c, bool) for c in checks))
            accuracy = suite.step_accuracy(task, text)
            assert accuracy is None or 0.0 <= accuracy <= 1.0, accuracy

        calls += [(f"{where} parse_answer", lambda suite=suite: suite.parse_answer(text), ()),
                  (f"{where} parse_solution", lambda suite=suite: parse_solution(text, suite.parse_answer), (MalformedOutput,)),
                  (f"{where} verify/check_steps/step_accuracy", judged, ())]
    return calls


def check_parsers(case: tuple[str, dict]) -> Outcomes:
    """One text through every parser: each call is a case of its own."""
    text, scores = case
    outcomes = Outcomes()
    for name, call, errors in parser_calls(text) + [("choose_label", lambda: check_choice(scores), (ValueError,))]:
        try:
            call()
            outcomes["ok"] += 1
        except errors as exc:
            if isinstance(exc, ValidationError) or one_line(str(exc)):  # pydantic's: run_tool words it in one line
                outcomes["error"] += 1
            else:
                outcomes["crash"] += 1
                outcomes.crashes.append(f"{name}: {type(exc).__name__} not one line: {str(exc)[:200]!r}")
        except Exception as exc:  # noqa: BLE001
            outcomes["crash"] += 1
            outcomes.crashes.append(f"{name}: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
    return outcomes


def check_choice(scores: dict) -> None:
    choice = choose_label(scores)
    assert choice.route in scores
    assert math.isclose(sum(choice.distribution.values()), 1.0), choice.distribution


def test_parsers_on_model_outputs():
    fuzz("parser calls", st.tuples(model_outputs, label_scores), check_parsers, examples=500, regressions=(
        ("Score: 7/10\r\nVerdict: revise\r\n", {"accept": 10**400, "revise": -1.0}),  # OverflowError; CRLF verdict
    ))
    assert parse_review("Score: 7/10\r\nVerdict: revise\r\n").verdict == "revise"
    assert parse_plan("1. a\r\n2. b\r\n").plan == ["a", "b"]


# --- 4. CLI argument vectors ------------------------------------------------------------------


GROUPS_WITH_HELP = {(), ("traces",), ("memory",), ("policy",), ("trainer",), ("graphs",)}


def check_cli_result(argv: list[str], result: Any) -> str:
    out, err = result.stdout, result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise Crash(f"{type(result.exception).__name__}: {' '.join(str(result.exception).split())[:300]}")
    if "Traceback" in out + err:
        raise Crash(f"a traceback: {(out + err)[-300:]!r}")
    helped = "Usage:" in out and (any(a in ("--help", "-h") for a in argv) or tuple(argv) in GROUPS_WITH_HELP)
    if result.exit_code == 0 or helped:
        return "ok"
    if result.exit_code == 1 and len(err.splitlines()) == 1 and err.startswith("error:") and not out.strip():
        return "error"
    raise Crash(f"exit {result.exit_code} with stdout {out[:200]!r} and stderr {err[:300]!r}")


@pytest.fixture(scope="module")
def cli_world(tmp_path_factory):
    """A store with two scripted runs, and the files the vectors point at."""
    from agentkit.store import TrajectoryStore
    from agentkit.runtime import run_tasks

    tmp = tmp_path_factory.mktemp("cli")
    suite = get_suite("arithmetic")
    tasks = suite.tasks("test", 2)
    with TrajectoryStore(tmp / "runs.db") as store:
        run_tasks(ScriptedLLM([tasks[0].solution, "Step 1: 1 + 1 = 3\nAnswer: 3"]), suite, tasks, store, concurrency=1)
    (tmp / "garbage.txt").write_bytes(b"\x00\xffnot a store at all" * 100)
    (tmp / "good.jsonl").write_text('{"question": "q", "answer": 4, "split": "test"}\n', encoding="utf-8")
    (tmp / "bad.jsonl").write_text('{"question": \n', encoding="utf-8")
    (tmp / "good_graph.py").write_text("from agentkit.graph import Graph\n"
                                       "graph = Graph('mine').add_node('solve', role='solver').set_entry('solve')\n")
    (tmp / "broken_graph.py").write_text("raise RuntimeError('broken\\non two lines')\n")
    with socket.socket() as sock:  # a loopback port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    return tmp, closed_port


def test_cli_argument_vectors(cli_world):
    from agentkit.cli.app import app

    tmp, closed_port = cli_world
    env = {"AGENTKIT_STORE": str(tmp / "runs.db"), "AGENTKIT_HOME": str(tmp / "home"), "COLUMNS": "100",
           "HF_HUB_OFFLINE": "1"}
    runner = CliRunner()

    def check(argv: list[str]) -> str:
        return check_cli_result(argv, runner.invoke(app, argv, env=env))

    cwd = os.getcwd()
    os.chdir(tmp)  # a relative path in a vector lands here, never in the repository
    try:
        fuzz("CLI argument vectors", argv_vectors(tmp, closed_port), check, examples=300,
             regressions=(
                 ["run", "--n", "abc"], ["traces", "show", "-5"], ["memory", "rollback", "-1"],
                 ["run", "--n", "99999999999999999999", "--backend", "openai", "--base-url", f"http://127.0.0.1:{closed_port}/v1"],
                 ["run", "--resume", "99999999999999999999999"],
                 ["run", "--backend", "openai", "--base-url", "http://[::1"],
             ))
    finally:
        os.chdir(cwd)


# --- 5. server request bodies -----------------------------------------------------------------


class FuzzLLM(ScriptedLLM):
    """The scripted backend with a context length (so the server's max_tokens ceiling is on)
    and a guard: a request the server let through for n * prompts samples the fuzz cannot
    afford to generate fails loudly instead of running for minutes."""

    context_length = 512
    max_samples = 4096

    def generate(self, requests):
        samples = sum(r.n for r in requests)
        if samples > self.max_samples:
            raise BackendError(f"the server let through a request for {samples} samples (no bound on n)")
        return super().generate(requests)


@pytest.fixture(scope="module")
def fuzz_server():
    llm = FuzzLLM(lambda prompt, request: f"Step 1: 2 + 2 = 4\nAnswer: 4 ({prompt[-8:]})")
    server = make_server(llm, port=0, limits=ServerLimits(max_body_bytes=BODY_LIMIT, request_timeout_s=10,
                                                            read_timeout_s=5))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.stop(grace_s=1)
    thread.join(timeout=5)


def check_response(path: str, status: int, payload: bytes, stream: bool) -> str:
    text = payload.decode("utf-8", "replace")
    if status == 200:
        if stream:
            events = [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]
            if not events or events[-1] != "[DONE]" or any('"error"' in e for e in events):
                raise Crash(f"a 200 stream that is not a clean completion: {text[-300:]!r}")
            return "ok"
        body = json.loads(text)
        if path == "/v1/completions" and not (isinstance(body.get("choices"), list) and body["choices"]
                                              and all(isinstance(c.get("text"), str) for c in body["choices"])):
            raise Crash(f"a 200 without choices: {text[:300]!r}")
        return "ok"
    if 400 <= status < 500:
        try:
            error = json.loads(text)["error"]
            message, param = error["message"], error.get("param")
        except (ValueError, KeyError, TypeError):
            raise Crash(f"a {status} whose body is not a JSON error: {text[:300]!r}") from None
        if not (isinstance(message, str) and one_line(message)):
            raise Crash(f"a {status} whose message is not one line: {message!r}")
        if param is not None and param not in message:
            raise Crash(f"a {status} for param {param!r} whose message does not name it: {message!r}")
        return "error"
    raise Crash(f"status {status}: {text[:300]}")


def test_server_request_bodies(fuzz_server):
    port = fuzz_server.port

    def check(request: tuple[str, bytes]) -> str:
        path, data = request
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        try:
            conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as exc:  # a timeout is an OSError too
            raise Crash(f"no answer: {type(exc).__name__}: {exc}") from None
        finally:
            conn.close()
        stream = response.getheader("Content-Type", "").startswith("text/event-stream")
        return check_response(path, response.status, payload, stream)

    fuzz("server request bodies", requests(), check, examples=300, regressions=(
        ("/v1/completions", b'{"prompt": "hi", "max_tokens": 1000000000000}'),
        ("/v1/completions", b'{"prompt": "hi", "n": 1000000000}'),  # no bound on n
        ("/v1/completions", b'{"prompt": [100000], "max_tokens": 2}'),  # a token id outside the vocabulary
        ("/v1/completions", b'{"prompt": "\\ud800", "max_tokens": 2}'),  # a lone surrogate
        ("/v1/completions", b'{"prompt": "hi", "stream": true, "max_tokens": 4}'),
        ("/v1/completions", b"[" * 1000),  # RecursionError in json
        ("/v1/completions", b'{"prompt": "hi", "max_tokens": ' + b"9" * 5000 + b"}"),  # ValueError in json
        ("/detokenize", b'{"tokens": [300]}'),
    ))


# --- the figures ------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def fuzz_report():
    """With AGENTKIT_FUZZ_REPORT=1: bench/results/fuzz.md from this run's counts."""
    start = time.perf_counter()
    yield
    if os.environ.get("AGENTKIT_FUZZ_REPORT") != "1":
        return
    sys.path.insert(0, str(ROOT))
    from bench._common import RESULTS, machine, markdown_table

    rows = [[group, TALLY[group]["tried"], TALLY[group]["crash"], TALLY[group]["error"], TALLY[group]["ok"],
             round(SECONDS[group], 1)] for group in GROUPS]
    total = [sum(TALLY[g][k] for g in GROUPS) for k in ("tried", "crash", "error", "ok")]
    rows.append(["total", *total, round(sum(SECONDS.values()), 1)])
    per_text = len(parser_calls("")) + 1
    texts = TALLY["parser calls"]["tried"] // per_text
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    body = (
        markdown_table(["group", "cases tried", "crashes", "one-line errors", "successes", "seconds"], rows)
        + f"\n\nWhole file: {time.perf_counter() - start:.1f} s (with the server and store fixtures).\n\n"
        "- graph specs: builder programs (add_node/add_edge/set_entry with random names, roles, options), "
        "mutated prebuilt specs and random dicts through Graph.from_spec; each validated and compiled to LangGraph. "
        "An error is a one-line AgentkitError.\n"
        "- task files: random JSONL (valid and broken lines, missing fields, wrong types, 5000-digit numbers, "
        "lone surrogates, U+2028, invalid UTF-8) through load_jsonl, tasks(split, n), prompt(task, shots), verify. "
        "An error is a one-line TaskError.\n"
        f"- parser calls: {texts} generated model outputs, each through every parser ({per_text} "
        "calls: plan, review, solution, answer_key, the calculator, the base parsers, and parse_answer, verify, "
        "check_steps and step_accuracy of every built-in suite at two levels, plus choose_label on random scores). "
        "An error is the parser's documented one (MalformedOutput, ToolError, the calculator input's ValidationError).\n"
        "- CLI argument vectors: random argv for every command but serve/improve/trainer start, in process through "
        "CliRunner; `run` always ends in --backend openai and a closed loopback port. An error is exit 1 with one "
        "line `error: ...` on stderr and nothing on stdout; help (--help, a bare group) counts as a success.\n"
        "- server request bodies: POSTs to the real server (scripted backend, 256 KiB body limit) on loopback: random "
        "completion fields and types, huge values, streams, non-JSON, oversized bodies, /tokenize, /detokenize and "
        "chat messages to /v1/chat/completions (the scripted backend has no chat template, so a chat is the 400 that "
        "says so). An error is a 4xx JSON error whose one-line message names its param. "
        "The scripted backend refuses a request for more than 4096 samples (n x prompts), standing in for a server "
        "that would generate them all: such a request is counted as a crash.\n"
    )
    found = [f"- {group}: {detail}\n  - shortest input: `{shown[:300]}`" for group in GROUPS
             for detail, shown in sorted(CRASHES[group].items())]
    if found:
        body += "\n## Crashes\n\n" + "\n".join(found) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fuzz.md").write_text(
        "# Fuzz: cases tried and crashes per group (issue 13)\n\n"
        "- command: `AGENTKIT_FUZZ_REPORT=1 python -m pytest tests/test_fuzz.py`\n"
        f"- machine: {machine()}\n- date: {stamp}\n\n{body}")
