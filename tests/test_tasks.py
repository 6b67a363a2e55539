"""Task suites: determinism, split hygiene, gold solutions, verifiers and step checkers."""

from __future__ import annotations

import json

import pydantic
import pytest

from agentkit.errors import TaskError
from agentkit.tasks import Suite, Task, get_suite, list_suites, load_jsonl, split_steps

SUITES = ["arithmetic", "blocksworld", "countdown", "prontoqa"]
SUITE_LEVELS = [(name, level) for name in SUITES for level in get_suite(name).levels]

ADVERSARIAL = [
    "",
    "\n\n\n",
    "Answer:",
    "Answer: ",
    "Step 1:\nStep 2: = = =\nAnswer: ???",
    "Step 1: __import__('os').system('rm -rf /')\nAnswer: __import__('os').system('echo hi')",
    "Answer: " + "(" * 500 + "1" + ")" * 500,
    "Answer: " + "9" * 5000,
    "Step 1: " + "9" * 5000 + " + 1 = 2\nAnswer: 1e309",
    "Step 1: 1 / 0 = 0\nStep 2: move A from A to A\nAnswer: 1/0",
    "Step 99999999999999999999: So Max is .\nAnswer: None",
    "\x00\ufffd Answer: \u202e24",
    "Answer: " + "x" * 100_000,
    "Step 1: 8 / 8 = 1\n" * 2000 + "Answer: (((",
]


def one_task(name: str, level: int | None = None, split: str = "test") -> Task:
    return get_suite(name).tasks(split, 1, level, seed=0)[0]


# --- registry ---------------------------------------------------------------------------


def test_list_suites():
    assert list_suites() == SUITES


def test_get_suite_unknown_name_lists_choices():
    with pytest.raises(TaskError) as e:
        get_suite("arithmtic")
    assert str(e.value) == (
        "unknown suite 'arithmtic'; choose one of: arithmetic, blocksworld, countdown, prontoqa, or pass a .jsonl file"
    )


def test_suites_declare_the_interface():
    for name in SUITES:
        suite = get_suite(name)
        assert isinstance(suite, Suite) and suite.name == name
        assert suite.default_level in suite.levels
        assert suite.stop and suite.instructions


# --- generation -------------------------------------------------------------------------


@pytest.mark.parametrize("name", SUITES)
def test_tasks_are_deterministic_by_seed(name):
    suite = get_suite(name)
    first = suite.tasks("train", 5, seed=7)
    assert [t.model_dump() for t in first] == [t.model_dump() for t in suite.tasks("train", 5, seed=7)]
    assert [t.question for t in first] != [t.question for t in suite.tasks("train", 5, seed=8)]
    assert [t.question for t in suite.tasks("train", 3, seed=7)] == [t.question for t in first[:3]]


@pytest.mark.parametrize("name", SUITES)
def test_train_and_test_are_disjoint_for_any_seeds(name):
    suite = get_suite(name)
    train = {t.question for seed in range(4) for t in suite.tasks("train", 15, seed=seed)}
    test = {t.question for seed in range(4) for t in suite.tasks("test", 15, seed=seed)}
    assert train and test and not train & test


@pytest.mark.parametrize("name", SUITES)
def test_task_fields(name):
    tasks = get_suite(name).tasks("test", 6, seed=1)
    suite = get_suite(name)
    assert len({t.id for t in tasks}) == len({t.question for t in tasks}) == 6
    for t in tasks:
        assert (t.suite, t.split, t.level) == (name, "test", suite.default_level)
        assert t.id.startswith(f"{name}-test-{suite.default_level}-")
    with pytest.raises(pydantic.ValidationError):
        tasks[0].answer = "x"


def test_bad_split_level_and_n_name_the_allowed_values():
    suite = get_suite("arithmetic")
    with pytest.raises(TaskError, match=r"unknown split 'dev'; choose one of: train, test"):
        suite.tasks("dev", 3)
    with pytest.raises(TaskError, match=r"level 9 .*'arithmetic'; choose one of: 1, 2, 3, 4, 5"):
        suite.tasks("test", 3, level=9)
    with pytest.raises(TaskError, match=r"n=-1"):
        suite.tasks("test", -1)


