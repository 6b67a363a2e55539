"""Policy registry: exact rows, promote/rollback, checksum refusals, adapter verification,
the McNemar gate over planted improvements and regressions, and the `agentkit policy` commands."""

from __future__ import annotations

import json
import math

import pytest
import sqlite_utils
from typer.testing import CliRunner

from agentkit.cli.app import app
from agentkit.errors import BackendError, StoreError
from agentkit.llm.base import GenerationRequest
from agentkit.llm.scripted import ScriptedLLM
from agentkit.store import TrajectoryStore
from agentkit.store.policies import ChecksumError, PolicyRegistry, adapter_checksum
from agentkit.tasks import get_suite
from agentkit.errors import AgentkitError
from agentkit.learn.gate import (Measured, compare_policies, gate, mcnemar_exact, paired_permutation_p, spend_alpha,
                                 wilson_interval)
from agentkit.llm.views import PolicyLLM
from agentkit.runtime import run_tasks
from agentkit.runtime.policy import load_policy

WRONG = "Step 1: 1 + 1 = 3\nAnswer: 3"


def fake_adapter(path, payload: bytes = b"weights-1"):
    """A directory shaped like a PEFT save (the registry only hashes it)."""
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text('{"r": 8, "peft_type": "LORA"}', encoding="utf-8")
    (path / "adapter_model.safetensors").write_bytes(payload)
    return path


@pytest.fixture
def registry(tmp_path):
    with PolicyRegistry(tmp_path / "runs.db") as reg:
        yield reg


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


# --- rows ------------------------------------------------------------------------------


def test_fresh_store_has_base_active_and_the_policy_tables(tmp_path):
    path = tmp_path / "runs.db"
    TrajectoryStore(path).close()  # any store of the file applies the migration
    db = sqlite_utils.Database(path)
    assert "0004_policies" in [r["name"] for r in db["schema_migrations"].rows]
    assert list(db["policies"].columns_dict) == [
        "id", "version", "parent", "status", "base_model", "adapter_path", "checksum", "method", "data",
        "config", "metrics", "note", "created_at", "activated_at",
    ]
    assert list(db["policy_events"].columns_dict) == [
        "id", "event", "version", "previous", "actor", "reason", "details", "created_at",
    ]
    (base,) = db["policies"].rows
    assert {k: base[k] for k in ("id", "version", "parent", "status", "adapter_path", "checksum")} == {
        "id": 1, "version": "base", "parent": None, "status": "active", "adapter_path": None, "checksum": None,
    }
    assert base["activated_at"] == base["created_at"]
    assert db["policy_events"].count == 0


def test_register_records_every_field_exactly(registry, tmp_path):
    adapter = fake_adapter(tmp_path / "a1")
    v1 = registry.register(
        adapter, base_model="gemma-3-270m", method="dpo", data={"pairs": 3, "pair_ids": [4, 5, 6]},
        config={"beta": 0.4, "lr": 1e-4}, metrics={"train_loss": 0.5}, note="round 1",
    )
    row = dict(next(iter(sqlite_utils.Database(registry.path)["policies"].rows_where("version = 'v1'"))))
    assert row == {
        "id": 2, "version": "v1", "parent": "base", "status": "candidate", "base_model": "gemma-3-270m",
        "adapter_path": str(adapter.resolve()), "checksum": adapter_checksum(adapter), "method": "dpo",
        "data": '{"pair_ids":[4,5,6],"pairs":3}', "config": '{"beta":0.4,"lr":0.0001}',
        "metrics": '{"train_loss":0.5}', "note": "round 1", "created_at": v1.created_at, "activated_at": None,
    }
    assert len(v1.checksum) == 64 and v1.data == {"pairs": 3, "pair_ids": [4, 5, 6]}
    v2 = registry.register(fake_adapter(tmp_path / "a2", b"weights-2"), parent="v1")
    assert (v2.version, v2.parent) == ("v2", "v1")
    assert [p.version for p in registry.list()] == ["base", "v1", "v2"]
    assert [p.version for p in registry.list("candidate")] == ["v1", "v2"]
    assert [(e.event, e.version, e.previous) for e in registry.events()] == [
        ("register", "v1", "base"), ("register", "v2", "v1"),
    ]


