"""The continual loop on a scripted sampler and a tiny trainable model: collect -> data ->
train a LoRA candidate -> register -> gate -> promote, with the round table and the PNG."""

from __future__ import annotations

import pytest

from agentkit.errors import AgentkitError

from agentkit.store import ImproveLog, TrajectoryStore
from agentkit.store.policies import PolicyRegistry
from agentkit.tasks import get_suite
from agentkit.learn.improve import ImproveConfig, checker_values, improve, plot_curve

from conftest import build_tiny_model, build_tiny_tokenizer, char_scripted


def answers(suite, right_for):
    """Gold solutions when the requesting adapter is in ``right_for``, else a wrong answer."""
    by_question = {}

    def reply(prompt, request):
        if "Question: " not in prompt:
            return "ok"  # the registry's one-token "which adapter answers?" probe
        question = prompt.rsplit("Question: ", 1)[1].split("\n", 1)[0]
        task = by_question.get(question)
        if task is None:
            level = 1
            for candidate in (suite.tasks("test", 8, level=level) + suite.tasks("train", 64, level=level, seed=1000)
                              + suite.tasks("train", 64, level=level, seed=2000)
                              + suite.tasks("test", 16, level=level, seed=7919)):  # gate, 2 rounds' training, final
                by_question[candidate.question] = candidate
            task = by_question[question]
        ok = request.adapter in right_for or (request.temperature > 0 and request.seed % 2 == 0)
        return task.solution + "\n" if ok else "Step 1: 1 + 1 = 3\nAnswer: 3\n"

    return reply