def test_asking_for_more_tasks_than_exist_is_an_error():
    with pytest.raises(TaskError, match=r"found only \d+ distinct test tasks of the 5000 requested"):
        get_suite("countdown").tasks("test", 5000, level=4)


# --- gold solutions ---------------------------------------------------------------------


@pytest.mark.parametrize("name,level", SUITE_LEVELS)
def test_gold_solutions_verify_and_every_gold_step_checks(name, level):
    suite = get_suite(name)
    for split in ("train", "test"):
        for task in suite.tasks(split, 3, level, seed=11):
            assert suite.verify(task, task.solution) == 1.0, task.solution
            checks = suite.check_steps(task, task.solution)
            assert checks and all(checks), (task.solution, checks)
            assert len(checks) == len(split_steps(task.solution))
            assert suite.step_accuracy(task, task.solution) == 1.0
            assert suite.parse_answer(task.solution) == task.answer


def test_arithmetic_levels_are_operation_counts_with_bounded_results():
    for level in range(1, 6):
        for task in get_suite("arithmetic").tasks("train", 20, level):
            assert len(task.data["steps"]) == level
            assert all(0 <= c < 1000 for _, _, _, c in task.data["steps"])


def test_game_of_24_numbers_and_target():
    for task in get_suite("countdown").tasks("test", 10, level=4):
        assert task.data["target"] == 24 and len(task.data["numbers"]) == 4
        assert all(1 <= x <= 13 for x in task.data["numbers"])


# --- prompts ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", SUITES)
@pytest.mark.parametrize("shots", [0, 1, 3])
def test_prompt_has_k_shots_and_never_the_task_solution(name, shots):
    suite = get_suite(name)
    task = one_task(name)
    prompt = suite.prompt(task, shots=shots)
    assert prompt.startswith(suite.instructions)
    assert prompt.endswith(f"Question: {task.question}\nSolution:\n")
    assert prompt.count("Question: ") == shots + 1
    assert prompt.count("\nAnswer: ") == shots
    assert task.solution not in prompt


def test_prompt_never_uses_the_task_itself_as_a_shot():
    suite = get_suite("arithmetic")
    shot = suite._shots(one_task("arithmetic"), 3)[0]
    prompt = suite.prompt(shot, shots=3)
    assert prompt.count(shot.question) == 1 and shot.solution not in prompt
    assert prompt.count("Question: ") == 4


# --- shared parsing ---------------------------------------------------------------------


def test_split_steps_and_parse_answer():
    text = "Step 1: 2 + 3 = 5\n  step 2:  5 * 2 = 10 \nnot a step\nAnswer: 9\n**Answer:** 10"
    assert split_steps(text) == ["2 + 3 = 5", "5 * 2 = 10"]
    assert get_suite("arithmetic").parse_answer(text) == "10"
    assert get_suite("arithmetic").parse_answer("no answer here") is None


# --- arithmetic -------------------------------------------------------------------------


def test_arithmetic_wrong_result_in_step_2_is_caught():
    suite = get_suite("arithmetic")
    task = one_task("arithmetic", 2)
    (a1, op1, b1, c1), (a2, op2, b2, c2) = task.data["steps"]
    text = f"Step 1: {a1} {op1} {b1} = {c1}\nStep 2: {a2} {op2} {b2} = {c2 + 1}\nAnswer: {c2 + 1}"
    assert suite.check_steps(task, text) == [True, False]
    assert suite.step_accuracy(task, text) == 0.5
    assert suite.verify(task, text) == 0.0