def test_register_refuses_bad_input(registry, tmp_path):
    with pytest.raises(StoreError, match="no adapter_config.json"):
        registry.register(tmp_path)
    adapter = fake_adapter(tmp_path / "a1")
    registry.register(adapter, version="exp-1")
    with pytest.raises(StoreError, match="'exp-1' exists"):
        registry.register(adapter, version="exp-1")
    with pytest.raises(StoreError, match="no policy version 'nope'.*base, exp-1"):
        registry.register(adapter, parent="nope")
    assert registry.register(adapter).version == "v1"  # named versions do not disturb the numbering


# --- promote / rollback ---------------------------------------------------------------------


def test_promote_retires_the_incumbent_and_rollback_restores_it(registry, tmp_path):
    v1 = registry.register(fake_adapter(tmp_path / "a1")).version
    v2 = registry.register(fake_adapter(tmp_path / "a2", b"w2"), parent=v1).version
    registry.promote(v1, actor="gate", reason="p=0.01")
    registry.promote(v2, actor="ana", reason="manual")
    assert registry.active().version == "v2"
    assert {p.version: p.status for p in registry.list()} == {"base": "retired", "v1": "retired", "v2": "active"}
    assert registry.history() == ["base", "v1", "v2"]

    assert registry.rollback(reason="bad in production").version == "v1"
    assert {p.version: p.status for p in registry.list()} == {"base": "retired", "v1": "active", "v2": "rejected"}
    assert registry.rollback().version == "base"
    assert registry.active().adapter_path is None
    with pytest.raises(StoreError, match="nothing to roll back to: base"):
        registry.rollback()
    events = [(e.event, e.version, e.previous, e.actor, e.reason) for e in registry.events() if e.event != "register"]
    assert events[:3] == [
        ("promote", "v1", "base", "gate", "p=0.01"),
        ("promote", "v2", "v1", "ana", "manual"),
        ("rollback", "v1", "v2", events[2][3], "bad in production"),
    ]
    with pytest.raises(StoreError, match="already active"):
        registry.promote("base")


def test_a_tampered_adapter_is_refused(registry, tmp_path):
    adapter = fake_adapter(tmp_path / "a1")
    v1 = registry.register(adapter).version
    (adapter / "adapter_model.safetensors").write_bytes(b"weights-X")  # same size, other bytes
    with pytest.raises(ChecksumError) as info:
        registry.promote(v1)
    message = str(info.value)
    assert "\n" not in message and "v1" in message and "changed since registration" in message
    with pytest.raises(ChecksumError):
        load_policy(ScriptedLLM(["x"]), registry, v1)
    assert registry.active().version == "base"
    # the command line says the same in one line
    result = invoke("policy", "promote", v1, "--store", registry.path)
    assert result.exit_code == 1 and result.stderr.startswith("error: policy v1: adapter files") and result.stderr.count("\n") == 1


def test_rollback_refuses_a_previous_version_whose_files_are_gone(registry, tmp_path):
    adapter = fake_adapter(tmp_path / "a1")
    registry.promote(registry.register(adapter).version)
    registry.promote(registry.register(fake_adapter(tmp_path / "a2", b"w2")).version)
    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(ChecksumError, match="v1"):
        registry.rollback()
    assert registry.active().version == "v2"


# --- loading a version on a backend ---------------------------------------------------------


class LyingLLM(ScriptedLLM):
    """Loads adapters but always answers with the base model (a misnamed LoRA on a server)."""

    def generate(self, requests):
        out = super().generate(requests)
        for completions in out:
            for c in completions:
                c.adapter = None
        return out


