"""In-process vLLM (``vllm.LLM``) for GPU machines.

vLLM is imported inside ``VLLMBackend.__init__`` so that ``import agentkit`` stays light.
Sampled-token logprobs come from ``SamplingParams(logprobs=0)`` (the sampled token only;
vLLM's V1 engine reports raw logprobs by default) and ``score`` reads ``prompt_logprobs``
of prompt + completion.

``vllm.LLM`` runs one call at a time. Callers on other threads (the runner's tasks,
``agentkit serve``'s HTTP requests) that arrive while a call runs wait for it and then go
into the engine together, as one batch: whichever of them takes the engine next submits
every waiting call (flat combining), so concurrency still turns into batch size.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence

from agentkit.errors import BackendError
from agentkit.llm.base import Completion, GenerationRequest

__all__ = ["VLLMBackend"]

_GREEDY_BELOW = 1e-5
"""vLLM's ``_SAMPLING_EPS``: a lower temperature samples greedily, and vLLM then refuses n > 1."""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


@dataclass
class _Call:
    """One ``generate`` call waiting for the engine; ``outputs`` (one vLLM RequestOutput per
    prompt) or ``error`` is set by whichever caller submits it."""

    prompts: list[Any]
    params: list[Any]
    loras: list[Any]
    outputs: list[Any] | None = None
    error: BaseException | None = None


