"""Each role's parser on good, malformed and adversarial output; the router's label choice;
the calculator tool; strict prompt templates."""

from __future__ import annotations

import math
import random

import pytest

from agentkit.errors import GraphSpecError
from agentkit.graph.parsers import (
    MalformedOutput,
    answer_key,
    choose_label,
    parse_plan,
    parse_review,
    parse_solution,
)
from agentkit.graph.templates import render, role_prompts
from agentkit.graph.tools import CalculatorInput, ToolError, calculate, find_expression, get_tool

HOSTILE = [
    "__import__('os').system('rm -rf /')",
    "\x00\xff\ufffd" * 50,
    "Answer:",
    "Verdict:",
    "1.",
    "",
    "a" * 20_000,
    "{{question}} ${question} %s",
]


# --- planner ------------------------------------------------------------------------------------


def test_plan_good():
    assert parse_plan("1. Add 23 and 41.\n2. Subtract 17.\n3. Multiply by 3.\n").plan == [
        "Add 23 and 41.", "Subtract 17.", "Multiply by 3."]
    assert parse_plan(" 1) first\n2: second").plan == ["first", "second"]
    assert parse_plan("Step 1. look\nStep 2. act").plan == ["look", "act"]
    assert parse_plan("1. a\n2. b").text() == "1. a\n2. b"


def test_plan_stops_at_broken_numbering():
    assert parse_plan("1. a\n2. b\n1. again\n2. more").plan == ["a", "b"]
    assert parse_plan("1. a\n3. c").plan == ["a"]


@pytest.mark.parametrize("text, problem", [
    ("First add, then subtract.", "no numbered step"),
    ("2. starts late\n3. still", "does not start at 1"),
    ("1. " + "x" * 500, "keep each step to one short line"),
    ("\n".join(f"{k}. step" for k in range(1, 26)), "at most 20"),
])
def test_plan_malformed(text, problem):
    with pytest.raises(MalformedOutput, match=problem):
        parse_plan(text)


@pytest.mark.parametrize("text", HOSTILE)
def test_plan_hostile_text_is_malformed_not_a_crash(text):
    with pytest.raises(MalformedOutput):
        parse_plan(text)


# --- solver -------------------------------------------------------------------------------------


def test_solution_good():
    out = parse_solution("Step 1: 23 + 41 = 64\nStep 2: 64 - 17 = 47\nAnswer: 47\n")
    assert out.answer == "47" and out.steps == ["23 + 41 = 64", "64 - 17 = 47"]
    assert parse_solution("**Answer:** 12").answer == "12"
    assert parse_solution("Answer: 1\nAnswer: 2").answer == "2"  # the last answer line counts
    assert parse_solution("Answer: done").steps == []  # steps are optional


@pytest.mark.parametrize("text, problem", [
    ("Step 1: 2 + 2 = 4", "no line 'Answer: <value>'"),
    ("Answer:   ", "no line 'Answer: <value>'"),
    ("Answer: " + "9" * 500, "give only the final value"),
    ("x" * 9000 + "\nAnswer: 1", "keep it under 8000"),
])
def test_solution_malformed(text, problem):
    with pytest.raises(MalformedOutput, match=problem):
        parse_solution(text)


@pytest.mark.parametrize("text", HOSTILE)
def test_solution_hostile(text):
    try:
        out = parse_solution(text)
    except MalformedOutput:
        return
    assert out.answer == "__import__('os').system('rm -rf /')" or len(out.answer) <= 400  # text, never run


def test_solution_uses_the_suites_answer_parser():
    assert parse_solution("Final: 7", lambda t: t.split(":")[-1].strip()).answer == "7"


# --- critic -------------------------------------------------------------------------------------


def test_review_good():
    out = parse_review("Score: 7/10\nCritique: step 2 adds instead of subtracting\nVerdict: revise")
    assert (out.score, out.critique, out.verdict) == (0.7, "step 2 adds instead of subtracting", "revise")
    assert parse_review("**Verdict:** Accept.").verdict == "accept"
    assert parse_review("Score: 85/100\nVerdict: accept").score == 0.85
    assert parse_review("Score: 9\nVerdict: accept").score == 0.9
    assert parse_review("Verdict: revise\nVerdict: accept").verdict == "accept"  # the last one counts
    assert parse_review("Verdict: accept").score is None


