"""Step-level search (agentkit.graph.search): it finds what sampling misses, its MCTS
values are the hand-computed ones, and the run records the whole tree."""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
import torch

from agentkit.errors import AgentkitError
from agentkit.llm.base import Completion, GenerationRequest
from agentkit.llm.scripted import ScriptedLLM
from agentkit.runtime import SolveAgent, run_tasks
from agentkit.graph.search import MCTS, Beam, as_strategy, parse_search, search, strategy_dict
from agentkit.store import TrajectoryStore
from agentkit.tasks import Suite, get_suite

SUITE = get_suite("arithmetic")
TASK = SUITE.tasks("test", 1, level=2)[0]
PROMPT = SUITE.prompt(TASK)


def gold_lines(task=TASK):
    steps = [f"Step {k}: {a} {op} {b} = {c}\n" for k, (a, op, b, c) in enumerate(task.data["steps"], 1)]
    return steps + [f"Answer: {task.answer}\n"]


class RareRightLLM(ScriptedLLM):
    """A weak policy with a planted solution: under any prefix, only every 8th sampled line
    is the right next line; the others are wrong arithmetic. A whole sampled output needs
    three rare lines in a row."""

    def __init__(self, every: int = 8):
        self.every = every
        self.counters: dict[str, int] = defaultdict(int)
        super().__init__(self._reply)

    def _next_line(self, solution: str, greedy: bool = False) -> str:
        gold = gold_lines()
        done = solution.count("\n")
        on_track = solution == "".join(gold[:done])
        self.counters[solution] += not greedy  # its greedy line is a wrong one, and no sample
        right = on_track and not greedy and self.counters[solution] % self.every == 0
        if done >= len(gold) - 1:
            return gold[-1] if right else "Answer: 7\n"
        return gold[done] if right else f"Step {done + 1}: 12 - 10 = {6 + done}\n"

    def _reply(self, prompt_text: str, request: GenerationRequest) -> str:
        solution = prompt_text.split("Solution:\n")[-1]
        if "\n" in request.stop:  # one line at a time (search)
            return self._next_line(solution, greedy=request.temperature == 0)
        out = solution
        while not out.split("\n")[-2].startswith("Answer") if out else True:
            out += self._next_line(out)
        return out[len(solution):] + "\nQuestion:"


def test_beam_finds_a_planted_solution_that_sampling_misses():
    llm = RareRightLLM()
    sampled = llm.generate([GenerationRequest(PROMPT, n=32, temperature=0.8, max_tokens=200, stop=SUITE.stop)])[0]
    assert sum(SUITE.verify(TASK, c.text) for c in sampled) == 0  # best-of-32 fails

    tree = search(RareRightLLM(), SUITE, TASK, PROMPT, Beam(width=2, expand=8))
    assert tree.verified
    assert tree.text() == "".join(gold_lines())
    assert SUITE.verify(TASK, tree.text()) == 1.0
    sampled_tokens = sum(len(c.token_ids) for c in sampled)
    assert tree.tokens < sampled_tokens  # and it spent fewer tokens than the 32 samples


def test_mcts_finds_it_too_and_stops_at_the_verified_answer():
    tree = search(RareRightLLM(), SUITE, TASK, PROMPT, MCTS(simulations=40, expand=8))
    assert tree.verified and tree.text() == "".join(gold_lines())
    root = tree.nodes[0]
    assert root.visits <= 40


def test_mcts_samples_more_lines_where_every_line_failed():
    """The right line comes once in 16 samples; MCTS expands 8 at a time, so it must go
    back to a node whose lines all failed and sample more there (progressive widening)."""
    tree = search(RareRightLLM(every=16), SUITE, TASK, PROMPT, MCTS(simulations=40, expand=8))
    assert tree.verified
    assert tree.nodes[0].expansions == 2
    assert sum(tree.nodes[i].count for i in tree.nodes[0].children) == 16


def test_search_works_within_its_token_budget():
    tree = search(RareRightLLM(every=1000), SUITE, TASK, PROMPT, Beam(width=4, expand=8, max_tokens=600))
    assert not tree.verified
    per_call = 32 * 40  # one depth of 32 lines of at most 40 tokens may still go past it
    assert 600 <= tree.tokens < 600 + per_call
    assert tree.answer is not None  # the best it found, judged as it stands


