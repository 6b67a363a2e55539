"""What this processor can do, found by trying: the dtype to run in, and whether oneDNN's
packed linear kernels exist for it.

The CPUs this project runs on differ in ways their flags do not tell reliably:
- an AMD EPYC with AVX512-BF16, where bf16 matmul is fast and packed bf16 weights work;
- an Intel Xeon with AVX512-BF16 but no AMX, where a large bf16 matmul runs at half the
  fp32 rate, yet decoding (bound by reading the weights) is still faster in bf16;
- an AMD EPYC with AVX2 only, where oneDNN's packed bf16 kernels do not exist at all
  ("bf16 path needs the cpu support avx_ne_convert or avx512bw, avx512vl and avx512dq")
  and bf16 arithmetic is emulated.
So every decision here runs the kernel in question once, on this machine, and caches the
answer for the process. Nothing reads /proc/cpuinfo.

``AGENTKIT_PACK_WEIGHTS=0`` turns the packed kernels off (the path AVX2-only machines take).
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
import warnings
from typing import Iterator

import torch
import torch.nn.functional as F

from agentkit.errors import BackendError

__all__ = ["choose_dtype", "packed_linear_unsupported", "matmul_speedup", "decode_speedup", "DTYPES"]

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32,
          "fp16": torch.float16, "float16": torch.float16}

# bf16 halves the bytes a decode step reads but rounds every activation: take it only when
# it buys a clear speedup, not a tie within the timing noise.
MIN_SPEEDUP = 1.3


def choose_dtype(device: str, requested: str = "auto", *, workload: str = "decode") -> torch.dtype:
    """The dtype to run ``workload`` in: ``requested`` unless it is "auto", else bf16 where
    this machine measures the workload at least 1.3x faster in bf16 than in fp32.

    On a CPU the two workloads are measured differently:
    - "decode" multiplies every weight by a few rows, so it is bound by reading the weights,
      which bf16 halves: ``decode_speedup`` times a decode-shaped product in each dtype, on
      the kernel decoding will use (packed where packing works here).
    - "train" multiplies by hundreds of rows, bound by the matmul rate itself:
      ``matmul_speedup`` times a 1024^3 matmul. On a 2-core Xeon with AVX512-BF16 and no
      AMX, bf16 ran 149 GFLOP/s against fp32's 284, and a DPO step took 5.4 s in bf16
      and 3.0 s in fp32, while its decoding was faster in bf16."""
    requested = (requested or "auto").lower()
    if requested != "auto":
        if requested not in DTYPES:
            raise BackendError(f"dtype '{requested}' is not supported; use auto, bf16, fp16 or fp32")
        return DTYPES[requested]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if workload not in ("decode", "train"):
        raise ValueError(f"workload '{workload}': use 'decode' or 'train'")
    speedup = decode_speedup() if workload == "decode" else matmul_speedup()
    return torch.bfloat16 if speedup >= MIN_SPEEDUP else torch.float32


@functools.cache
def packed_linear_unsupported(dtype: torch.dtype) -> str | None:
    """None where oneDNN's packed linear kernel runs ``dtype`` on this CPU, else the reason
    it cannot (one line, naming the missing capability). Found by packing and multiplying a
    tiny weight once per process, and checking the product against fp32."""
    if os.environ.get("AGENTKIT_PACK_WEIGHTS", "1") == "0":
        return "packed weights turned off by AGENTKIT_PACK_WEIGHTS=0"
    if dtype not in (torch.bfloat16, torch.float16):
        return f"oneDNN packs only bf16 and fp16 linear weights, not {dtype}"
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return "this torch build has no oneDNN packed linear ops"
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(32, 64, generator=generator).to(dtype)
    x = torch.randn(4, 64, generator=generator).to(dtype)
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, x.shape[0])
        out = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
    except RuntimeError as exc:
        return f"oneDNN cannot pack {dtype} weights on this CPU ({str(exc).splitlines()[0]})"
    if not torch.allclose(out.float(), x.float() @ weight.float().T, rtol=0.02, atol=0.05):
        return f"oneDNN's packed {dtype} linear gives wrong products on this CPU"
    return None


def _best_seconds(fn, rounds: int) -> float:
    """The fastest of ``rounds`` timed calls after one warm-up (the first call picks and
    prepares the kernel), so a moment of contention does not decide."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@functools.cache
def matmul_speedup(n: int = 1024, rounds: int = 3) -> float:
    """fp32 time / bf16 time of an n x n x n matmul: above 1 where bf16 computes faster.
    0.0 where bf16 matmul fails outright."""
    def timer(dtype: torch.dtype):
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        return lambda: a @ b

    try:
        return _best_seconds(timer(torch.float32), rounds) / _best_seconds(timer(torch.bfloat16), rounds)
    except RuntimeError:
        return 0.0


@functools.cache
def decode_speedup(rows: int = 8, out_features: int = 16384, in_features: int = 1024, rounds: int = 5) -> float:
    """fp32 time / bf16 time of a decode-shaped product: ``rows`` activations times a
    weight of 16M entries (64 MB in fp32, more than the caches hold), through the kernel
    the backend would use, packed where ``packed_linear_unsupported`` finds it works.
    0.0 where bf16 fails outright."""
    def timer(dtype: torch.dtype):
        # a weight that looks trainable, as the backend keeps its weights (see
        # transformers._keep_fast_cpu_weights): frozen ones take a slower re-packing path
        weight = torch.full((out_features, in_features), 0.01, dtype=dtype, requires_grad=True)
        x = torch.full((rows, in_features), 0.5, dtype=dtype)
        if dtype != torch.float32 and packed_linear_unsupported(dtype) is None:
            packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
            return lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
        return lambda: F.linear(x, weight)

    try:
        with torch.inference_mode():
            return _best_seconds(timer(torch.float32), rounds) / _best_seconds(timer(torch.bfloat16), rounds)
    except RuntimeError:
        return 0.0


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """Around PEFT wrapping or loading an adapter: PEFT reads transformers' deprecated
    `is_gradient_checkpointing` alias, a FutureWarning that is theirs to fix and says
    nothing to a user."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield
