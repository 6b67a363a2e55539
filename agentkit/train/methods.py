"""One class per training method: what each adds to the shared loop in ``trainer.py``.

A method turns the given data into examples (``prepare``), says what identifies an
example for resuming (``identity``), computes its reference log-probabilities once
(``reference``) and its loss on a micro-batch (``loss``). Preference pairs and
completions also have an ``evaluate`` piece, which ``Trainer.evaluate`` picks by the
examples' type (any trainer evaluates both). Every model call goes through ``forward``,
the trainer's logits at the completion positions, so a method never sees the model.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, ClassVar, Sequence

import torch

from agentkit.errors import AgentkitError
from agentkit.train.configs import DPOConfig, PGConfig, TrainConfig
from agentkit.train.examples import PreferenceExample, RLGroup, SFTExample, _get, token_step_index
from agentkit.train.losses import (dpo_nll_loss, grpo_advantages, policy_gradient_loss, rloo_advantages,
                                   sequence_logps, sft_loss, step_advantages, token_logps)

__all__ = ["Method", "Preference", "SFT", "PolicyGradient", "method_for"]

log = logging.getLogger("agentkit.train")

Forward = Callable[[Sequence[list[int]], Sequence[list[int]]], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
"""(prompts, completions) -> logits (N, Tc, V), labels (N, Tc), mask (N, Tc)."""
Loss = tuple[torch.Tensor, dict[str, float]]


class Method:
    """The base: examples are taken as given and need no reference pass."""

    kind: ClassVar[str] = "pair/completion"
    """What an example must be, for the error on an empty one."""

    def __init__(self, config: TrainConfig):
        self.config = config

    def prepare(self, items: list[Any]) -> tuple[list[Any], dict[str, Any]]:
        """The examples the loop trains on, and what was set aside (reported, never silent)."""
        examples = self.examples(items)
        bad = [i for i, x in enumerate(examples) if not self.valid(x)]
        if bad:
            raise AgentkitError(f"{self.config.method}: example {bad[0]} has an empty prompt or completion "
                                f"(or is not a {self.kind}); drop it")
        return examples, {"examples_given": len(items)}

    def examples(self, items: list[Any]) -> list[Any]:
        return items

    def valid(self, example: Any) -> bool:
        raise NotImplementedError

    def identity(self, example: Any) -> list[Any]:
        """The token ids (and rewards) that make an example this one: a resumed run must
        see the same, in the same order."""
        raise NotImplementedError

    def reference(self, forward: Forward, batch: list[Any]) -> list[dict[str, Any]]:
        """Per example, log-probabilities under the policy at the start of training (none here)."""
        return [{} for _ in batch]

    def loss(self, forward: Forward, batch: list[Any], refs: list[dict[str, Any]]) -> Loss:
        """The micro-batch's mean loss and its log record (with the token count)."""
        raise NotImplementedError


