"""The LoRA trainer on the tiny random Gemma: every method moves the right things, the
reference is the policy at the start, checkpoints survive kill -9, and the saved adapter
is what a backend loads and answers with."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from agentkit.errors import AgentkitError
from agentkit.llm.base import GenerationRequest
from agentkit.llm.transformers import TransformersLLM
from agentkit.store.policies import PolicyRegistry
from agentkit.runtime.policy import load_policy
from agentkit.learn.cycle import register_trained
from agentkit.train.trainer import (
    DPOConfig,
    PGConfig,
    PreferenceExample,
    RLGroup,
    SFTConfig,
    SFTExample,
    Trainer,
    TrainConfig,
    config_from_dict,
)

TESTS = Path(__file__).resolve().parent


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def pattern_pairs(tokenizer, n: int, seed: int) -> list[PreferenceExample]:
    """Same pattern, new prompts: a question about random digits; chosen says " yes.", rejected " no!"."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(3, 8)))
        prompt = [2] + encode(tokenizer, f"Q: is {digits} fine?\nA:")
        pairs.append(PreferenceExample(prompt, encode(tokenizer, " yes."), encode(tokenizer, " no!"), id=i))
    return pairs


def lora_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def config(cls=DPOConfig, tmp_path=None, **kw):
    defaults = dict(output_dir=str(tmp_path / "out"), batch_size=4, lr=5e-3, dtype="fp32", checkpoint_every=0)
    return cls(**{**defaults, **kw})


# --- every method moves the model -----------------------------------------------------------


def test_dpo_moves_the_loss_and_every_lora_parameter(tiny_model_factory, tiny_tokenizer, tmp_path):
    trainer = Trainer(config(tmp_path=tmp_path, steps=4), tiny_model_factory())
    before = lora_state(trainer)
    assert before and all(".lora_A." in n or ".lora_B." in n for n in before)
    assert len(before) == 2 * 7 * 2  # A and B x 7 linear layers x 2 decoder layers
    result = trainer.train(pattern_pairs(tiny_tokenizer, 16, seed=0))
    losses = [r["loss"] for r in result.history]
    assert len(losses) == 4 and losses[-1] != losses[0]
    # step 1: policy == reference (the reference pass batches differently: float rounding only)
    assert result.history[0]["reward_margin"] == pytest.approx(0.0, abs=1e-5)
    assert result.history[0]["loss"] == pytest.approx(math.log(2) + result.history[0]["nll"], abs=1e-5)
    after = lora_state(trainer)
    for name, value in before.items():
        assert not torch.equal(value, after[name]), f"LoRA parameter {name} did not change"
    for key in ("loss", "reward_margin", "reward_accuracy", "chosen_reward", "rejected_reward", "nll",
                "grad_norm", "lr", "tokens", "tokens_per_s"):
        assert key in result.history[-1], key
    assert result.stats["steps"] == 4 and result.stats["trained_tokens"] > 0


def test_dpo_raises_the_margin_on_held_out_pairs(tiny_model_factory, tiny_tokenizer, tmp_path):
    trainer = Trainer(config(tmp_path=tmp_path, steps=12, beta=0.5, nll_weight=0.1), tiny_model_factory())
    held_out = pattern_pairs(tiny_tokenizer, 16, seed=99)
    before = trainer.evaluate(held_out)
    trainer.train(pattern_pairs(tiny_tokenizer, 32, seed=1))
    after = trainer.evaluate(held_out)
    assert after["margin"] > before["margin"] + 1.0, (before, after)
    assert after["accuracy"] == 1.0


def test_sft_lowers_the_nll(tiny_model_factory, tiny_tokenizer, tmp_path):
    rng = random.Random(0)

    def examples(n):
        out = []
        for _ in range(n):
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            out.append(SFTExample([2] + encode(tiny_tokenizer, f"{a}+{b}="), encode(tiny_tokenizer, f"{a + b}. done")))
        return out

    train, held_out = examples(32), examples(16)
    trainer = Trainer(config(SFTConfig, tmp_path, steps=10), tiny_model_factory())
    before = trainer.evaluate(held_out)["nll"]
    result = trainer.train(train)
    after = trainer.evaluate(held_out)["nll"]
    assert after < before - 0.5, (before, after)
    assert result.history[-1]["nll"] < result.history[0]["nll"]


