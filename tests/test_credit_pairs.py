"""Credit assignment and Step-DPO pairs: step token spans, first wrong steps by checker,
Monte-Carlo values and critic, rectification into pairs, dedup, storage and export."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import pytest

from agentkit.llm.base import GenerationRequest
from agentkit.llm.scripted import ScriptedLLM
from agentkit.store import Pair, PairStore, TrajectoryStore
from agentkit.runtime import run_tasks
from agentkit.tasks import get_suite, split_steps
from agentkit.learn.credit import (
    MCConfig,
    TokenText,
    first_error_by_critic,
    first_error_by_values,
    locate_errors,
    mc_values,
    step_char_spans,
    step_token_spans,
    token_step_index,
)
from agentkit.learn.pairs import StepDPOConfig, build_outcome_pairs, build_step_pairs

SUITE = get_suite("arithmetic")


def lines(task):
    """The gold step lines, a wrong step 2, and the answers."""
    (a, op, b, c), (c2, op2, d, e) = task.data["steps"]
    return {
        "step1": f"Step 1: {a} {op} {b} = {c}\n",
        "good2": f" {c2} {op2} {d} = {e}\n",
        "spaced2": f"  {c2} {op2} {d}  =  {e}\n",
        "lucky2": f" {c2} {op2} {d} = {e + 5}\n",  # a wrong step 2 ...
        "wrong2": f" {c2} {op2} {d} = {e + 1}\n",
        "answer": f"Answer: {e}\n",
        "wrong_answer": f"Answer: {e + 1}\n",
    }


def generated(prompt: str) -> str:
    """What the policy has written so far: the text after the prompt's last "Solution:"."""
    return prompt.rsplit("Solution:\n", 1)[1]


class CountingLLM(ScriptedLLM):
    """ScriptedLLM that remembers each generate call as [(n, prompt is ids), ...]."""

    def __init__(self, replies):
        super().__init__(replies)
        self.calls = []
        self.sampled = []  # tokens sampled per call

    def generate(self, requests):
        self.calls.append([(r.n, not isinstance(r.prompt, str)) for r in requests])
        results = super().generate(requests)
        self.sampled.append(sum(len(c.token_ids) for cs in results for c in cs))
        return results


def planted_error_policy(task, rectifications):
    """Samples "Step 1 (right), Step 2 (wrong)"; from "...Step 2:" continues with the
    given bodies in turn, each followed by the answer it implies."""
    w = lines(task)
    bodies = itertools.cycle(rectifications)

    def reply(prompt: str, request: GenerationRequest) -> str:
        so_far = generated(prompt)
        if so_far == "":
            return w["step1"] + "Step 2:" + w["wrong2"] + w["wrong_answer"]
        assert so_far == w["step1"] + "Step 2:", so_far
        body = next(bodies)
        return body + (w["answer"] if body != w["wrong2"] else w["wrong_answer"])

    return reply


# --- step spans ---------------------------------------------------------------------------


SOLUTION = "Step 1: 2 × 3 = 6\nStep 2: 6 + 1 = 7\nAnswer: 7"


def test_step_char_spans_match_split_steps():
    text = "Let me see.\n" + SOLUTION + "\nstep 3 : extra"
    spans = step_char_spans(text)
    assert len(spans) == len(split_steps(text)) == 3
    assert [text[s.start:s.end] for s in spans] == ["Step 1: 2 × 3 = 6\n", "Step 2: 6 + 1 = 7\n", "step 3 : extra"]
    assert [text[s.body:s.end].strip() for s in spans] == split_steps(text)


def test_step_token_spans_bytes_with_a_split_character():
    llm = ScriptedLLM(["unused"])
    ids = llm.tokenize(SOLUTION)[1:]  # one token per byte: "×" is two tokens
    spans = step_token_spans(llm, ids)
    assert [llm.decode(ids[s:e]) for s, e in spans] == ["Step 1: 2 × 3 = 6\n", "Step 2: 6 + 1 = 7\n"]
    first = len("Step 1: 2 × 3 = 6\n".encode())
    assert spans == [(0, first), (first, first + len("Step 2: 6 + 1 = 7\n"))]
    # the prefix that ends inside "×" spells nothing of it yet
    tt = TokenText(llm, ids)
    cut = len("Step 1: 2 ".encode())
    assert tt.covered(cut + 1) == cut and tt.boundary(cut + 1) == cut + 2
    assert token_step_index(spans, len(ids))[first - 1: first + 1] == [0, 1]
    assert token_step_index(spans, len(ids))[-1] == -1  # "Answer: 7" is no step


