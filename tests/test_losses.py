"""Losses against hand-computed values, and DPO against TRL's own loss code."""

from __future__ import annotations

import ast
import importlib.util
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from agentkit.train.losses import (
    dpo_loss,
    dpo_nll_loss,
    grpo_advantages,
    policy_gradient_loss,
    rloo_advantages,
    sequence_logps,
    sft_loss,
    step_advantages,
    token_logps,
)

LOG2 = math.log(2)


def t(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


# --- log-probabilities --------------------------------------------------------------------


def probs_logits() -> torch.Tensor:
    # logits = log p, so log_softmax(logits) = log p exactly; (B=1, T=3, V=3)
    return torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.125, 0.625, 0.25], [0.1, 0.1, 0.8]]]))


def test_token_logps_gathers_the_label_logprob():
    labels = torch.tensor([[0, 1, 2]])
    assert_close(token_logps(probs_logits(), labels), torch.log(t(0.5, 0.625, 0.8))[None])


def test_token_logps_is_float32_and_ignores_negative_labels():
    logits = probs_logits().to(torch.bfloat16)
    out = token_logps(logits, torch.tensor([[-100, 1, 2]]))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_sequence_logps_sums_only_masked_tokens():
    labels = torch.tensor([[-100, 1, 2]])  # the prompt position carries TRL's ignore index
    mask = torch.tensor([[0, 1, 1]])
    assert_close(sequence_logps(probs_logits(), labels, mask), t(math.log(0.625) + math.log(0.8)))


def test_sft_loss_is_the_mean_masked_token_nll():
    logits = torch.cat([probs_logits(), probs_logits()])  # (2, 3, 3)
    labels = torch.tensor([[0, 1, 2], [1, 0, 0]])
    mask = torch.tensor([[0, 1, 1], [1, 0, 0]])
    expected = -(math.log(0.625) + math.log(0.8) + math.log(0.25)) / 3
    assert_close(sft_loss(logits, labels, mask), torch.tensor(expected))


def test_sft_loss_gradient_lowers_the_nll():
    logits = probs_logits().clone().requires_grad_(True)
    loss = sft_loss(logits, torch.tensor([[0, 1, 2]]), torch.ones(1, 3))
    loss.backward()
    # d(-log softmax_y)/d logit_v = p_v - 1[v = y]
    assert_close(logits.grad[0, 0], t(0.5 - 1, 0.25, 0.25) / 3)


# --- DPO ----------------------------------------------------------------------------------


def test_dpo_is_log2_when_the_policy_is_the_reference():
    logps = t(-3.0, -7.5, -0.2)
    losses, chosen_rewards, rejected_rewards = dpo_loss(logps, logps - 1, logps, logps - 1, beta=0.1)
    assert_close(losses, torch.full((3,), LOG2))
    assert_close(chosen_rewards, torch.zeros(3))
    assert_close(rejected_rewards, torch.zeros(3))


def test_dpo_worked_example():
    # πc - rc = 1, πr - rr = -1  ->  h = 2, βh = 1, L = -log σ(1) = log(1 + e^-1)
    pc = t(-1.0).requires_grad_(True)
    losses, chosen_rewards, rejected_rewards = dpo_loss(pc, t(-3.0), t(-2.0), t(-2.0), beta=0.5)
    assert_close(losses, t(math.log1p(math.exp(-1))))  # 0.3132617
    assert_close(chosen_rewards, t(0.5))
    assert_close(rejected_rewards, t(-0.5))
    losses.sum().backward()
    assert_close(pc.grad, t(-0.5 / (1 + math.e)))  # -β σ(-βh)


def test_dpo_label_smoothing_is_conservative_dpo():
    # -(1-ε) log σ(1) - ε log σ(-1) = log(1+e^-1) + ε, since log(1+e) = 1 + log(1+e^-1)
    losses, _, _ = dpo_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.0), beta=0.5, label_smoothing=0.1)
    assert_close(losses, t(math.log1p(math.exp(-1)) + 0.1))
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(t(0.0), t(0.0), t(0.0), t(0.0), beta=0.5, label_smoothing=0.5)


def test_dpo_nll_adds_the_length_normalised_chosen_nll():
    losses, chosen_rewards, _, nll = dpo_nll_loss(
        t(-1.0, -6.0), t(-3.0, -6.0), t(-2.0, -6.0), t(-2.0, -6.0), torch.tensor([4, 3]), beta=0.5, alpha=2.0
    )
    assert_close(nll, t(0.25, 2.0))
    assert_close(losses, t(math.log1p(math.exp(-1)) + 2 * 0.25, LOG2 + 2 * 2.0))
    assert_close(chosen_rewards, t(0.5, 0.0))