def test_grpo_reports_equal_reward_groups_and_does_not_update(tiny_model_factory, tiny_tokenizer, tmp_path):
    prompt = [2] + encode(tiny_tokenizer, "Q: 2+2=")
    groups = [RLGroup(prompt, [encode(tiny_tokenizer, s) for s in ("4", "5", "22")], [r, r, r], id=f"g{i}")
              for i, r in enumerate([0.0, 1.0, 0.0])]
    trainer = Trainer(config(PGConfig, tmp_path, steps=3), tiny_model_factory())
    before = lora_state(trainer)
    result = trainer.train(groups)
    assert result.adapter_path is None and result.steps == 0 and result.history == []
    assert result.stats["equal_reward_groups"] == 3 and result.stats["groups"] == 3
    assert result.stats["equal_reward_group_ids"] == ["g0", "g1", "g2"] and result.stats["trained"] is False
    after = lora_state(trainer)
    assert all(torch.equal(before[n], after[n]) for n in before)


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_policy_gradient_trains_on_informative_groups_only(method, tiny_model_factory, tiny_tokenizer, tmp_path):
    prompt = [2] + encode(tiny_tokenizer, "Q: 2+2=")
    good, bad = encode(tiny_tokenizer, "4."), encode(tiny_tokenizer, "5.")
    groups = [RLGroup(prompt, [good, bad, bad, good], [1.0, 0.0, 0.0, 1.0]) for _ in range(4)]
    groups.append(RLGroup(prompt, [bad, bad], [0.0, 0.0], id="dead"))
    trainer = Trainer(config(PGConfig, tmp_path, method=method, steps=6, lr=1e-2, group_size=0), tiny_model_factory())
    pair = [PreferenceExample(prompt, good, bad)]
    before = trainer.evaluate(pair)["margin"]
    result = trainer.train(groups)
    assert result.stats["equal_reward_groups"] == 1 and result.stats["equal_reward_group_ids"] == ["dead"]
    assert result.stats["examples"] == 4
    assert trainer.evaluate(pair)["margin"] > before
    first = result.history[0]
    assert first["ratio"] == pytest.approx(1.0, abs=1e-5) and first["kl"] == pytest.approx(0.0, abs=1e-6)
    assert result.history[-1]["kl"] > 0


def test_step_progress_gives_hand_computed_per_token_advantages():
    from agentkit.train.methods import _with_step_progress

    group = RLGroup([1], [[5, 6, 7, 8, 9], [5, 6, 7]], [1.0, 0.0], step_values=[[0.5, 1.0, 1.0], [0.5, 0.0]],
                    step_spans=[[(0, 2), (2, 4)], [(1, 3)]])
    outcome = torch.tensor([0.7, -0.7])
    first, second = _with_step_progress(group, outcome, 2.0)
    # completion 0: step 1 (tokens 0-1) gains 0.5, step 2 (tokens 2-3) gains 0, token 4 is outside
    assert first.tolist() == pytest.approx([0.7 + 1.0, 0.7 + 1.0, 0.7, 0.7, 0.7])
    # completion 1: token 0 outside, its one step (tokens 1-2) loses 0.5
    assert second.tolist() == pytest.approx([-0.7, -0.7 - 1.0, -0.7 - 1.0])
    assert _with_step_progress(RLGroup([1], [[5]], [0.0]), outcome, 2.0) is None