class TreeLLM(ScriptedLLM):
    """Lines with fixed total log-probabilities under fixed prefixes: a tree written out."""

    def __init__(self, children: dict[str, list[tuple[str, float]]]):
        super().__init__(["unused"])
        self.children = children

    def generate(self, requests):
        out = []
        for r in requests:
            solution = self.decode(r.prompt).split("Solution:\n")[-1]
            lines = self.children[solution]
            assert r.n == len(lines)
            row = []
            for line, logprob in lines:
                ids = self._encode(line)
                row.append(Completion(line.rstrip("\n"), ids, [logprob / len(ids)] * len(ids), "stop", list(r.prompt)))
            out.append(row)
        return out


def test_mcts_values_match_a_hand_computed_tree():
    s1, s2, answer = gold_lines()
    wrong1, wrong2, wrong_answer = "Step 1: 1 + 1 = 3\n", "Step 2: 1 + 1 = 3\n", "Answer: 0\n"
    llm = TreeLLM({
        "": [(s1, -1.0), (wrong1, -2.0)],          # A (right), B (wrong)
        s1: [(s2, -1.0), (wrong2, -1.0)],          # C (right), D (wrong)
        s1 + s2: [(answer, -0.5), (wrong_answer, -0.5)],  # G (right), H (wrong)
    })
    strategy = MCTS(simulations=10, expand=2, c_puct=1.0, value="checker", share_prefix=False)
    tree = search(llm, SUITE, TASK, PROMPT, strategy)
    by_text = {tree.text(n.id): n for n in tree.nodes[1:]}
    root, a, b = tree.nodes[0], by_text[s1], by_text[wrong1]
    c, d, g, h = by_text[s1 + s2], by_text[s1 + wrong2], by_text[s1 + s2 + answer], by_text[s1 + s2 + wrong_answer]
    # priors: the policy's line probabilities renormalised over the siblings
    assert a.prior == pytest.approx(1 / (1 + math.exp(-1)))
    assert c.prior == pytest.approx(0.5)
    # sim 1 expands the root: A=1, B=0 back up 0.5. Sim 2: PUCT picks A
    # (1 + 0.731 * 1/2 > 0 + 0.269 * 1/2), expands it: C=1, D=0, 0.5 up [root, A].
    # Sim 3: A again (0.75 + 0.731 * sqrt2/3 > 0.269 * sqrt2/2), then C (1 + 0.5 * sqrt2/2
    # > 0 + 0.5 * sqrt2/2); expanding C finds G (verified) and H, 0.5 up [root, A, C]; stop.
    assert (root.visits, root.value_sum) == (3, 1.5)
    assert (a.visits, a.value_sum) == (3, 2.0)
    assert (b.visits, b.value_sum) == (1, 0.0)
    assert (c.visits, c.value_sum) == (2, 1.5)
    assert (d.visits, d.value_sum) == (1, 0.0)
    assert (g.value, h.value) == (1.0, 0.0)
    assert a.q == pytest.approx(2 / 3) and c.q == pytest.approx(0.75) and root.q == pytest.approx(0.5)
    assert tree.answer == g.id and tree.chosen == {a.id, c.id, g.id}
    assert tree.calls == 3


class CertainCopyLLM(ScriptedLLM):
    """A policy that copies the question with certainty and is unsure of the result: in
    "Step 1: a op b = c" every character has probability 0.999 except the first digit of
    c, which is right with probability 1/4 (every 4th sample); "Answer: c" is certain."""

    CERTAIN, RIGHT, WRONG = math.log(0.999), math.log(0.25), math.log(0.75)

    def __init__(self, task):
        super().__init__(["unused"])
        (a, op, b, c), = task.data["steps"]
        self.head, self.right, self.answer = f"Step 1: {a} {op} {b} = ", f"{c}\n", f"Answer: {c}\n"
        self.wrong = f"{int(str(c)[0]) % 9 + 1}{str(c)[1:]}\n"
        self.requests: list[GenerationRequest] = []
        self.samples = 0

    def _line(self, text: str, first: float) -> Completion:
        ids = self._encode(text)
        return Completion(text.rstrip("\n"), ids, [first] + [self.CERTAIN] * (len(ids) - 1), "stop")

    def generate(self, requests):
        self.requests += requests
        out = []
        for r in requests:
            solution = self.decode(r.prompt).split("Solution:\n")[-1]
            if solution.startswith(self.head + self.right):  # the answer line
                line = self._line(self.answer, self.CERTAIN)
                out.append([line] * r.n)
            elif r.temperature == 0:  # greedy: the whole line, the likelier (wrong) result
                line = self._line(self.head + self.wrong, self.CERTAIN)
                line.logprobs[len(self.head)] = self.WRONG
                out.append([line])
            else:  # sampled: after the certain head only the result, else the whole line
                assert solution in ("", self.head)
                row = []
                for _ in range(r.n):
                    self.samples += 1
                    result, first = (self.right, self.RIGHT) if self.samples % 4 == 0 else (self.wrong, self.WRONG)
                    line = self._line(self.head[len(solution):] + result, self.CERTAIN)
                    line.logprobs[len(self.head) - len(solution)] = first
                    row.append(line)
                out.append(row)
        return out


