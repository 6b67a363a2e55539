"""On the real embedded Gemma 3 270M: a few Step-DPO updates raise the chosen-minus-rejected
log-prob margin on held-out step pairs (tasks the training never saw).

Pairs are built the way Step-DPO builds them: the prompt is the few-shot prompt plus the
solution up to the step ("Step 1:"), chosen is the right step line, rejected a wrong one
(the right operation with a wrong result, the base model's usual error)."""

from __future__ import annotations

import pytest

from agentkit.llm.models import resolve_model
from agentkit.tasks import get_suite
from agentkit.train import DPOConfig, PreferenceExample, Trainer

pytestmark = pytest.mark.slow


def step_pairs(tokenizer, tasks, suite):
    pairs = []
    for i, task in enumerate(tasks):
        (a, op, b, c), = task.data["steps"]
        prompt = tokenizer(suite.prompt(task, shots=3) + "Step 1:")["input_ids"]
        right = tokenizer(f" {a} {op} {b} = {c}\n", add_special_tokens=False)["input_ids"]
        wrong = tokenizer(f" {a} {op} {b} = {c + 10 if i % 2 else c - 10}\n", add_special_tokens=False)["input_ids"]
        pairs.append(PreferenceExample(prompt, right, wrong, id=task.id))
    return pairs


def test_a_few_step_dpo_updates_raise_the_held_out_margin(tmp_path):
    from transformers import AutoTokenizer

    suite = get_suite("arithmetic")
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model("gemma-3-270m")))
    train = step_pairs(tokenizer, suite.tasks("train", 32, level=1, seed=5), suite)
    held_out = step_pairs(tokenizer, suite.tasks("test", 12, level=1, seed=5), suite)
    config = DPOConfig(output_dir=str(tmp_path / "out"), steps=8, batch_size=4, lr=2e-4, beta=0.4, nll_weight=1.0,
                       checkpoint_every=0)
    trainer = Trainer(config, "gemma-3-270m")
    before = trainer.evaluate(held_out)
    result = trainer.train(train)
    after = trainer.evaluate(held_out)
    assert result.stats["steps"] == 8
    assert after["margin"] > before["margin"] + 0.5, (before, after)
    assert after["accuracy"] >= before["accuracy"], (before, after)