def test_load_policy_loads_the_version_and_checks_who_answers(registry, tmp_path):
    v1 = registry.register(fake_adapter(tmp_path / "a1")).version
    llm = ScriptedLLM(lambda prompt, request: f"from {request.adapter}")
    assert load_policy(llm, registry, v1) == "v1" and llm.list_adapters() == ["v1"]
    assert llm.requests[-1].adapter == "v1" and llm.requests[-1].max_tokens == 1
    assert load_policy(llm, registry) is None  # the active version: base
    with pytest.raises(BackendError, match="asked the backend for adapter v1 but the base model answered"):
        load_policy(LyingLLM(["x"]), registry, v1)


def test_policy_llm_pins_requests_and_refuses_the_wrong_answerer():
    llm = ScriptedLLM(lambda prompt, request: str(request.adapter))
    llm.load_adapter("v1", "/nowhere")
    pinned = PolicyLLM(llm, "v1")
    ((c,),) = pinned.generate([GenerationRequest("q")])
    assert (c.text, c.adapter) == ("v1", "v1")
    with pytest.raises(BackendError, match="pinned to v1"):
        pinned.generate([GenerationRequest("q", adapter="v2")])
    liar = LyingLLM(["x"])
    liar.load_adapter("v1", "/nowhere")
    with pytest.raises(BackendError, match="answered by the base model"):
        PolicyLLM(liar, "v1").generate([GenerationRequest("q")])


# --- the gate -----------------------------------------------------------------------------


def test_mcnemar_exact_matches_hand_computed_values():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 6) == pytest.approx(1 / 64)
    assert mcnemar_exact(1, 5) == pytest.approx(7 / 64)
    assert mcnemar_exact(5, 1) == pytest.approx(63 / 64)
    assert mcnemar_exact(0, 5) == pytest.approx(1 / 32)  # 5 wins out of 5 are needed at alpha 0.05
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)


def per_adapter_solver(tasks, right_by_adapter: dict):
    """Gold solutions for the tasks each adapter is planted to solve, a wrong one elsewhere."""
    gold = {t.question: t.solution for t in tasks}

    def reply(prompt: str, request) -> str:
        if "Question: " not in prompt:
            return "ok"  # load_policy's one-token probe
        question = prompt.rsplit("Question: ", 1)[1].split("\n", 1)[0]
        return gold[question] if question in right_by_adapter[request.adapter] else WRONG

    return ScriptedLLM(reply)


@pytest.fixture
def held_out():
    suite = get_suite("arithmetic")
    return suite, suite.tasks("test", 20)


def test_the_gate_promotes_a_planted_improvement(registry, tmp_path, held_out):
    suite, tasks = held_out
    v1 = registry.register(fake_adapter(tmp_path / "a1"), method="dpo").version
    questions = [t.question for t in tasks]
    llm = per_adapter_solver(tasks, {None: set(questions[:4]), "v1": set(questions[:16])})
    with TrajectoryStore(registry.path) as store:
        result = gate(registry, llm, suite, tasks, v1, store=store, concurrency=4)
        runs = store.list_runs(None)
    assert (result.n, result.incumbent_successes, result.candidate_successes, result.b, result.c) == (20, 4, 16, 0, 12)
    assert result.p_value == pytest.approx(0.5**12)
    assert result.promote and result.decision == "promote"
    assert registry.active().version == "v1"
    metrics = registry.get("v1").metrics
    assert metrics["heldout_success"] == 0.8 and metrics["heldout_n"] == 20
    assert metrics["gate"]["c"] == 12 and metrics["gate"]["decision"] == "promote"
    assert metrics["heldout_ci95"] == pytest.approx(list(wilson_interval(16, 20)))
    # every run was recorded under the version that produced it, and answered by its adapter
    assert sorted({(r.policy_version) for r in runs}) == ["base", "v1"] and len(runs) == 40
    assert {r.adapter for r in llm.requests if r.max_tokens > 1} == {None, "v1"}
    assert "p=0.0002441" in result.summary() and "-> promote" in result.summary()