def test_shared_prefix_samples_only_the_uncertain_rest_of_a_line():
    task = SUITE.tasks("test", 1, level=1)[0]
    prompt = SUITE.prompt(task)
    llm = CertainCopyLLM(task)
    tree = search(llm, SUITE, task, prompt, Beam(width=1, expand=8))
    assert tree.verified and tree.text() == llm.head + llm.right + llm.answer
    greedy, sampled, answer_greedy = llm.requests  # no sampling request for the certain answer line
    assert greedy.temperature == 0 and greedy.n == 1
    assert llm.decode(sampled.prompt).endswith("Solution:\n" + llm.head) and sampled.n == 8
    assert sampled.max_tokens == Beam().line_tokens - len(llm.head)
    step, = (tree.nodes[i] for i in tree.nodes[0].children if tree.nodes[i].value == 1.0)
    assert llm.decode(step.token_ids) == llm.head + llm.right  # the head's ids, then the sampled ones
    assert step.logprobs[len(llm.head)] == llm.RIGHT and len(step.logprobs) == len(step.token_ids)
    assert sum(tree.nodes[i].count for i in tree.nodes[0].children) == 8
    answer = tree.nodes[tree.answer]
    assert answer.count == 8  # all 8 samples of a certain line are that line
    # each line is decoded once greedily, and only the result is sampled 8 times
    result_tokens = len(llm._encode(llm.right))
    assert tree.tokens == len(llm._encode(llm.head + llm.wrong)) + 8 * result_tokens + len(llm._encode(llm.answer))

    plain = search(CertainCopyLLM(task), SUITE, task, prompt, Beam(width=1, expand=8, share_prefix=False))
    assert plain.tokens > 2 * tree.tokens


def test_monte_carlo_values_score_lines_without_a_step_checker():
    gold = "".join(gold_lines())
    lines: dict[str, int] = defaultdict(int)

    def reply(prompt_text: str, request: GenerationRequest) -> str:
        solution = prompt_text.split("Solution:\n")[-1]
        on_track = gold.startswith(solution)
        if "\n" in request.stop:  # a candidate line: every other one is right
            lines[solution] += 1
            right = on_track and lines[solution] % 2 == 0
            return gold_lines()[solution.count("\n")] if right else "Step 9: 1 + 1 = 3\n"
        return gold[len(solution):] + "\nQuestion:" if on_track else "Answer: 0\n"  # a rollout

    tree = search(ScriptedLLM(reply), SUITE, TASK, PROMPT, Beam(width=1, expand=4, value="mc", rollouts=2))
    assert tree.value_mode == "mc"
    assert tree.verified and tree.text() == gold
    first = {tree.text(i): tree.nodes[i] for i in tree.nodes[0].children}
    assert first[gold_lines()[0]].value == 1.0 and first["Step 9: 1 + 1 = 3\n"].value == 0.0
    assert first[gold_lines()[0]].rollout_ids is not None  # a verified rollout is kept
    answer = tree.nodes[tree.answer]  # and is the solution: the search stopped there
    assert answer.kind == "rollout" and answer.parent == first[gold_lines()[0]].id and answer.value == 1.0
    assert tree.calls == 3  # the root's lines (a greedy pass, the samples), their rollouts
    answers_only = AnswersOnly()
    assert not answers_only.has_step_checker
    assert search(ScriptedLLM(reply), answers_only, TASK, PROMPT, Beam(width=1, expand=4)).value_mode == "mc"


class AnswersOnly(type(SUITE)):
    """Arithmetic with the step checker turned off: only final answers are verified."""

    _check_steps = Suite._check_steps


def test_search_is_recorded_as_a_tree_of_steps():
    llm = RareRightLLM()
    with TrajectoryStore(":memory:") as store:
        agent = SolveAgent(search="beam:2x8")
        report = run_tasks(llm, SUITE, [TASK], store, agent=agent)
        (result,) = report.results
        assert result.status == "success"
        run = store.get_run(result.run_id, steps=True)
        assert run.meta["agent"]["search"] == strategy_dict(Beam(width=2, expand=8))
        steps = {s.id: s for s in run.steps}
        info = {s.id: s.meta["search"] for s in run.steps}
        roots = [s for s in run.steps if s.parent_step_id is None]
        assert all(info[s.id]["depth"] == 1 for s in roots)
        assert sum(info[s.id]["count"] for s in roots) == 16  # the root's 2 x 8 samples, duplicates merged
        chosen = [s for s in run.steps if info[s.id]["chosen"]]
        assert "".join(s.completion_text for s in chosen) == "".join(gold_lines())
        for s in run.steps:  # a child's prompt is its parent's prompt + the parent's line, as ids
            if s.parent_step_id is not None:
                parent = steps[s.parent_step_id]
                assert s.prompt_ids == parent.prompt_ids + parent.completion_ids
                assert info[s.id]["depth"] == info[parent.id]["depth"] + 1
        assert all(info[s.id]["value"] == 1.0 for s in chosen)
        assert run.tokens >= sum(len(s.completion_ids) for s in run.steps)


def test_search_specs_parse_and_bad_ones_name_the_fix():
    assert parse_search("beam:4x8") == Beam(width=4, expand=8)
    assert parse_search("mcts:32") == MCTS(simulations=32)
    assert parse_search("mcts:32x4") == MCTS(simulations=32, expand=4)
    assert parse_search("mcts:32x4:mc") == MCTS(simulations=32, expand=4, value="mc")
    assert str(parse_search("beam:2x4:checker")) == "beam:2x4:checker" and str(parse_search("mcts:8")) == "mcts:8"
    assert as_strategy(strategy_dict(MCTS(simulations=5, value="mc"))) == MCTS(simulations=5, value="mc")
    with pytest.raises(AgentkitError, match=r"beam:WxK"):
        parse_search("beam:4")
    with pytest.raises(AgentkitError, match="value"):
        Beam(value="oracle")
    with pytest.raises(AgentkitError, match="choose one of auto, checker, mc"):
        parse_search("mcts:8:oracle")
    with pytest.raises(AgentkitError, match="no step checker"):
        search(ScriptedLLM(["x"]), AnswersOnly(), TASK, "p", Beam(value="checker"))


def test_search_spec_options_set_the_sampling_and_round_trip():
    hot = parse_search("beam:4x8,temperature=1.0,top_p=0.99")
    assert hot == Beam(width=4, expand=8, temperature=1.0, top_p=0.99)
    assert str(hot) == "beam:4x8,temperature=1.0,top_p=0.99"
    for strategy in (hot, MCTS(simulations=8, expand=4, value="mc", c_puct=2.0, top_k=16), MCTS(simulations=3)):
        assert parse_search(str(strategy)) == strategy
    assert parse_search("mcts:16 , temperature = 1.2").temperature == 1.2
    assert parse_search("beam:2x4,temperature=1.0", top_p=0.5).top_p == 0.5  # keyword options win
    with pytest.raises(AgentkitError, match=r"option 'c_puct=2' is not understood; write name=value with name one of "
                                            r"temperature, top_p"):
        parse_search("beam:4x8,c_puct=2")  # a beam has no PUCT constant
    with pytest.raises(AgentkitError, match=r"temperature=hot is not a number; write e.g. temperature=1.0"):
        parse_search("beam:4x8,temperature=hot")
    with pytest.raises(AgentkitError, match=r"temperature must be above 0 and top_p in \(0, 1\]"):
        parse_search("mcts:8,temperature=0")
    with pytest.raises(AgentkitError, match=r"top_p in \(0, 1\] \(got temperature=0.8, top_p=1.5\)"):
        parse_search("mcts:8,top_p=1.5")
    for bad in ("beam:4x8,line_tokens=-1", "mcts:8,c_puct=nan", "mcts:8,rollout_length=0", "beam:2x4,top_k=-1"):
        with pytest.raises(AgentkitError, match="line_tokens and rollout_length must each be at least 1"):
            parse_search(bad)
    with pytest.raises(AgentkitError, match="temperature must be above 0"):
        parse_search("beam:4x8,temperature=inf")


