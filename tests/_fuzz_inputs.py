"""What tests/test_fuzz.py feeds the code: hypothesis strategies for graph specs, task
files, model outputs, CLI argument vectors and server request bodies. Each mixes inputs
that should work with hostile ones (wrong types, huge numbers, NUL bytes, lone surrogates,
broken JSON), so that both outcomes are exercised."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from agentkit.graph import ROLES, load_graph, prebuilt_names
from agentkit.tasks import get_suite, list_suites


def mostly(good: st.SearchStrategy, *bad: st.SearchStrategy, times: int = 4) -> st.SearchStrategy:
    """``good`` about ``times`` times as often as each of ``bad`` (one_of picks its distinct
    branches evenly, so repeating a strategy there changes nothing)."""
    return st.sampled_from([good] * times + list(bad)).flatmap(lambda strategy: strategy)


HOSTILE_TEXT = [
    "", " ", "\x00", "a\x00b", "\n", "\r\n", "\u2028", "\x85", "\ufeff", "\u202e", "é", "١٢٣", "１２", "🙂",
    "1e999999", "9" * 5000, "-0", "NaN", "inf", "((((", "))))", "$", "${question}", "'\"", "\\", "%s", "{}",
]
hostile_text = st.one_of(st.text(max_size=12), st.sampled_from(HOSTILE_TEXT))
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True), hostile_text,
)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)), max_leaves=6)


# --- graph specs -----------------------------------------------------------------------------


NODE_NAMES = ["plan", "solve", "review", "check", "route", "calc", "select", "solve2"]
LABELS = ["accept", "revise", "calculator", "reasoning", "yes"]
node_names = mostly(st.sampled_from(NODE_NAMES), st.sampled_from(
    ["", "1abc", "a b", "a\nb", "x" * 65, "__end__", "END", "question"]), st.text(max_size=6), st.integers(), times=6)
roles = mostly(st.sampled_from(ROLES), hostile_text, st.none(), times=6)

OPTION_VALUES: dict[str, st.SearchStrategy] = {
    "max_retries": st.one_of(st.integers(-2, 7), json_scalars),
    "max_revisions": st.one_of(st.integers(-1, 4), st.none()),
    "max_visits": st.one_of(st.integers(-1, 4), st.none(), json_scalars),
    "n": st.one_of(st.integers(0, 70), json_scalars),
    "temperature": st.one_of(st.sampled_from([0, 0.8, None]), st.floats(allow_nan=True, allow_infinity=True)),
    "max_tokens": st.one_of(st.integers(-5, 10**12), st.none()),
    "shots": st.one_of(st.integers(-1, 5), st.none()),
    "labels": st.one_of(st.lists(st.sampled_from(LABELS + ["a b", ""]), max_size=4),
                        st.dictionaries(st.sampled_from(LABELS), st.one_of(st.text(max_size=8), st.integers()), max_size=3),
                        json_values),
    "tool": st.one_of(st.sampled_from(["calculator", "nope"]), json_scalars),
    "judge": st.one_of(st.booleans(), json_scalars),
    "memory": st.one_of(st.integers(-1, 20), st.booleans(), st.none(), json_values, st.fixed_dictionaries(
        {"k": st.integers(0, 20)}, optional={"kinds": st.lists(st.sampled_from(["exemplar", "insight", "route", "x"]),
                                                               max_size=3), "weight": st.floats(-1, 20)})),
    "prompt": st.one_of(st.none(), st.text(max_size=20), st.sampled_from(
        ["${question}", "Q: $question\n${cue}", "${bogus}", "$", "$$", "${", "${solution} $plan_section"])),
    "bogus": json_scalars,
}
options = st.dictionaries(st.sampled_from(list(OPTION_VALUES)), st.none(), max_size=3).flatmap(
    lambda keys: st.fixed_dictionaries({key: OPTION_VALUES[key] for key in keys}))
edges = st.tuples(node_names, node_names, mostly(st.none(), st.sampled_from(LABELS), json_scalars, times=2))
random_programs = st.fixed_dictionaries({
    "name": st.one_of(st.just("fuzz"), hostile_text, st.integers()),
    "nodes": st.lists(st.tuples(node_names, roles, options), max_size=6),
    "edges": st.lists(edges, max_size=8),
    "entry": st.one_of(node_names, st.none()),
})
GOOD_OPTIONS = {
    "planner": {"max_retries": st.integers(0, 5), "max_tokens": st.integers(1, 512), "memory": st.integers(0, 16)},
    "solver": {"max_retries": st.integers(0, 5), "temperature": st.floats(0, 2), "shots": st.integers(0, 5),
               "max_visits": st.integers(1, 4), "memory": st.integers(0, 16), "prompt": st.just("${context}${cue}")},
    "critic": {"max_retries": st.integers(0, 5), "memory": st.booleans()},
    "verifier": {"judge": st.booleans()},
}


@st.composite
def plausible_programs(draw: Any) -> dict:
    """A graph shaped like the prebuilt ones (plan? -> solve [fan-out -> select | route -> calc/solve]
    -> review? -> check?), valid before up to two hostile edits."""
    nodes: list[tuple] = []
    edges_: list[tuple] = []

    def node(name: str, role: str, **fixed: Any) -> str:
        good = GOOD_OPTIONS.get(role, {})
        keys = draw(st.lists(st.sampled_from(sorted(good)), unique=True, max_size=2)) if good else []
        nodes.append((name, role, {**{k: draw(good[k]) for k in keys}, **fixed}))
        return name

    last = node("plan", "planner") if draw(st.booleans()) else None
    shape = draw(st.sampled_from(["solve", "fan-out", "router"]))
    if shape == "solve":
        solver = node("solve", "solver")
        ends = [solver]
    elif shape == "fan-out":
        solver = node("solve", "solver", n=draw(st.integers(2, 8)), temperature=draw(st.floats(0.1, 2)))
        ends = [node("select", "selector")]
        edges_.append((solver, "select", None))
    else:
        solver = node("solve", "solver")
        route = node("route", "router", labels=["calculator", "reasoning"])
        ends = [node("calc", "tool", tool="calculator"), solver]
        edges_ += [(route, "calc", "calculator"), (route, solver, "reasoning")]
        solver = route
    if last is not None:
        edges_.append((last, solver, None))
    first = last or solver
    if draw(st.booleans()) and shape != "router":
        review = node("review", "critic", max_revisions=draw(st.integers(0, 3)))
        edges_ += [(end, review, None) for end in ends] + [(review, "solve", "revise")]
        ends = [review]
        if draw(st.booleans()):
            node("check", "verifier")
            edges_.append((review, "check", "accept"))
    elif draw(st.booleans()):
        node("check", "verifier")
        edges_ += [(end, "check", None) for end in ends]
    program = {"name": "fuzz", "nodes": nodes, "edges": edges_, "entry": first}
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        part = draw(st.sampled_from(["nodes", "edges", "entry", "name"]))
        if part == "nodes":
            program["nodes"].append((draw(node_names), draw(roles), draw(options)))
        elif part == "edges":
            program["edges"].append(draw(edges))
        else:
            program[part] = draw(node_names if part == "entry" else st.one_of(hostile_text, st.integers()))
    return program


builder_programs = mostly(plausible_programs(), random_programs, times=2)


PREBUILT = {name: load_graph(name).spec.model_dump() for name in prebuilt_names()}


@st.composite
def mutated_prebuilt(draw: Any) -> dict:
    """A prebuilt graph's spec dict with a few random edits: mostly still valid."""
    spec = json.loads(json.dumps(PREBUILT[draw(st.sampled_from(sorted(PREBUILT)))]))
    for _ in range(draw(st.sampled_from([0, 1, 1, 2, 3]))):
        nodes, edges_ = spec["nodes"], spec["edges"]
        kind = draw(st.sampled_from(["option", "drop edge", "add edge", "entry", "drop node", "role", "copy node"]))
        if kind == "option" and nodes:
            target = draw(st.sampled_from(nodes))
            good = GOOD_OPTIONS.get(target["role"], {})
            if good and draw(st.booleans()):
                key = draw(st.sampled_from(sorted(good)))
                target[key] = draw(good[key])
            else:
                key = draw(st.sampled_from(list(OPTION_VALUES)))
                target[key] = draw(OPTION_VALUES[key])
        elif kind == "drop edge" and edges_:
            edges_.pop(draw(st.integers(0, len(edges_) - 1)))
        elif kind == "add edge" and nodes:
            ends = st.sampled_from([n["name"] for n in nodes])
            edges_.append({"source": draw(ends), "target": draw(ends), "when": draw(st.sampled_from([None, *LABELS]))})
        elif kind == "entry":
            spec["entry"] = draw(st.one_of(node_names, st.sampled_from([n["name"] for n in nodes] or ["x"])))
        elif kind == "drop node" and nodes:
            nodes.pop(draw(st.integers(0, len(nodes) - 1)))
        elif kind == "role" and nodes:
            draw(st.sampled_from(nodes))["role"] = draw(roles)
        elif kind == "copy node" and nodes:
            nodes.append(dict(draw(st.sampled_from(nodes))))
    return spec


