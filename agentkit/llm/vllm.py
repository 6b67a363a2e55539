"""In-process vLLM (``vllm.LLM``) for GPU machines.

vLLM is imported inside ``VLLMBackend.__init__`` so that ``import agentkit`` stays light.
Sampled-token logprobs come from ``SamplingParams(logprobs=0)`` (the sampled token only,
raw logprobs by default) and ``score`` reads ``prompt_logprobs`` of prompt + completion.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Sequence

from agentkit.errors import BackendError
from agentkit.llm.base import Completion, GenerationRequest

__all__ = ["VLLMBackend"]


class VLLMBackend:
    """``model`` is a hub id or a local directory; ``engine_kwargs`` go to ``vllm.LLM``
    (``enable_lora=True`` unless given; pass ``max_lora_rank=`` for adapters above 16).

    ``vllm.LLM`` is not thread-safe, so concurrent ``generate`` calls run one at a time;
    batch by passing many requests to one call (the runtime's batcher does)."""

    def __init__(self, model: str, **engine_kwargs: Any):
        try:
            import vllm
            from vllm.lora.request import LoRARequest
        except ImportError as exc:
            raise BackendError("the vllm backend needs vLLM and a GPU: pip install 'agentkit[vllm]'") from exc
        self._vllm = vllm
        self._lora_request_cls = LoRARequest
        engine_kwargs.setdefault("enable_lora", True)
        self._llm = vllm.LLM(model=model, **engine_kwargs)
        self.model_name = model
        self._lock = threading.Lock()
        self._adapters: dict[str, Any] = {}  # name -> LoRARequest
        self._next_lora_id = 1  # vLLM caches adapters by int id: a reload gets a fresh one

    def _lora(self, adapter: str | None) -> Any:
        if adapter is None:
            return None
        if adapter not in self._adapters:
            raise BackendError(f"adapter {adapter!r} is not loaded (loaded: {', '.join(self._adapters) or 'none'})")
        return self._adapters[adapter]

    @staticmethod
    def _prompt(prompt: str | Sequence[int]) -> Any:
        return prompt if isinstance(prompt, str) else {"prompt_token_ids": [int(t) for t in prompt]}

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        requests = list(requests)
        if not requests:
            return []
        params = [
            self._vllm.SamplingParams(
                n=r.n,
                temperature=r.temperature,
                top_p=r.top_p,
                top_k=r.top_k if r.top_k > 0 else -1,
                max_tokens=r.max_tokens,
                stop=list(r.stop) or None,
                seed=r.seed,
                logprobs=0,  # the sampled token's logprob only
            )
            for r in requests
        ]
        loras = [self._lora(r.adapter) for r in requests]
        start = time.perf_counter()
        with self._lock:
            outputs = self._llm.generate([self._prompt(r.prompt) for r in requests], params, lora_request=loras, use_tqdm=False)
        latency = time.perf_counter() - start
        results = []
        for request, output in zip(requests, outputs):
            completions = []
            for sample in sorted(output.outputs, key=lambda o: o.index):
                token_ids = list(sample.token_ids)
                # sample.logprobs: one {token_id: Logprob} dict per generated token
                logprobs = [step[t].logprob for step, t in zip(sample.logprobs or [], token_ids)]
                completions.append(
                    Completion(
                        text=sample.text,
                        token_ids=token_ids,
                        logprobs=logprobs,
                        finish_reason=sample.finish_reason or "length",
                        prompt_ids=list(output.prompt_token_ids),
                        adapter=request.adapter,
                        latency_s=latency,
                    )
                )
            results.append(completions)
        return results

    def score(self, prompt_ids: Sequence[int], completion_ids: Sequence[int], adapter: str | None = None) -> list[float]:
        ids = [int(t) for t in prompt_ids] + [int(t) for t in completion_ids]
        start = len(prompt_ids)
        if not completion_ids:
            return []
        if start == 0:
            raise BackendError("score() needs at least one prompt token (the BOS from tokenize())")
        params = self._vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        with self._lock:
            (output,) = self._llm.generate([{"prompt_token_ids": ids}], params, lora_request=self._lora(adapter), use_tqdm=False)
        # prompt_logprobs[i]: {token_id: Logprob} for ids[i] given ids[:i]; [0] is None
        return [output.prompt_logprobs[i][ids[i]].logprob for i in range(start, len(ids))]

    def tokenize(self, text: str) -> list[int]:
        return list(self._llm.get_tokenizer().encode(text))

    def decode(self, token_ids: Sequence[int]) -> str:
        return self._llm.get_tokenizer().decode(list(token_ids))

    def load_adapter(self, name: str, path: str) -> None:
        path = os.path.expanduser(str(path))
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "adapter_config.json")):
            raise BackendError(f"no LoRA adapter in {path}: expected a PEFT save_pretrained() directory with adapter_config.json")
        request = self._lora_request_cls(lora_name=name, lora_int_id=self._next_lora_id, lora_path=path)
        self._next_lora_id += 1
        with self._lock:
            try:
                self._llm.llm_engine.add_lora(request)  # load now, so a bad path fails here
            except Exception as exc:
                raise BackendError(f"vLLM cannot load LoRA adapter {name!r} from {path}: {' '.join(str(exc).split())}") from exc
            old = self._adapters.pop(name, None)
            self._adapters[name] = request
            if old is not None:
                self._llm.llm_engine.remove_lora(old.lora_int_id)

    def unload_adapter(self, name: str) -> None:
        request = self._adapters.pop(name, None)
        if request is not None:
            with self._lock:
                self._llm.llm_engine.remove_lora(request.lora_int_id)

    def list_adapters(self) -> list[str]:
        return list(self._adapters)

    def close(self) -> None:
        self._llm = None  # vLLM frees the GPU when the engine is collected