def test_step_progress_trains_a_group_whose_rewards_are_all_equal(tiny_model_factory, tiny_tokenizer, tmp_path):
    """All four samples failed, so the outcome says nothing; the step values say the first
    line was right and the second wrong, so the wrong line's tokens are pushed down."""
    prompt = [2] + encode(tiny_tokenizer, "Q: 2+2+1=")
    right, wrong = encode(tiny_tokenizer, "2+2=4\n"), encode(tiny_tokenizer, "4+1=7\n")
    completion = right + wrong
    spans = [(0, len(right)), (len(right), len(completion))]
    groups = [RLGroup(prompt, [completion] * 4, [0.0] * 4, step_values=[[0.5, 1.0, 0.0]] * 4,
                      step_spans=[spans] * 4, id=f"g{i}") for i in range(2)]
    outcome_only = Trainer(config(PGConfig, tmp_path / "a", steps=2), tiny_model_factory()).train(groups)
    assert outcome_only.adapter_path is None and outcome_only.stats["equal_reward_groups"] == 2
    trainer = Trainer(config(PGConfig, tmp_path / "b", steps=6, lr=1e-2, step_weight=1.0), tiny_model_factory())
    score = lambda c: trainer.evaluate([SFTExample(prompt + right, c)])["nll"]  # noqa: E731
    before = score(wrong)
    result = trainer.train(groups)
    assert result.adapter_path is not None and result.stats["examples"] == 2
    assert result.stats["equal_reward_groups"] == 2 and result.stats["equal_reward_groups_trained_on_steps"] == 2
    assert score(wrong) > before + 0.1  # the wrong step became less likely


def weighted_and_repeated(tokenizer, step_values: bool) -> tuple[RLGroup, RLGroup]:
    """Three distinct lines sampled 3, 1 and 2 times: once with weights, once repeated."""
    prompt = [2] + encode(tokenizer, "Q: 3+4=")
    lines = [encode(tokenizer, s) for s in ("7.\n", "8!\n", "34 is it\n")]
    rewards, weights = [1.0, 0.0, 0.25], [3, 1, 2]
    extra = lambda k: {} if not step_values else {  # noqa: E731
        "step_values": [[0.5, 1.0], [0.5, 0.0], [0.5, 0.25]] * k, "step_spans": [[(0, len(c) - 1)] for c in lines] * k}
    weighted = RLGroup(prompt, lines, rewards, weights=[float(w) for w in weights], id="w", **extra(1))
    repeat = lambda xs: [x for x, w in zip(xs, weights) for _ in range(w)]  # noqa: E731
    repeated = RLGroup(prompt, repeat(lines), repeat(rewards), id="r",
                       **{k: repeat(v) for k, v in extra(1).items()})
    return weighted, repeated