class Preference(Method):
    """DPO (+ NLL on the chosen side) on preference pairs: step pairs (Step-DPO) and
    whole-output pairs alike."""

    config: DPOConfig

    def examples(self, items: list[Any]) -> list[PreferenceExample]:
        return [x if isinstance(x, PreferenceExample) else PreferenceExample.from_record(x) for x in items]

    def valid(self, x: PreferenceExample) -> bool:
        return bool(x.prompt_ids and x.chosen_ids and x.rejected_ids)

    def identity(self, x: PreferenceExample) -> list[Any]:
        return [x.prompt_ids, x.chosen_ids, x.rejected_ids]

    def reference(self, forward: Forward, batch: list[PreferenceExample]) -> list[dict[str, Any]]:
        """Summed log-probs of chosen and rejected: the reference of the DPO loss."""
        logits, labels, mask = forward(*_dpo_rows(batch))
        logps = sequence_logps(logits, labels, mask).float().view(-1, 2).cpu()  # (B, 2)
        return [{"chosen": row[0], "rejected": row[1]} for row in logps]

    def loss(self, forward: Forward, batch: list[PreferenceExample], refs: list[dict[str, Any]]) -> Loss:
        cfg = self.config
        logits, labels, mask = forward(*_dpo_rows(batch))
        logps = sequence_logps(logits, labels, mask).view(-1, 2)  # (B, 2): chosen, rejected
        ref = torch.tensor([[r["chosen"], r["rejected"]] for r in refs], device=logps.device)  # (B, 2)
        lengths = mask.view(-1, 2, mask.shape[1])[:, 0].sum(-1)  # (B,) chosen tokens
        losses, chosen_r, rejected_r, nll = dpo_nll_loss(
            logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1], lengths, cfg.beta,
            alpha=cfg.nll_weight, label_smoothing=cfg.label_smoothing,
        )
        margin = chosen_r - rejected_r  # (B,)
        return losses.mean(), {
            "nll": nll.mean().item(), "reward_margin": margin.mean().item(),
            "reward_accuracy": (margin > 0).float().mean().item(),
            "chosen_reward": chosen_r.mean().item(), "rejected_reward": rejected_r.mean().item(),
            "tokens": int(mask.sum()),
        }

    @staticmethod
    def evaluate(forward: Forward, batch: list[Any]) -> dict[str, Any]:
        """Per-pair margins logp(chosen) - logp(rejected), and the chosen side's NLL sum."""
        pairs = [x if isinstance(x, PreferenceExample) else PreferenceExample.from_record(x) for x in batch]
        logits, labels, mask = forward(*_dpo_rows(pairs))
        logps = sequence_logps(logits, labels, mask).float().view(-1, 2)  # (B, 2)
        return {"margins": (logps[:, 0] - logps[:, 1]).tolist(), "chosen_nll": -logps[:, 0].sum().item(),
                "chosen_tokens": int(mask.view(-1, 2, mask.shape[1])[:, 0].sum())}

    @staticmethod
    def summary(sums: dict[str, Any]) -> dict[str, float]:
        margins = sums["margins"]
        return {"pairs": len(margins), "margin": sum(margins) / len(margins),
                "accuracy": sum(m > 0 for m in margins) / len(margins),
                "chosen_nll": sums["chosen_nll"] / max(sums["chosen_tokens"], 1)}


class SFT(Method):
    """Supervised fine-tuning on completions (verified successes: RFT / STaR; or gold solutions)."""

    def examples(self, items: list[Any]) -> list[SFTExample]:
        return [x if isinstance(x, SFTExample) else SFTExample(list(_get(x, "prompt_ids")), list(_get(x, "completion_ids")))
                for x in items]

    def valid(self, x: SFTExample) -> bool:
        return bool(x.prompt_ids and x.completion_ids)

    def identity(self, x: SFTExample) -> list[Any]:
        return [x.prompt_ids, x.completion_ids]

    def loss(self, forward: Forward, batch: list[SFTExample], refs: list[dict[str, Any]]) -> Loss:
        logits, labels, mask = forward([x.prompt_ids for x in batch], [x.completion_ids for x in batch])
        loss = sft_loss(logits, labels, mask)
        return loss, {"nll": loss.item(), "tokens": int(mask.sum())}

    @staticmethod
    def evaluate(forward: Forward, batch: list[Any]) -> dict[str, Any]:
        """The completions' summed NLL and token count."""
        logits, labels, mask = forward([list(_get(x, "prompt_ids")) for x in batch],
                                       [list(_get(x, "completion_ids")) for x in batch])
        return {"nll": -sequence_logps(logits, labels, mask).sum().item(), "tokens": int(mask.sum())}

    @staticmethod
    def summary(sums: dict[str, Any]) -> dict[str, float]:
        return {"nll": sums["nll"] / sums["tokens"], "tokens": sums["tokens"]}