class PieceLLM(ScriptedLLM):
    """ScriptedLLM with a BPE-like vocabulary: greedy longest match over multi-character
    pieces, some across a line end ("\\nSt") or after a step head (": "), bytes otherwise;
    id 1 is an end-of-sequence token that decodes to nothing."""

    PIECES = ["\nSt", "Step", "ep", ": ", " = ", "Answer", " +", " -", " *"] + [f"{n}" for n in range(10, 100)]
    BASE = 1000

    def tokenize(self, text):
        return [2] + self._encode(text)

    def _encode(self, text):
        ids, i = [], 0
        while i < len(text):
            piece = max((p for p in self.PIECES if text.startswith(p, i)), key=len, default=None)
            if piece is None:
                ids += [b + 3 for b in text[i].encode()]
                i += 1
            else:
                ids.append(self.BASE + self.PIECES.index(piece))
                i += len(piece)
        return ids

    def decode(self, token_ids):
        out = b""
        for t in token_ids:
            out += self.PIECES[t - self.BASE].encode() if t >= self.BASE else bytes([t - 3]) if t >= 3 else b""
        return out.decode("utf-8", "replace")


def test_step_token_spans_bpe_like_tokens_straddling_boundaries():
    llm = PieceLLM(["unused"])
    text = "Step 1: 23 + 41 = 64\nStep 2: 64 - 17 = 47\nAnswer: 47"
    ids = llm._encode(text) + [1]  # EOS at the end
    pieces = [llm.decode([i]) for i in ids]
    assert "\nSt" in pieces and ": " in pieces
    spans = step_token_spans(llm, ids)
    # "\nSt" straddles the end of step 1's line: it stays with step 1, step 2 starts at "ep"
    assert [llm.decode(ids[s:e]) for s, e in spans] == ["Step 1: 23 + 41 = 64\nSt", "ep 2: 64 - 17 = 47\n"]
    assert spans[0][1] == spans[1][0]  # contiguous, disjoint
    tt = TokenText(llm, ids)
    assert tt.boundary(len(tt.text)) == len(ids) - 1  # EOS spells nothing: not inside the text
    body = tt.boundary(step_char_spans(tt.text)[1].body)
    assert llm.decode(ids[:body]).endswith("Step 2: ")  # ": " straddles the head: left side


def test_step_token_spans_char_tokenizer(tiny_llm):
    ids = tiny_llm.tokenize(SOLUTION.replace("×", "*"))[1:] + [1]  # drop BOS, add EOS
    spans = step_token_spans(tiny_llm, ids)
    assert [tiny_llm.decode(ids[s:e]) for s, e in spans] == ["Step 1: 2 * 3 = 6\n", "Step 2: 6 + 1 = 7\n"]
    assert spans == [(0, 18), (18, 36)]


# --- first wrong step ---------------------------------------------------------------------


def test_first_error_by_values_needs_a_drop_from_high_to_low():
    assert first_error_by_values([0.75, 1.0, 0.0]) == 1
    assert first_error_by_values([0.25, 0.0, 0.0]) is None  # never on track
    assert first_error_by_values([1.0, 0.4, 0.0]) is None  # a slide: 0.4 is neither low nor high
    assert first_error_by_values([1.0, 0.4, 0.0], high=0.4) == 1
    assert first_error_by_values([1.0, 0.0], high=0.5, low=0.1) == 0


def mc_policy(task):
    """Continuations by prefix: from the bare prompt 3 of 4 succeed, after step 1 all do,
    after the wrong step 2 none (the answer follows the wrong value)."""
    w = lines(task)
    start = itertools.cycle([True, True, True, False])

    def reply(prompt: str, request: GenerationRequest) -> str:
        so_far = generated(prompt)
        if isinstance(request.prompt, str):  # the recorded sample
            return w["step1"] + "Step 2:" + w["wrong2"] + w["wrong_answer"]
        if so_far == "":
            return w["step1"] + "Step 2:" + (w["good2"] + w["answer"] if next(start) else w["wrong2"] + w["wrong_answer"])
        if so_far == w["step1"]:
            return "Step 2:" + w["good2"] + w["answer"]
        if so_far == w["step1"] + "Step 2:" + w["wrong2"]:
            return w["wrong_answer"]
        if so_far == w["step1"] + "Step 2:":  # rectification
            return w["good2"] + w["answer"]
        raise AssertionError(f"unexpected prefix {so_far!r}")

    return reply


