"""A KV cache that appends in place.

transformers' DynamicCache appends each decode step's keys and values with ``torch.cat``,
which copies the whole cache of every layer every step: O(length) per token. With a few
hundred tokens of few-shot prompt per row, at batch 16 on a CPU that copy took about a
quarter of the decode time. Here each layer keeps a buffer with room to spare and writes
new keys into it; ``keys``/``values`` are views of the filled part, so attention reads
exactly what DynamicCache would hand it.

Only for sequences that stay inside the sliding window (the caller checks): the sliding
layers then hold every key, like the full ones, and never trim.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

__all__ = ["appending_cache", "reserve", "is_appending", "join", "cache_argument", "common_prefix"]


def cache_argument(model: Any) -> str:
    """The keyword ``model.forward`` takes its KV cache by: ``cache`` from transformers 5.24
    on (where ``past_key_values`` still works but warns that it goes in 5.40), else
    ``past_key_values``. A PEFT wrapper's forward takes ``**kwargs``: ask the model inside."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    parameters = inspect.signature(type(base).forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"

def common_prefix(seqs: list[list[int]], limit: int) -> int:
    """How many leading tokens (at most ``limit``) all of ``seqs`` share: the part whose
    keys and values can be computed once and shared by every row."""
    n, first = 0, seqs[0]
    while n < limit and all(len(s) > n and s[n] == first[n] for s in seqs):
        n += 1
    return n


_HEADROOM = 64
"""Tokens of spare room when a buffer grows without a reservation (grows by >= 1/4 too)."""


class _Appending:
    """Mixin for DynamicLayer / DynamicSlidingWindowLayer: a (B, H, capacity, D) buffer."""

    reserve: int = 0
    _kbuf: torch.Tensor | None = None
    _vbuf: torch.Tensor | None = None
    _length: int = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, m = self._length, key_states.shape[-2]
        if self._kbuf is None or n + m > self._kbuf.shape[-2]:
            capacity = max(n + m + _HEADROOM, (n + m) * 5 // 4, self.reserve)
            self._kbuf = self._grown(self._kbuf, key_states, n, capacity)
            self._vbuf = self._grown(self._vbuf, value_states, n, capacity)
        self._kbuf[:, :, n : n + m] = key_states
        self._vbuf[:, :, n : n + m] = value_states
        self._set_length(n + m)
        if hasattr(self, "cumulative_length"):
            self.cumulative_length += m
        return self.keys, self.values

    @staticmethod
    def _grown(old: torch.Tensor | None, like: torch.Tensor, n: int, capacity: int) -> torch.Tensor:
        b, h, _, d = like.shape
        new = like.new_empty((b, h, capacity, d))
        if old is not None and n:
            new[:, :, :n] = old[:, :, :n]
        return new

    def _set_length(self, n: int) -> None:
        self._length = n
        self.keys, self.values = self._kbuf[:, :, :n], self._vbuf[:, :, :n]

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self._length:
            n = self._length
            capacity = max(self._kbuf.shape[-2], self.reserve)
            for name in ("_kbuf", "_vbuf"):
                old = getattr(self, name)
                b, h, _, d = old.shape
                new = old.new_empty((b * repeats, h, capacity, d))
                new[:, :, :n] = old[:, :, :n].repeat_interleave(repeats, dim=0)
                setattr(self, name, new)
            self._set_length(n)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self._length:
            self._kbuf, self._vbuf = self._kbuf[indices], self._vbuf[indices]
            self._set_length(self._length)

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove < 0 and self._length:
            self._set_length(max(0, self._length + tokens_to_remove))
            if hasattr(self, "cumulative_length"):
                self.cumulative_length = self._length


class _AppendingLayer(_Appending, DynamicLayer):
    pass


class _AppendingSlidingLayer(_Appending, DynamicSlidingWindowLayer):
    pass


def appending_cache(config: Any, reserve: int = 0) -> DynamicCache:
    """A DynamicCache for ``config`` whose layers append in place, each with room for
    ``reserve`` tokens once it holds any. The caller keeps every sequence shorter than the
    sliding window."""
    cache = DynamicCache(config=config)
    for i, layer in enumerate(cache.layers):
        if type(layer) is DynamicSlidingWindowLayer:
            cache.layers[i] = _AppendingSlidingLayer(sliding_window=layer.sliding_window)
        elif type(layer) is DynamicLayer:
            cache.layers[i] = _AppendingLayer()
        cache.layers[i].reserve = reserve
    return cache


def reserve(cache: DynamicCache, tokens: int) -> DynamicCache:
    """Make every appending layer of ``cache`` room for ``tokens`` at its next growth."""
    for layer in cache.layers:
        if isinstance(layer, _Appending):
            layer.reserve = tokens
    return cache


def is_appending(cache: DynamicCache) -> bool:
    return bool(cache.layers) and all(isinstance(layer, _Appending) for layer in cache.layers)


def join(cache: DynamicCache, other: DynamicCache) -> DynamicCache:
    """Append ``other``'s rows to ``cache``'s, in place: the shorter side is left-padded
    with zero keys and values (which the caller's attention mask hides) to the longer one's
    length. Keys carry their rotary positions already, so where the padding sits does not
    matter. Both must be appending caches of the same model."""
    for layer, new in zip(cache.layers, other.layers):
        la, lb = layer._length, new._length
        n = max(la, lb)
        capacity = max(n + _HEADROOM, layer._kbuf.shape[-2], new._kbuf.shape[-2], layer.reserve, new.reserve)
        for name in ("_kbuf", "_vbuf"):
            a, b = getattr(layer, name), getattr(new, name)
            joined = a.new_zeros((a.shape[0] + b.shape[0], a.shape[1], capacity, a.shape[3]))
            joined[: a.shape[0], :, n - la : n] = a[:, :, :la]
            joined[a.shape[0] :, :, n - lb : n] = b[:, :, :lb]
            setattr(layer, name, joined)
        layer._set_length(n)
        if hasattr(layer, "cumulative_length"):
            layer.cumulative_length = n
    return cache
