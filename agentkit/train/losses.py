"""The trainer's losses: pure functions of tensors, each with its formula and shapes.

Notation: B batch, T tokens, V vocabulary, G samples in a group, S sub-steps. Log-
probabilities are natural logs of the model's raw distribution (temperature 1).

Alignment: ``logits[:, t]`` is the model's prediction for ``labels[:, t]``. For a causal
LM over ``input_ids`` that means shifting first (``logits = model(input_ids).logits[:, :-1]``,
``labels = input_ids[:, 1:]``) — or computing logits only for the positions that predict
the step tokens, which is what makes step-level training cheap. ``mask`` is 1 on the
tokens that count (the step or completion) and 0 on the prompt and padding; labels under
a 0 mask may hold anything, including -100.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "token_logps",
    "sequence_logps",
    "dpo_loss",
    "dpo_nll_loss",
    "sft_loss",
    "grpo_advantages",
    "rloo_advantages",
    "step_advantages",
    "policy_gradient_loss",
]


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token log-probabilities of ``labels``.

        logp[b, t] = logits[b, t, labels[b, t]] - logsumexp_v logits[b, t, v]

    logits (B, T, V) any float dtype; labels (B, T) long. Returns (B, T) float32 (computed in
    float32 so that bf16 logits give stable sums). Negative labels (-100) read token 0.
    """
    logits = logits.float()
    labels = labels.clamp(min=0)
    picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return picked - torch.logsumexp(logits, dim=-1)  # (B, T)


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of the masked tokens of each sequence:

        logp[b] = sum_t mask[b, t] * log p(labels[b, t])

    logits (B, T, V); labels (B, T); mask (B, T) of 0/1 (bool or numeric). Returns (B,)."""
    logps = token_logps(logits, labels)  # (B, T)
    return torch.where(mask.bool(), logps, 0.0).sum(-1)  # (B,)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    *,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Direct Preference Optimization (Rafailov et al. 2023), the "sigmoid" loss of TRL.

        h = (πc - rc) - (πr - rr)
        L = -(1 - ε) log σ(β h) - ε log σ(-β h)

    π and r are summed log-probabilities of the step's (or completion's) tokens under the
    policy and the frozen reference, prefix masked. ε = ``label_smoothing`` is conservative
    DPO (cDPO): the preference label is assumed flipped with probability ε; ε = 0 is plain DPO.
    With policy == reference, L = log 2.

    All inputs (B,). Returns (losses (B,), chosen_rewards (B,), rejected_rewards (B,)), the
    implicit rewards β(πc - rc) and β(πr - rr), detached (for logging margins and accuracy).
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing={label_smoothing}: must be in [0, 0.5)")
    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # (B,)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # (B,)
    h = chosen_logratios - rejected_logratios  # (B,)
    losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)  # (B,)
    chosen_rewards = beta * chosen_logratios.detach()  # (B,)
    rejected_rewards = beta * rejected_logratios.detach()  # (B,)
    return losses, chosen_rewards, rejected_rewards


def dpo_nll_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    beta: float,
    *,
    alpha: float = 1.0,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO plus a length-normalised NLL term on the chosen tokens (RPO, Pang et al. 2024):

        L = L_DPO + α · nll,    nll = -πc / |c|

    On a weak base model pure DPO pushes the rejected step down faster than it lifts the
    chosen one and the output format collapses; the NLL term keeps the chosen steps likely
    (RESEARCH.md, "What we measured": it carried the gain). With equal chosen lengths this
    equals TRL's ``loss_type=["sigmoid", "sft"]``, ``loss_weights=[1, α]``.

    Log-prob inputs (B,), chosen_lengths (B,) token counts of each chosen step. Returns
    (losses (B,), chosen_rewards (B,), rejected_rewards (B,), nll (B,)), nll not detached.
    """
    dpo, chosen_rewards, rejected_rewards = dpo_loss(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta,
        label_smoothing=label_smoothing,
    )
    nll = -policy_chosen_logps / chosen_lengths.to(policy_chosen_logps.dtype).clamp(min=1)  # (B,)
    return dpo + alpha * nll, chosen_rewards, rejected_rewards, nll


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean token negative log-likelihood over the masked tokens of the whole batch:

        L = -sum_{b,t} mask[b, t] log p(labels[b, t]) / sum_{b,t} mask[b, t]

    The rejection-sampling / STaR baseline (SFT on verified successes) and gold SFT.
    logits (B, T, V); labels (B, T); mask (B, T). Returns a scalar (0 when nothing is masked in).
    """
    mask = mask.bool()
    logps = token_logps(logits, labels)  # (B, T)
    return -torch.where(mask, logps, 0.0).sum() / mask.sum().clamp(min=1)


def _groups(rewards: torch.Tensor) -> torch.Tensor:
    if rewards.dim() not in (1, 2):
        raise ValueError(f"rewards of shape {tuple(rewards.shape)}: pass (G,) or (B, G)")
    if rewards.shape[-1] < 2:
        raise ValueError(f"a group of {rewards.shape[-1]} sample(s) has no baseline: sample G >= 2 per task")
    return rewards.float().reshape(-1, rewards.shape[-1])  # (B, G)


def _group_weights(weights: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    if weights.shape != rewards.shape:
        raise ValueError(f"weights of shape {tuple(weights.shape)} for rewards of shape {tuple(rewards.shape)}: "
                         "pass one weight per reward")
    if not bool((weights > 0).all()):
        raise ValueError(f"weights {weights.tolist()}: each completion stands for a positive number of samples")
    weights = weights.float().reshape(-1, weights.shape[-1])  # (B, G)
    if not bool((weights.sum(dim=1) > 1).all()):
        raise ValueError(f"weights {weights.tolist()}: a group of at most 1 sample has no baseline")
    return weights


def grpo_advantages(rewards: torch.Tensor, *, weights: torch.Tensor | None = None,
                    eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-relative advantages (GRPO, Shao et al. 2024):

        A_i = (r_i - mean_j r_j) / (std_j r_j + ε)

    std is Bessel-corrected, as in TRL's GRPOTrainer. rewards (G,) or (B, G), one row per
    task. Returns (advantages, same shape as rewards; degenerate, () or (B,) bool): a group
    whose rewards are all equal has zero advantages and trains nothing — the caller must
    count and report such groups, not drop them silently.

    ``weights`` (same shape, > 0): how many samples each completion stands for. The group
    is then the multiset with completion i repeated w_i times, W = sum_j w_j samples:

        mean = sum_j w_j r_j / W,    std² = sum_j w_j (r_j - mean)² / (W - 1)

    which gives each distinct completion the advantage its every copy would get.
    """
    groups = _groups(rewards)  # (B, G)
    degenerate = (groups == groups[:, :1]).all(dim=1)  # (B,)
    if weights is None:
        mean = groups.mean(dim=1, keepdim=True)  # (B, 1)
        std = groups.std(dim=1, keepdim=True)  # (B, 1)
    else:
        w = _group_weights(weights, rewards)  # (B, G)
        total = w.sum(dim=1, keepdim=True)  # (B, 1) samples W
        mean = (w * groups).sum(dim=1, keepdim=True) / total  # (B, 1)
        std = ((w * (groups - mean) ** 2).sum(dim=1, keepdim=True) / (total - 1)).sqrt()  # (B, 1)
    advantages = torch.where(degenerate[:, None], 0.0, (groups - mean) / (std + eps))  # (B, G)
    return advantages.reshape(rewards.shape), degenerate.reshape(rewards.shape[:-1])


