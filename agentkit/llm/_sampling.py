"""Next-token selection for a batch of rows with per-row decoding parameters.

Log-probabilities are always of the raw distribution (temperature 1, no truncation), so a
recorded completion can be re-scored exactly. Sampling is exact for every setting:
greedy rows take the argmax; rows with top-k or top-p sample among a sorted top-k
candidate set (widened to the full vocabulary when the nucleus does not fit in it);
rows without truncation sample by inverse CDF over the full vocabulary with a single
uniform draw, which costs a cumsum instead of 262k random numbers per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["RowParams", "select_tokens"]

_CANDIDATES = 1024  # top-p candidate set before falling back to a full sort


@dataclass
class RowParams:
    temperature: float
    top_p: float
    top_k: int
    generator: torch.Generator | None


def select_tokens(logits: torch.Tensor, params: list[RowParams]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row.

    logits: (B, V) in any float dtype. Returns (tokens (B,) long, logprobs (B,) float32),
    where logprobs[i] = log_softmax(logits[i])[tokens[i]].
    """
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1)  # (B,)
    tokens = logits.argmax(dim=-1)  # (B,) greedy default
    sampled = [i for i, p in enumerate(params) if p.temperature > 0]
    truncated = [i for i in sampled if params[i].top_k > 0 or params[i].top_p < 1.0]
    full = [i for i in sampled if i not in set(truncated)]
    if truncated:
        tokens[truncated] = _sample_truncated(logits[truncated], [params[i] for i in truncated])
    if full:
        tokens[full] = _sample_full(logits[full], [params[i] for i in full])
    logprobs = logits.gather(1, tokens[:, None]).squeeze(1) - lse  # (B,)
    return tokens, logprobs


def _uniforms(params: list[RowParams], device: torch.device) -> torch.Tensor:
    u = [torch.rand((), generator=p.generator).item() for p in params]
    return torch.tensor(u, dtype=torch.float32, device=device)


def _sample_full(logits: torch.Tensor, params: list[RowParams]) -> torch.Tensor:
    temps = torch.tensor([p.temperature for p in params], device=logits.device)[:, None]
    probs = torch.softmax(logits / temps, dim=-1)  # (b, V)
    cdf = probs.cumsum(dim=-1)  # (b, V)
    u = _uniforms(params, logits.device)[:, None] * cdf[:, -1:]
    idx = torch.searchsorted(cdf, u).squeeze(1)
    return idx.clamp_(max=logits.shape[-1] - 1)


def _sample_truncated(logits: torch.Tensor, params: list[RowParams]) -> torch.Tensor:
    vocab = logits.shape[-1]
    want = max(p.top_k if p.top_k > 0 else _CANDIDATES for p in params)
    k = min(vocab, want)
    temps = torch.tensor([p.temperature for p in params], device=logits.device)[:, None]
    values, indices = (logits / temps).topk(k, dim=-1)  # (b, k) sorted descending
    out = torch.empty(len(params), dtype=torch.long, device=logits.device)
    for row, p in enumerate(params):
        vals, idx = values[row], indices[row]
        if p.top_k > 0:
            vals, idx = vals[: p.top_k], idx[: p.top_k]
        lse_all = torch.logsumexp(logits[row] / p.temperature, dim=-1)
        probs = (vals - lse_all).exp()  # true probabilities of the candidates
        if p.top_p < 1.0:
            if p.top_k == 0 and probs.sum().item() < p.top_p and k < vocab:
                vals, idx = (logits[row] / p.temperature).sort(descending=True)
                probs = (vals - lse_all).exp()
            cum = probs.cumsum(0)
            # keep the smallest prefix whose mass reaches top_p (the first token always stays)
            keep = int((cum < p.top_p).sum().item()) + 1
            probs, idx = probs[:keep], idx[:keep]
        cdf = probs.cumsum(0)
        u = torch.rand((), generator=p.generator) * cdf[-1]
        pick = int(torch.searchsorted(cdf, u.reshape(1)).clamp(max=len(idx) - 1).item())
        out[row] = idx[pick]
    return out