def test_mc_values_exact_and_batched(task):
    llm = CountingLLM(mc_policy(task))
    w = lines(task)
    prompt_ids = llm.tokenize(SUITE.prompt(task))
    completion_ids = llm.tokenize(w["step1"] + "Step 2:" + w["wrong2"] + w["wrong_answer"])[1:]
    values = mc_values(llm, SUITE, task, prompt_ids, completion_ids, MCConfig(samples=4))
    assert values == [0.75, 1.0, 0.0]
    assert llm.calls == [[(4, True)] * 3]  # one generate call: every prefix, n = K each
    assert first_error_by_values(values) == 1


def test_locate_errors_by_monte_carlo_stores_the_values(store, task):
    llm = CountingLLM(mc_policy(task))
    [run] = run_tasks(llm, SUITE, [task], store).results
    assert run.status == "failure"
    [error] = locate_errors(llm, SUITE, {task.id: task}, store, [run.run_id], method="mc", mc=MCConfig(samples=4))
    assert (error.index, error.method, error.values) == (1, "mc", [0.75, 1.0, 0.0])
    assert store.steps(run.run_id)[0].step_values == [0.75, 1.0, 0.0]


def test_locate_errors_by_checker_skips_successes(store, task):
    w = lines(task)
    llm = ScriptedLLM([w["step1"] + "Step 2:" + w["wrong2"] + w["wrong_answer"], task.solution])
    report = run_tasks(llm, SUITE, [task, task], store, concurrency=1)
    assert [r.status for r in report.results] == ["failure", "success"]
    errors = locate_errors(llm, SUITE, {task.id: task}, store, [r.run_id for r in report.results])
    assert errors[1] is None
    assert (errors[0].index, errors[0].method, errors[0].values) == (1, "checker", None)


def add_critic_run(store, task, parsed, *, parent=True):
    w = lines(task)
    llm = ScriptedLLM(["unused"])
    run_id = store.start_run("solve-critic", suite="arithmetic", task_id=task.id)
    text = w["step1"] + "Step 2:" + w["wrong2"] + w["wrong_answer"]
    solver = store.add_step(run_id, node="solve", role="solver", prompt_ids=llm.tokenize("Q"),
                            completion_text=text, completion_ids=llm.tokenize(text)[1:])
    store.add_step(run_id, node="critique", role="critic", parent_step_id=solver if parent else None,
                   completion_text="...", completion_ids=[3], parsed=parsed)
    store.finish_run(run_id, status="failure", reward=0.0)
    return run_id, solver


def test_first_error_by_critic(store, task):
    run_id, solver = add_critic_run(store, task, {"verdict": "revise", "critique": "Step 2 subtracts wrongly."})
    assert first_error_by_critic(store.steps(run_id)) == (solver, 1)
    [error] = locate_errors(ScriptedLLM(["x"]), SUITE, {task.id: task}, store, [run_id], method="critic")
    assert (error.step_id, error.index, error.method) == (solver, 1, "critic")

    run_id, solver = add_critic_run(store, task, {"verdict": "revise", "step": 1}, parent=False)
    assert first_error_by_critic(store.steps(run_id)) == (solver, 0)
    for parsed in ({"verdict": "accept", "step": 2}, {"verdict": "revise", "critique": "looks off"},
                   {"verdict": "revise", "step": 7}):
        run_id, _ = add_critic_run(store, task, parsed)
        assert first_error_by_critic(store.steps(run_id)) is None


# --- Step-DPO pairs -----------------------------------------------------------------------