def rloo_advantages(rewards: torch.Tensor, *, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Leave-one-out advantages (RLOO, Ahmadian et al. 2024), an unbiased baseline:

        A_i = r_i - (1 / (G - 1)) sum_{j != i} r_j

    rewards (G,) or (B, G). Returns (advantages, same shape; degenerate, () or (B,) bool) as
    ``grpo_advantages``: all-equal groups give zeros and are flagged for the caller to report.

    ``weights`` (same shape, > 0): completion i stands for w_i samples, W = sum_j w_j; its
    baseline leaves out one of its copies, as in the repeated group:

        A_i = r_i - (sum_j w_j r_j - r_i) / (W - 1)
    """
    groups = _groups(rewards)  # (B, G)
    if weights is None:
        g = groups.shape[1]
        baseline = (groups.sum(dim=1, keepdim=True) - groups) / (g - 1)  # (B, G)
    else:
        w = _group_weights(weights, rewards)  # (B, G)
        total = w.sum(dim=1, keepdim=True)  # (B, 1) samples W
        baseline = ((w * groups).sum(dim=1, keepdim=True) - groups) / (total - 1)  # (B, G)
    degenerate = (groups == groups[:, :1]).all(dim=1)  # (B,)
    advantages = torch.where(degenerate[:, None], 0.0, groups - baseline)  # (B, G)
    return advantages.reshape(rewards.shape), degenerate.reshape(rewards.shape[:-1])


def step_advantages(
    values_before: torch.Tensor, values_after: torch.Tensor, step_index: torch.Tensor
) -> torch.Tensor:
    """Per-token advantages from step progress (PAV, Setlur et al. 2024):

        A[b, t] = V_after[b, s] - V_before[b, s]   where s = step_index[b, t]
        A[b, t] = 0                                 where step_index[b, t] = -1

    From Monte-Carlo values V[0..S] of an output with S steps (V[j] = share of rollouts that
    succeed after j steps), values_before = V[:-1] and values_after = V[1:]. A step that
    keeps the odds unchanged earns nothing, so repeating correct-but-useless steps is not
    rewarded (the reward-hacking caution of RESEARCH.md).

    values_before, values_after (B, S) or (S,); step_index (B, T) or (T,) long, the sub-step
    of each token or -1 (see ``credit.token_step_index``). Returns (B, T) or (T,) float.
    """
    unbatched = step_index.dim() == 1
    if unbatched:
        values_before, values_after, step_index = values_before[None], values_after[None], step_index[None]
    progress = (values_after - values_before).float()  # (B, S)
    inside = step_index >= 0  # (B, T)
    if progress.shape[1] == 0:
        advantages = torch.zeros(step_index.shape, dtype=progress.dtype, device=progress.device)
    else:
        advantages = progress.gather(1, step_index.clamp(min=0))  # (B, T)
        advantages = torch.where(inside, advantages, 0.0)  # (B, T)
    return advantages[0] if unbatched else advantages


def policy_gradient_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    ref_logps: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped token-level surrogate of PPO/GRPO with a k3 KL penalty to the reference:

        ρ = exp(logp - logp_old)
        ℓ_t = -min(ρ A, clip(ρ, 1 - ε, 1 + ε) A) + κ · (exp(logp_ref - logp) - (logp_ref - logp) - 1)
        L = sum_t mask_t ℓ_t / sum_t mask_t          (token mean over the whole batch)

    The k3 estimator (Schulman 2020) is unbiased for KL(π || π_ref) and never negative.
    ``old_logps`` are the sampling policy's (the logprobs recorded with each step: on-policy
    they equal ``logps.detach()`` and ρ = 1). The KL term is computed whenever ``ref_logps``
    is given (for the stats) and added only with ``kl_coef`` > 0.

    ``weights`` (B,): how many samples each row stands for. Row b's tokens then count w_b
    times in the token mean, ``mask_t`` above becoming ``w_b · mask_t`` in both sums, so a
    row of weight k gives the loss, gradient and stats of k identical rows while its forward
    and backward run once.

    logps, old_logps, mask (B, T); advantages (B, T) per token or (B,) per sequence;
    ref_logps (B, T) or None. Returns (loss scalar, stats): stats hold detached scalars
    ``ratio`` (mean ρ), ``clip_fraction`` (share of tokens where the clip is active) and
    ``kl`` (mean k3, when ``ref_logps`` is given), all over the masked tokens.
    """
    mask = mask.bool()
    if weights is None:
        n = mask.sum().clamp(min=1)

        def total(x: torch.Tensor) -> torch.Tensor:
            return torch.where(mask, x, 0.0).sum()
    else:
        counts = torch.where(mask, weights.to(logps.dtype)[:, None], 0.0)  # (B, T) samples per token
        n = counts.sum()
        n = torch.where(n > 0, n, torch.ones_like(n))

        def total(x: torch.Tensor) -> torch.Tensor:
            return torch.where(mask, counts * x, 0.0).sum()
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand_as(logps)  # (B, T)
    ratio = torch.exp(logps - old_logps)  # (B, T)
    unclipped = ratio * advantages  # (B, T)
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages  # (B, T)
    per_token = -torch.min(unclipped, clipped)  # (B, T)
    stats: dict[str, torch.Tensor] = {}
    if ref_logps is not None:
        delta = ref_logps - logps  # (B, T)
        kl = torch.exp(delta) - delta - 1  # (B, T)
        if kl_coef:
            per_token = per_token + kl_coef * kl
        stats["kl"] = (total(kl) / n).detach()
    loss = total(per_token) / n
    with torch.no_grad():
        is_clipped = ((ratio < 1 - clip_eps) & (advantages < 0)) | ((ratio > 1 + clip_eps) & (advantages > 0))  # (B, T)
        stats["ratio"] = total(ratio) / n
        stats["clip_fraction"] = total(is_clipped.to(ratio.dtype)) / n
    return loss, stats