def test_the_gate_rejects_a_planted_regression(registry, tmp_path, held_out):
    suite, tasks = held_out
    registry.promote(registry.register(fake_adapter(tmp_path / "a1")).version)
    v2 = registry.register(fake_adapter(tmp_path / "a2", b"w2")).version
    questions = [t.question for t in tasks]
    llm = per_adapter_solver(tasks, {"v1": set(questions[:15]), "v2": set(questions[10:13])})
    result = gate(registry, llm, suite, tasks, v2, concurrency=4)
    assert (result.incumbent, result.incumbent_successes, result.candidate_successes, result.b, result.c) == ("v1", 15, 3, 12, 0)
    assert result.p_value == 1.0 and not result.promote
    assert registry.active().version == "v1" and registry.get("v2").status == "rejected"
    assert registry.events("v2")[-1].actor == "gate" and "-> reject" in registry.events("v2")[-1].reason


def test_a_small_gain_is_not_significant(tmp_path, held_out):
    suite, tasks = held_out
    questions = [t.question for t in tasks]
    # candidate wins 4 tasks, loses 1: p = 6/32 > 0.05, so no promotion despite the gain
    llm = per_adapter_solver(tasks, {None: set(questions[:10]), "v9": set(questions[1:14])})
    llm.load_adapter("v9", "/nowhere")
    result = compare_policies(llm, suite, tasks, candidate="v9", incumbent="base", concurrency=4)
    assert (result.b, result.c, result.candidate_successes - result.incumbent_successes) == (1, 4, 3)
    assert result.p_value == pytest.approx(6 / 32) and not result.promote


def test_a_promotion_carries_its_share_of_alpha_to_the_next_gate(tmp_path, held_out):
    """Three gates split alpha 0.05 (0.0167 each); after a promotion the next gate tests at
    its share plus the promoted gate's (Wiens' fallback procedure), after a refusal at its own."""
    suite, tasks = held_out
    questions = [t.question for t in tasks]
    # candidate wins 8 tasks, loses 1: p = 10/512 = 0.0195, between 0.05/3 and 2 * 0.05/3
    llm = per_adapter_solver(tasks, {None: set(questions[:10]), "v9": set(questions[1:18])})
    llm.load_adapter("v9", "/nowhere")
    gates = {carried: compare_policies(llm, suite, tasks, candidate="v9", incumbent="base", concurrency=4,
                                       share=1 / 3, carried=carried) for carried in (0, 1 / 3)}
    assert gates[0].p_value == gates[1 / 3].p_value == pytest.approx(10 / 512)
    assert not gates[0].promote and gates[0].p_adjusted == pytest.approx(3 * 10 / 512)
    assert gates[1 / 3].promote and gates[1 / 3].p_adjusted == pytest.approx(1.5 * 10 / 512)
    assert gates[1 / 3].level == pytest.approx(2 * 0.05 / 3) and "+ 0.333 carried" in gates[1 / 3].summary()
    with pytest.raises(AgentkitError, match="share=0.5, carried=0.75"):
        compare_policies(llm, suite, tasks, candidate="v9", incumbent="base", share=0.5, carried=0.75)


def test_alpha_spending_schedules_sum_to_one_and_rising_favours_late_gates():
    assert spend_alpha(4) == [0.25] * 4
    rising = spend_alpha(8, "rising")
    assert rising == pytest.approx([i / 36 for i in range(1, 9)]) and sum(rising) == pytest.approx(1.0)
    assert spend_alpha(1, "rising") == [1.0]
    with pytest.raises(AgentkitError, match="alpha_spending 'steep'"):
        spend_alpha(3, "steep")


