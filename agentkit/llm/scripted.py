"""A deterministic backend for unit tests: fixed replies, a byte-level tokenizer and
reproducible log-probabilities. Never a default anywhere."""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Callable, Sequence

from agentkit.errors import BackendError
from agentkit.llm.base import Completion, GenerationRequest

__all__ = ["ScriptedLLM"]

_BOS = 2
_OFFSET = 3  # token id = byte value + _OFFSET; 0..2 are pad/eos/bos


def _token_logprob(context: Sequence[int], token: int) -> float:
    """A fixed pseudo-logprob in [-3, -0.01) that depends on the context and the token,
    so that ``score`` reproduces ``generate`` exactly and different prefixes differ."""
    digest = hashlib.blake2b(repr((tuple(context[-8:]), token)).encode(), digest_size=4).digest()
    return -0.01 - 2.99 * int.from_bytes(digest, "little") / 2**32


class ScriptedLLM:
    """Replies come from ``replies``: a list consumed in order (the last one repeats), or a
    function ``(prompt_text, request) -> reply``. Replies are cut at the request's stop
    strings and ``max_tokens`` like a real model's."""

    model_name = "scripted"

    def __init__(self, replies: Sequence[str] | Callable[[str, GenerationRequest], str]):
        if not callable(replies) and not replies:
            raise ValueError("ScriptedLLM needs at least one reply")
        self._replies = replies
        self._calls = 0
        self._lock = threading.Lock()
        self._adapters: dict[str, str] = {}
        self.requests: list[GenerationRequest] = []

    def tokenize(self, text: str) -> list[int]:
        return [_BOS] + self._encode(text)

    @staticmethod
    def _encode(text: str) -> list[int]:
        return [b + _OFFSET for b in text.encode("utf-8")]

    @staticmethod
    def decode(token_ids: Sequence[int]) -> str:
        """Text of the byte tokens in ``token_ids``; any other id (pad/eos/bos, or one past
        the 256 bytes) has no text, as a tokenizer skips special tokens."""
        return bytes(t - _OFFSET for t in token_ids if _OFFSET <= t < _OFFSET + 256).decode("utf-8", "replace")

    def _next_reply(self, prompt_text: str, request: GenerationRequest) -> str:
        with self._lock:
            self.requests.append(request)
            if callable(self._replies):
                return self._replies(prompt_text, request)
            reply = self._replies[min(self._calls, len(self._replies) - 1)]
            self._calls += 1
            return reply

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        results = []
        for request in requests:
            start = time.perf_counter()
            if isinstance(request.prompt, str):
                prompt_ids, prompt_text = self.tokenize(request.prompt), request.prompt
            else:
                prompt_ids, prompt_text = list(request.prompt), self.decode(request.prompt)
            if request.adapter is not None and request.adapter not in self._adapters:
                raise BackendError(f"adapter '{request.adapter}' is not loaded; load it first")
            outs = []
            for _ in range(request.n):
                reply = self._next_reply(prompt_text, request)
                ids = self._encode(reply)[: request.max_tokens]
                outside = sorted(set(ids) - set(request.allowed_token_ids or ids))
                if outside:  # a real model could not have written it
                    raise BackendError(f"scripted reply {reply!r} writes {self.decode(outside[:1])!r}, which is not "
                                       "among the request's allowed_token_ids")
                end = next((i for i, t in enumerate(ids) if t in request.stop_token_ids), None)
                if end is not None:  # the reply runs past a stop token: it ends there, kept without text
                    ids = ids[: end + 1]
                text = self.decode(ids[:end] if end is not None else ids)
                finish = "length" if end is None and len(ids) < len(self._encode(reply)) else "stop"
                for stop in request.stop:
                    cut = text.find(stop)
                    if cut >= 0:
                        # keep the tokens up to the end of the stop string, as a real model would
                        ids = self._encode(text[: cut + len(stop)])
                        text, finish = text[:cut], "stop"
                outs.append(
                    Completion(
                        text=text,
                        token_ids=ids,
                        logprobs=self.score(prompt_ids, ids),
                        finish_reason=finish,
                        prompt_ids=list(prompt_ids),
                        adapter=request.adapter,
                        latency_s=time.perf_counter() - start,
                    )
                )
            results.append(outs)
        return results

    def score(self, prompt_ids: Sequence[int], completion_ids: Sequence[int], adapter: str | None = None) -> list[float]:
        context = list(prompt_ids)
        out = []
        for token in completion_ids:
            out.append(_token_logprob(context, token))
            context.append(token)
        return out

    def load_adapter(self, name: str, path: str) -> None:
        self._adapters[name] = path

    def unload_adapter(self, name: str) -> None:
        if name not in self._adapters:
            raise BackendError(f"adapter '{name}' is not loaded (loaded: {', '.join(self._adapters) or 'none'})")
        del self._adapters[name]

    def list_adapters(self) -> list[str]:
        return list(self._adapters)

    def close(self) -> None:
        pass