def test_arithmetic_step_tolerance_and_extra_steps():
    suite = get_suite("arithmetic")
    task = Task(
        id="t", suite="arithmetic", split="test", level=2, question="Compute (23 * 3) - 17.", answer="52",
        solution="Step 1: 23 * 3 = 69\nStep 2: 69 - 17 = 52\nAnswer: 52",
        data={"steps": [[23, "*", 3, 69], [69, "-", 17, 52]]},
    )  # fmt: skip
    assert suite.check_steps(task, "Step 1: 23×3=69\nStep 2: 69 − 17 = 52.") == [True, True]
    assert suite.check_steps(task, "Step 1: 23 x 3 = 69\nStep 2: 17 - 69 = 52") == [True, False]
    extra = task.solution.replace("Answer", "Step 3: 52 + 0 = 52\nAnswer")
    assert suite.check_steps(task, extra) == [True, True, False]
    assert suite.step_accuracy(task, extra) == pytest.approx(2 / 3)
    assert suite.step_accuracy(task, "Answer: 52") == 0.0
    assert suite.step_accuracy(task, "Step 1: 23 * 3 = 69") == 0.5
    assert suite.verify(task, "Answer: 52.") == 1.0
    assert suite.verify(task, "Answer: 53") == 0.0


# --- countdown --------------------------------------------------------------------------


def countdown_task(numbers=(4, 7, 8, 8), target=24) -> Task:
    return Task(
        id="c", suite="countdown", split="test", level=len(numbers), question="q", answer="(8 / 8 + 4) * ...",
        solution="Step 1: 8 / 8 = 1\nStep 2: 1 + 4 = 5\nStep 3: 5 + 7 = 12\nAnswer: x",
        data={"numbers": list(numbers), "target": target, "steps": []},
    )  # fmt: skip


@pytest.mark.parametrize(
    "answer,reward",
    [
        ("(7 - 8 / 8) * 4", 1.0),
        ("4 * (7 - 8 / 8) = 24", 1.0),
        ("4×(7−8÷8)", 1.0),
        ("(7 - 8 / 8) * 4 + 0", 0.0),  # a number that was not given
        ("(7 - 8 / 8) * 4 * 1", 0.0),
        ("(7 - 4 / 4) * 4", 0.0),  # reuses 4, misses an 8
        ("7 * 4 - 8 + 8 - 4", 0.0),
        ("24", 0.0),
        ("8 / (8 - 8) + 4 * 7", 0.0),  # division by zero
        ("(7 - " + " " * 200 + "8 / 8) * 4", 0.0),  # longer than 200 characters
        ("__import__('os').system('echo pwned')", 0.0),
        ("eval('24')", 0.0),
        ("(7 - 8 / 8) * 4; import os", 0.0),
        ("-(-(7 - 8 / 8) * 4)", 0.0),
    ],
)
def test_countdown_verifier(answer, reward):
    suite = get_suite("countdown")
    assert suite.verify(countdown_task(), f"Step 1: 8 / 8 = 1\nAnswer: {answer}") == reward


def test_countdown_step_checker_tracks_the_pool():
    suite = get_suite("countdown")
    task = countdown_task()
    text = "Step 1: 8 / 8 = 1\nStep 2: 7 - 1 = 6\nStep 3: 6 * 4 = 24\nAnswer: (7 - 8 / 8) * 4"
    assert suite.check_steps(task, text) == [True, True, True]
    assert suite.check_steps(task, "Step 1: 8 * 8 = 64\nStep 2: 8 + 7 = 15") == [True, False]  # both 8s used
    assert suite.check_steps(task, "Step 1: 7 + 4 = 12\nStep 2: 7 + 8 = 15") == [False, True]
    assert suite.check_steps(task, "Step 1: 9 + 4 = 13\nStep 2: 8 / 0 = 0") == [False, False]
    assert suite.check_steps(task, "Step 1: 7 / 4 = 1.75\nStep 2: 1.75 * 8 = 14") == [True, True]


# --- blocksworld ------------------------------------------------------------------------


def blocks_task() -> Task:
    return Task(
        id="b", suite="blocksworld", split="test", level=3, question="q", answer="done",
        solution="Step 1: move B from A to the table\nStep 2: move A from the table to B\nAnswer: done",
        data={"blocks": ["A", "B", "C"], "initial": {"A": "table", "B": "A", "C": "table"},
              "goal": {"A": "B", "B": "table", "C": "table"}},
    )  # fmt: skip