def test_a_gate_given_the_incumbents_outcomes_runs_only_the_candidate(tmp_path, held_out):
    """The incumbent measured once (as improve's round 0 does): the gate runs the candidate
    alone and decides exactly as when it runs both."""
    suite, tasks = held_out
    questions = [t.question for t in tasks]
    llm = per_adapter_solver(tasks, {None: set(questions[:10]), "v9": set(questions[1:18])})
    llm.load_adapter("v9", "/nowhere")
    both = compare_policies(llm, suite, tasks, candidate="v9", incumbent="base", concurrency=4)
    with TrajectoryStore(tmp_path / "runs.db") as store:
        measured = Measured.of("base", run_tasks(llm, suite, tasks, store, concurrency=4))
        asked = len(llm.requests)
        reused = compare_policies(llm, suite, tasks, candidate="v9", incumbent="base", store=store, concurrency=4,
                                  incumbent_measured=measured)
        runs = store.list_runs(None)
    assert {r.adapter for r in llm.requests[asked:]} == {"v9"} and len(llm.requests) - asked == 20
    assert sorted(r.policy_version for r in runs) == ["base"] * 20 + ["v9"] * 20  # base: the measurement only
    same = ("n", "incumbent_successes", "candidate_successes", "b", "c", "p_value", "promote",
            "incumbent_step_accuracy", "candidate_step_accuracy")
    assert [getattr(reused, k) for k in same] == [getattr(both, k) for k in same]
    assert (reused.b, reused.c, reused.promote) == (1, 8, True)
    assert reused.incumbent_run_ids == [measured.outcomes[t.id][1] for t in tasks]
    kept = reused.kept  # promoted: the candidate's outcomes, which the next gate reuses
    assert kept.version == "v9" and [kept.outcomes[t.id][1] for t in tasks] == reused.candidate_run_ids
    assert "candidate_measured" not in reused.as_dict()  # per task outcomes stay out of the policy's metrics


def test_a_gate_refuses_outcomes_of_another_policy_or_task_set(held_out):
    suite, tasks = held_out
    llm = per_adapter_solver(tasks, {None: set(), "v9": set()})
    llm.load_adapter("v9", "/nowhere")
    outcomes = {t.id: (False, k, None) for k, t in enumerate(tasks)}
    with pytest.raises(AgentkitError, match=r"lacks 2 of the 20 gate tasks \(arithmetic-test-"):
        compare_policies(llm, suite, tasks, candidate="v9", incumbent="base",
                         incumbent_measured=Measured("base", {i: outcomes[i] for i in list(outcomes)[2:]}))
    with pytest.raises(AgentkitError, match="is of 'v8', not of the incumbent 'base'"):
        compare_policies(llm, suite, tasks, candidate="v9", incumbent="base",
                         incumbent_measured=Measured("v8", outcomes))
    assert llm.requests == []  # refused before anything ran


def first_step_solver(tasks, plan: dict):
    """plan[adapter] maps a question to "gold" (whole solution), "step1" (the first step right,
    then wrong) or nothing (all wrong)."""
    by_question = {t.question: t for t in tasks}

    def reply(prompt: str, request) -> str:
        if "Question: " not in prompt:
            return "ok"
        question = prompt.rsplit("Question: ", 1)[1].split("\n", 1)[0]
        kind = plan[request.adapter].get(question)
        task = by_question[question]
        if kind == "gold":
            return task.solution
        if kind == "step1":
            return task.solution.split("\n")[0] + "\nStep 2: 1 + 1 = 3\nAnswer: 3"
        return WRONG

    return ScriptedLLM(reply)


def test_paired_permutation_p_matches_hand_counts():
    assert paired_permutation_p([0, 0]) == 1.0
    assert paired_permutation_p([0.5] * 5) == pytest.approx(1 / 32)  # only all-positive signs reach the sum
    assert paired_permutation_p([0.5, -0.5]) == pytest.approx(3 / 4)  # sums 1, 0, 0, -1 >= 0
    # 1/2, 1/2, 1/3: sum 4/3; sign patterns with sum >= 4/3: only +++ -> 1/8
    assert paired_permutation_p([0.5, 0.5, 1 / 3, 0]) == pytest.approx(1 / 8)