class VLLMBackend:
    """``model`` is a local directory or a hub id (``load_backend("vllm", ...)`` resolves
    names such as the embedded gemma-3-270m first); ``engine_kwargs`` go to ``vllm.LLM``
    (``enable_lora=True`` unless given; pass ``max_lora_rank=`` for adapters above 16)."""

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
        self._lock = threading.Lock()  # held while the engine runs a call
        self._waiting: list[_Call] = []
        self._waiting_lock = threading.Lock()
        self._adapters: dict[str, Any] = {}  # name -> LoRARequest
        self._next_lora_id = 1  # vLLM caches adapters by int id: a reload gets a fresh one

    @property
    def _engine(self) -> Any:
        if self._llm is None:
            raise BackendError("this VLLMBackend is closed")
        return self._llm

    def _lora(self, adapter: str | None) -> Any:
        if adapter is None:
            return None
        if adapter not in self._adapters:
            raise BackendError(f"adapter {adapter!r} is not loaded (loaded: {', '.join(self._adapters) or 'none'})")
        return self._adapters[adapter]

    @staticmethod
    def _prompt(prompt: str | Sequence[int]) -> Any:
        return prompt if isinstance(prompt, str) else {"prompt_token_ids": [int(t) for t in prompt]}

    def _params(self, r: GenerationRequest) -> Any:
        greedy = r.temperature < _GREEDY_BELOW
        return self._vllm.SamplingParams(
            n=1 if greedy else r.n,  # greedy samples are all the same one: _completions repeats it
            temperature=r.temperature,
            top_p=r.top_p,
            top_k=r.top_k if r.top_k > 0 else -1,
            max_tokens=r.max_tokens,
            stop=list(r.stop) or None,
            stop_token_ids=list(r.stop_token_ids) or None,
            seed=r.seed,
            logprobs=0,  # the sampled token's logprob only
        )

    # ---- generate ---------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        requests = list(requests)
        if not requests:
            return []
        for r in requests:
            self._lora(r.adapter)  # an unknown adapter fails the call, whatever its max_tokens
            if r.allowed_token_ids is not None:
                raise BackendError("allowed_token_ids: vLLM decodes over them but reports whole-vocabulary logprobs, "
                                   "not those of the restricted policy; use the transformers backend")
        start = time.perf_counter()
        # vLLM refuses max_tokens=0; such a request only needs its prompt ids
        live = [r for r in requests if r.max_tokens > 0]
        outputs = iter(self._run(live) if live else [])
        latency = time.perf_counter() - start
        results = []
        for request in requests:
            if request.max_tokens > 0:
                results.append(self._completions(request, next(outputs), latency))
                continue
            prompt_ids = self.tokenize(request.prompt) if isinstance(request.prompt, str) else [int(t) for t in request.prompt]
            results.append([Completion("", [], [], "length", prompt_ids=list(prompt_ids), adapter=request.adapter)
                            for _ in range(request.n)])
        return results

    def _run(self, requests: list[GenerationRequest]) -> list[Any]:
        """One RequestOutput per request, run together with the calls of other threads
        that are waiting for the engine."""
        engine = self._engine
        # built here, on the caller's thread, so a bad request fails its own caller only
        call = _Call([self._prompt(r.prompt) for r in requests], [self._params(r) for r in requests],
                     [self._lora(r.adapter) for r in requests])
        with self._waiting_lock:
            self._waiting.append(call)
        with self._lock:
            if call.outputs is None and call.error is None:  # nobody took it along: run everything waiting
                with self._waiting_lock:
                    calls, self._waiting = self._waiting, []
                self._submit(engine, calls)
        if call.error is not None:
            raise call.error
        if call.outputs is None:  # its submitter was interrupted
            raise BackendError("the vLLM call was interrupted before it returned")
        return call.outputs

    def _submit(self, engine: Any, calls: list[_Call]) -> None:
        """Run ``calls`` as one ``LLM.generate`` and hand each its outputs (or its error)."""
        prompts = [p for c in calls for p in c.prompts]
        try:
            outputs = engine.generate(
                prompts,
                [s for c in calls for s in c.params],
                lora_request=[lora for c in calls for lora in c.loras],
                use_tqdm=False,
            )
            if len(outputs) != len(prompts):
                raise BackendError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts")
        except Exception as exc:
            if len(calls) == 1:
                calls[0].error = exc
                return
            for c in calls:  # one at a time, so a prompt vLLM refuses fails only its own call
                self._submit(engine, [c])
            return
        start = 0
        for c in calls:
            c.outputs = list(outputs[start : start + len(c.prompts)])
            start += len(c.prompts)

    @staticmethod
    def _completions(request: GenerationRequest, output: Any, latency: float) -> list[Completion]:
        samples = sorted(output.outputs, key=lambda o: o.index)
        if len(samples) < request.n:  # greedy ran once (see _params)
            samples = [samples[0]] * request.n
        completions = []
        for sample in samples:
            token_ids = list(sample.token_ids)
            # sample.logprobs: one {token_id: Logprob} per generated token, the sampled one included
            if sample.logprobs is None or len(sample.logprobs) != len(token_ids):
                raise BackendError(
                    f"vLLM returned {len(sample.logprobs or [])} logprobs for {len(token_ids)} tokens; "
                    "the vllm backend needs SamplingParams(logprobs=0) honoured"
                )
            completions.append(
                Completion(
                    text=sample.text,
                    token_ids=token_ids,
                    logprobs=[step[t].logprob for step, t in zip(sample.logprobs, token_ids)],
                    finish_reason=sample.finish_reason or "length",
                    prompt_ids=list(output.prompt_token_ids),
                    adapter=request.adapter,
                    latency_s=latency,
                )
            )
        return completions

    # ---- the rest of the protocol ---------------------------------------------------

    def score(self, prompt_ids: Sequence[int], completion_ids: Sequence[int], adapter: str | None = None) -> list[float]:
        ids = [int(t) for t in prompt_ids] + [int(t) for t in completion_ids]
        start = len(prompt_ids)
        if not completion_ids:
            return []
        if start == 0:
            raise BackendError("score() needs at least one prompt token (the BOS from tokenize())")
        engine, lora = self._engine, self._lora(adapter)
        params = self._vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        with self._lock:
            (output,) = engine.generate([{"prompt_token_ids": ids}], params, lora_request=lora, use_tqdm=False)
        # prompt_logprobs[i]: {token_id: Logprob} for ids[i] given ids[:i]; [0] is None
        return [output.prompt_logprobs[i][ids[i]].logprob for i in range(start, len(ids))]

    @property
    def context_length(self) -> int | None:
        """Most positions (prompt and completion) one request may take: vLLM's max_model_len."""
        return getattr(getattr(self._engine.llm_engine, "model_config", None), "max_model_len", None)

    @property
    def tokenizer(self) -> Any:
        """The Hugging Face tokenizer vLLM uses (the server renders chat templates with it)."""
        return self._engine.get_tokenizer()

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def decode(self, token_ids: Sequence[int]) -> str:
        # as vLLM detokenizes completions (SamplingParams.skip_special_tokens) and as the
        # transformers backend decodes
        return self._engine.get_tokenizer().decode(list(token_ids), skip_special_tokens=True)

    def load_adapter(self, name: str, path: str) -> None:
        path = os.path.expanduser(str(path))
        if os.path.isdir(path):
            if not os.path.isfile(os.path.join(path, "adapter_config.json")):
                raise BackendError(f"no LoRA adapter in {path}: expected a PEFT save_pretrained() directory with adapter_config.json")
            path = os.path.abspath(path)  # vLLM's engine may run in another process
        engine = self._engine
        with self._lock:
            request = self._lora_request_cls(lora_name=name, lora_int_id=self._next_lora_id, lora_path=path)
            self._next_lora_id += 1
            try:
                engine.llm_engine.add_lora(request)  # load now, so a bad path fails here
            except Exception as exc:
                raise BackendError(f"vLLM cannot load LoRA adapter {name!r} from {path}: {_one_line(exc)}") from exc
            old = self._adapters.pop(name, None)
            self._adapters[name] = request
            if old is not None:
                engine.llm_engine.remove_lora(old.lora_int_id)

    def unload_adapter(self, name: str) -> None:
        engine = self._engine
        with self._lock:
            request = self._adapters.pop(name, None)
            if request is None:
                raise BackendError(f"adapter {name!r} is not loaded (loaded: {', '.join(self._adapters) or 'none'})")
            engine.llm_engine.remove_lora(request.lora_int_id)

    def list_adapters(self) -> list[str]:
        return list(self._adapters)

    def close(self) -> None:
        if self._llm is not None:
            with self._lock:
                self._llm = None
            gc.collect()  # vLLM frees the GPU (and stops its engine process) when the engine is collected