def test_blocksworld_refuses_illegal_moves():
    suite = get_suite("blocksworld")
    task = blocks_task()
    assert suite.verify(task, task.solution) == 1.0
    assert suite.verify(task, "step 1: Move b from a to table.\nStep 2: move A from table to B") == 1.0
    illegal = "Step 1: move A from the table to B\nStep 2: move B from A to the table\nStep 3: move A from the table to B"
    assert suite.verify(task, illegal) == 0.0  # A is under B: not clear
    assert suite.check_steps(task, illegal) == [False, False, False]
    wrong_source = "Step 1: move B from C to the table\nStep 2: move A from the table to B"
    assert suite.check_steps(task, wrong_source) == [False, False]
    onto_covered = "Step 1: move C from the table to A"
    assert suite.check_steps(task, onto_covered) == [False]
    unfinished = "Step 1: move B from A to the table"
    assert suite.check_steps(task, unfinished) == [True] and suite.verify(task, unfinished) == 0.0
    assert suite.check_steps(task, "Step 1: move B from A to C\nStep 2: fly\nStep 3: move B from C to A") == [
        True, False, False,
    ]  # fmt: skip


# --- prontoqa ---------------------------------------------------------------------------


def test_prontoqa_answers_and_steps():
    suite = get_suite("prontoqa")
    task = one_task("prontoqa", 3)
    flipped = "False" if task.answer == "True" else "True"
    assert suite.verify(task, task.solution.replace(f"Answer: {task.answer}", f"answer: {flipped.lower()}")) == 0.0
    assert suite.verify(task, f"Answer: {task.answer.lower()}.") == 1.0
    assert suite.verify(task, "Answer: maybe") == 0.0

    steps = split_steps(task.solution)
    entity = task.data["entity"]
    skipped = f"Step 1: {steps[1]}\nStep 2: {steps[2]}"  # hop 2 before hop 1 is established
    assert suite.check_steps(task, skipped) == [False, False]
    last = steps[-1]  # "... So Max is [not] <property>."
    flipped = last.replace(" is not ", " is ") if last.endswith(f"is not {task.data['query'][0]}.") else (
        last.rsplit(" is ", 1)[0] + " is not " + last.rsplit(" is ", 1)[1]
    )  # the distractor rule has this polarity, but for a category the entity is not in
    assert suite.check_steps(task, "\n".join(f"Step {k}: {s}" for k, s in enumerate(steps[:-1] + [flipped], 1))) == [
        True, True, False,
    ]  # fmt: skip
    assert suite.check_steps(task, f"Step 1: {steps[0].replace(f'So {entity}', 'So Zed')}") == [False]
    assert suite.check_steps(task, f"Step 1: {steps[0]}\nStep 2: {steps[0]}") == [True, True]  # restating is valid


def test_prontoqa_half_the_answers_are_false():
    answers = [t.answer for t in get_suite("prontoqa").tasks("train", 60)]
    assert 15 < answers.count("False") < 45 and set(answers) == {"True", "False"}


# --- hostile model text -----------------------------------------------------------------