class PolicyGradient(Method):
    """GRPO or RLOO on groups of sampled completions with verified rewards. An example is
    (RLGroup, advantages): (G,) per completion, or G per-token rows with step progress.
    A group with ``weights`` trains as its repeated group would: each completion's row is
    computed once and counted as many times as it was sampled."""

    config: PGConfig
    kind = "RLGroup"

    def valid(self, g: Any) -> bool:
        return isinstance(g, RLGroup) and bool(g.prompt_ids) and all(g.completions)

    def prepare(self, items: list[Any]) -> tuple[list[Any], dict[str, Any]]:
        """Groups with advantages; groups whose rewards are all equal train nothing (unless
        their steps made progress) and are counted in the stats, loudly."""
        groups, stats = super().prepare(items)
        cfg = self.config
        advantage_fn = grpo_advantages if cfg.method == "grpo" else rloo_advantages
        kept, equal, progress_kept = [], [], 0
        for i, g in enumerate(groups):
            if len(g.completions) != len(g.rewards) or len(g.completions) < 2:
                raise AgentkitError(f"group {i}: {len(g.completions)} completions and {len(g.rewards)} rewards; "
                                    "pass one reward per completion and at least 2 completions")
            weights = _checked_weights(g, i)
            samples = len(g.completions) if weights is None else sum(g.weights)
            if cfg.group_size and samples != cfg.group_size:
                raise AgentkitError(f"group {i} has {samples:g} samples, group_size is {cfg.group_size}")
            advantages, degenerate = advantage_fn(torch.tensor(g.rewards, dtype=torch.float32), weights=weights)  # (G,)
            rows = _with_step_progress(g, advantages, cfg.step_weight) if cfg.step_weight else None
            if bool(degenerate):
                equal.append(g.id if g.id is not None else i)
            if rows is not None and any(bool(r.any()) for r in rows):
                kept.append((g, rows))
                progress_kept += bool(degenerate)
            elif not bool(degenerate):
                kept.append((g, advantages))
        stats.update(groups=len(groups), equal_reward_groups=len(equal), equal_reward_group_ids=equal,
                     equal_reward_groups_trained_on_steps=progress_kept)
        if len(equal) > progress_kept:
            log.warning("%d of %d groups have all-equal rewards (%s) and no step progress; they train nothing",
                        len(equal) - progress_kept, len(groups), cfg.method)
        return kept, stats

    def identity(self, example: tuple[RLGroup, Any]) -> list[Any]:
        g = example[0]
        return [g.prompt_ids, g.completions, g.rewards, *([g.step_values] if g.step_values is not None else []),
                *([{"weights": g.weights}] if g.weights is not None else [])]

    def reference(self, forward: Forward, batch: list[tuple[RLGroup, Any]]) -> list[dict[str, Any]]:
        """Per-token log-probs of each completion: the KL reference and, without recorded
        sampling logprobs, the old policy of the ratio."""
        prompts, completions, _, _ = _pg_rows(batch)
        logits, labels, _ = forward(prompts, completions)
        per_token = token_logps(logits, labels).cpu()  # (N, Tc)
        out, k = [], 0
        for g, _ in batch:
            out.append({"ref": [per_token[k + j, : len(c)] for j, c in enumerate(g.completions)]})
            k += len(g.completions)
        return out

    def loss(self, forward: Forward, batch: list[tuple[RLGroup, Any]], refs: list[dict[str, Any]]) -> Loss:
        cfg = self.config
        prompts, completions, advantages, weights = _pg_rows(batch)
        logits, labels, mask = forward(prompts, completions)
        logps = token_logps(logits, labels)  # (N, Tc)
        tc = logps.shape[1]
        ref_rows = [t for r in refs for t in r["ref"]] if refs and "ref" in refs[0] else None
        old_rows = []
        for (g, _), r in zip(batch, refs):
            if g.logprobs is not None:
                old_rows.extend(torch.tensor(lp, dtype=torch.float32) for lp in g.logprobs)
            else:
                old_rows.extend(r["ref"])
        old = _pad_rows(old_rows, tc).to(logps.device)  # (N, Tc)
        if isinstance(advantages, list):
            advantages = _pad_rows(advantages, tc)  # (N, Tc) per token
        ref = _pad_rows(ref_rows, tc).to(logps.device) if ref_rows is not None else None
        loss, stats = policy_gradient_loss(
            logps, old, advantages.to(logps.device), mask, clip_eps=cfg.clip_eps, ref_logps=ref, kl_coef=cfg.kl_coef,
            weights=weights.to(logps.device) if weights is not None else None,
        )
        rewards = [x for g, _ in batch for x in g.rewards]
        if weights is None:
            reward, abs_advantage = sum(rewards) / len(rewards), advantages.abs().mean().item()
        else:  # the means over the repeated rows (per-token rows keep their padded width)
            row = weights.view(-1, *[1] * (advantages.dim() - 1))  # (N,) or (N, 1)
            reward = sum(w * x for w, x in zip(weights.tolist(), rewards)) / weights.sum().item()
            abs_advantage = ((row * advantages.abs()).sum() / (weights.sum() * advantages[0].numel())).item()
        return loss, {**{k: v.item() for k, v in stats.items()}, "reward": reward,
                      "abs_advantage": abs_advantage, "tokens": int(mask.sum())}