spec_dicts = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(["name", "description", "nodes", "edges", "entry", "bogus"]), json_values),
    st.fixed_dictionaries({"name": st.one_of(st.just("g"), json_scalars)}, optional={
        "nodes": st.lists(st.dictionaries(st.sampled_from(["name", "role", "n", "labels", "tool", "memory", "x"]),
                                          st.one_of(node_names, roles, json_scalars), max_size=4), max_size=4),
        "edges": st.lists(st.dictionaries(st.sampled_from(["source", "target", "when", "x"]),
                                          st.one_of(node_names, json_scalars), max_size=3), max_size=4),
        "entry": st.one_of(node_names, json_values), "description": json_scalars}),
)


def long_chain(n: int) -> dict:
    nodes = [{"name": f"n{i}", "role": "solver"} for i in range(n)]
    return {"name": "chain", "nodes": nodes, "entry": "n0",
            "edges": [{"source": f"n{i}", "target": f"n{i + 1}"} for i in range(n - 1)]}


# --- task files ------------------------------------------------------------------------------


task_objects = st.fixed_dictionaries({}, optional={
    "question": st.one_of(st.text(max_size=30), st.sampled_from(["What is 2 + 2?", "Capital of France?"]), json_values),
    "answer": st.one_of(st.text(max_size=12), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                        st.sampled_from(["4", "Paris", r"\d+", "(", "a{99999999999}", "(" * 2000 + ")" * 2000]),
                        json_values),
    "split": st.one_of(st.sampled_from(["train", "test"]), json_values),
    "level": st.one_of(st.integers(1, 3), st.integers(-(10**20), 10**20), json_values),
    "id": st.one_of(st.text(max_size=6), st.integers(0, 3), json_values),
    "extra": json_values,
})
RAW_LINES = [
    "", "   ", "\t", "{", "[]", "null", "1e999999", "[" * 5000 + "]" * 5000, "\ufeff{\"question\": \"q\", \"answer\": 1}",
    '{"question": "q", "answer": ' + "9" * 5000 + "}", '{"question": "\\ud800", "answer": "1"}',
    '{"question": "q", "answer": "a\\udfff"}', '{"question": "q", "answer": 1}\r', '{"question": "q\u2028x", "answer": 1}',
    '{"question": "q", "answer": NaN}', '{"question": "q", "answer": Infinity, "split": "train"}',
]