def test_tree_pairs_have_the_prefix_of_their_node_and_the_right_sides():
    from agentkit.learn.trees import TreePairConfig, solution_example, tree_pairs

    llm = RareRightLLM()
    with TrajectoryStore(":memory:") as store:
        report = run_tasks(llm, SUITE, [TASK], store, agent=SolveAgent(search="beam:2x8"))
        run = store.get_run(report.results[0].run_id, steps=True)
    pairs = tree_pairs([run], suite="arithmetic", policy_version="base", decode=llm.decode)
    gold = gold_lines()
    # one pair per depth: the right line over the wrong one, under the right prefix
    assert [(llm.decode(p.prompt_ids).split("Solution:\n")[-1], p.chosen_text, p.rejected_text) for p in pairs] == [
        ("", gold[0], "Step 1: 12 - 10 = 6\n"),
        (gold[0], gold[1], "Step 2: 12 - 10 = 7\n"),
        (gold[0] + gold[1], gold[2], "Answer: 7\n"),
    ]
    for p in pairs:
        assert p.prompt_ids[: len(llm.tokenize(PROMPT))] == llm.tokenize(PROMPT)
        assert llm.decode(p.chosen_ids) == p.chosen_text and p.kind == "step" and p.meta["gap"] == 1.0
        assert p.prompt_text == llm.decode(p.prompt_ids)
    # off the gold path every line is wrong: no chosen side there, so no pair
    assert all(p.prompt_ids[len(llm.tokenize(PROMPT)):] in ([], llm._encode(gold[0]), llm._encode(gold[0] + gold[1]))
               for p in pairs)
    assert tree_pairs([run], config=TreePairConfig(high=1.5)) == []
    example = solution_example(run)
    assert example.prompt_ids == llm.tokenize(PROMPT) and llm.decode(example.completion_ids) == "".join(gold)


def test_tree_groups_weigh_each_line_by_its_samples_against_its_siblings():
    from agentkit.learn.trees import tree_groups
    from agentkit.train.losses import grpo_advantages

    llm = RareRightLLM()
    with TrajectoryStore(":memory:") as store:
        report = run_tasks(llm, SUITE, [TASK], store, agent=SolveAgent(search="beam:2x8"))
        run = store.get_run(report.results[0].run_id, steps=True)
    groups = tree_groups([run])
    gold = gold_lines()
    # one group per depth on the gold path: the right line and a wrong one, under the right prefix
    assert [llm.decode(g.prompt_ids).split("Solution:\n")[-1] for g in groups] == ["", gold[0], gold[0] + gold[1]]
    prompt = llm.tokenize(PROMPT)
    for g, line in zip(groups, gold):
        texts = [llm.decode(c) for c in g.completions]
        assert len(set(texts)) == len(texts) and texts.count(line) == 1  # each distinct line once
        assert all((r == 1.0) == (t == line) for r, t in zip(g.rewards, texts))
        assert g.prompt_ids[: len(prompt)] == prompt and g.logprobs is None
        counts = {s.completion_text: s.meta["search"]["count"] for s in run.steps
                  if s.prompt_ids == g.prompt_ids}
        assert g.weights == [counts[t] for t in texts]  # weighted by its samples
        assert g.weights[texts.index(line)] == 2 and sum(g.weights) == 16  # every 8th of 16 samples is right
        advantages, _ = grpo_advantages(torch.tensor(g.rewards), weights=torch.tensor(g.weights))
        assert all((a > 0) == (r == 1.0) for a, r in zip(advantages.tolist(), g.rewards))
        # as over the 16 samples (1 x 2, 0 x 14), not the 2 distinct lines: mean 1/8,
        # Bessel std sqrt((2 (7/8)² + 14 (1/8)²) / 15) = sqrt(7/60)
        right, wrong = advantages[texts.index(line)].item(), min(advantages.tolist())
        assert wrong == pytest.approx(-(1 / 8) / (math.sqrt(7 / 60) + 1e-4), rel=1e-4)
        assert right == pytest.approx(-7 * wrong, rel=1e-4)
    # off the gold path every line is wrong: equal values teach nothing, so no group
    assert len(groups) == 3


def test_mcts_with_rollout_values_widens_where_every_rollout_failed():
    """Valued by Monte-Carlo rollouts (no step checker), a line whose rollouts all failed is
    closed like a refuted one: MCTS samples more first lines beside it rather than answer
    lines under a wrong step. The right first line comes once in 16 samples."""
    gold = "".join(gold_lines())
    drawn: dict[str, int] = defaultdict(int)

    def reply(prompt_text: str, request: GenerationRequest) -> str:
        solution = prompt_text.split("Solution:\n")[-1]
        on_track = gold.startswith(solution)
        if "\n" in request.stop:
            drawn[solution] += 1
            right = on_track and drawn[solution] % 16 == 0
            return gold_lines()[solution.count("\n")] if right else "Step 9: 1 + 1 = 3\n"
        return gold[len(solution):] + "\nQuestion:" if on_track else "Answer: 0\n"  # a rollout

    tree = search(ScriptedLLM(reply), AnswersOnly(), TASK, PROMPT, MCTS(simulations=40, expand=8, rollouts=2))
    assert tree.value_mode == "mc" and tree.verified and tree.text() == gold
    assert tree.nodes[0].expansions == 2 and sum(tree.nodes[i].count for i in tree.nodes[0].children) == 16
    assert not any(n.expanded for n in tree.nodes[1:])  # nothing sampled under a line valued 0