_METHODS: dict[str, type[Method]] = {"dpo": Preference, "sft": SFT, "grpo": PolicyGradient, "rloo": PolicyGradient}


def method_for(config: TrainConfig) -> Method:
    """The method ``config.method`` names (the config validated the name)."""
    return _METHODS[config.method](config)


# --- rows ---------------------------------------------------------------------------------


def _dpo_rows(batch: Sequence[PreferenceExample]) -> tuple[list[list[int]], list[list[int]]]:
    """Rows chosen_1, rejected_1, chosen_2, ...: each pair's two rows share its prompt."""
    prompts = [x.prompt_ids for x in batch for _ in range(2)]
    completions = [c for x in batch for c in (x.chosen_ids, x.rejected_ids)]
    return prompts, completions


def _with_step_progress(group: RLGroup, outcome: torch.Tensor, weight: float) -> list[torch.Tensor] | None:
    """Per-token advantages of each completion: the group's outcome advantage plus
    ``weight`` times its step's progress (PAV, Setlur et al. 2024):

        A[i, t] = A_outcome[i] + w · (V_i[j + 1] - V_i[j])   for t in step j of completion i
        A[i, t] = A_outcome[i]                                 outside every step

    None when the group carries no step values."""
    if group.step_values is None or group.step_spans is None:
        return None
    rows = []
    for i, completion in enumerate(group.completions):
        values = torch.tensor(group.step_values[i], dtype=torch.float32)  # (S + 1,)
        spans = group.step_spans[i][: max(0, len(values) - 1)]
        index = torch.tensor(token_step_index(spans, len(completion)), dtype=torch.long)  # (T,)
        progress = step_advantages(values[:-1], values[1:], index) if spans else torch.zeros(len(completion))  # (T,)
        rows.append(outcome[i] + weight * progress)
    return rows


def _checked_weights(group: RLGroup, index: int) -> torch.Tensor | None:
    """The group's weights as a (G,) tensor, checked; None when it has none."""
    if group.weights is None:
        return None
    name = f"group {index}" + (f" ({group.id})" if group.id is not None else "")
    if len(group.weights) != len(group.completions):
        raise AgentkitError(f"{name}: {len(group.completions)} completions and {len(group.weights)} weights; "
                            "pass one weight per completion (or weights=None)")
    if not all(w > 0 for w in group.weights) or sum(group.weights) <= 1:
        raise AgentkitError(f"{name}: weights {group.weights}; each is the number of samples a completion "
                            "stands for: positive, and more than 1 in all")
    return torch.tensor(group.weights, dtype=torch.float32)


def _pg_rows(batch: Sequence[tuple[RLGroup, Any]]) -> tuple[list[list[int]], list[list[int]], Any, torch.Tensor | None]:
    """Prompts and completions row by row, their advantages: (N,) per sequence, or a list of
    N per-token rows when any group carries step progress; and the rows' weights (N,), None
    when no group has weights."""
    prompts = [g.prompt_ids for g, _ in batch for _ in g.completions]
    completions = [c for g, _ in batch for c in g.completions]
    weights = None
    if any(g.weights is not None for g, _ in batch):
        weights = torch.tensor([w for g, _ in batch for w in (g.weights or [1.0] * len(g.completions))],
                               dtype=torch.float32)  # (N,)
    if all(isinstance(a, torch.Tensor) for _, a in batch):
        return prompts, completions, torch.cat([a.reshape(-1) for _, a in batch]), weights  # (N,)
    rows = []
    for g, a in batch:
        if isinstance(a, torch.Tensor):  # outcome only: the same advantage on every token
            rows.extend(a[i].expand(len(c)) for i, c in enumerate(g.completions))
        else:
            rows.extend(a)
    return prompts, completions, rows, weights


def _pad_rows(rows: list[torch.Tensor], width: int) -> torch.Tensor:
    out = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r[:width]
    return out