# --- DPO against TRL's source -------------------------------------------------------------


def trl_compute_loss_statements() -> dict[str, list[ast.stmt]]:
    """Statements of TRL's DPOTrainer._compute_loss, read from the installed file (importing
    the trainer needs `datasets`): the log-ratio and reward assignments, the reverse-KL
    branch and the "sigmoid" and "sft" loss branches."""
    trl = pytest.importorskip("trl")
    spec = importlib.util.find_spec("trl.trainer")
    source = Path(spec.submodule_search_locations[0], "dpo_trainer.py").read_text()
    [fn] = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef) and n.name == "_compute_loss"]
    found: dict[str, list[ast.stmt]] = {}
    for node in ast.walk(fn):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in ("chosen_logratios", "rejected_logratios", "delta_score", "chosen_rewards", "rejected_rewards"):
                found.setdefault(name, []).append(node)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            constant = node.test.comparators[0]
            if isinstance(constant, ast.Constant) and constant.value in ("reverse_kl", "sigmoid", "sft"):
                found[constant.value] = node.body
    assert trl.__version__ and {"chosen_logratios", "delta_score", "reverse_kl", "sigmoid", "sft"} <= set(found)
    for statements in found.values():
        statements.sort(key=lambda node: node.lineno)  # ast.walk is breadth-first
    return found


def run_statements(statements: list[ast.stmt], namespace: dict) -> dict:
    exec(compile(ast.Module(body=statements, type_ignores=[]), "<trl>", "exec"), namespace)
    return namespace


def test_dpo_equals_trl_sigmoid_loss():
    code = trl_compute_loss_statements()
    torch.manual_seed(0)
    pc, pr, rc, rr = (torch.randn(6) * 5 - 20 for _ in range(4))
    beta = 0.4
    ns = {"F": F, "torch": torch, "self": SimpleNamespace(beta=beta), "chosen_logps": pc, "rejected_logps": pr,
          "ref_chosen_logps": rc, "ref_rejected_logps": rr}
    run_statements(code["chosen_logratios"] + code["rejected_logratios"], ns)
    run_statements(code["reverse_kl"] + code["delta_score"] + code["sigmoid"], ns)
    # the last assignments in the source are the logged implicit rewards
    run_statements(code["chosen_rewards"][-1:] + code["rejected_rewards"][-1:], ns)

    losses, chosen_rewards, rejected_rewards = dpo_loss(pc, pr, rc, rr, beta)
    assert_close(losses, ns["per_sequence_loss"])
    assert_close(chosen_rewards, ns["chosen_rewards"])
    assert_close(rejected_rewards, ns["rejected_rewards"])


def test_dpo_nll_equals_trl_sigmoid_plus_sft_with_equal_chosen_lengths():
    code = trl_compute_loss_statements()
    torch.manual_seed(1)
    B, T, alpha, beta = 3, 5, 0.7, 0.5
    per_token_logps = -torch.rand(2 * B, T) * 3  # (2B, T): chosen rows, then rejected rows
    shift_completion_mask = torch.zeros(2 * B, T, dtype=torch.long)
    shift_completion_mask[:, 2:] = 1  # three step tokens after a two-token prefix
    logps = (per_token_logps * shift_completion_mask).sum(1)
    pc, pr = logps.chunk(2)
    rc, rr = torch.randn(B) - 5, torch.randn(B) - 5

    ns = {"F": F, "torch": torch, "self": SimpleNamespace(beta=beta), "chosen_logps": pc, "rejected_logps": pr,
          "ref_chosen_logps": rc, "ref_rejected_logps": rr, "per_token_logps": per_token_logps,
          "shift_completion_mask": shift_completion_mask}
    run_statements(code["chosen_logratios"] + code["rejected_logratios"], ns)
    run_statements(code["reverse_kl"] + code["delta_score"] + code["sigmoid"], ns)
    trl_loss = ns["per_sequence_loss"].mean()
    run_statements(code["sft"], ns)
    trl_loss = trl_loss + alpha * ns["per_sequence_loss"].mean()  # loss_weights=[1, alpha]

    losses, _, _, _ = dpo_nll_loss(pc, pr, rc, rr, torch.full((B,), 3), beta, alpha=alpha)
    assert_close(losses.mean(), trl_loss)