def test_rft_round_trains_gates_and_promotes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tok = build_tiny_tokenizer()
    suite = get_suite("arithmetic")
    # candidates (adapters named v1, v2...) answer right; the base answers wrong
    llm = char_scripted(answers(suite, right_for={"v1", "v2"}), tok)
    config = ImproveConfig(method="rft", explore="sample", rounds=1, levels=[1], train_tasks=4, eval_tasks=8,
                           samples_per_task=2, epochs=1, batch_size=2, concurrency=4, output_dir=str(tmp_path / "improve"))
    rows = []
    with TrajectoryStore(tmp_path / "runs.db") as store:
        rounds = improve(llm, store, config, model=build_tiny_model(len(tok)), on_round=rows.append)
        registry = PolicyRegistry(store.path)
        assert registry.active().version == "v1"
    assert [r.round for r in rounds] == [0, 1] and rows == rounds
    assert rounds[0].heldout_success == 0.0
    assert rounds[1].promoted and rounds[1].candidate == "v1" and rounds[1].heldout_success == 1.0
    assert rounds[1].examples > 0 and rounds[1].p_value < 0.05
    png = plot_curve(rounds, tmp_path / "curve.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    with TrajectoryStore(tmp_path / "runs.db") as store:  # the run and its rounds, for `agentkit ui`
        [run] = ImproveLog(store).list()
        recorded = ImproveLog(store).get(run.id)
    assert (run.suite, run.method, run.status, run.config["rounds"]) == ("arithmetic", "rft", "finished", 1)
    assert [r["round"] for r in recorded.rounds] == [0, 1]
    assert recorded.rounds[1]["p_value"] == rounds[1].p_value and recorded.rounds[1]["candidate"] == "v1"


@pytest.mark.parametrize("memory", [0, 2])
def test_the_gates_reuse_the_active_policys_gate_set_outcomes(tmp_path, monkeypatch, memory):
    """Plumbing (scripted backend): round 0 measures base on the gate set; round 1's gate runs only v1 (promoted), round
    2's only v2 (refused), each reusing the active policy's outcomes. With memory the
    library changes between rounds, so every gate runs the incumbent again."""
    import importlib

    improve_module = importlib.import_module("agentkit.learn.improve")
    gates = []
    real = improve_module.gate_candidate
    monkeypatch.setattr(improve_module, "gate_candidate", lambda *a, **k: gates.append(real(*a, **k)) or gates[-1])
    monkeypatch.chdir(tmp_path)
    tok = build_tiny_tokenizer()
    suite = get_suite("arithmetic")
    llm = char_scripted(answers(suite, right_for={"v1", "v2"}), tok)
    config = ImproveConfig(method="rft", explore="sample", rounds=2, levels=[1], train_tasks=4, eval_tasks=8,
                           final_tasks=0, samples_per_task=2, epochs=1, batch_size=2, concurrency=4, memory=memory,
                           output_dir=str(tmp_path / "improve"))
    gate_ids = {t.id for t in suite.tasks("test", 8, level=1)}
    with TrajectoryStore(tmp_path / "runs.db") as store:
        rounds = improve(llm, store, config, model=build_tiny_model(len(tok)))
        gated = sorted(r.policy_version for r in store.list_runs(None) if r.task_id in gate_ids)
        base_runs = sorted(r.id for r in store.list_runs(None) if r.task_id in gate_ids and r.policy_version == "base")
    assert [(r.candidate, r.promoted, r.heldout_success, r.candidate_success) for r in rounds] == [
        (None, False, 0.0, None), ("v1", True, 1.0, 1.0), ("v2", False, 1.0, 1.0)]
    if memory:
        assert gated == ["base"] * 16 + ["v1"] * 16 + ["v2"] * 8
        assert set(gates[1].incumbent_run_ids).isdisjoint(gates[0].candidate_run_ids)
    else:
        assert gated == ["base"] * 8 + ["v1"] * 8 + ["v2"] * 8
        assert sorted(gates[0].incumbent_run_ids) == base_runs  # round 0's runs
        assert gates[1].incumbent_run_ids == gates[0].candidate_run_ids  # v1 as round 1's gate ran it


@pytest.mark.parametrize("collect_with", ["active", "best"])
def test_the_best_gate_scorer_collects_even_when_the_gate_refused_it(tmp_path, monkeypatch, collect_with):
    """Plumbing (scripted backend: v1 answers right because it is named v1). v1 solves all 8
    gate tasks and the base none, yet at alpha 0.001 the gate refuses it:
    with collect_with=best, v1 collects round 2 while the base stays active; v2 (wrong
    everywhere) scores below v1, so v1 stays the collector."""
    monkeypatch.chdir(tmp_path)
    tok = build_tiny_tokenizer()
    suite = get_suite("arithmetic")
    llm = char_scripted(answers(suite, right_for={"v1"}), tok)
    config = ImproveConfig(method="rft", explore="sample", rounds=2, levels=[1], train_tasks=4, eval_tasks=8,
                           final_tasks=0, samples_per_task=2, epochs=1, batch_size=2, concurrency=4, alpha=0.001,
                           collect_with=collect_with, output_dir=str(tmp_path / "improve"))
    round_2 = {t.id for t in suite.tasks("train", 4, level=1, seed=2000)}
    with TrajectoryStore(tmp_path / "runs.db") as store:
        rounds = improve(llm, store, config, model=build_tiny_model(len(tok)))
        assert PolicyRegistry(store.path).active().version == "base"
        collected_by = {r.policy_version for r in store.list_runs(None) if r.task_id in round_2}
    assert [(r.candidate, r.promoted, r.candidate_success) for r in rounds[1:]] == [("v1", False, 1.0),
                                                                                   ("v2", False, 0.0)]
    if collect_with == "best":
        assert collected_by == {"v1"} and rounds[2].new_data["collector"] == "v1"
        assert llm.list_adapters() == ["v1"]  # the collector stays loaded, the refused v2 does not
    else:
        assert collected_by == {"base"} and "collector" not in rounds[2].new_data
        assert llm.list_adapters() == []


def test_a_regression_is_not_promoted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tok = build_tiny_tokenizer()
    suite = get_suite("arithmetic")
    llm = char_scripted(answers(suite, right_for={None}), tok)  # the base is right, candidates wrong
    config = ImproveConfig(method="rft", explore="sample", rounds=1, levels=[1], train_tasks=4, eval_tasks=8,
                           samples_per_task=2, epochs=1, batch_size=2, concurrency=4, output_dir=str(tmp_path / "improve"))
    with TrajectoryStore(tmp_path / "runs.db") as store:
        rounds = improve(llm, store, config, model=build_tiny_model(len(tok)))
        assert PolicyRegistry(store.path).active().version == "base"
    assert not rounds[1].promoted and rounds[1].heldout_success == rounds[0].heldout_success == 1.0


def test_bad_method_is_one_clear_error():
    from agentkit.errors import AgentkitError

    with pytest.raises(AgentkitError, match="method 'ppo'"):
        ImproveConfig(method="ppo")


def test_gold_sft_trains_on_the_suite_solutions_without_sampling(tmp_path, monkeypatch):
    from agentkit.learn.improve import _collect

    monkeypatch.chdir(tmp_path)
    tok = build_tiny_tokenizer()
    suite = get_suite("arithmetic")
    llm = char_scripted(answers(suite, right_for={"v1"}), tok)
    config = ImproveConfig(method="gold-sft", rounds=1, levels=[1], train_tasks=4, eval_tasks=8, epochs=1,
                           batch_size=2, concurrency=4, output_dir=str(tmp_path / "improve"))
    tasks = suite.tasks("train", 3, level=1, seed=7)
    with TrajectoryStore(tmp_path / "runs.db") as store:
        data, counts, sampled = _collect(llm, suite, tasks, store, config, "base", None, 1)
        assert (len(data), counts, sampled, store.list_runs(None)) == (3, {"solutions": 3}, 0, [])
        for task, example in zip(tasks, data):  # (the char tokenizer drops newlines)
            assert example.prompt_ids == llm.tokenize(suite.prompt(task, shots=config.shots))
            assert example.completion_ids == llm._encode(task.solution + "\n\nQuestion:")
        said: list[str] = []
        rounds = improve(llm, store, config, model=build_tiny_model(len(tok)), on_status=said.append)
    assert rounds[1].examples == 4 and rounds[1].sampled_tokens == 0 and rounds[1].promoted
    # training shows progress: 4 examples in batches of 2 are 2 steps, the first reported
    assert [m.split(", loss")[0] for m in said if "training step" in m] == ["round 1: training step 1/2"], said


def test_training_progress_reports_each_fifth_of_a_run_and_restarts_for_a_second_stage():
    from agentkit.learn.improve import _training_progress

    said: list[str] = []
    report = _training_progress(said.append, 2)
    for total, every in ((300, 10), (50, 1)):  # an sft stage logged every 10 steps, then a dpo stage
        for step in range(every, total + 1, every):
            report({"step": step, "total_steps": total, "loss": 0.5, "tokens_per_s": 100.0})
    assert [m.split(",")[0] for m in said] == [f"round 2: training step {s}" for s in
                                               ("60/300", "120/300", "180/300", "240/300",
                                                "10/50", "20/50", "30/50", "40/50")]


def test_explore_defaults_to_search_where_the_method_trains_on_search_trees():
    assert (ImproveConfig().method, ImproveConfig().explore) == ("rft", "search")
    assert ImproveConfig(method="step-dpo").explore == "search"
    assert ImproveConfig(method="grpo").explore == "sample"
    assert ImproveConfig(method="rft", graph="plan_solve_check").explore == "sample"  # search is the graph's


def test_a_suite_vocabulary_run_decodes_gates_and_trains_over_the_suites_tokens(tmp_path, monkeypatch):
    """vocabulary=suite: every request of the run, round 0, collection, the gate and the final
    test, names the suite's vocabulary, and the candidate trains over the same ids. The
    promotion is plumbing only (the scripted backend answers right whenever the adapter is
    v1); that the restricted softmax is the decoding policy is tested in test_trainer.py and
    test_transformers.py on a real (tiny) model."""
    monkeypatch.chdir(tmp_path)
    tok = build_tiny_tokenizer()
    suite = get_suite("arithmetic")
    reply = answers(suite, right_for={"v1"})
    # the registry's probe gets a digit: "ok" is not arithmetic
    llm = char_scripted(lambda prompt, request: reply(prompt, request) if "Question: " in prompt else "1", tok)
    config = ImproveConfig(method="rft", explore="sample", rounds=1, levels=[1], train_tasks=4, eval_tasks=8,
                           final_tasks=8, samples_per_task=2, epochs=1, batch_size=2, concurrency=4,
                           vocabulary="suite", output_dir=str(tmp_path / "improve"))
    vocabulary = suite.vocabulary(lambda text: llm.tokenize(text)[1:])
    assert 15 <= len(vocabulary) < 40  # digits, operators, "Step", "Answer"... in the tiny tokenizer's pieces
    with TrajectoryStore(tmp_path / "runs.db") as store:
        rounds = improve(llm, store, config, model=build_tiny_model(len(tok)))
        v1 = PolicyRegistry(store.path).get("v1")
    assert rounds[1].promoted and rounds[1].final_success == 1.0
    assert llm.requests and {r.allowed_token_ids for r in llm.requests} == {tuple(vocabulary)}
    assert v1.config["allowed_token_ids"] == vocabulary


def test_a_suite_vocabulary_that_cannot_write_the_gate_sets_solutions_is_refused_or_left_for_the_full_one():
    from agentkit.errors import ConfigError
    from agentkit.learn.improve import _run_vocabulary, suite_vocabulary
    from agentkit.tasks.base import Task

    tok = build_tiny_tokenizer()
    llm = char_scripted(["1"], tok)
    suite = get_suite("arithmetic")
    gate = suite.tasks("test", 4, level=1)
    allowed = suite.vocabulary(lambda text: llm.tokenize(text)[1:])
    assert suite_vocabulary(llm, suite, gate) == (allowed, [])
    odd = Task(**{**gate[0].model_dump(), "solution": "Step 1: twelve"})
    assert [llm.decode([t]) for t in suite_vocabulary(llm, suite, gate + [odd])[1]] == ["l", "v"]
    status = []
    for vocabulary, expected in (("auto", None), ("full", None), ("suite", ConfigError)):
        config = ImproveConfig(vocabulary=vocabulary)
        if expected is ConfigError:
            with pytest.raises(ConfigError, match="use 2 tokens the arithmetic suite.s vocabulary lacks.* use vocabulary 'full'"):
                _run_vocabulary(llm, suite, gate + [odd], config, status.append)
        else:
            assert _run_vocabulary(llm, suite, gate + [odd], config, status.append) is None
        assert _run_vocabulary(llm, suite, gate, config, status.append) == (None if vocabulary == "full" else allowed)
    assert status == ["decoding over the whole vocabulary: the gate set's gold solutions use 2 tokens the arithmetic "
                      "suite's vocabulary lacks (first 'l'): its solutions copy words from their questions"]
    graph = ImproveConfig(graph="plan_solve_check", method="rft")  # plans and critiques are not solutions
    assert _run_vocabulary(llm, suite, gate, graph, status.append) is None


def test_improve_config_refuses_unknown_choices():
    from agentkit.errors import AgentkitError

    with pytest.raises(AgentkitError, match="chosen_by 'vibes'"):
        ImproveConfig(chosen_by="vibes")
    with pytest.raises(AgentkitError, match="gate_metric 'vibes'"):
        ImproveConfig(gate_metric="vibes")
    with pytest.raises(AgentkitError, match="step_advantages 'vibes'"):
        ImproveConfig(step_advantages="vibes")
    with pytest.raises(AgentkitError, match="collect_with 'vibes'"):
        ImproveConfig(collect_with="vibes")
    with pytest.raises(AgentkitError, match="grpo.*drop collect_with"):
        ImproveConfig(method="grpo", collect_with="best")
    with pytest.raises(AgentkitError, match="alpha_spending 'late'"):
        ImproveConfig(alpha_spending="late")
    with pytest.raises(AgentkitError, match="vocabulary 'tiny': choose one of auto, full, suite"):
        ImproveConfig(vocabulary="tiny")
    with pytest.raises(AgentkitError, match="graph 'plan_solve_check' also writes plans"):
        ImproveConfig(graph="plan_solve_check", method="rft", vocabulary="suite")


def test_checker_values_reward_each_right_step_and_drop_at_the_first_wrong_one():
    suite = get_suite("arithmetic")
    task = suite.tasks("test", 1, level=2)[0]
    (a, op1, b, c), (_, op2, d, e) = task.data["steps"]
    right1, right2 = f"Step 1: {a} {op1} {b} = {c}\n", f"Step 2: {c} {op2} {d} = {e}\n"
    wrong1, wrong2 = f"Step 1: {a} {op1} {b} = {c + 1}\n", f"Step 2: {c} {op2} {d} = {e + 1}\n"
    assert checker_values(suite, task, right1 + right2 + f"Answer: {e}") == [0.0, 0.5, 1.0]
    assert checker_values(suite, task, wrong1 + f"Step 2: {c + 1} {op2} {d} = 0\n") == [0.0, 0.0, 0.0]
    assert checker_values(suite, task, right1 + wrong2) == [0.0, 0.5, 0.0]
    assert checker_values(suite, task, "Answer: 3") == [0.0]


def test_grpo_with_checker_step_advantages_trains_on_groups_without_outcome_signal(tmp_path, monkeypatch):
    """Every sample fails (no outcome signal in any group), but their steps differ under the
    checker, so a candidate is still trained; without step advantages there is nothing to train."""
    monkeypatch.chdir(tmp_path)
    tok = build_tiny_tokenizer()
    suite = get_suite("arithmetic")
    tasks = {t.question: t for t in suite.tasks("train", 4, level=2, seed=1000) + suite.tasks("test", 4, level=2)}

    def reply(prompt, request):
        if "Question: " not in prompt:
            return "ok"
        task = tasks[prompt.rsplit("Question: ", 1)[1].split("\n", 1)[0]]
        first = task.solution.splitlines()[0]
        # half the samples get step 1 right; all get step 2 and the answer wrong
        return (first if request.temperature > 0 and request.seed % 2 == 0 else "Step 1: 1 + 1 = 3") + \
            "\nStep 2: 1 + 1 = 3\nAnswer: 3\n"

    results = {}
    for mode in ("none", "checker"):
        config = ImproveConfig(method="grpo", rounds=1, levels=[2], train_tasks=4, eval_tasks=4, samples_per_task=4,
                               epochs=1, batch_size=2, concurrency=4, step_advantages=mode,
                               output_dir=str(tmp_path / mode))
        with TrajectoryStore(tmp_path / f"{mode}.db") as store:
            results[mode] = improve(char_scripted(reply, tok), store, config, model=build_tiny_model(len(tok)))[1]
    assert results["none"].candidate is None  # all-equal rewards: nothing to train, reported
    assert results["checker"].candidate == "v1" and results["checker"].examples == 4


def test_improve_with_memory_updates_the_library_and_reads_it(tmp_path, monkeypatch):
    from agentkit.memory.library import ExperienceLibrary

    monkeypatch.chdir(tmp_path)
    tok = build_tiny_tokenizer()
    suite = get_suite("arithmetic")
    llm = char_scripted(answers(suite, right_for={"v1"}), tok)
    config = ImproveConfig(method="rft", explore="sample", rounds=1, levels=[1], train_tasks=4, eval_tasks=8,
                           samples_per_task=2, epochs=1, batch_size=2, concurrency=4, memory=2,
                           output_dir=str(tmp_path / "improve"))
    with TrajectoryStore(tmp_path / "runs.db") as store:
        rounds = improve(llm, store, config, model=build_tiny_model(len(tok)))
        library = ExperienceLibrary(store)
        exemplars = library.items(kind="exemplar")
        sampled = [r for r in store.list_runs(None) if (r.meta or {}).get("sampled_for")]
        gated = [r for r in store.list_runs(None) if r.policy_version == "v1"]
        shown = [s.memory_ids for r in gated for s in store.steps(r.id)]
    # the verified samples (even seeds answer right) became exemplars, and the gate's runs saw them
    assert rounds[1].new_data["memory_added"] == len(exemplars) > 0
    assert len(sampled) == 8 and all(ids for ids in shown)


def test_improve_a_graph_with_step_dpo_trains_its_solver_call(tmp_path, monkeypatch):
    """plan -> solve -> check: the runs are whole graph runs, pairs come from the solver's
    call (its prompt holds the plan), and the gate runs the graph with each policy."""
    monkeypatch.chdir(tmp_path)
    tok = build_tiny_tokenizer()
    suite = get_suite("arithmetic")
    tasks = {t.question: t for t in suite.tasks("test", 8, level=1) + suite.tasks("train", 64, level=1, seed=1000)}
    rectified = iter(range(10**6))
    planned = []

    def reply(prompt, request):
        if prompt.endswith("Plan:\n"):
            planned.append(request.adapter)
            return "1. Do the operation.\n\n"
        if "Question: " not in prompt:
            return "ok"
        task = tasks[prompt.rsplit("Question: ", 1)[1].split("\n", 1)[0]]
        (a, op, b, c), = task.data["steps"]
        so_far = prompt.rsplit("Solution:\n", 1)[1]
        if so_far == "Step 1:":  # a rectification: every other one is right
            return f" {a} {op} {b} = {c}\n" if next(rectified) % 2 else f" {a} {op} {b} = {c + 1}\n"
        if request.adapter is not None:  # a trained candidate
            return task.solution + "\n"
        return f"Step 1: {a} {op} {b} = {c + 1}\nAnswer: {c + 1}\n"

    llm = char_scripted(reply, tok)
    config = ImproveConfig(method="step-dpo", graph="plan_solve_check", rounds=1, levels=[1], train_tasks=4,
                           eval_tasks=8, samples_per_task=2, rectifications=4, chosen_by="step", epochs=1,
                           batch_size=2, concurrency=4, output_dir=str(tmp_path / "improve"))
    with TrajectoryStore(tmp_path / "runs.db") as store:
        rounds = improve(llm, store, config, model=build_tiny_model(len(tok)))
        runs = store.list_runs()
        from agentkit.store import PairStore

        pairs = PairStore(store).pairs(kind="step")
    assert {r.graph for r in runs} == {"plan_solve_check"}
    assert rounds[0].heldout_success == 0.0
    assert rounds[1].new_data["samples"] == 8 and rounds[1].new_data["error_points"] == 8
    assert rounds[1].examples == len(pairs) == 4  # one right rectification per distinct task
    for pair in pairs:
        assert "Plan:\n1. Do the operation.\n" in pair.prompt_text and pair.chosen_text != pair.rejected_text
    assert rounds[1].promoted and rounds[1].heldout_success == 1.0
    assert "v1" in planned  # the gate ran the candidate's whole graph, planner included


def test_graphs_take_the_methods_that_train_from_their_runs():
    with pytest.raises(Exception, match="trains the single solver only"):
        ImproveConfig(method="grpo", graph="plan_solve_check")
    with pytest.raises(Exception, match="declares memory on its nodes"):
        ImproveConfig(method="step-dpo", graph="plan_solve_check", memory=2)
    ImproveConfig(method="rft", graph="plan_solve_check")


def test_final_test_set_is_disjoint_from_the_gate_set_and_never_changes():
    from agentkit.learn.improve import FINAL_SEED, final_tasks

    suite = get_suite("arithmetic")
    gate = suite.tasks("test", 100, level=1, seed=0)
    seed = ImproveConfig(eval_seed=0).final_seed
    assert seed == FINAL_SEED and ImproveConfig(eval_seed=3).final_seed == 3 + FINAL_SEED
    final = final_tasks(suite, 200, 1, seed, exclude=gate)
    assert len(final) == 200 and not {t.question for t in final} & {t.question for t in gate}
    assert final == final_tasks(suite, 200, 1, seed, exclude=gate)
    fresh = final_tasks(suite, 200, 1, ImproveConfig(final_seed=4002).final_seed, exclude=gate)
    assert {t.question for t in fresh} != {t.question for t in final}  # another seed, other tasks
    assert all(t.split == "test" for t in final)


def search_lines(suite, greedy, tasks, solvable=lambda task: True):
    """Search lines for ``tasks``: every other sample under a prefix is the right next
    line (for the ``solvable`` tasks; the others get only wrong lines); any other request
    goes to ``greedy``."""
    from collections import defaultdict

    counters = defaultdict(int)
    by_question = {t.question: t for t in tasks}

    def reply(prompt, request):
        if "\n" not in request.stop:
            return greedy(prompt, request)
        task = by_question[prompt.rsplit("Question: ", 1)[1].split("\n", 1)[0]]
        solution = prompt.split("Solution:\n")[-1]
        gold = [line + "\n" for line in task.solution.split("\n")]
        counters[prompt] += 1
        done = solution.count("\n")
        right = solution == "".join(gold[:done]) and counters[prompt] % 2 == 0 and solvable(task)
        return gold[done] if right else ("Answer: 3\n" if done else "Step 1: 1 + 1 = 3\n")

    return reply


def test_a_search_round_trains_on_what_the_trees_found(tmp_path, monkeypatch):
    """Plumbing only (the scripted backend answers right whenever the adapter is v1):
    explore=search, method=expert: one search per training task records a tree; the
    verified solutions train an SFT stage and the sibling pairs a DPO stage on top; the
    gate decides on its set and the final test set is measured apart, after promotion.
    That the loop learns is measured on the real model (bench/improve.py)."""
    monkeypatch.chdir(tmp_path)
    tok = build_tiny_tokenizer()
    suite = get_suite("arithmetic")
    reply = search_lines(suite, answers(suite, right_for={"v1"}), suite.tasks("train", 4, level=1, seed=1000))

    llm = char_scripted(reply, tok)
    config = ImproveConfig(method="expert", explore="search", search="beam:1x4", rounds=1, levels=[1], train_tasks=4,
                           curriculum="none", eval_tasks=8, final_tasks=8, epochs=1, batch_size=2, concurrency=4,
                           output_dir=str(tmp_path / "improve"))
    with TrajectoryStore(tmp_path / "runs.db") as store:
        rounds = improve(llm, store, config, model=build_tiny_model(len(tok)))
        registry = PolicyRegistry(store.path)
        assert registry.active().version == "v1"
        searched = [r for r in store.list_runs(None) if (r.meta or {}).get("agent", {}).get("search")]
        assert len(searched) == 4
    data = rounds[1].new_data
    assert data["searched"] == 4 and data["solved"] == 4 and data["pairs"] >= 8  # a pair per line of each tree
    assert rounds[1].examples == data["solved"] + data["pairs"]
    assert rounds[0].final_success == 0.0 and rounds[1].final_success == 1.0 and rounds[1].final_n == 8
    assert rounds[1].final_ci95[0] > 0.6
    assert rounds[1].p_adjusted == rounds[1].p_value  # one round: one gate
    assert rounds[1].cpu_s > rounds[0].cpu_s > 0


def test_the_curriculum_moves_up_once_search_solves_enough_fresh_tasks(tmp_path, monkeypatch):
    """Plumbing: the scripted search solves every task, so the level must move up."""
    monkeypatch.chdir(tmp_path)
    tok = build_tiny_tokenizer()
    suite = get_suite("arithmetic")
    tasks = suite.tasks("train", 4, level=1, seed=1000) + suite.tasks("train", 4, level=2, seed=2000)
    llm = char_scripted(search_lines(suite, answers(suite, right_for={"v1"}), tasks), tok)
    config = ImproveConfig(method="rft", explore="search", search="beam:1x4", rounds=2, levels=[1, 2], eval_level=1,
                           advance_at=0.9, train_tasks=4, curriculum="none", eval_tasks=8, final_tasks=0, epochs=1, batch_size=2,
                           concurrency=4, output_dir=str(tmp_path / "improve"))
    with TrajectoryStore(tmp_path / "runs.db") as store:
        rounds = improve(llm, store, config, model=build_tiny_model(len(tok)))
    # search solved all 4 fresh level-1 tasks (>= 90%): round 2 trains on level 2
    assert rounds[1].new_data["solved"] == 4 and [r.level for r in rounds[1:]] == [1, 2]
    with pytest.raises(AgentkitError, match="advance_at"):
        ImproveConfig(explore="sample", advance_at=0.5)  # it reads search's success: explore=search only


def test_the_mopps_curriculum_searches_more_of_the_family_search_solves_sometimes(tmp_path, monkeypatch):
    """Plumbing: search solves every addition, no subtraction and the multiplications of an
    even number. Round 1 picks from a flat prior; fed with what search solved, the bandit
    makes round 2 search more multiplications (its families "*" and "*h") out of a pool of
    the same make-up, and the journal says what it believed. Nothing trains: the test is
    about which tasks are searched."""
    import importlib
    from types import SimpleNamespace

    improve_module = importlib.import_module("agentkit.learn.improve")
    monkeypatch.setattr(improve_module, "_train", lambda *a, **k: SimpleNamespace(adapter_path=None, stats={}))
    monkeypatch.chdir(tmp_path)
    tok = build_tiny_tokenizer()
    suite = get_suite("arithmetic")
    tasks = [t for r in (1, 2) for t in suite.tasks("train", 128, level=1, seed=1000 * r)]

    def solvable(task):
        a, op, _, _ = task.data["steps"][0]
        return op == "+" or (op == "*" and a % 2 == 0)

    def wrong(prompt, request):  # round 0's measurement
        return "Step 1: 1 + 1 = 3\nAnswer: 3\n" if "Question: " in prompt else "ok"

    llm = char_scripted(search_lines(suite, wrong, tasks, solvable), tok)
    config = ImproveConfig(method="rft", explore="search", search="beam:1x4", rounds=2, levels=[1], train_tasks=32,
                           curriculum="mopps", pool=4, eval_tasks=4, final_tasks=0, concurrency=8,
                           output_dir=str(tmp_path / "improve"))
    with TrajectoryStore(tmp_path / "runs.db") as store:
        rounds = improve(llm, store, config)
        [run] = ImproveLog(store).list()
        journal = ImproveLog(store).get(run.id).rounds
    picked = [r.new_data["picked"] for r in rounds[1:]]
    assert [sum(p.values()) for p in picked] == [32, 32] and [r.new_data["searched"] for r in rounds[1:]] == [32, 32]
    by_op = [{op: sum(n for f, n in p.items() if f[0] == op) for op in "+-*"} for p in picked]
    assert by_op[1]["*"] > by_op[0]["*"] + 4 and by_op[1]["*"] > max(by_op[1]["+"], by_op[1]["-"]), by_op
    belief = rounds[2].new_data["curriculum"]
    assert min(belief["+"], belief["+c"]) > 0.75 and max(belief["-"], belief["-b"]) < 0.25, belief
    assert journal[2]["new_data"]["curriculum"] == belief


def test_a_curriculum_needs_search_and_a_pool():
    with pytest.raises(AgentkitError, match="curriculum 'easy': choose one of none, mopps"):
        ImproveConfig(curriculum="easy")
    with pytest.raises(AgentkitError, match="pool 0: must be at least 1"):
        ImproveConfig(curriculum="mopps", pool=0)
    with pytest.raises(AgentkitError, match="curriculum 'mopps' learns from search's solved tasks"):
        ImproveConfig(curriculum="mopps", explore="sample")
    assert ImproveConfig(curriculum="mopps").explore == "search"  # rft searches unless told otherwise
    # the default: the curriculum where rounds search, none where they sample
    assert ImproveConfig().curriculum == "mopps" and ImproveConfig(explore="sample").curriculum == "none"


def test_search_rounds_train_grpo_on_sibling_groups_and_from_base_starts_fresh(tmp_path, monkeypatch):
    """Plumbing: method=grpo on search trees trains on one group per expanded node whose
    lines differ in value (this round's trees only); from_base trains every candidate from
    the base model, so round 2's candidate does not continue the promoted v1; incremental
    continues the active policy on the solutions it has not learnt."""
    import importlib

    improve_module = importlib.import_module("agentkit.learn.improve")

    monkeypatch.chdir(tmp_path)
    tok = build_tiny_tokenizer()
    suite = get_suite("arithmetic")
    tasks = [t for r in (1, 2) for t in suite.tasks("train", 4, level=1, seed=1000 * r)]
    parents = []
    real = improve_module.train_candidate
    monkeypatch.setattr(improve_module, "train_candidate",
                        lambda registry, cfg, model, parent, *a, **k: parents.append(parent) or real(registry, cfg, model, parent, *a, **k))

    def run(method, right_for=("v1", "v2"), **options):
        llm = char_scripted(search_lines(suite, answers(suite, right_for=set(right_for)), tasks), tok)
        name = "-".join([method, *sorted(right_for), *map(str, options.values())])  # a store and a registry of its own
        config = ImproveConfig(method=method, explore="search", search="beam:1x4", rounds=2, levels=[1],
                               train_tasks=4, curriculum="none", eval_tasks=8, final_tasks=0, epochs=1, batch_size=2,
                               concurrency=4, output_dir=str(tmp_path / name), **options)
        with TrajectoryStore(tmp_path / f"{name}.db") as store:
            return improve(llm, store, config, model=build_tiny_model(len(tok)))

    rounds = run("grpo")
    # each task's tree: 2 expanded nodes, each with a right and a wrong line
    assert rounds[1].new_data["groups"] == rounds[1].examples == 8
    assert rounds[1].promoted and parents == ["base", "v1"]  # grpo continues the policy that sampled
    parents.clear()
    rounds = run("rft", from_base=True, alpha_spending="equal")
    assert rounds[1].promoted and parents == ["base", "base"]
    # two gates split alpha evenly; round 1's promotion carries its share to round 2's gate
    assert rounds[1].p_adjusted == pytest.approx(min(1.0, 2 * rounds[1].p_value))
    assert rounds[2].p_adjusted == pytest.approx(rounds[2].p_value)
    assert rounds[2].examples == 8  # the replay buffer: both rounds' solutions
    rounds = run("rft", from_base=True, alpha_spending="rising")  # round 1 gets 1/3 of alpha, round 2 2/3
    assert rounds[1].promoted and 0 < rounds[1].p_value < 1 / 3
    assert rounds[1].p_adjusted == pytest.approx(3 * rounds[1].p_value)
    assert rounds[2].p_adjusted == pytest.approx(rounds[2].p_value)  # its 2/3 and the 1/3 carried: all of alpha
    with pytest.raises(AgentkitError, match="drop from_base"):
        ImproveConfig(method="rloo", explore="search", from_base=True)
    parents.clear()
    rounds = run("rft", incremental=True)  # v1 is promoted: round 2 continues it on round 2's solutions
    assert rounds[1].promoted and parents == ["base", "v1"] and [r.examples for r in rounds[1:]] == [4, 4]
    parents.clear()
    rounds = run("rft", right_for={"v2"}, incremental=True)  # v1 is refused: base learns both rounds' solutions
    assert not rounds[1].promoted and parents == ["base", "base"] and [r.examples for r in rounds[1:]] == [4, 8]
    assert rounds[2].promoted


def test_incremental_needs_rft_on_search_trees_and_excludes_from_base():
    # the default where rounds search for rft, unless asked to train from the base model
    assert ImproveConfig().incremental is True and ImproveConfig().from_base is False
    assert ImproveConfig(from_base=True).incremental is False
    assert ImproveConfig(incremental=False).from_base is True  # ReST-EM, as before
    assert ImproveConfig(method="step-dpo", explore="sample").incremental is False
    # with it, 7 search rounds fit in 30 CPU-minutes at one operation; sampling rounds cost more
    assert ImproveConfig().rounds == 7 and ImproveConfig(method="step-dpo", explore="sample").rounds == 3
    with pytest.raises(AgentkitError, match="incremental trains rft candidates on search trees"):
        ImproveConfig(method="step-dpo", explore="sample", incremental=True)
    with pytest.raises(AgentkitError, match="incremental continues the active policy's adapter; drop from_base"):
        ImproveConfig(incremental=True, from_base=True)
    with pytest.raises(AgentkitError, match="incremental keeps the solutions of refused rounds"):
        ImproveConfig(incremental=True, replay=False)