GOOD_ANSWERS = {"exact": st.one_of(st.text(min_size=1, max_size=12), st.integers(-99, 99)),
                "numeric": st.one_of(st.integers(-(10**6), 10**6), st.floats(-1e6, 1e6), st.sampled_from(["1,000", "3/4", "$12"])),
                "regex": st.sampled_from([r"\d+", "Paris|paris", "4", r"-?\d+(\.\d+)?", "[a-z]+"])}


@st.composite
def good_line(draw: Any, checker: str, number: int) -> str:
    obj: dict[str, Any] = {"question": f"q{number}: " + draw(st.text(max_size=20)),
                           "answer": draw(GOOD_ANSWERS.get(checker, GOOD_ANSWERS["exact"]))}
    if draw(st.booleans()):
        obj["split"] = draw(st.sampled_from(["train", "test"]))
    if draw(st.sampled_from([False, False, True])):
        obj["level"] = draw(st.integers(1, 3))
    if draw(st.sampled_from([False, False, True])):
        obj["id"] = f"t{number}"
    return json.dumps(obj, ensure_ascii=draw(st.booleans()))


@st.composite
def task_files(draw: Any) -> dict:
    checker = draw(st.sampled_from(["exact"] * 4 + ["numeric"] * 3 + ["regex"] * 2 + ["fuzzy"]))
    lines = [draw(good_line(checker, k)) for k in range(draw(st.integers(1, 8)))]
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):  # broken or odd lines
        lines.insert(draw(st.integers(0, len(lines))), draw(st.one_of(
            st.builds(lambda obj, ascii_: json.dumps(obj, ensure_ascii=ascii_), task_objects, st.booleans()),
            st.sampled_from(RAW_LINES), st.text(max_size=20))))
    content = "\n".join(lines) + draw(st.sampled_from(["", "\n", "\r\n"]))
    data = content.encode("utf-8", "surrogatepass")
    return {
        "data": draw(mostly(st.just(data), st.just(b"\xff\xfe" + data), st.just(data[: len(data) // 2]), times=8)),
        "checker": checker,
        "split": draw(mostly(st.sampled_from(["train", "test", "test", "test", "all", "all"]), hostile_text, times=8)),
        "n": draw(mostly(st.integers(0, 12), st.integers(-3, 10**20), json_scalars, times=8)),
        "level": draw(mostly(st.none(), st.integers(-1, 4), json_scalars, times=8)),
        "seed": draw(st.integers(0, 3)),
        "shots": draw(mostly(st.integers(0, 4), st.integers(-3, 10**20), json_scalars, times=8)),
        "reply": draw(st.one_of(st.text(max_size=30), st.sampled_from(["Answer: 4", "Answer: Paris", "Answer: 12"]))),
    }


def regression_file(*lines: str, checker: str = "exact", split: str = "test", n: int = 3, shots: int = 1) -> dict:
    return {"data": "\n".join(lines).encode("utf-8", "surrogatepass"), "checker": checker, "split": split, "n": n,
            "level": None, "seed": 0, "shots": shots, "reply": "Answer: 4"}


# --- model outputs ---------------------------------------------------------------------------


SUITE_TASKS = [(get_suite(name), task) for name in list_suites()
               for level in get_suite(name).levels[:2] for task in get_suite(name).tasks("test", 1, level=level)]
GOLD = [task.solution for _, task in SUITE_TASKS]

numbers = st.one_of(st.integers(-999, 999).map(str), st.sampled_from(
    ["1e999999", "9" * 5000, "-0", "00", "1,000", "3/4", "1/0", "0.5", ".5", "NaN", "inf", "$12", "٣", "１２", "24"]))
ops = st.sampled_from(list("+-*/×÷−x^%"))


def parens(depth: int) -> str:
    return "(" * depth + "1 + 2" + ")" * depth


line_templates = st.one_of(
    st.builds("Step {}: {} {} {} = {}".format, st.integers(0, 12), numbers, ops, numbers, numbers),
    st.builds("Answer: {}".format, st.one_of(numbers, st.text(max_size=10), st.sampled_from(["True", "done", "False."]))),
    st.builds("**Answer:** {}".format, numbers),
    st.builds("Score: {}".format, st.one_of(numbers, st.sampled_from(["7/10", "95/100", "11/10", "7 / 10", "-1"]))),
    st.builds("Verdict: {}".format, st.sampled_from(["accept", "revise", "Accept.", "**revise**", "maybe", ""])),
    st.builds("Critique: {}".format, st.text(max_size=20)),
    st.builds("{}{} {}".format, st.integers(0, 25), st.sampled_from([".", ")", ":"]), st.text(max_size=15)),
    st.builds("Step {}: move {} from {} to {}".format, st.integers(1, 6), st.sampled_from("ABCZa"),
              st.sampled_from(["A", "B", "the table", "table"]), st.sampled_from(["A", "C", "the table"])),
    st.builds("Step {}: Max is a wumpus. Every wumpus is hot. So {} is {}{}.".format, st.integers(1, 4),
              st.sampled_from(["Max", "Sam"]), st.sampled_from(["", "not "]), st.sampled_from(["hot", "a yumpus", "x"])),
    st.builds("Answer: {}".format, st.sampled_from([0, 1, 31, 32, 33, 500, 5000]).map(parens)),
    st.builds("Compute {}.".format, st.sampled_from([1, 32, 33, 400]).map(parens)),
)


@st.composite
def near_misses(draw: Any) -> str:
    lines = draw(st.lists(line_templates, min_size=1, max_size=8))
    return draw(st.sampled_from(["\n", "\n", "\r\n", "\x00", "\u2028", " "])).join(lines)


@st.composite
def mutated_gold(draw: Any) -> str:
    text = draw(st.sampled_from(GOLD))
    at = draw(st.integers(0, len(text)))
    return text[:at] + draw(st.sampled_from(["", "1", "\n", "\x00", "Step 9: 1 + 1 = 3\n", "Answer: 0\n"])) + text[at + 1:]


model_outputs = st.one_of(
    st.text(), st.text(alphabet=st.characters(codec="ascii")), mostly(near_misses(), mutated_gold(), times=2),
    st.sampled_from(["x" * 8001, "Step 1: 1 + 1 = 2\n" * 500 + "Answer: 2", "Verdict: accept\r\n",
                     "Score: 7/10\r\nVerdict: revise\r\n", "1. a\r\n2. b\r\n"]),
)
label_scores = st.dictionaries(st.sampled_from(LABELS), st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.integers(-(10**400), 10**400), json_scalars),
    max_size=4)


# --- CLI argument vectors --------------------------------------------------------------------


INT_ARGS = st.one_of(st.integers(-3, 30).map(str), st.sampled_from(
    ["-1", "0", "99999999999999999999999", "abc", "1.5", "", " 3", "0x10", "1e3", "٣", "--n"]))
FLOAT_ARGS = st.one_of(st.floats(-2, 3).map(str), st.sampled_from(["nan", "inf", "-inf", "abc", "", "1e999"]))
TEXT_ARGS = st.one_of(st.text(max_size=10), st.sampled_from(HOSTILE_TEXT[:20]))
FLAG = st.just(None)


@functools.cache
def cli_commands(tmp: Path) -> dict[tuple[str, ...], tuple[dict, list]]:
    """command -> (options: name -> values, positional values)."""
    # files written (--out, export) never overwrite the inputs below
    out_paths = st.sampled_from([str(tmp / "out" / "x.mmd"), str(tmp / "no" / "such" / "dir" / "x.mmd"), str(tmp),
                                 str(tmp / "export.jsonl"), "", "a\x00b", "relative.jsonl"])
    in_paths = st.sampled_from([str(tmp / "export.jsonl"), str(tmp / "garbage.txt"), str(tmp / "good.jsonl"),
                                str(tmp / "missing.jsonl"), str(tmp), "", "a\x00b"])
    stores = st.sampled_from([str(tmp / "runs.db"), str(tmp / "missing.db"), str(tmp), str(tmp / "garbage.txt"),
                              str(tmp / "sub" / "new.db"), "", "a\x00b"])
    graphs = st.one_of(st.sampled_from(prebuilt_names()), TEXT_ARGS, st.sampled_from(
        [str(tmp / "good_graph.py"), str(tmp / "broken_graph.py"), str(tmp / "missing.py")]))
    suites = st.one_of(st.sampled_from(list_suites()), TEXT_ARGS, st.sampled_from(
        [str(tmp / "good.jsonl"), str(tmp / "bad.jsonl"), str(tmp / "missing.jsonl")]))
    statuses = st.one_of(st.sampled_from(["success", "failure", "running", "active", "candidate", "all", "retired"]), TEXT_ARGS)
    small = st.one_of(st.integers(-3, 20).map(str), st.sampled_from(["99999999999999999999", "abc", ""]))
    store = {"--store": stores}
    return {
        ("run",): ({"--n": small, "-n": small, "--split": st.one_of(st.sampled_from(["train", "test", "all"]), TEXT_ARGS),
                    "--suite": suites, "--checker": st.one_of(st.sampled_from(["exact", "numeric", "regex"]), TEXT_ARGS),
                    "--level": small, "--seed": INT_ARGS, "--shots": small, "--memory": small, "--learn": FLAG,
                    "--reflect-every": INT_ARGS, "--model": TEXT_ARGS, "--policy": st.sampled_from(["active", "base", "v9", ""]),
                    "--concurrency": INT_ARGS, "--max-calls": INT_ARGS, "--max-tokens": INT_ARGS, "--temperature": FLOAT_ARGS,
                    "--dtype": st.sampled_from(["auto", "fp32", "fp8", ""]), "--show-steps": FLAG, "--no-show-steps": FLAG,
                    "--json": FLAG, "--resume": st.one_of(st.sampled_from(["1", "1,2", "interrupted", "0", "99999999999"]),
                                                          TEXT_ARGS), **store}, [graphs]),
        ("traces", "list"): ({"--limit": INT_ARGS, "--suite": TEXT_ARGS, "--status": statuses, **store}, []),
        ("traces", "show"): (store, [st.one_of(st.sampled_from(["1", "2"]), INT_ARGS)]),
        ("traces", "repair"): ({"--unowned": FLAG, **store}, []),
        ("graphs", "list"): ({}, []),
        ("graphs", "show"): ({"--out": out_paths}, [graphs]),
        ("suites",): ({}, []),
        ("models",): ({}, []),
        ("memory", "list"): ({"--family": TEXT_ARGS, "--kind": TEXT_ARGS, "--status": statuses,
                              "--sort": st.sampled_from(["id", "utility", "x"]), "--limit": INT_ARGS, **store}, []),
        ("memory", "show"): (store, [INT_ARGS]),
        ("memory", "search"): ({"--family": TEXT_ARGS, "--kind": TEXT_ARGS, "--k": INT_ARGS,
                                "--retriever": st.sampled_from(["bm25", "nope"]), **store}, [TEXT_ARGS]),
        ("memory", "stats"): ({"--versions": INT_ARGS, **store}, []),
        ("memory", "prune"): ({"--family": TEXT_ARGS, "--max-items": INT_ARGS, "--min-evidence": INT_ARGS,
                               "--purge": FLAG, **store}, []),
        ("memory", "export"): ({"--family": TEXT_ARGS, "--status": statuses, **store}, [out_paths]),
        ("memory", "import"): (store, [in_paths]),
        ("memory", "rollback"): (store, [INT_ARGS]),
        ("policy", "list"): ({"--status": statuses, **store}, []),
        ("policy", "show"): (store, [st.one_of(st.sampled_from(["base", "v1", "v9"]), TEXT_ARGS)]),
        ("policy", "promote"): ({"--reason": TEXT_ARGS, "--by": TEXT_ARGS, **store},
                                [st.one_of(st.sampled_from(["base", "v1", "v9"]), TEXT_ARGS)]),
        ("policy", "rollback"): ({"--reason": TEXT_ARGS, "--by": TEXT_ARGS, **store}, []),
        ("trainer", "status"): (store, []),
        ("trainer", "stop"): ({"--timeout": FLOAT_ARGS, **store}, []),
    }


@st.composite
def argv_vectors(draw: Any, tmp: Path, closed_port: int) -> list[str]:
    commands = cli_commands(tmp)
    kind = draw(st.sampled_from(["command"] * 8 + ["bare"]))
    if kind == "bare":
        return draw(st.sampled_from([[], ["--help"], ["-h"], ["traces"], ["memory"], ["policy"], ["trainer"], ["graphs"],
                                     ["bogus"], ["--version"], ["run", "--help"], ["memory", "search", "-h"]]))
    # `run` has the most options and the most to check before the model loads: a third of the vectors
    command = draw(st.sampled_from([("run",)] * 10 + sorted(commands)))
    options, positional = commands[command]
    argv = list(command)
    for value in positional:
        if draw(st.sampled_from([True] * 9 + [False])):
            argv.append(draw(value))
    for name in draw(st.lists(st.sampled_from(sorted(options)), max_size=5)) if options else []:
        argv.append(name)
        value = options[name]
        if value is not FLAG:
            argv.append(draw(value))
    if draw(st.sampled_from([False] * 5 + [True])):  # an unknown option, a stray argument, a value without its option
        argv.insert(draw(st.integers(len(command), len(argv))), draw(st.sampled_from(
            ["--bogus", "-x", "--n=", "extra", "--store", "-5", "--", "--help"])))
    if command == ("run",):
        # never load a model: the last --backend/--base-url wins and fails fast (nothing listens there)
        argv = [a for a in argv if a != "--"]
        argv += ["--backend", "openai", "--base-url", draw(st.sampled_from(
            [f"http://127.0.0.1:{closed_port}/v1"] * 6 + ["notaurl", "http://[::1", "ftp://127.0.0.1:1/v1", "http://x:99999/v1"]))]
    return argv


# --- server request bodies -------------------------------------------------------------------


BODY_LIMIT = 256 * 1024
VALID_FIELDS: dict[str, st.SearchStrategy] = {
    "model": st.just("scripted"),
    "n": st.integers(1, 3),
    "max_tokens": st.one_of(st.integers(0, 32), st.just(512)),  # 512: the backend's context, the ceiling
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0.01, 1),
    "top_k": st.integers(-1, 50),
    "seed": st.integers(),
    "logprobs": st.integers(0, 5),
    "echo": st.booleans(),
    "return_tokens_as_token_ids": st.booleans(),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "stop": st.one_of(st.text(max_size=3), st.lists(st.text(max_size=3), max_size=3)),
}
# n stays at 5000 or below: with max_tokens 0 the server builds n empty completions itself, so a
# huge n would take this process's memory (the n=10**9 regression goes to the backend instead)
EDGE_FIELDS: dict[str, st.SearchStrategy] = {
    "prompt": st.sampled_from([[], [[]], [-1], [259], [100000], [1, "a"], {"text": "hi"}, None, "\ud800", "a" * 5000]),
    "model": st.one_of(hostile_text, st.sampled_from([1.0, None, ["scripted"]])),
    "n": st.sampled_from([-1, 0, 1.0, True, "2", 4097, 5000, None, [1]]),
    "max_tokens": st.sampled_from([-1, 513, 10**15, 1.5, True, "16", None]),
    "temperature": st.sampled_from([-0.1, math.nan, math.inf, -math.inf, 1e308, "1", True]),
    "top_p": st.sampled_from([0, -1, 1.0001, math.nan, 1e-300, "1"]),
    "top_k": st.sampled_from([-2, 10**12, 2.5, "5"]),
    "seed": st.sampled_from([10**30, -(10**30), 1.5, "7"]),
    "logprobs": st.sampled_from([-1, 10**9, True, 1.5]),
    "stop": st.sampled_from([5, [1], "", [""], ["a"] * 1000, {"a": 1}]),
    "stream_options": st.sampled_from([[], "usage", {"include_usage": "yes"}, {"other": 1}]),
}
prompts = mostly(st.one_of(
    st.text(max_size=40), st.lists(st.integers(3, 258), min_size=1, max_size=20),
    st.lists(st.text(max_size=10), min_size=1, max_size=3), st.lists(st.lists(st.integers(3, 258), min_size=1, max_size=5),
                                                                   min_size=1, max_size=3),
), st.lists(st.integers(0, 10**6), min_size=1, max_size=4),  # ids past the vocabulary (the scripted one has 259)
    st.text(alphabet=st.characters(categories=["Cs"]), min_size=1, max_size=2),  # lone surrogates, as JSON escapes
    times=8)


@st.composite
def completion_bodies(draw: Any) -> dict:
    """A valid body with a few valid fields, then up to three fields broken (or the prompt dropped)."""
    fields = draw(st.lists(st.sampled_from(sorted(VALID_FIELDS)), unique=True, max_size=5))
    body = {"prompt": draw(prompts), **{key: draw(VALID_FIELDS[key]) for key in fields}}
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3]))):
        key = draw(st.sampled_from(sorted(EDGE_FIELDS) + ["prompt", "prompt", "echo", "stream", "suffix", "bogus"]))
        if key == "prompt" and draw(st.booleans()):
            body.pop("prompt", None)
        else:
            body[key] = draw(st.one_of(EDGE_FIELDS.get(key, json_values), json_values))
    return body