# --- group advantages ---------------------------------------------------------------------


def test_grpo_advantages_worked_example():
    advantages, degenerate = grpo_advantages(t(1.0, 0.0, 0.0, 1.0))
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)  # mean 0.5, Bessel std sqrt(1/3)
    assert_close(advantages, t(a, -a, -a, a))
    assert not degenerate.item() and degenerate.shape == ()


def test_grpo_flags_groups_with_equal_rewards():
    rewards = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    advantages, degenerate = grpo_advantages(rewards)
    assert degenerate.tolist() == [True, True, False]
    assert_close(advantages[:2], torch.zeros(2, 3))
    a = (1 - 1 / 3) / (math.sqrt(1 / 3) + 1e-4)  # std of (0, 0, 1) is sqrt(1/3)
    assert_close(advantages[2], t(-a / 2, -a / 2, a))


def test_rloo_advantages_leave_one_out():
    advantages, degenerate = rloo_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]]))
    assert_close(advantages, torch.tensor([[1.0, -1 / 3, -1 / 3, -1 / 3], [0.0, 0.0, 0.0, 0.0]]))
    assert degenerate.tolist() == [False, True]


def test_group_of_one_is_an_error():
    with pytest.raises(ValueError, match="G >= 2"):
        grpo_advantages(t(1.0))
    with pytest.raises(ValueError, match="G >= 2"):
        rloo_advantages(torch.ones(3, 1))