@pytest.mark.parametrize("method,step_weight", [("grpo", 0.0), ("rloo", 0.0), ("grpo", 1.0)])
def test_a_weighted_group_gives_the_loss_gradient_and_stats_of_its_repeated_group(
        method, step_weight, tiny_model_factory, tiny_tokenizer, tmp_path):
    weighted, repeated = weighted_and_repeated(tiny_tokenizer, step_values=bool(step_weight))
    trainer = Trainer(config(PGConfig, tmp_path, method=method, step_weight=step_weight, kl_coef=0.1,
                             lora_dropout=0.0), tiny_model_factory())
    examples = {name: trainer.method.prepare([g])[0] for name, g in (("weighted", weighted), ("repeated", repeated))}
    refs = {name: trainer.reference(x) for name, x in examples.items()}
    with torch.no_grad():  # move the policy off its reference (and LoRA B off 0): ratios, KL and every grad live
        gen = torch.Generator().manual_seed(0)
        for p in trainer.params:
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    out = {}
    for name, x in examples.items():
        trainer.model.zero_grad()
        loss, record = trainer.loss(x, refs[name])
        loss.backward()
        out[name] = loss, record, {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    (loss, record, grads), (rep_loss, rep_record, rep_grads) = out["weighted"], out["repeated"]
    torch.testing.assert_close(loss, rep_loss)
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, f"LoRA parameter {name} got no gradient"
        torch.testing.assert_close(grad, rep_grads[name], msg=lambda m: f"{name}: {m}")
    for key in ("kl", "ratio", "clip_fraction", "reward", "abs_advantage"):
        assert record[key] == pytest.approx(rep_record[key], rel=1e-5, abs=1e-7), key
    assert record["reward"] == pytest.approx((3 * 1.0 + 0.25 * 2) / 6)  # the node's Monte-Carlo value
    assert record["tokens"] < rep_record["tokens"]  # each line computed once
    assert record["kl"] > 0 and record["ratio"] != pytest.approx(1.0)


def test_weights_are_part_of_an_examples_identity(tiny_tokenizer):
    from agentkit.train.methods import PolicyGradient

    weighted, _ = weighted_and_repeated(tiny_tokenizer, step_values=False)
    method = PolicyGradient(PGConfig())
    other = RLGroup(weighted.prompt_ids, weighted.completions, weighted.rewards, weights=[1.0, 1.0, 4.0])
    plain = RLGroup(weighted.prompt_ids, weighted.completions, weighted.rewards)
    identities = {json.dumps(method.identity((g, None))) for g in (weighted, other, plain)}
    assert len(identities) == 3
    assert method.identity((plain, None)) == [plain.prompt_ids, plain.completions, plain.rewards]  # unchanged


def test_a_weight_per_completion_or_a_one_line_error(tiny_model_factory, tiny_tokenizer, tmp_path):
    weighted, _ = weighted_and_repeated(tiny_tokenizer, step_values=False)
    trainer = Trainer(config(PGConfig, tmp_path), tiny_model_factory())
    short = RLGroup(weighted.prompt_ids, weighted.completions, weighted.rewards, weights=[3.0, 1.0], id="node-7")
    with pytest.raises(AgentkitError, match=r"^group 1 \(node-7\): 3 completions and 2 weights; pass one weight "
                                            r"per completion \(or weights=None\)$"):
        trainer.train([weighted, short])
    zero = RLGroup(weighted.prompt_ids, weighted.completions, weighted.rewards, weights=[3.0, 0.0, 1.0])
    with pytest.raises(AgentkitError, match=r"^group 0: weights \[3.0, 0.0, 1.0\]; .* positive"):
        trainer.train([zero])
    with pytest.raises(AgentkitError, match="group 0 has 6 samples, group_size is 3"):
        Trainer(config(PGConfig, tmp_path, group_size=3), tiny_model_factory()).train([weighted])


@pytest.mark.parametrize("preamble", ["", "Answer every question with yes or no.\n\n"])
def test_step_only_forward_equals_the_full_forward(preamble, tiny_model_factory, tiny_tokenizer, tmp_path):
    # with a preamble the prompts share > 16 tokens: that part runs once for the whole batch
    pairs = pattern_pairs(tiny_tokenizer, 8, seed=3)
    for x in pairs:
        x.prompt_ids[1:1] = encode(tiny_tokenizer, preamble)
    fast = Trainer(config(tmp_path=tmp_path, prompt_grad=False), tiny_model_factory()).evaluate(pairs)
    full = Trainer(config(tmp_path=tmp_path, prompt_grad=True), tiny_model_factory()).evaluate(pairs)
    assert fast["margin"] == pytest.approx(full["margin"], abs=1e-4)
    assert fast["chosen_nll"] == pytest.approx(full["chosen_nll"], abs=1e-5)


def test_bf16_autocast_trains_through_the_same_code(tiny_model_factory, tiny_tokenizer, tmp_path):
    trainer = Trainer(config(tmp_path=tmp_path, steps=3, dtype="bf16"), tiny_model_factory())
    assert trainer.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in trainer.params)  # fp32 master weights for LoRA
    result = trainer.train(pattern_pairs(tiny_tokenizer, 12, seed=0))
    assert all(math.isfinite(r["loss"]) for r in result.history)


def test_continuing_a_parent_adapter_starts_from_it(tiny_model_factory, tiny_tokenizer, tmp_path):
    pairs = pattern_pairs(tiny_tokenizer, 16, seed=0)
    parent = Trainer(config(tmp_path=tmp_path, steps=6, lora_dropout=0.0), tiny_model_factory()).train(pairs)
    child = Trainer(config(tmp_path=tmp_path, steps=2, output_dir=str(tmp_path / "child"), lora_dropout=0.0),
                    tiny_model_factory(), parent_adapter=parent.adapter_path)
    parent_eval = Trainer(config(tmp_path=tmp_path), tiny_model_factory(), parent_adapter=parent.adapter_path).evaluate(pairs)
    assert child.evaluate(pairs)["margin"] == pytest.approx(parent_eval["margin"], abs=1e-5)
    result = child.train(pairs)
    # the reference is the incumbent (the parent), not the base: the first step has no margin
    assert result.history[0]["reward_margin"] == pytest.approx(0.0, abs=1e-5)