@st.composite
def requests(draw: Any) -> tuple[str, bytes]:
    """(path, raw body) for one POST."""
    kind = draw(st.sampled_from(["completions"] * 10 + ["tokenize", "detokenize", "chat", "raw", "huge"]))
    if kind == "completions":
        return "/v1/completions", json.dumps(draw(completion_bodies())).encode()
    if kind == "tokenize":
        return "/tokenize", json.dumps(draw(st.fixed_dictionaries({"prompt": st.one_of(prompts, json_values)}, optional={
            "add_special_tokens": st.one_of(st.booleans(), json_scalars)}))).encode()
    if kind == "detokenize":
        return "/detokenize", json.dumps({"tokens": draw(st.one_of(st.lists(st.integers(3, 258), max_size=8), prompts,
                                                                     json_values))}).encode()
    if kind == "chat":
        return "/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": draw(st.text(max_size=10))}]}).encode()
    if kind == "raw":
        return "/v1/completions", draw(st.one_of(
            st.binary(max_size=60), st.text(max_size=30).map(str.encode),
            st.sampled_from([b"", b"null", b"[]", b"42", b'"prompt"', b"{", b'{"prompt": "\\ud800"}', b"\xff\xfe{}",
                             b'{"prompt": "hi", "max_tokens": ' + b"9" * 5000 + b"}", b"[" * 100000])))
    size = draw(st.sampled_from([BODY_LIMIT - 64, BODY_LIMIT + 1, 3 * BODY_LIMIT]))
    return "/v1/completions", b'{"prompt": "' + b"a" * (size - 15) + b'"}'