def random_weighted_groups(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, G) rewards of a few levels and integer weights 1..5, each group uneven."""
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randint(0, 4, (6, 3), generator=gen).float() / 3
    rewards[:, 0], rewards[:, 1] = 0.0, 1.0  # no all-equal group
    weights = torch.randint(1, 6, (6, 3), generator=gen).float()
    weights[:, 0] = 4.0  # never all 1: equal weights are the unweighted group
    return rewards, weights


@pytest.mark.parametrize("advantage_fn", [grpo_advantages, rloo_advantages])
def test_weighted_advantages_equal_the_repeated_group(advantage_fn):
    rewards, weights = random_weighted_groups(seed=0)
    weighted, degenerate = advantage_fn(rewards, weights=weights)
    assert not degenerate.any()
    for r, w, a in zip(rewards, weights, weighted):
        repeated, _ = advantage_fn(r.repeat_interleave(w.long()))  # (W,)
        first = torch.cumsum(w.long(), 0) - w.long()  # index of each line's first copy
        assert_close(a, repeated[first])
        assert_close(advantage_fn(r, weights=w)[0], a)  # (G,) as one row of (B, G)
    assert_close(advantage_fn(rewards, weights=torch.ones_like(rewards))[0], advantage_fn(rewards)[0])


def test_weighted_grpo_worked_example():
    # (1, 0) weighted (1, 3) is (1, 0, 0, 0): mean 1/4, Bessel std sqrt(1/4); RLOO baselines 0 and 1/3
    advantages, _ = grpo_advantages(t(1.0, 0.0), weights=t(1.0, 3.0))
    assert_close(advantages, t(0.75, -0.25) / (0.5 + 1e-4))
    advantages, _ = rloo_advantages(t(1.0, 0.0), weights=t(1.0, 3.0))
    assert_close(advantages, t(1.0, -1 / 3))


def test_bad_weights_are_an_error():
    with pytest.raises(ValueError, match="one weight per reward"):
        grpo_advantages(t(1.0, 0.0), weights=t(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="positive number of samples"):
        rloo_advantages(t(1.0, 0.0), weights=t(1.0, 0.0))
    with pytest.raises(ValueError, match="at most 1 sample"):
        rloo_advantages(t(1.0, 0.0), weights=t(0.5, 0.5))


# --- step advantages ----------------------------------------------------------------------


def test_step_advantages_broadcast_progress_to_step_tokens():
    values = t(0.5, 0.75, 0.0, 0.0)  # V before step 1, after steps 1, 2, 3
    step_index = torch.tensor([-1, 0, 0, 1, 1, 1, 2, -1])
    advantages = step_advantages(values[:-1], values[1:], step_index)
    assert_close(advantages, t(0.0, 0.25, 0.25, -0.75, -0.75, -0.75, 0.0, 0.0))
    batched = step_advantages(values[None, :-1], values[None, 1:], step_index[None])
    assert_close(batched, advantages[None])


# --- clipped policy gradient --------------------------------------------------------------


def test_policy_gradient_on_policy_is_minus_the_mean_advantage():
    logps = t(-1.0, -2.0, -0.5)[None].requires_grad_(True)  # (1, 3)
    loss, stats = policy_gradient_loss(logps, logps.detach(), t(2.0), torch.tensor([[1, 1, 0]]))
    assert_close(loss, torch.tensor(-2.0))
    assert_close(stats["ratio"], torch.tensor(1.0))
    assert_close(stats["clip_fraction"], torch.tensor(0.0))
    loss.backward()
    assert_close(logps.grad, t(-1.0, -1.0, 0.0)[None])  # -A / n on masked tokens


def test_policy_gradient_clipping_worked_example():
    ratios = t(1.5, 0.5, 0.5, 1.5)
    advantages = t(1.0, 1.0, -1.0, -1.0)
    old = t(-1.0, -1.0, -1.0, -1.0)
    logps = (old + ratios.log()).requires_grad_(True)
    loss, stats = policy_gradient_loss(logps[None], old[None], advantages[None], torch.ones(1, 4), clip_eps=0.2)
    # per token -min(ρA, clip(ρ)A): -1.2 (clipped), -0.5, +0.8 (clipped), +1.5
    assert_close(loss, torch.tensor((-1.2 - 0.5 + 0.8 + 1.5) / 4))
    assert_close(stats["clip_fraction"], torch.tensor(0.5))
    assert_close(stats["ratio"], torch.tensor(1.0))
    loss.backward()
    # clipped tokens carry no gradient; the others -ρA/n
    assert_close(logps.grad, t(0.0, -0.5 / 4, 0.0, 1.5 / 4))


def test_policy_gradient_k3_kl_to_the_reference():
    logps = torch.full((1, 2), -2.0)
    ref = logps + LOG2  # ref - logp = log 2: k3 = 2 - log 2 - 1
    k3 = 1 - LOG2
    loss, stats = policy_gradient_loss(logps, logps, torch.zeros(1), torch.ones(1, 2), ref_logps=ref)
    assert_close(stats["kl"], torch.tensor(k3))
    assert_close(loss, torch.tensor(0.0))  # kl_coef 0: reported, not added
    loss, _ = policy_gradient_loss(logps, logps, torch.zeros(1), torch.ones(1, 2), ref_logps=ref, kl_coef=0.1)
    assert_close(loss, torch.tensor(0.1 * k3))
    same, stats = policy_gradient_loss(logps, logps, torch.zeros(1), torch.ones(1, 2), ref_logps=logps, kl_coef=1.0)
    assert_close(stats["kl"], torch.tensor(0.0))


@pytest.mark.parametrize("per_token", [False, True])
def test_weighted_rows_give_the_loss_gradient_and_stats_of_repeated_rows(per_token):
    gen = torch.Generator().manual_seed(1)
    B, T = 3, 5
    logps = -torch.rand(B, T, generator=gen) * 3  # (B, T)
    old = logps + 0.4 * torch.randn(B, T, generator=gen)  # ratios off 1, some clipped
    ref = logps + 0.3 * torch.randn(B, T, generator=gen)
    advantages = torch.randn(B, T, generator=gen) if per_token else torch.randn(B, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])  # rows of unequal length
    weights = t(3.0, 1.0, 2.0)
    index = torch.repeat_interleave(torch.arange(B), weights.long())  # (W,) the repeated rows

    weighted_logps = logps.clone().requires_grad_(True)
    loss, stats = policy_gradient_loss(weighted_logps, old, advantages, mask, ref_logps=ref, kl_coef=0.1,
                                       weights=weights)
    loss.backward()
    repeated_logps = logps.clone().requires_grad_(True)
    repeated, repeated_stats = policy_gradient_loss(repeated_logps[index], old[index], advantages[index], mask[index],
                                                    ref_logps=ref[index], kl_coef=0.1)
    repeated.backward()
    assert_close(loss, repeated)
    assert_close(weighted_logps.grad, repeated_logps.grad)
    assert stats.keys() == repeated_stats.keys() == {"kl", "ratio", "clip_fraction"}
    for k in stats:
        assert_close(stats[k], repeated_stats[k])
    assert 0 < stats["clip_fraction"] < 1
    unweighted, _ = policy_gradient_loss(logps, old, advantages, mask, ref_logps=ref, kl_coef=0.1)
    assert not torch.isclose(unweighted, repeated)  # the weights matter here