@pytest.mark.parametrize("name", SUITES)
@pytest.mark.parametrize("text", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_malformed_text_scores_zero_and_never_raises(name, text):
    suite = get_suite(name)
    task = one_task(name)
    assert suite.verify(task, text) == 0.0
    checks = suite.check_steps(task, text)
    assert isinstance(checks, list) and len(checks) == len(split_steps(text))
    accuracy = suite.step_accuracy(task, text)
    assert 0.0 <= accuracy <= 1.0


@pytest.mark.parametrize("name", SUITES)
def test_non_string_text_scores_zero(name):
    suite = get_suite(name)
    assert suite.verify(one_task(name), None) == 0.0
    assert suite.check_steps(one_task(name), None) == []


# --- JSONL user tasks -------------------------------------------------------------------


def write_lines(tmp_path, lines, name="tasks.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_good_file(tmp_path):
    path = write_lines(tmp_path, [
        json.dumps({"question": "Capital of France?", "answer": "Paris"}),
        "",
        json.dumps({"question": "2 + 2?", "answer": 4, "id": "sum", "level": 2}),
        json.dumps({"question": "Capital of Peru?", "answer": "Lima", "split": "train"}),
    ])  # fmt: skip
    suite = load_jsonl(path)
    assert suite.name == "tasks" and suite.levels == (1, 2)
    test = suite.tasks("test", 10)
    assert [t.question for t in test] == ["Capital of France?", "2 + 2?"]  # no split given: test
    assert test[1].id == "sum" and test[1].answer == "4" and test[1].level == 2
    assert suite.tasks("test", 10, level=2) == [test[1]]
    assert suite.verify(test[0], "Step 1: think\nAnswer:  paris ") == 1.0
    assert suite.verify(test[0], "Answer: Lyon") == 0.0
    assert suite.verify(test[0], test[0].solution) == 1.0
    assert suite.check_steps(test[0], "Step 1: x\nAnswer: Paris") is None
    assert suite.step_accuracy(test[0], "Answer: Paris") is None
    prompt = suite.prompt(test[0])
    assert prompt.count("Question: ") == 2 and "Capital of Peru?\nSolution:\nAnswer: Lima\n\n" in prompt
    assert get_suite(str(path)).tasks("train", 5)[0].question == "Capital of Peru?"


def test_jsonl_without_splits_is_mostly_test_and_zero_shot_without_train(tmp_path):
    path = write_lines(tmp_path, [json.dumps({"question": f"q{i}?", "answer": str(i)}) for i in range(40)])
    suite = load_jsonl(path, name="mine")
    train, test = suite.tasks("train", 100), suite.tasks("test", 100)
    assert 0 < len(train) < len(test) and len(train) + len(test) == 40
    assert suite.tasks("test", 100, seed=3) != test and sorted(t.id for t in suite.tasks("test", 100, seed=3)) == sorted(
        t.id for t in test
    )
    only_test = load_jsonl(write_lines(tmp_path, ['{"question": "a?", "answer": "b", "split": "test"}'], "t.jsonl"))
    assert only_test.prompt(only_test.tasks("test", 1)[0]).count("Question: ") == 1
    with pytest.raises(TaskError, match=r"no train tasks"):
        only_test.tasks("train", 1)


def questions(n, split):
    """``n`` questions that the no-"split" rule puts in ``split``."""
    from agentkit.tasks.jsonl import _default_split

    return [q for q in (f"What is {i} + 1?" for i in range(1000)) if _default_split(q) == split][:n]


def test_jsonl_split_all_runs_every_line(tmp_path):
    lines = [json.dumps({"question": f"q{i}?", "answer": str(i)}) for i in range(20)]
    suite = load_jsonl(write_lines(tmp_path, lines))
    assert len(suite.tasks("test", 100)) < 20  # the rule holds some lines back as examples
    every = suite.tasks("all", 100)
    assert [t.question for t in every] == [f"q{i}?" for i in range(20)]  # file order
    assert sorted(t.id for t in suite.tasks("all", 100, seed=3)) == sorted(t.id for t in every)
    only_test = load_jsonl(write_lines(tmp_path, [json.dumps({"question": q, "answer": "1"})
                                                  for q in questions(5, "test")], "t.jsonl"))
    assert len(only_test.tasks("all", 10)) == 5
    with pytest.raises(TaskError, match="unknown split 'dev'; choose one of: train, test, all"):
        suite.tasks("dev", 1)


def test_jsonl_describe_says_what_it_did_with_the_lines(tmp_path):
    lines = [json.dumps({"question": q, "answer": "1"}) for q in questions(16, "test") + questions(4, "train")]
    suite = load_jsonl(write_lines(tmp_path, lines))
    text = suite.describe("test", running=16, shots=3)
    assert text == ('tasks: 20 lines, 4 train and 16 test (no line gives "split": 1 in 5, by a hash of the question, '
                    "is train); running 16 test lines, with up to 3 train lines as worked examples in each prompt; "
                    "--split all runs every line")
    assert "\n" not in text
    no_train = load_jsonl(write_lines(tmp_path, lines[:5], "five.jsonl"))
    assert no_train.describe("test", running=5, shots=3) == (
        'five: 5 lines, 0 train and 5 test (no line gives "split": 1 in 5, by a hash of the question, is train); '
        "running 5 test lines, with no worked examples although --shots 3: the file has no train lines")
    assert no_train.describe("all", running=5, shots=0).endswith("running all 5 lines, with no worked examples")
    given = load_jsonl(write_lines(tmp_path, [lines[0][:-1] + ', "split": "train"}', lines[1]], "given.jsonl"))
    assert '1 train and 1 test (lines without "split" are test)' in given.describe("test", running=1, shots=3)


def test_jsonl_numeric_and_regex_checkers(tmp_path):
    numeric = load_jsonl(write_lines(tmp_path, ['{"question": "big?", "answer": "1,000"}']), checker="numeric")
    task = numeric.tasks("test", 1)[0]
    assert numeric.verify(task, "Answer: 1000.0000001") == 1.0
    assert numeric.verify(task, "Answer: 1,000") == 1.0
    assert numeric.verify(task, "Answer: 1001") == 0.0
    assert numeric.verify(task, "Answer: a thousand") == 0.0
    regex = load_jsonl(write_lines(tmp_path, ['{"question": "color?", "answer": "(?i)gr[ae]y"}'], "r.jsonl"), "regex")
    task = regex.tasks("test", 1)[0]
    assert regex.verify(task, "Answer: Grey") == 1.0
    assert regex.verify(task, "Answer: greyish") == 0.0


@pytest.mark.parametrize(
    "line,checker,message",
    [
        ('{"question": "a", "answer": "b",}', "exact", r"tasks.jsonl line 3: not valid JSON \(.*\); each line must be"),
        ('["question", "answer"]', "exact", r"line 3: expected a JSON object, got list"),
        ('{"question": "a"}', "exact", r'line 3: missing "answer"'),
        ('{"answer": "a"}', "exact", r'line 3: missing "question"'),
        ('{"question": "", "answer": "a"}', "exact", r'line 3: "question" must be a non-empty string'),
        ('{"question": "a", "answer": null}', "exact", r'line 3: "answer" must be a string or a number'),
        ('{"question": "a", "answer": "b", "split": "dev"}', "exact", r'line 3: "split" is \'dev\'; choose one of'),
        ('{"question": "a", "answer": "b", "level": "hard"}', "exact", r'line 3: "level" must be an integer'),
        ('{"question": "a", "answer": "many"}', "numeric", r"line 3: answer 'many' is not a number"),
        ('{"question": "a", "answer": "(unclosed"}', "regex", r"line 3: answer '\(unclosed' is not a valid regex"),
        ('{"question": "q1", "answer": "1", "id": "dup"}', "exact", r"line 3: duplicate id 'dup' \(first on line 1\)"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path, line, checker, message):
    path = write_lines(tmp_path, ['{"question": "q1", "answer": "1", "id": "dup"}', "", line])
    with pytest.raises(TaskError, match=message) as e:
        load_jsonl(path, checker=checker)
    assert "\n" not in str(e.value)


def test_jsonl_file_errors(tmp_path):
    with pytest.raises(TaskError, match=r"cannot read tasks file '.*missing.jsonl' \(No such file or directory\)"):
        load_jsonl(tmp_path / "missing.jsonl")
    with pytest.raises(TaskError, match=r"empty.jsonl: no tasks \(the file is empty\)"):
        load_jsonl(write_lines(tmp_path, ["", "  "], "empty.jsonl"))
    with pytest.raises(TaskError, match=r"unknown checker 'fuzzy'; choose one of: exact, numeric, regex"):
        load_jsonl(write_lines(tmp_path, ['{"question": "a", "answer": "b"}']), checker="fuzzy")
    with pytest.raises(TaskError, match=r"cannot read tasks file"):
        load_jsonl(tmp_path)  # a directory


def test_a_suites_vocabulary_writes_every_gold_solution_and_stops():
    tokenize = lambda text: [ord(c) for c in text]  # noqa: E731 - one id per character
    suite = get_suite("arithmetic")
    vocabulary = suite.vocabulary(tokenize)
    assert vocabulary == sorted(set(vocabulary)) == suite.vocabulary(tokenize)
    for level in suite.levels:
        for task in suite.tasks("test", 50, level, seed=3):
            assert set(tokenize(task.solution + "\n\nQuestion:")) <= set(vocabulary)
    assert set(vocabulary) == set(map(ord, "Step 0123456789:+-*=\nAnswerQuion"))