# --- configs --------------------------------------------------------------------------------


def test_configs_have_help_for_every_field_and_round_trip():
    for cls in (TrainConfig, DPOConfig, SFTConfig, PGConfig):
        missing = [name for name, text in cls.help().items() if not text.strip()]
        assert not missing, f"{cls.__name__} fields without help: {missing}"
    cfg = PGConfig(method="rloo", kl_coef=0.1, steps=5)
    assert config_from_dict(cfg.to_dict()) == cfg
    assert DPOConfig().nll_weight > 0
    with pytest.raises(AgentkitError, match="'grpo' or 'rloo', not 'dpo'"):
        PGConfig(method="dpo")
    with pytest.raises(AgentkitError, match="schedule 'step'"):
        SFTConfig(schedule="step")


def test_a_checkpoint_of_another_config_is_refused(tiny_model_factory, tiny_tokenizer, tmp_path):
    pairs = pattern_pairs(tiny_tokenizer, 16, seed=0)
    Trainer(config(tmp_path=tmp_path, steps=4, checkpoint_every=2), tiny_model_factory()).train(pairs)
    assert [p.name for p in (tmp_path / "out" / "checkpoints").iterdir()] == ["step-000002.pt"]
    with pytest.raises(AgentkitError, match="another config.*lr 0.005 -> 0.001"):
        Trainer(config(tmp_path=tmp_path, steps=4, lr=1e-3), tiny_model_factory()).train(pairs)
    with pytest.raises(AgentkitError, match="other training data"):
        Trainer(config(tmp_path=tmp_path, steps=4, checkpoint_every=2), tiny_model_factory()).train(pairs[:12])
    fresh = Trainer(config(tmp_path=tmp_path, steps=4, lr=1e-3), tiny_model_factory()).train(pairs, resume=False)
    assert fresh.resumed_from is None and fresh.steps == 4


