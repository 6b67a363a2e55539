"""The in-process Hugging Face transformers backend, with dynamic batching.

One worker thread owns the model. Callers on any thread submit requests; the worker
gathers everything that arrives within a short window into one left-padded batch,
prefills it, and decodes with a KV cache, dropping rows as they finish. Rows are
grouped by LoRA adapter; adapters load and swap without reloading the base model.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import random
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from agentkit.errors import BackendError
from agentkit.llm._malloc import tune_allocator
from agentkit.llm._packed import can_pack, pack_linear_layers
from agentkit.llm.device import choose_dtype, quiet_peft
from agentkit.llm._sampling import RowParams, exact_logprobs, select_tokens
from agentkit.llm.base import Completion, GenerationRequest, allowed_ids

__all__ = ["TransformersLLM", "choose_dtype"]

log = logging.getLogger(__name__)

_BASE = "__base__"


def _keep_fast_cpu_weights(model: Any) -> None:
    """Mark every weight as requiring grad (decoding runs under inference_mode, so no graph
    is ever recorded).

    PEFT freezes the base weights when it loads an adapter. On the CPU, bf16 linear layers
    with frozen weights take a oneDNN path that re-packs the weight for each new input
    shape: with the 262k x 640 LM head and batches that shrink as rows finish, one
    32-task greedy batch peaked at 6.4 GB instead of 1.4 GB and ran several times slower
    (measured on this machine). Trainable-looking weights keep the plain GEMM path."""
    for param in model.parameters():
        param.requires_grad_(True)


def _left_pad(mask: torch.Tensor, width: int) -> torch.Tensor:
    """A (B, T) attention mask widened to ``width`` columns with masked-out columns in front."""
    if mask.shape[1] == width:
        return mask
    return torch.cat([mask.new_zeros((mask.shape[0], width - mask.shape[1])), mask], dim=1)


@dataclass
class _Row:
    prompt_ids: list[int]
    request: GenerationRequest
    params: RowParams
    out_ids: list[int] = field(default_factory=list)
    out_logprobs: list[float] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    started: float = 0.0
    latency_s: float = 0.0
    on_token: Any = None  # (token_id, logprob) -> None, called with each sampled token (streaming)


@dataclass
class _Job:
    kind: str  # "generate" | "score" | "top" | "load_adapter" | "unload_adapter"
    payload: Any
    future: Future
    adapter: str | None = None
    on_token: Any = None  # (request_index, sample_index, token_id, logprob) -> None; see submit()


def _answer(future: Future, result: Any = None, error: BaseException | None = None) -> None:
    """Give a job's caller its result or error, unless the caller cancelled the job
    meanwhile (a server's client went away): then there is nobody to answer."""
    from concurrent.futures import InvalidStateError

    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


class TransformersLLM:
    """In-process model. ``model`` is a name or path resolved by ``agentkit.llm.models``."""

    def __init__(
        self,
        model: str = "gemma-3-270m",
        *,
        device: str | None = None,
        dtype: str = "auto",
        max_batch: int = 64,
        batch_wait_ms: float = 5.0,
        threads: int | None = None,
        pack_weights: bool = True,
        _model: Any = None,
        _tokenizer: Any = None,
    ):
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if threads:
            torch.set_num_threads(threads)
        self.dtype = choose_dtype(self.device, os.environ.get("AGENTKIT_DTYPE", dtype) if dtype == "auto" else dtype)
        if self.device == "cpu":
            tune_allocator()
        if _model is None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from agentkit.llm.models import resolve_model

            path = resolve_model(model)
            self.tokenizer = AutoTokenizer.from_pretrained(str(path))
            _model = AutoModelForCausalLM.from_pretrained(str(path), dtype=self.dtype)
        else:
            self.tokenizer = _tokenizer
            _model = _model.to(self.dtype)
        self.model_name = model
        self.model = _model.to(self.device).eval()
        from agentkit.llm._kvcache import cache_argument  # imports transformers

        self._cache_arg = cache_argument(self.model)
        _keep_fast_cpu_weights(self.model)
        # decode multiplies each weight by a few rows: pre-packed oneDNN weights save the
        # per-call re-layout (bit-identical outputs; see agentkit.llm._packed)
        self._pack = pack_weights and can_pack(self.dtype, self.device)
        if self._pack:
            pack_linear_layers(self.model)
        self._head_input: torch.Tensor | None = None
        self._logit_buffer: torch.Tensor | None = None  # see _float_logits
        self._vocabularies: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}  # see _vocabulary
        # With a low-precision head, logprobs are refined in fp32 from the head's input.
        self._refine = self.dtype != torch.float32
        self._softcap = getattr(self.model.config, "final_logit_softcapping", None)
        self.model.get_output_embeddings().register_forward_pre_hook(self._capture_head_input)
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_ms / 1000
        self.eos_ids = self._eos_ids()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]
        self._adapters: dict[str, str] = {}
        self._peft = False
        self.min_prefix = 32
        self._prefixes: dict[tuple[str | None, tuple[int, ...]], Any] = {}
        self._last_prompt: list[int] | None = None
        self._max_new = 0
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._held: collections.deque[_Job | None] = collections.deque()
        self._open: list[tuple[_Job, list[list[_Row]]]] = []  # generate jobs being decoded
        self._seed_rng = random.Random(0)
        self._closed = False
        self._closing = threading.Lock()  # over _closed and putting on the queue
        self.stats = {"batches": 0, "rows": 0, "generated_tokens": 0, "max_rows_in_batch": 0, "joined_rows": 0}
        self._worker = threading.Thread(target=self._work, name="agentkit-batcher", daemon=True)
        self._worker.start()

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, name: str = "custom", **kwargs: Any) -> "TransformersLLM":
        """Wrap an already-built model and tokenizer (tests use a tiny random model)."""
        return cls(name, _model=model, _tokenizer=tokenizer, **kwargs)

    def _capture_head_input(self, module: Any, args: tuple) -> None:
        self._head_input = args[0]

    def _head_weight(self) -> torch.Tensor:
        return self.model.get_output_embeddings().weight

    def _eos_ids(self) -> list[int]:
        ids = set()
        for source in (self.tokenizer.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None)):
            if isinstance(source, int):
                ids.add(source)
            elif source:
                ids.update(source)
        return sorted(ids) or [0]

    # ---- protocol ---------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    @property
    def context_length(self) -> int | None:
        """Most positions (prompt and completion) the model was built for."""
        return getattr(self.model.config, "max_position_embeddings", None)

    @property
    def vocab_size(self) -> int:
        """How many token ids the model embeds: every prompt id must be below this."""
        return int(self.model.get_input_embeddings().weight.shape[0])

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        return self.submit(requests).result()

    def submit(self, requests: Sequence[GenerationRequest], on_token: Any = None) -> Future:
        """``generate`` without waiting: a Future of its result.

        Cancelling the future drops the requests' rows from the batch at its next decode
        step, so a server whose client went away frees the batch at once. ``on_token``
        ``(request_index, sample_index, token_id, logprob)`` is called on the worker thread with each
        sampled token, for streaming: it must return at once and never raise."""
        if not requests:
            future: Future = Future()
            future.set_result([])
            return future
        for r in requests:
            if r.adapter is not None and r.adapter not in self._adapters:
                raise BackendError(f"adapter '{r.adapter}' is not loaded; load it first (loaded: {self.list_adapters() or 'none'})")
        return self._enqueue("generate", list(requests), on_token=on_token)

    def score(self, prompt_ids: Sequence[int], completion_ids: Sequence[int], adapter: str | None = None, *,
              allowed_token_ids: Sequence[int] | None = None) -> list[float]:
        """Per-token logprobs of ``completion_ids``; with ``allowed_token_ids``, under the
        softmax over those ids alone (what a request naming them recorded)."""
        if not completion_ids:
            return []
        allowed = None if allowed_token_ids is None else allowed_ids(allowed_token_ids)
        return self._submit("score", (list(prompt_ids), list(completion_ids), allowed), adapter)

    def top_logprobs(self, prompt_ids: Sequence[int], completion_ids: Sequence[int], k: int,
                     adapter: str | None = None) -> list[list[tuple[int, float]]]:
        """At each position of ``completion_ids``, the ``k`` most likely tokens given what
        precedes it, as (id, logprob), most likely first (OpenAI's ``top_logprobs``)."""
        if not completion_ids or k <= 0:
            return [[] for _ in completion_ids]
        return self._submit("top", (list(prompt_ids), list(completion_ids), k), adapter)

    def load_adapter(self, name: str, path: str) -> None:
        if not os.path.isfile(os.path.join(path, "adapter_config.json")):
            raise BackendError(f"adapter path '{path}' has no adapter_config.json; pass a PEFT adapter directory")
        self._submit("load_adapter", (name, path))

    def unload_adapter(self, name: str) -> None:
        if name not in self._adapters:
            raise BackendError(f"adapter '{name}' is not loaded (loaded: {self.list_adapters() or 'none'})")
        self._submit("unload_adapter", name)

    def list_adapters(self) -> list[str]:
        return list(self._adapters)

    def close(self) -> None:
        """Stop the worker. Requests still queued or being decoded are cancelled (their
        callers get CancelledError) and leave the batch at its next decode step, so closing
        never waits for a long batch to run to the end (Ctrl-C during `agentkit run`)."""
        with self._closing:  # no job is enqueued between the flag and the end marker
            if self._closed:
                return
            self._closed = True
            with self._queue.mutex:
                queued = [job for job in self._queue.queue if job is not None]
            self._queue.put(None)
        for job in queued + [job for job in list(self._held) if job is not None] + [j for j, _ in list(self._open)]:
            job.future.cancel()
        self._worker.join(timeout=30)
        while True:  # anything the worker never took: its caller must not wait forever
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.future.cancel()

    def __enter__(self) -> "TransformersLLM":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the worker -------------------------------------------------------------

    def _submit(self, kind: str, payload: Any, adapter: str | None = None) -> Any:
        return self._enqueue(kind, payload, adapter).result()

    def _enqueue(self, kind: str, payload: Any, adapter: str | None = None, on_token: Any = None) -> Future:
        job = _Job(kind, payload, Future(), adapter, on_token)
        with self._closing:
            if self._closed:
                raise BackendError("this TransformersLLM is closed")
            self._queue.put(job)
        return job.future

    def _next_job(self, timeout: float | None = None) -> _Job | None:
        """The next job: one the decode loop took from the queue and could not admit, else
        the queue's (raises queue.Empty on timeout; timeout 0: do not wait)."""
        if self._held:
            return self._held.popleft()
        if timeout is None:
            return self._queue.get()
        return self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()

    def _work(self) -> None:
        while True:
            job = self._next_job()
            if job is None:
                return
            jobs = [job]
            rows = self._row_count(job)
            # gather until the callers go quiet: every arrival extends the wait by batch_wait,
            # up to 10x batch_wait in all, so a burst of concurrent callers lands in one batch
            start = time.perf_counter()
            deadline, last_call = start + self.batch_wait_s, start + 10 * self.batch_wait_s
            while rows < self.max_batch:
                remaining = deadline - time.perf_counter()
                try:
                    nxt = self._next_job(max(remaining, 0))
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                jobs.append(nxt)
                rows += self._row_count(nxt)
                deadline = min(time.perf_counter() + self.batch_wait_s, last_call)
            self._run_jobs(jobs)

    @staticmethod
    def _row_count(job: _Job) -> int:
        return sum(r.n for r in job.payload) if job.kind == "generate" else 0

    def _run_jobs(self, jobs: list[_Job]) -> None:
        jobs = [j for j in jobs if not j.future.cancelled()]  # callers that gave up while queued
        for job in [j for j in jobs if j.kind != "generate"]:
            try:
                _answer(job.future, self._run_other(job))
            except Exception as e:  # surface to the caller, keep the worker alive
                _answer(job.future, error=e)
        gen_jobs = [j for j in jobs if j.kind == "generate"]
        if not gen_jobs:
            return
        try:
            self._open = []
            for job in gen_jobs:
                try:
                    job_rows = self._make_rows(job.payload, job.on_token)
                except Exception as e:  # a bad request fails alone, not its batch
                    _answer(job.future, error=e)
                    continue
                self._open.append((job, job_rows))
            # one batch decodes one adapter over one vocabulary
            groups: dict[tuple[str | None, tuple[int, ...] | None], list[_Row]] = {}
            for _, rows in list(self._open):
                for job_rows in rows:
                    for row in job_rows:
                        groups.setdefault((row.request.adapter, row.request.allowed_token_ids), []).append(row)
            for (adapter, allowed), rows in groups.items():
                for start in range(0, len(rows), self.max_batch):
                    self._decode(rows[start : start + self.max_batch], adapter, allowed)
            self._resolve_finished()
        except Exception as e:
            log.exception("generation failed")
            # every job this batch took, and every one that joined it: none is left pending
            # (an already answered one keeps its answer)
            for job in gen_jobs + [j for j, _ in self._open]:
                _answer(job.future, error=e)
        finally:
            self._open = []

    def _resolve_finished(self) -> None:
        """Hand every job whose rows are all finished its completions, at once: a caller
        (a graph's next node) can send its next request while the batch runs on."""
        still = []
        for job, rows in self._open:
            if all(r.finish_reason is not None for job_rows in rows for r in job_rows):
                _answer(job.future, [[self._completion(r) for r in job_rows] for job_rows in rows])
            else:
                still.append((job, rows))
        self._open = still

    def _drop_cancelled(self) -> None:
        """Finish the rows of every request whose caller cancelled it (a server's client
        went away, or the server is stopping): they leave the batch at this decode step."""
        still = []
        for job, rows in self._open:
            if job.future.cancelled():
                for job_rows in rows:
                    for r in job_rows:
                        r.finish_reason = r.finish_reason or "cancelled"
            else:
                still.append((job, rows))
        self._open = still

    def _admit(self, adapter: str | None, allowed: tuple[int, ...] | None, free: int, length: int,
               remaining: int) -> list[_Row]:
        """Rows of queued generate requests that can join the running batch: same adapter and
        allowed ids, room in the batch, and every row still inside the sliding window once joined (the
        batch is ``length`` tokens long and may generate ``remaining`` more). The first job
        that cannot join, and everything after it, waits for the next batch."""
        window = getattr(self.model.config, "sliding_window", None) or 1 << 30
        rows: list[_Row] = []
        while not self._held:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None or job.kind != "generate":
                self._held.append(job)
                break
            if job.future.cancelled():
                continue
            try:
                job_rows = self._make_rows(job.payload, job.on_token)
            except Exception as e:  # a bad request fails alone
                _answer(job.future, error=e)
                continue
            flat = [r for jr in job_rows for r in jr]
            longest = max(len(r.prompt_ids) for r in flat)
            new_max = max(r.request.max_tokens for r in flat)
            if (any(r.request.adapter != adapter or r.request.allowed_token_ids != allowed for r in flat)
                    or len(rows) + len(flat) > free
                    or any(r.request.max_tokens == 0 for r in flat)
                    or max(length, longest) + max(remaining, new_max) >= window):
                self._held.append(job)
                break
            self._open.append((job, job_rows))
            rows += flat
        return rows

    def _make_rows(self, requests: list[GenerationRequest], on_token: Any = None) -> list[list[_Row]]:
        out = []
        for k, request in enumerate(requests):
            prompt_ids = self.tokenize(request.prompt) if isinstance(request.prompt, str) else list(request.prompt)
            self._check_prompt(prompt_ids, request.max_tokens)
            self._check_allowed(request.allowed_token_ids)
            job_rows = []
            for i in range(request.n):
                gen = None
                if request.temperature > 0:
                    seed = (request.seed * 1_000_003 + i) % 2**63 if request.seed is not None else self._seed_rng.getrandbits(63)
                    gen = torch.Generator().manual_seed(seed)
                job_rows.append(_Row(prompt_ids, request, RowParams(request.temperature, request.top_p, request.top_k, gen)))
                if on_token is not None:
                    job_rows[-1].on_token = lambda token, logprob, k=k, i=i: on_token(k, i, token, logprob)
            out.append(job_rows)
        return out

    def _check_prompt(self, prompt_ids: list[int], max_tokens: int) -> None:
        """A one-line BackendError for a prompt the model cannot take: empty, an id outside
        the vocabulary (the embedding would raise IndexError for the whole batch), or longer,
        with its max_tokens, than the model's context."""
        if not prompt_ids:
            raise BackendError("empty prompt: pass at least one token")
        vocab = self.vocab_size
        bad = next((t for t in prompt_ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise BackendError(f"token id {bad} in the prompt is outside the vocabulary of {vocab} ids (0-{vocab - 1})")
        context = self.context_length
        if context is not None and len(prompt_ids) + max_tokens > context:
            raise BackendError(
                f"prompt of {len(prompt_ids)} tokens + max_tokens={max_tokens} is {len(prompt_ids) + max_tokens} tokens: "
                f"more than the model's context length of {context}; send a shorter prompt or ask for fewer tokens"
            )

    def _completion(self, row: _Row) -> Completion:
        return Completion(
            text=row.text,
            token_ids=row.out_ids,
            logprobs=row.out_logprobs,
            finish_reason=row.finish_reason or "length",
            prompt_ids=row.prompt_ids,
            adapter=row.request.adapter,
            latency_s=row.latency_s,
        )

    def _run_other(self, job: _Job) -> Any:
        if job.kind in ("score", "top"):
            prompt_ids, completion_ids = job.payload[:2]
            with self._adapter_context(job.adapter), torch.inference_mode():
                ids = torch.tensor([prompt_ids + completion_ids], device=self.device)
                if job.kind == "score" and job.payload[2] is not None:
                    return self._score_within(ids, completion_ids, job.payload[2])
                logits = self.model(input_ids=ids, logits_to_keep=len(completion_ids) + 1).logits[0, :-1].float()
                if job.kind == "top":  # (T, k) each
                    values, top = torch.log_softmax(logits, -1).topk(job.payload[2], -1)
                    return [list(zip(i.tolist(), v.tolist())) for i, v in zip(top, values)]
                target = torch.tensor(completion_ids, device=self.device)
                if self._refine:
                    hidden = self._head_input[0, :-1]  # (T, D)
                    return exact_logprobs(logits, hidden, self._head_weight(), target, softcap=self._softcap).tolist()
                logps = logits.gather(1, target[:, None]).squeeze(1) - torch.logsumexp(logits, -1)
                return logps.tolist()
        if job.kind in ("load_adapter", "unload_adapter"):
            self._prefixes.clear()  # cached keys were computed with the old weights
            self._vocabularies.clear()  # and head rows, should an adapter touch the head
        if job.kind == "load_adapter":
            name, path = job.payload
            return self._load_adapter(name, path)
        if job.kind == "unload_adapter":
            del self._adapters[job.payload]
            if self._adapters:
                self.model.delete_adapter(job.payload)
                self.model.set_adapter(next(iter(self._adapters)))
            else:  # the last one: take the LoRA layers out so the base runs at full speed
                self.model = self.model.unload()
                self._peft = False
            return None
        raise ValueError(job.kind)

    def _score_within(self, ids: torch.Tensor, completion_ids: list[int], allowed: tuple[int, ...]) -> list[float]:
        vocab, _ = self._vocabulary(allowed)
        outside = sorted(set(completion_ids) - set(allowed))
        if outside:
            raise BackendError(f"completion token {outside[0]} is not among the {len(allowed)} allowed token ids; "
                               "score it over the whole vocabulary or allow it")
        hidden = self.model.get_decoder()(input_ids=ids).last_hidden_state[0, -len(completion_ids) - 1:-1]  # (T, D)
        logits = self._vocabulary_logits(hidden, allowed)  # (T, A)
        target = torch.searchsorted(vocab, torch.tensor(completion_ids, device=self.device))  # (T,) positions in vocab
        return (logits.gather(1, target[:, None]).squeeze(1) - torch.logsumexp(logits, -1)).tolist()

    def _vocabulary(self, allowed: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """A request's ``allowed_token_ids`` (A,) and their rows of the LM head in fp32 (A, D),
        kept: a loop sends the same few sets all the time."""
        found = self._vocabularies.get(allowed)
        if found is None:
            self._check_allowed(allowed)
            ids = torch.tensor(allowed, device=self.device)
            found = (ids, self._head_weight().detach()[ids].float())
            self._vocabularies[allowed] = found
            while len(self._vocabularies) > 8:
                self._vocabularies.pop(next(iter(self._vocabularies)))
        return found

    def _check_allowed(self, allowed: tuple[int, ...] | None) -> None:
        if allowed is not None and allowed[-1] >= self.vocab_size:
            raise BackendError(f"allowed token id {allowed[-1]} is outside the vocabulary of {self.vocab_size} ids "
                               f"(0-{self.vocab_size - 1})")

    def _vocabulary_logits(self, hidden: torch.Tensor, allowed: tuple[int, ...]) -> torch.Tensor:
        """fp32 logits (..., A) over the allowed ids from the head's input (..., D): A dot
        products a row instead of the whole vocabulary's, exact, so nothing is refined."""
        logits = hidden.float() @ self._vocabulary(allowed)[1].T
        return torch.tanh(logits / self._softcap) * self._softcap if self._softcap else logits

    def _next_logits(self, allowed: tuple[int, ...] | None, **inputs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One forward step: the logits at each row's last position (B, V), and the head's
        input there (B, D) when logprobs are refined (a low-precision head); with ``allowed``
        ids, fp32 logits over those alone (B, A) and no head input."""
        if allowed is None:
            logits = self.model(**inputs, logits_to_keep=1).logits[:, -1]
            return logits, (self._head_input[:, -1] if self._refine else None)
        hidden = self.model.get_decoder()(**inputs).last_hidden_state[:, -1]  # (B, D): the head never runs
        return self._vocabulary_logits(hidden, allowed), None

    # ---- adapters ------------------------------------------------------------------

    def _load_adapter(self, name: str, path: str) -> None:
        from peft import PeftModel

        if name in self._adapters:
            self.model.delete_adapter(name)
            del self._adapters[name]
        with quiet_peft():
            if not self._peft:
                self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name, is_trainable=False)
                self._peft = True
            else:
                self.model.load_adapter(path, adapter_name=name, is_trainable=False)
        self.model.to(device=self.device, dtype=self.dtype).eval()
        _keep_fast_cpu_weights(self.model)
        if self._pack:
            pack_linear_layers(self.model)  # the adapter's own A and B layers
        self._adapters[name] = path

    def _adapter_context(self, adapter: str | None):
        import contextlib

        if not self._peft:
            return contextlib.nullcontext()
        if adapter is None:
            return self.model.disable_adapter()
        self.model.set_adapter(adapter)
        return contextlib.nullcontext()

    # ---- batched decoding --------------------------------------------------------------

    @torch.inference_mode()
    def _decode(self, rows: list[_Row], adapter: str | None, allowed: tuple[int, ...] | None = None) -> None:
        """Decode ``rows`` to the end, one token of every active row per step.

        Continuous batching: between steps, queued requests for the same adapter join the
        running batch (their prompts prefilled, their KV rows left-padded to the batch's
        length), and a request whose rows are all done is answered at once. A graph's next
        node therefore does not wait for the slowest row of the batch its last call was in."""
        self.stats["batches"] += 1
        self.stats["rows"] += len(rows)
        for r in rows:
            if r.request.max_tokens == 0:
                r.finish_reason = "length"
        self._drop_cancelled()
        active = [r for r in rows if r.finish_reason is None]
        if not active:
            return
        from agentkit.llm._kvcache import is_appending, join

        with self._adapter_context(adapter):
            logits, hidden, cache, mask, next_pos = self._prefill(active, adapter, allowed)
            joinable = is_appending(cache)
            vocab = None if allowed is None else self._vocabulary(allowed)[0]
            while active:
                self.stats["max_rows_in_batch"] = max(self.stats["max_rows_in_batch"], len(active))
                tokens, logprobs = select_tokens(self._float_logits(logits), [r.params for r in active], hidden,
                                                 self._head_weight(), self._softcap, scratch=True)
                if vocab is not None:
                    tokens = vocab[tokens]  # positions among the allowed ids -> token ids
                tokens_l, logprobs_l = tokens.tolist(), logprobs.tolist()
                self._drop_cancelled()
                keep = []
                now = time.perf_counter()
                appended = 0
                for i, r in enumerate(active):
                    if r.finish_reason is None:  # not cancelled by _drop_cancelled just now
                        self._append(r, tokens_l[i], logprobs_l[i])
                        appended += 1
                    if r.finish_reason is None:
                        keep.append(i)
                    else:
                        r.latency_s = now - r.started
                self.stats["generated_tokens"] += appended
                self._resolve_finished()
                if not keep:
                    break
                if len(keep) < len(active):
                    index = torch.tensor(keep, device=self.device)
                    cache.batch_select_indices(index)
                    mask, next_pos, tokens = mask[index], next_pos[index], tokens[index]
                    active = [active[i] for i in keep]
                mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
                logits, hidden = self._next_logits(
                    allowed, input_ids=tokens[:, None], attention_mask=self._step_mask(mask),
                    position_ids=next_pos[:, None], **{self._cache_arg: cache}, use_cache=True,
                )
                next_pos = next_pos + 1
                if joinable and len(active) < self.max_batch and not self._queue.empty():
                    remaining = max(r.request.max_tokens - len(r.out_ids) for r in active)
                    new = self._admit(adapter, allowed, self.max_batch - len(active), mask.shape[1], remaining)
                    if new:
                        n_logits, n_hidden, n_cache, n_mask, n_pos = self._prefill(new, adapter, allowed)
                        join(cache, n_cache)
                        width = max(mask.shape[1], n_mask.shape[1])
                        mask = torch.cat([_left_pad(mask, width), _left_pad(n_mask, width)])
                        logits, next_pos = torch.cat([logits, n_logits]), torch.cat([next_pos, n_pos])
                        hidden = torch.cat([hidden, n_hidden]) if hidden is not None else None
                        active += new
                        self.stats["rows"] += len(new)
                        self.stats["joined_rows"] += len(new)

    def _prefill(self, rows: list[_Row], adapter: str | None,
                 allowed: tuple[int, ...] | None = None) -> tuple[Any, Any, Any, Any, Any]:
        """Prefill ``rows`` (all with max_tokens > 0): (next-token logits (B, V) or (B, A) over
        the ``allowed`` ids, head input (B, D) or None, KV cache, attention mask (B, T), next
        positions (B,)).

        The n samples of a request (and equal prompts of different requests) share one
        prefill: each distinct prompt is prefilled once, then its KV rows are copied."""
        now = time.perf_counter()
        for r in rows:
            r.started = now
        self._max_new = max(r.request.max_tokens for r in rows)
        unique: dict[tuple[int, ...], int] = {}
        owner = [unique.setdefault(tuple(r.prompt_ids), len(unique)) for r in rows]
        prompts = [list(p) for p in unique]
        prefix, cache = self._shared_prefix(prompts, adapter)
        width = max(len(p) for p in prompts) - prefix
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), prefix + width), dtype=torch.long)
        mask[:, :prefix] = 1
        for i, prompt in enumerate(prompts):  # left padding keeps every row's last token aligned
            suffix = prompt[prefix:]
            ids[i, width - len(suffix):] = torch.tensor(suffix)
            mask[i, prefix + width - len(suffix):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, prefix:]  # (U, T)
        logits, hidden = self._next_logits(allowed, input_ids=ids, attention_mask=mask, position_ids=positions,
                                           **{self._cache_arg: cache}, use_cache=True)  # (U, V), (U, D)
        if len(prompts) < len(rows):
            index = torch.tensor(owner, device=self.device)  # (B,) each row's prompt
            cache.batch_select_indices(index)
            logits, mask, positions = logits[index], mask[index], positions[index]  # (B, ...)
            hidden = hidden[index] if hidden is not None else None
        return logits, hidden, cache, mask, positions[:, -1] + 1

    def _shared_prefix(self, prompts: list[list[int]], adapter: str | None) -> tuple[int, Any]:
        """A KV cache holding the prompts' shared prefix, and that prefix's length.

        Few-shot prompts share hundreds of tokens; prefilling them once per prefix instead of
        once per row is the single largest saving in batched sampling. Prefixes are kept
        (a small LRU keyed by adapter and token ids) and found again by later batches; a
        new one is made from what the batch, and the previous batch, have in common."""
        import copy

        from transformers import DynamicCache

        from agentkit.llm._kvcache import appending_cache, common_prefix, reserve

        batch = len(prompts)
        shortest = min(len(p) for p in prompts)
        window = getattr(self.model.config, "sliding_window", None) or 1 << 30
        if max(len(p) for p in prompts) + max(1, self._max_new) >= window:
            return 0, DynamicCache(config=self.model.config)  # sliding layers would drop prefix keys
        longest = max(len(p) for p in prompts) + max(1, self._max_new)
        best: tuple[int, ...] = ()
        for key in self._prefixes:
            ids = key[1]
            if key[0] == adapter and len(ids) > len(best) and len(ids) < shortest:
                if all(p[: len(ids)] == list(ids) for p in prompts):
                    best = ids
        if not best:
            candidates = prompts + ([self._last_prompt] if self._last_prompt else [])
            common = common_prefix(candidates, limit=shortest - 1)
            if common >= self.min_prefix and (batch > 1 or self._last_prompt):
                best = tuple(prompts[0][:common])
                with torch.inference_mode():
                    prefix_cache = appending_cache(self.model.config)
                    self.model(input_ids=torch.tensor([best], device=self.device), **{self._cache_arg: prefix_cache},
                               use_cache=True, logits_to_keep=1)
                self._prefixes[(adapter, best)] = prefix_cache
                while len(self._prefixes) > 4:
                    self._prefixes.pop(next(iter(self._prefixes)))
        self._last_prompt = prompts[0]
        if not best:
            return 0, appending_cache(self.model.config, reserve=longest)
        self._prefixes[(adapter, best)] = self._prefixes.pop((adapter, best))  # most recently used
        cache = reserve(copy.deepcopy(self._prefixes[(adapter, best)]), longest)
        cache.batch_repeat_interleave(batch)
        return len(best), cache

    def _float_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` (B, V) as float32 in a buffer kept across steps, which token selection
        then uses as scratch. A fresh (B, V) float32 tensor every step is a fresh mmap of
        tens of megabytes, page-faulted in again each time: on a 2-core Xeon the first
        16-row batch of a process spent 1.5 s in token selection against 0.7 s once the
        allocator had settled."""
        if logits.dtype == torch.float32:
            return logits  # the model's own output, new each step
        n = logits.numel()
        if self._logit_buffer is None or self._logit_buffer.numel() < n:
            self._logit_buffer = torch.empty(n, dtype=torch.float32, device=logits.device)
        return self._logit_buffer[:n].view(logits.shape).copy_(logits)

    def _step_mask(self, mask: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """The attention mask for one decode step.

        Rebuilding a causal mask from the 2D padding mask every step costs more than the
        step's attention itself on a CPU; for a single query token the 4D mask is just the
        padding mask, shaped (B, 1, 1, T). Past the sliding window, where sliding layers
        keep fewer keys than full ones, transformers builds the masks itself."""
        config = self.model.config
        window = getattr(config, "sliding_window", None)
        if window is not None and mask.shape[1] >= window:
            return mask
        mask4d = mask.bool()[:, None, None, :]  # (B, 1, 1, T), True = attend
        layer_types = getattr(config, "layer_types", None)
        return {t: mask4d for t in set(layer_types)} if layer_types else mask4d

    def _append(self, row: _Row, token: int, logprob: float) -> None:
        row.out_ids.append(token)
        row.out_logprobs.append(logprob)
        if row.on_token is not None:
            row.on_token(token, logprob)
        request = row.request
        if token in self.eos_ids or token in request.stop_token_ids:
            # a stop token's own text is not part of the answer (vLLM's stop_token_ids too)
            row.text = self.decode(row.out_ids[:-1] if token in request.stop_token_ids else row.out_ids)
            row.finish_reason = "stop"
            return
        if request.stop:
            text = self.decode(row.out_ids)
            cuts = [text.find(s) for s in request.stop if s in text]
            if cuts:
                row.text, row.finish_reason = text[: min(cuts)], "stop"
                return
            row.text = text
        if len(row.out_ids) >= request.max_tokens:
            row.text = self.decode(row.out_ids)
            row.finish_reason = "length"