def test_build_step_pairs_finds_the_planted_error_and_builds_the_pair(store, task):
    w = lines(task)
    rectifications = [w["good2"], w["wrong2"], w["spaced2"], w["lucky2"], w["good2"]]
    llm = CountingLLM(planted_error_policy(task, rectifications))
    config = StepDPOConfig(samples_per_task=2, rectifications=5)
    stats = build_step_pairs(llm, SUITE, [task], store, config, policy_version="v0")

    # one batched call samples every task (n = N), one rectifies every error point (n = M);
    # the two samples went wrong the same way, so their shared prefix is rectified once
    assert llm.calls == [[(2, False)], [(5, True)]]
    assert len(stats.run_ids) == 2 and all(store.get_run(r).policy_version == "v0" for r in stats.run_ids)
    assert stats.rectification_tokens == llm.sampled[1] > 0  # the second call rectifies
    assert stats.as_dict() | {"wall_s": 0, "rectification_tokens": 0} == {
        "rectification_tokens": 0, "tasks": 1, "samples": 2, "successes": 0, "failures": 2, "error_points": 2, "by_method": {"checker": 2},
        "no_error_found": 0, "rectifications": 5, "correct_rectifications": 4, "chosen_failed_check": 1,
        "unterminated": 0, "dedup_removed": 5, "pairs": 1, "already_stored": 0, "wall_s": 0,
    }

    [pair] = PairStore(store).pairs()
    step = store.steps(stats.run_ids[0])[0]
    assert pair.kind == "step" and pair.method == "checker" and pair.step_index == 1
    assert (pair.run_id, pair.step_id, pair.policy_version) == (stats.run_ids[0], step.id, "v0")
    assert pair.prompt_text == SUITE.prompt(task) + w["step1"] + "Step 2:"
    assert pair.chosen_text == w["good2"] and pair.rejected_text == w["wrong2"]
    # token ids: the recorded prompt and completion, cut exactly; chosen as sampled
    head = len((w["step1"] + "Step 2:").encode())
    assert pair.prompt_ids == step.prompt_ids + step.completion_ids[:head]
    assert pair.rejected_ids == step.completion_ids[head:head + len(w["wrong2"])]
    assert pair.chosen_ids == llm.tokenize(w["good2"])[1:]

    # the same pair again (same token ids) is not stored twice
    again = build_step_pairs(llm, SUITE, [task], store, config, policy_version="v0")
    assert (again.pairs, again.already_stored) == (0, 1)
    assert PairStore(store).count() == 1


def test_step_checked_rectifications_stop_at_the_line_and_need_a_right_step(store, task):
    w = lines(task)
    # good2 and spaced2 are right steps (spaced2 is a duplicate once normalised); lucky2
    # reaches a wrong step whatever follows; the replies go on past the line, which the
    # newline stop must cut off
    rectifications = [w["good2"], w["wrong2"], w["lucky2"], w["spaced2"]]
    requests = []

    class Recording(ScriptedLLM):
        def generate(self, batch):
            requests.extend(batch)
            return super().generate(batch)

    llm = Recording(planted_error_policy(task, rectifications))
    config = StepDPOConfig(samples_per_task=1, rectifications=4, chosen_by="step")
    stats = build_step_pairs(llm, SUITE, [task], store, config)
    assert "\n" in requests[-1].stop and "\n" not in requests[0].stop
    assert (stats.rectifications, stats.correct_rectifications, stats.dedup_removed, stats.pairs) == (4, 2, 1, 1)
    [pair] = PairStore(store).pairs()
    assert pair.chosen_text == w["good2"] and pair.rejected_text == w["wrong2"]
    assert llm.decode(pair.prompt_ids + pair.chosen_ids) == pair.prompt_text + pair.chosen_text


def test_error_points_sharing_a_prefix_share_one_set_of_rectifications(store, task):
    w = lines(task)
    wrong = iter([w["wrong2"], w["lucky2"]])  # two samples, wrong at step 2 in two ways

    def reply(prompt, request):
        so_far = generated(prompt)
        if so_far == "":
            return w["step1"] + "Step 2:" + next(wrong) + w["wrong_answer"]
        return w["good2"] + w["answer"]

    llm = CountingLLM(reply)
    stats = build_step_pairs(llm, SUITE, [task], store, StepDPOConfig(samples_per_task=2, rectifications=3))
    assert llm.calls == [[(2, False)], [(3, True)]]  # one request for the shared prefix
    assert (stats.error_points, stats.rectifications, stats.pairs) == (2, 3, 2)
    pairs = PairStore(store).pairs()
    assert {p.rejected_text for p in pairs} == {w["wrong2"], w["lucky2"]}
    assert {p.chosen_text for p in pairs} == {w["good2"]} and len({p.run_id for p in pairs}) == 2


def test_chosen_by_must_be_outcome_or_step():
    with pytest.raises(ValueError, match="chosen_by"):
        StepDPOConfig(chosen_by="vibes")