def test_the_step_accuracy_gate_sees_a_first_step_learned_before_whole_chains(tmp_path, held_out):
    suite, tasks = held_out
    questions = [t.question for t in tasks]
    plan = {None: {}, "v9": {q: "step1" for q in questions[:12]}}
    llm = first_step_solver(tasks, plan)
    llm.load_adapter("v9", "/nowhere")
    by_success = compare_policies(llm, suite, tasks, candidate="v9", incumbent="base", concurrency=4)
    assert by_success.candidate_successes == by_success.incumbent_successes == 0 and not by_success.promote
    result = compare_policies(llm, suite, tasks, candidate="v9", incumbent="base", concurrency=4,
                              metric="step-accuracy")
    assert result.candidate_step_accuracy == pytest.approx(12 * 0.5 / 20) and result.incumbent_step_accuracy == 0
    assert result.p_value == pytest.approx(0.5**12) and result.promote
    assert "paired permutation p=" in result.summary()


def test_the_step_accuracy_gate_refuses_fewer_successes(tmp_path, held_out):
    suite, tasks = held_out
    questions = [t.question for t in tasks]
    # more first steps right, but two whole solutions lost
    plan = {None: {q: "gold" for q in questions[:2]}, "v9": {q: "step1" for q in questions[2:16]}}
    llm = first_step_solver(tasks, plan)
    llm.load_adapter("v9", "/nowhere")
    result = compare_policies(llm, suite, tasks, candidate="v9", incumbent="base", concurrency=4,
                              metric="step-accuracy")
    assert result.candidate_step_accuracy > result.incumbent_step_accuracy and result.p_value < 0.05
    assert (result.incumbent_successes, result.candidate_successes) == (2, 0) and not result.promote
    with pytest.raises(AgentkitError, match="gate metric 'vibes'"):
        compare_policies(llm, suite, tasks, candidate="v9", incumbent="base", metric="vibes")


# --- the command line -------------------------------------------------------------------------


def test_policy_commands_list_show_promote_and_rollback(registry, tmp_path):
    v1 = registry.register(fake_adapter(tmp_path / "a1"), method="dpo", config={"beta": 0.4},
                           metrics={"heldout_success": 0.35, "heldout_n": 100}).version
    store = registry.path

    listed = invoke("policy", "list", "--store", store)
    assert listed.exit_code == 0, listed.output
    lines = [line.split() for line in listed.stdout.splitlines() if line.strip().startswith(("base", "v1"))]
    assert lines[0][:3] == ["base", "active", "-"]
    assert lines[1][:4] == ["v1", "candidate", "base", "dpo"]
    assert "35.0%" in listed.stdout and registry.get(v1).checksum[:12] in listed.stdout

    shown = invoke("policy", "show", "v1", "--store", store)
    assert shown.exit_code == 0, shown.output
    for text in ('"beta": 0.4', registry.get(v1).checksum, "candidate", "register"):
        assert text in shown.stdout

    promoted = invoke("policy", "promote", "v1", "--reason", "looks good", "--by", "ana", "--store", store)
    assert promoted.exit_code == 0 and promoted.stdout.strip() == "v1 is active (was base)"
    event = registry.events("v1")[-1]
    assert (event.event, event.actor, event.reason) == ("promote", "ana", "looks good")

    rolled = invoke("policy", "rollback", "--store", store)
    assert rolled.exit_code == 0 and rolled.stdout.strip() == "base is active again (v1 rolled back)"
    assert invoke("policy", "list", "--status", "rejected", "--store", store).stdout.count("v1") == 1


@pytest.mark.parametrize("args, needle", [
    (["policy", "show", "v7"], "no policy version 'v7'"),
    (["policy", "promote", "v7"], "no policy version 'v7'"),
    (["policy", "rollback"], "nothing to roll back to"),
    (["policy", "list", "--status", "great"], "--status great"),
])
def test_policy_commands_fail_with_one_line(registry, args, needle):
    result = invoke(*args, "--store", registry.path)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1 and needle in result.stderr


def test_policy_commands_never_create_a_store(tmp_path):
    result = invoke("policy", "list", "--store", str(tmp_path / "none.db"))
    assert result.exit_code == 1 and "no store at" in result.stderr
    assert not (tmp_path / "none.db").exists()