# --- kill -9 and resume ----------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import random, sys, time
    sys.path.insert(0, {tests!r})
    from conftest import build_tiny_model, build_tiny_tokenizer
    from agentkit.train.trainer import DPOConfig, Trainer
    from test_trainer import pattern_pairs

    out, pause = sys.argv[1], float(sys.argv[2])
    tokenizer = build_tiny_tokenizer()

    def on_log(record):
        print("step", record["step"], flush=True)
        time.sleep(pause)

    cfg = DPOConfig(output_dir=out, steps=10, batch_size=4, lr=5e-3, dtype="fp32", checkpoint_every=3,
                    lora_dropout=0.1, seed=7)
    result = Trainer(cfg, build_tiny_model(len(tokenizer)), on_log=on_log).train(pattern_pairs(tokenizer, 20, seed=0))
    print("done", result.resumed_from, result.steps, flush=True)
    """
)


def child(out: Path, pause: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD.format(tests=str(TESTS)), str(out), str(pause)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(TESTS),
    )


def test_training_resumes_after_kill_9_and_ends_where_an_uninterrupted_run_does(tmp_path):
    straight = child(tmp_path / "straight", 0.0)  # the uninterrupted run, alongside
    victim = child(tmp_path / "killed", 0.3)
    seen = []
    for line in victim.stdout:
        seen.append(line.strip())
        if line.strip() == "step 7":  # checkpoint 6 is on disk: it is written right after step 6's log
            os.kill(victim.pid, signal.SIGKILL)
            break
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL, victim.stderr.read()
    ckpts = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir())
    assert ckpts == ["step-000003.pt", "step-000006.pt"]
    assert not (tmp_path / "killed" / "adapter").exists()

    out, err = straight.communicate(timeout=300)
    assert straight.returncode == 0, err
    assert out.strip().splitlines()[-1] == "done None 10"

    resumed = child(tmp_path / "killed", 0.0)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    lines = out.strip().splitlines()
    assert lines[0] == "step 7" and lines[-1] == "done 6 10"  # the step counter continues
    steps = [json.loads(l)["step"] for l in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 11))

    a = load_file(str(tmp_path / "straight" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and len(a) == 28
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


# --- the saved adapter on a backend ---------------------------------------------------------


def test_the_saved_adapter_loads_into_the_backend_and_answers(tiny_model_factory, tiny_tokenizer, tmp_path):
    pairs = pattern_pairs(tiny_tokenizer, 16, seed=0)
    trainer = Trainer(config(tmp_path=tmp_path, steps=6), tiny_model_factory(seed=0))
    result = trainer.train(pairs)
    adapter = Path(result.adapter_path)
    assert sorted(p.name for p in adapter.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"

    llm = TransformersLLM.from_model(tiny_model_factory(seed=0), tiny_tokenizer, name="tiny", dtype="fp32")
    try:
        prompt, chosen = pairs[0].prompt_ids, pairs[0].chosen_ids
        base = llm.score(prompt, chosen)
        with PolicyRegistry(tmp_path / "runs.db") as registry:
            version = register_trained(registry, result, data={"pair_ids": [x.id for x in pairs]})
            assert (version.version, version.method, version.status) == ("v1", "dpo", "candidate")
            assert version.data == {"examples": 16, "pair_ids": list(range(16))}
            assert version.config["beta"] == 0.4 and version.metrics["train"]["steps"] == 6
            assert load_policy(llm, registry, "v1") == "v1"  # checksum verified, probe answered by v1
        ((completion,),) = llm.generate([GenerationRequest(prompt, max_tokens=4, adapter="v1")])
        assert completion.adapter == "v1" and len(completion.token_ids) >= 1
        tuned = llm.score(prompt, chosen, adapter="v1")
        assert max(abs(x - y) for x, y in zip(base, tuned)) > 1e-3
        # the backend's logprobs under the adapter are the trainer's
        expected = trainer.evaluate([SFTExample(prompt, chosen)])["nll"]
        assert -sum(tuned) / len(tuned) == pytest.approx(expected, abs=1e-4)
        assert llm.score(prompt, chosen) == pytest.approx(base, abs=1e-6)  # the base is untouched
    finally:
        llm.close()


def test_a_restricted_vocabulary_trains_the_policy_that_decodes_over_it(tiny_model_factory, tiny_tokenizer, tmp_path):
    rng = random.Random(1)
    examples = []
    for _ in range(24):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        examples.append(SFTExample([2] + encode(tiny_tokenizer, f"{a}+{b}="), encode(tiny_tokenizer, f"{a + b}. done")))
    allowed = sorted({t for x in examples for t in x.completion_ids})
    trainer = Trainer(config(SFTConfig, tmp_path, steps=8, allowed_token_ids=allowed), tiny_model_factory())
    llm = TransformersLLM.from_model(tiny_model_factory(), tiny_tokenizer, name="tiny", dtype="fp32")
    x = examples[0]

    def nll(logprobs):
        return -sum(logprobs) / len(logprobs)

    try:
        within = nll(llm.score(x.prompt_ids, x.completion_ids, allowed_token_ids=allowed))
        assert trainer.evaluate([x])["nll"] == pytest.approx(within, abs=1e-4)  # the softmax over the allowed ids
        assert within < nll(llm.score(x.prompt_ids, x.completion_ids)) - 1.0  # not the whole vocabulary's
        result = trainer.train(examples)
        llm.load_adapter("v1", result.adapter_path)
        tuned = nll(llm.score(x.prompt_ids, x.completion_ids, adapter="v1", allowed_token_ids=allowed))
        assert trainer.evaluate([x])["nll"] == pytest.approx(tuned, abs=1e-4)
        assert tuned < within - 0.3
    finally:
        llm.close()
    outside = SFTExample(x.prompt_ids, x.completion_ids + encode(tiny_tokenizer, " Q"))
    with pytest.raises(AgentkitError, match="is not among allowed_token_ids"):
        trainer.evaluate([outside])