@pytest.mark.parametrize("text, problem", [
    ("Score: 7/10\nCritique: fine", "no line 'Verdict: accept' or 'Verdict: revise'"),
    ("Verdict: maybe", "neither 'accept' nor 'revise'"),
    ("Verdict: accept revise", "neither 'accept' nor 'revise'"),
    ("Score: 11/10\nVerdict: accept", "outside 0..10"),
    ("Score: great\nVerdict: accept", "not a number out of 10"),
])
def test_review_malformed(text, problem):
    with pytest.raises(MalformedOutput, match=problem):
        parse_review(text)


@pytest.mark.parametrize("text", HOSTILE)
def test_review_hostile(text):
    with pytest.raises(MalformedOutput):
        parse_review(text)


# --- router -------------------------------------------------------------------------------------


def test_choose_label_takes_the_most_likely_and_reports_a_distribution():
    out = choose_label({"calculator": -0.5, "reasoning": -2.0})
    assert out.route == "calculator"
    assert out.distribution["calculator"] == pytest.approx(1 / (1 + math.exp(-1.5)))
    assert sum(out.distribution.values()) == pytest.approx(1.0)
    assert choose_label({"a": -1.0, "b": -1.0}).route == "a"  # a tie goes to the first label


def test_choose_label_never_leaves_the_label_set():
    rng = random.Random(0)
    weird = [float("nan"), float("-inf"), float("inf"), -1e308, 0.0, -1e-300]
    for _ in range(500):
        labels = rng.sample(["calc", "reason", "plan", "yes", "no", "x"], rng.randint(1, 6))
        scores = {label: rng.choice(weird + [rng.uniform(-50, 0)]) for label in labels}
        out = choose_label(scores)
        assert out.route in labels
        assert set(out.distribution) == set(labels)
        assert all(0 <= p <= 1 for p in out.distribution.values())


def test_answer_key_compares_numbers_exactly():
    assert answer_key("84") == answer_key("84.0") == answer_key("$84") == "84"
    assert answer_key(" True ") == answer_key("true")
    assert answer_key(None) is None and answer_key("  ") is None


# --- the calculator tool ------------------------------------------------------------------------


def test_calculator_evaluates_the_question_exactly():
    assert find_expression("Compute ((23 + 41) - 17) * 3.") == {"expression": "((23 + 41) - 17) * 3"}
    assert calculate(CalculatorInput(expression="((23 + 41) - 17) * 3")) == "141"
    assert calculate(CalculatorInput(expression="3 / 4")) == "3/4"
    assert calculate(CalculatorInput(expression="7 × 6 − 2")) == "40"


@pytest.mark.parametrize("question", [
    "Use the numbers 2, 5, 6, 7 exactly once each to make 24.",
    "__import__('os').system('echo pwned')",
    "Every wumpus is red. True or false: Max is red.",
    "",
])
def test_calculator_finds_no_expression_where_there_is_none(question):
    with pytest.raises(ToolError, match="no arithmetic expression"):
        find_expression(question)


@pytest.mark.parametrize("expression", ["1 / 0", "2 ** 10", "(" * 40 + "1" + ")" * 40, "1 +", "9" * 12])
def test_calculator_rejects_invalid_expressions(expression):
    with pytest.raises((ToolError, ValueError)):
        calculate(CalculatorInput.model_validate({"expression": expression}))


def test_calculator_input_is_validated():
    tool = get_tool("calculator")
    with pytest.raises(ValueError):
        tool.input_model.model_validate({"expression": "__import__('os')"})
    with pytest.raises(ValueError):
        tool.input_model.model_validate({"expression": "1+" * 150 + "1"})  # over 200 characters
    assert tool.read("Compute " + "1 + " * 100 + "1.", None)["expression"].startswith("1 + 1")


# --- templates ----------------------------------------------------------------------------------


def test_every_role_prompt_file_loads_and_renders():
    for role in ("planner", "solver", "critic", "router", "verifier"):
        prompts = role_prompts(role)
        assert prompts["template"]
    assert render(role_prompts("planner")["template"], "t", question="Compute 1 + 2.").endswith(
        "Question: Compute 1 + 2.\nPlan:\n")


def test_a_missing_template_variable_is_an_error():
    with pytest.raises(GraphSpecError, match=r"uses \$\{plan\} but no value is given for it"):
        render("Plan: ${plan}", "node 'solve' prompt", question="q")
    # values are never re-read as templates
    assert render("Q: ${question}", "t", question="${plan} $x") == "Q: ${plan} $x"
