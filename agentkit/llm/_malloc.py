"""glibc allocator settings for big-tensor work on a CPU.

A decode step over a 262k-token vocabulary makes several (batch, vocab) float tensors of
tens of megabytes, and every step grows the KV cache by a new copy. glibc serves blocks that
large with a fresh mmap and returns them with munmap, so each one is page-faulted in again
on every step: on this machine a (64, 262144) division took 95 ms that way and 18 ms from
reused heap memory. Raising the mmap and trim thresholds lets freed blocks be reused, and
one arena keeps the batching thread's blocks in the main heap (a thread arena cannot hold a
block bigger than 64 MB and would fall back to mmap). ``agentkit.learn.improve`` hands memory
back with ``malloc_trim`` between rounds.

It is opt-in (AGENTKIT_MALLOC_TUNE=1): heap-served big blocks fragment when their sizes
vary from step to step (batches shrink as rows finish, every round loads and drops a
trainer), and in a long `improve` run with the tuning on the process grew to 11.5 GB where
it stays near 2-3 GB without it. Faster steps are not worth an out-of-memory kill.
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["tune_allocator", "release_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_done = False


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt  # noqa: B018 - glibc only
        return libc
    except (OSError, AttributeError):
        return None


def tune_allocator() -> bool:
    """Apply the settings once per process when AGENTKIT_MALLOC_TUNE=1; False when not on
    glibc or not asked for."""
    global _done
    if _done:
        return True
    if os.environ.get("AGENTKIT_MALLOC_TUNE", "0") != "1" or (libc := _libc()) is None:
        return False
    libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)
    libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    libc.mallopt(_M_ARENA_MAX, 1)
    _done = True
    return True


def release_memory() -> None:
    """Collect reference cycles now, then return the heap's free memory to the OS."""
    import gc

    gc.collect()
    if (libc := _libc()) is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