def test_step_pairs_with_bpe_like_tokens_are_exact_token_cuts(store, task):
    w = lines(task)

    def reply(prompt, request):
        so_far = generated(prompt)
        if so_far == "":
            return w["step1"] + "Step 2:" + w["wrong2"] + w["wrong_answer"]
        assert so_far.endswith("Step 2: ")  # ": " is one token: the prefix ends after the space
        return w["good2"].lstrip(" ") + w["answer"]

    llm = PieceLLM(reply)
    stats = build_step_pairs(llm, SUITE, [task], store, StepDPOConfig(samples_per_task=1, rectifications=2))
    assert (stats.error_points, stats.correct_rectifications, stats.pairs) == (1, 2, 1)
    [pair] = PairStore(store).pairs()
    step = store.steps(stats.run_ids[0])[0]
    assert pair.prompt_text.endswith("Step 2: ")
    assert pair.rejected_text == w["wrong2"].lstrip(" ") and pair.chosen_text == w["good2"].lstrip(" ")
    recorded = step.prompt_ids + step.completion_ids
    assert recorded[: len(pair.prompt_ids) + len(pair.rejected_ids)] == pair.prompt_ids + pair.rejected_ids
    assert llm.decode(pair.prompt_ids + pair.chosen_ids) == pair.prompt_text + pair.chosen_text
    assert llm.decode(pair.prompt_ids + pair.rejected_ids) == pair.prompt_text + pair.rejected_text


def test_build_step_pairs_by_monte_carlo(store, task):
    w = lines(task)
    llm = CountingLLM(mc_policy(task))
    config = StepDPOConfig(samples_per_task=1, rectifications=3, credit="mc", mc_samples=4)
    stats = build_step_pairs(llm, SUITE, [task], store, config)
    assert llm.calls == [[(1, False)], [(4, True)] * 3, [(3, True)]]  # sample, rollouts, rectify
    assert stats.by_method == {"mc": 1} and stats.pairs == 1 and stats.dedup_removed == 2
    [pair] = PairStore(store).pairs()
    assert (pair.method, pair.step_index, pair.meta) == ("mc", 1, {"values": [0.75, 1.0, 0.0]})
    assert pair.chosen_text == w["good2"] and pair.rejected_text == w["wrong2"]


def test_build_step_pairs_from_recorded_runs(store, task):
    w = lines(task)
    llm = ScriptedLLM(planted_error_policy(task, [w["good2"]]))
    [run] = run_tasks(llm, SUITE, [task], store).results
    stats = build_step_pairs(llm, SUITE, [task], store, StepDPOConfig(rectifications=2), run_ids=[run.run_id])
    assert (stats.samples, stats.error_points, stats.pairs, stats.dedup_removed) == (1, 1, 1, 1)
    assert PairStore(store).pairs()[0].run_id == run.run_id


def test_no_pairs_when_no_rectification_verifies(store, task):
    w = lines(task)
    llm = ScriptedLLM(planted_error_policy(task, [w["wrong2"]]))
    stats = build_step_pairs(llm, SUITE, [task], store, StepDPOConfig(samples_per_task=1, rectifications=4))
    assert (stats.error_points, stats.rectifications, stats.correct_rectifications, stats.pairs) == (1, 4, 0, 0)


def test_export_jsonl_is_trl_preference_format(store, task, tmp_path):
    w = lines(task)
    llm = ScriptedLLM(planted_error_policy(task, [w["good2"]]))
    build_step_pairs(llm, SUITE, [task], store, StepDPOConfig(samples_per_task=1, rectifications=1))
    path = tmp_path / "out" / "pairs.jsonl"
    assert PairStore(store).export_jsonl(path) == 1
    [record] = [json.loads(line) for line in path.read_text().splitlines()]
    # TRL's standard preference format with an explicit prompt: three strings, and the
    # completions do not repeat the prompt
    assert set(record) == {"prompt", "chosen", "rejected"}
    assert all(isinstance(v, str) and v for v in record.values())
    assert record["prompt"].endswith(w["step1"] + "Step 2:")
    assert (record["chosen"], record["rejected"]) == (w["good2"], w["wrong2"])
    assert not record["chosen"].startswith(record["prompt"][:20])
    assert PairStore(store).export_jsonl(tmp_path / "none.jsonl", kind="outcome") == 0


def test_pair_store_over_a_path_and_filters(tmp_path):
    pair = Pair(kind="step", prompt_text="p", prompt_ids=[1], chosen_text="c", chosen_ids=[2],
                rejected_text="r", rejected_ids=[3], policy_version="v1", suite="arithmetic")
    with PairStore(tmp_path / "pairs.db") as pairs:
        [pair_id] = pairs.add_pairs([pair])
        assert pairs.add(pair) is None
        [stored] = pairs.pairs(policy_version="v1")
        assert stored.id == pair_id and stored.chosen_ids == [2] and stored.created_at
        assert pairs.count(kind="step") == 1 and pairs.count(kind="outcome") == 0
        assert pairs.pairs(suite="countdown") == []
    with pytest.raises(ValueError, match="pair kind"):
        Pair(kind="bogus", prompt_text="p", prompt_ids=[], chosen_text="c", chosen_ids=[], rejected_text="r",
             rejected_ids=[])


def test_outcome_pairs_pair_a_success_with_a_failure(store, task):
    w = lines(task)
    wrong = w["step1"] + "Step 2:" + w["wrong2"] + w["wrong_answer"]
    llm = ScriptedLLM([task.solution + "\n", wrong, wrong, task.solution + "\n"])
    report = run_tasks(llm, SUITE, [task] * 4, store, concurrency=1)
    assert [r.status for r in report.results] == ["success", "failure", "failure", "success"]
    ids = build_outcome_pairs(llm, store, [r.run_id for r in report.results])
    assert len(ids) == 1  # duplicates of the same text pair only once
    [pair] = PairStore(store).pairs(kind="outcome")
    assert pair.prompt_text == SUITE.prompt(task)
    assert (pair.chosen_text, pair.rejected_text) == (task.solution + "\n", wrong)
    assert (pair.chosen_run_id, pair.run_id) == (report.results[0].run_id, report.results[1].run_id)
    assert pair.prompt_ids == llm.tokenize(SUITE.prompt(task))
    assert pair.chosen_ids == llm.tokenize(task.solution + "\n")[1:]


# --- on the tiny transformers model -------------------------------------------------------


def test_pipeline_runs_on_the_tiny_model(store, tiny_llm, task):
    """The real batched backend: sampling, Monte-Carlo rollouts and rectification go
    through generate with token-id prompts (a random model fails everything)."""
    config = StepDPOConfig(samples_per_task=2, rectifications=3, max_tokens=6, shots=1, credit="mc", mc_samples=2)
    tasks = SUITE.tasks("train", 2, level=1)
    stats = build_step_pairs(tiny_llm, SUITE, tasks, store, config)
    assert (stats.samples, stats.pairs) == (4, 0)
    for run_id in stats.run_ids:
        [step] = store.steps(run_id)
        assert len(step.completion_ids) == len(step.logprobs) <= 6

    # a recorded failure with a planted wrong step 2 gets rollouts and rectifications
    w = lines(task)
    text = w["step1"] + "Step 2:" + w["wrong2"] + w["wrong_answer"]
    run_id = store.start_run("solve", suite="arithmetic", task_id=task.id)
    prompt = SUITE.prompt(task, shots=1)
    store.add_step(run_id, node="solve", role="solver", prompt_text=prompt, prompt_ids=tiny_llm.tokenize(prompt),
                   completion_text=text, completion_ids=tiny_llm.tokenize(text)[1:])
    store.finish_run(run_id, status="failure", reward=0.0)
    values = mc_values(tiny_llm, SUITE, task, tiny_llm.tokenize(prompt), tiny_llm.tokenize(text)[1:],
                       MCConfig(samples=2, max_tokens=4))
    assert values == [0.0, 0.0, 0.0]
    stats = build_step_pairs(tiny_llm, SUITE, [task], store, replace(config, credit="checker"), run_ids=[run_id])
    assert (stats.error_points, stats.by_method, stats.rectifications, stats.pairs) == (1, {"checker": 1}, 3, 0)


def test_step_pairs_table_schema(tmp_path):
    import sqlite_utils

    TrajectoryStore(tmp_path / "store.db").close()
    table = sqlite_utils.Database(tmp_path / "store.db")["step_pairs"]
    assert list(table.columns_dict) == [
        "id", "kind", "suite", "task_id", "run_id", "step_id", "step_index", "chosen_run_id", "method",
        "prompt_text", "prompt_ids", "chosen_text", "chosen_ids", "rejected_text", "rejected_ids",
        "policy_version", "key", "meta", "created_at",
    ]
    assert {(fk.column, fk.other_table) for fk in table.foreign_keys} == {
        ("run_id", "runs"), ("step_id", "steps"), ("chosen_run_id", "runs"),
    }
    assert ["run_id"] in [index.columns for index in table.indexes]
    assert any(index.unique and index.columns == ["key"] for index in table.indexes)
