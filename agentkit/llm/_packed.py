"""Linear layers whose low-precision weights are pre-packed for oneDNN on the CPU.

A bf16 ``F.linear`` on the CPU hands oneDNN a plain row-major weight, which it re-lays
out into its blocked format on every call. For decoding, where each call multiplies the
weight by only a few rows, that re-layout is most of the work: on a 2-core Xeon (AVX512-
BF16) the 262k x 640 LM head takes 57 ms for 16 rows from a plain weight and 43 ms from
a packed one, 29 vs 17 ms for one row (read at ~20 GB/s, the memory's rate); the MLP
projections save 20-50%. The packed kernel is the same oneDNN kernel, so outputs are
bit-identical; at prefill sizes the two take the same time.

Where this CPU cannot run the packed kernel (no AVX-512 and no AVX-NE-CONVERT, or
``AGENTKIT_PACK_WEIGHTS=0``) the layers stay plain ``nn.Linear``.

Packing is done once per weight, at first use, and redone when the weight changes (a new
tensor, or an in-place update). Only calls without autograd take the packed path: a
training step through the same module runs the plain ``F.linear`` and its gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from agentkit.llm.device import packed_linear_unsupported

__all__ = ["pack_linear_layers", "can_pack"]


def can_pack(dtype: torch.dtype, device: str) -> bool:
    """True where oneDNN's packed linear kernel runs ``dtype`` on ``device``: tried once per
    process on a tiny weight (``device.packed_linear_unsupported`` says why not)."""
    return device == "cpu" and packed_linear_unsupported(dtype) is None


class PackedLinear(torch.nn.Linear):
    """An ``nn.Linear`` that, outside autograd, multiplies by a oneDNN-packed copy of its
    weight. Made from an existing layer by ``pack_linear_layers`` (its class is swapped,
    so parameters, tied weights and adapters wrapping it are untouched)."""

    _packed: torch.Tensor | None = None
    _packed_key: tuple[int, int, torch.dtype] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.dtype != self.weight.dtype:
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self._packed_weight(), self.bias, "none", [], "")

    def _packed_weight(self) -> torch.Tensor:
        weight = self.weight
        key = (weight.data_ptr(), weight._version, weight.dtype)
        if self._packed_key != key:
            self._packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 16)
            self._packed_key = key
        return self._packed


def pack_linear_layers(model: torch.nn.Module) -> int:
    """Turn every plain ``nn.Linear`` of ``model`` into a ``PackedLinear``, in place.
    Returns how many layers were turned. The caller checks ``can_pack`` first."""
    turned = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = PackedLinear
            turned += 1
    return turned
