"""agentkit's own OpenAI-compatible server over any ``LLM``, on Starlette and uvicorn.

Request and response shapes follow vLLM's ``/v1/completions`` (including its
``return_tokens_as_token_ids`` / ``return_token_ids`` extensions and the runtime LoRA
endpoints), so ``OpenAIClientLLM`` talks to ``agentkit serve`` and ``vllm serve`` alike;
``/v1/chat/completions`` renders the messages with the model's chat template, and its
answer ends at the template's end-of-turn token (Gemma's ``<end_of_turn>``), where plain
completions and agentkit's own runs go on to the model's end-of-sequence token. Request
bodies are pydantic models (``_wire.py``); the HTTP side is ``_http.py``.

Each request's endpoint runs on a worker thread and hands its prompts to the backend: a
batching backend gathers concurrent requests into one batch.

One client cannot stall the others (issue 13):
- ``max_tokens`` above the server's ceiling (by default the model's context length) or
  ``n`` above ``max_n`` is a 400, a body above ``max_body_bytes`` a 413, and a client that
  stops sending its body for ``read_timeout_s`` a 408.
- While a request generates, the server watches the client's connection. When the client
  goes away, or the request has run ``request_timeout_s`` (a 504), the request is
  cancelled. A backend with ``submit`` (the transformers backend) then drops its rows from
  the batch at the next decode step; any other backend finishes the call, unanswered.
- ``stop()`` cancels every request in flight (503), stops accepting and returns; ``serve``
  calls it on SIGINT or SIGTERM.

``"stream": true`` answers with server-sent events as OpenAI does (the ``openai`` client
reads them): chunks carrying ``choices[].text`` (chat: ``choices[].delta``), the last one
per choice its ``finish_reason``, then ``data: [DONE]``. A backend with ``submit`` reports
every sampled token, so text is sent as it is generated; with any other backend each
choice's text comes in one chunk when it is done. With ``logprobs`` each chunk carries
those of the tokens it brings, in the format of the plain answer.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import socket
import threading
import time
import uuid
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

import anyio

from agentkit.errors import BackendError
# Starlette and uvicorn load here, with this module, which only `agentkit serve` (and the
# tests) import: `import agentkit` and `agentkit --help` never pay for them.
from agentkit.llm._chat import chat_prompt_ids, end_of_turn_ids
from agentkit.llm._http import Client, ClientGone, build_app, uvicorn_server
from agentkit.llm._listen import address_family, check_listen_address, listen_error
from agentkit.llm._streaming import StreamedText
from agentkit.llm._wire import (
    ChatRequest, CompletionRequest, DetokenizeRequest, HTTPError, LoadLoraRequest, Sampling, TokenizeRequest,
    UnloadLoraRequest, error_object, joined_logprobs, one_line, shown, validate,
)
from agentkit.llm.base import Completion, GenerationRequest, LLM

__all__ = ["CompletionServer", "ServerLimits", "check_listen_address", "make_server", "serve"]

logger = logging.getLogger(__name__)

_POLL_S = 0.1
"""How often a waiting request looks at its client, its deadline and shutdown."""
_THREADS = 256
"""Endpoint calls running at once (each waits on the backend on its own worker thread)."""
_SHUTTING_DOWN = "the server is shutting down; send the request again once it is back"


@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask of the server."""

    max_tokens: int | None = None
    """Largest ``max_tokens`` a request may ask for; None: the backend's ``context_length``
    (no ceiling for a backend without one)."""
    max_n: int = 64
    """Largest ``n`` (samples per prompt) a request may ask for; a larger one is answered
    400 before the backend sees it."""
    max_body_bytes: int = 16 * 2**20
    """Largest request body; a larger one is answered 413."""
    request_timeout_s: float = 600.0
    """Seconds a completion may take before it is cancelled and answered 504."""
    read_timeout_s: float = 30.0
    """Seconds the server waits for a client to send the next bytes of a body (or the next
    request on a kept-alive connection) before it answers 408 (or closes the connection)."""


class CompletionServer:
    """One ``LLM`` served over HTTP; bound at construction (``.port`` is the bound port),
    serving from ``serve_forever()`` until ``shutdown()`` or ``stop()``."""

    def __init__(
        self,
        llm: LLM,
        host: str = "127.0.0.1",
        port: int = 8000,
        served_model_name: str | None = None,
        limits: ServerLimits | None = None,
    ):
        self.llm = llm
        self.model_name = served_model_name or llm.model_name
        self.limits = limits or ServerLimits()
        context = getattr(llm, "context_length", None)
        self.max_tokens_limit: int | None = self.limits.max_tokens if self.limits.max_tokens is not None else context
        self._limit_source = "its --max-tokens-limit" if self.limits.max_tokens is not None else "the model's context length"
        self._lock = threading.Lock()
        self._inflight: set[Future] = set()
        self._stopping = threading.Event()
        self._running, self._finished, self._closed = threading.Event(), threading.Event(), False
        self.cancelled_on_stop = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.limiter: anyio.CapacityLimiter | None = None
        self._socket = socket.socket(address_family(host, port), socket.SOCK_STREAM)
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._socket.bind((host, port))
            self._socket.listen(2048)
        except OSError:
            self._socket.close()
            raise
        self._address = self._socket.getsockname()[:2]
        self._uvicorn = uvicorn_server(build_app(self), self.limits.read_timeout_s)

    @property
    def port(self) -> int:
        return self._address[1]

    @property
    def url(self) -> str:
        host = self._address[0]
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/v1"

    def serve_forever(self) -> None:
        """Serve on this thread until ``shutdown()`` or ``stop()`` (from another thread)."""
        with self._lock:
            if self._closed:
                return
            self._running.set()
        try:
            asyncio.run(self._serve())
        finally:
            self._finished.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.limiter = anyio.CapacityLimiter(_THREADS)
        await self._uvicorn.serve(sockets=[self._socket])

    def shutdown(self) -> None:
        """Stop ``serve_forever`` (running in another thread), letting the requests in
        flight finish, and close the socket."""
        with self._lock:
            self._closed = True
        self._uvicorn.should_exit = True
        if self._running.is_set():
            self._finished.wait()
        self._socket.close()

    def stop(self, grace_s: float = 2.0) -> int:
        """Cancel every request in flight (answered 503, or their streams end with an error
        event), wait up to ``grace_s`` for their handlers to answer, stop accepting and close
        the socket. Returns how many requests were cancelled: every request whose handler
        had not finished answering, also one whose tokens were all generated but still being
        streamed."""
        self._stopping.set()
        with self._lock:
            running = list(self._inflight)
        for future in running:
            future.cancel()
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            with self._lock:
                if not self._inflight:
                    break
            time.sleep(0.02)
        self.shutdown()
        self.cancelled_on_stop = len(running)
        return len(running)

    # --- generation, cancellable --------------------------------------------------------

    def _start(self, requests: list[GenerationRequest], on_token: Callable[[int, int, int], None] | None = None) -> Future:
        """A Future of ``llm.generate(requests)``, tracked until ``_finish``."""
        if self._stopping.is_set():
            raise HTTPError(503, _SHUTTING_DOWN)
        submit = getattr(self.llm, "submit", None)
        if all(r.max_tokens == 0 for r in requests):  # pure scoring (echo): nothing to sample
            future: Future = Future()
            future.set_result([[self._empty(r) for _ in range(r.n)] for r in requests])
        elif callable(submit):
            future = submit(requests, on_token=on_token)
        else:
            future = self._in_thread(requests)
        with self._lock:
            self._inflight.add(future)
        return future

    def _in_thread(self, requests: list[GenerationRequest]) -> Future:
        """``llm.generate`` for a backend without ``submit``: it cannot be cancelled, but the
        request can stop waiting for it."""
        future: Future = Future()

        def run() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(self.llm.generate(requests))
                except BaseException as exc:
                    future.set_exception(exc)

        threading.Thread(target=run, name="agentkit-generate", daemon=True).start()
        return future

    def _finish(self, future: Future) -> None:
        with self._lock:
            self._inflight.discard(future)

    def _check(self, future: Future, client: Client | None, deadline: float) -> None:
        """Cancel ``future`` and raise when its request must stop: the server is stopping,
        the client went away, or the request ran past its timeout."""
        error: Exception | None = None
        if self._stopping.is_set():
            error = HTTPError(503, _SHUTTING_DOWN)
        elif client is not None and client.gone():
            error = ClientGone()
        elif time.monotonic() > deadline:
            error = HTTPError(
                504,
                f"the completion took longer than the server's request timeout of {self.limits.request_timeout_s:g} s "
                "and was cancelled; ask for fewer max_tokens, or start the server with a larger --request-timeout",
            )
        if error is not None:
            future.cancel()
            raise error

    def _generate(self, requests: list[GenerationRequest], client: Client | None, deadline: float) -> list[list[Completion]]:
        future = self._start(requests)
        try:
            while True:
                try:
                    return future.result(timeout=_POLL_S)
                except FutureTimeout:
                    self._check(future, client, deadline)
                except CancelledError:  # by stop()
                    raise HTTPError(503, _SHUTTING_DOWN) from None
        finally:
            self._finish(future)

    # --- endpoints: each takes the parsed JSON body and returns a JSON object, text or the
    # --- events of a stream; failures raise HTTPError

    def health(self, body: dict) -> str:
        return ""

    def models(self, body: dict) -> dict:
        data = [{"id": self.model_name, "object": "model", "created": 0, "owned_by": "agentkit", "root": self.model_name, "parent": None}]
        for name in self.llm.list_adapters():
            data.append({"id": name, "object": "model", "created": 0, "owned_by": "agentkit", "root": name, "parent": self.model_name})
        return {"object": "list", "data": data}

    def _adapter_for(self, model: str | None) -> str | None:
        if model is None or model == self.model_name:
            return None
        adapters = self.llm.list_adapters()
        if model in adapters:
            return model
        served = ", ".join(shown(name) for name in [self.model_name, *adapters])
        # vLLM's wording; the name escaped as repr does it, so that it cannot break the line
        raise HTTPError(404, f"The model `{shown(model)}` does not exist (served: {served}).")

    def _requests(self, body: Sampling, prompts: list[str | list[int]], max_tokens: int,
                  param: str = "prompt", stop_token_ids: tuple[int, ...] = ()) -> list[GenerationRequest]:
        """The generation requests of a completion or chat body, within the server's limits
        and the model's context; they also end at ``stop_token_ids``."""
        adapter = self._adapter_for(body.model)
        if body.n > self.limits.max_n:
            raise HTTPError(400, f"n={body.n}: must be at most {self.limits.max_n}, this server's limit on samples per "
                                 "prompt; ask for fewer", param="n")
        limit = self.max_tokens_limit
        if limit is not None and max_tokens > limit:
            raise HTTPError(400, f"max_tokens={max_tokens}: must be at most {limit}, this server's limit "
                                 f"({self._limit_source}); ask for fewer tokens", param="max_tokens")
        self._check_prompts(prompts, max_tokens, param)
        alternatives = body.top_logprobs if isinstance(body, ChatRequest) else body.logprobs
        if body.allowed_token_ids is not None and alternatives:
            raise HTTPError(400, "allowed_token_ids with alternative tokens (top_logprobs): the alternatives would be "
                                 "over the whole vocabulary; ask for the sampled tokens' logprobs alone",
                            param="allowed_token_ids")
        vocab = getattr(self.llm, "vocab_size", None)
        bad = next((t for t in body.allowed_token_ids or () if t < 0 or (vocab is not None and t >= vocab)), None)
        if bad is not None:
            raise HTTPError(400, f"allowed_token_ids: token id {bad} is outside the vocabulary"
                                 + (f" (0-{vocab - 1})" if vocab is not None else ""), param="allowed_token_ids")
        return [
            GenerationRequest(prompt=p, n=body.n, temperature=body.temperature, top_p=body.top_p, top_k=max(body.top_k, 0),
                              max_tokens=max_tokens, stop=body.stops, seed=body.seed, adapter=adapter,
                              stop_token_ids=(*body.stop_token_ids, *stop_token_ids),
                              allowed_token_ids=body.allowed_token_ids)
            for p in prompts
        ]

    def completions(self, body: dict, client: Client | None = None) -> dict | AsyncIterator[dict | str]:
        """The completion as a JSON object, or with ``"stream": true`` its events.
        ``client`` is watched while the backend generates."""
        deadline = time.monotonic() + self.limits.request_timeout_s
        request = validate(CompletionRequest, body)
        if request.stream and request.echo:
            raise HTTPError(400, "stream=true with echo: not supported here; drop one of them", param="stream")
        requests = self._requests(request, request.prompt, request.max_tokens)
        if request.stream:
            return self._stream(requests, request.stream_options.include_usage, deadline, chat=False,
                                top=request.logprobs, as_ids=request.return_tokens_as_token_ids)
        results = self._generate(requests, client, deadline)

        choices, prompt_tokens, n = [], 0, request.n
        for i, (gen, outs) in enumerate(zip(requests, results)):
            prompt_ids = list(outs[0].prompt_ids) if outs and outs[0].prompt_ids else self._prompt_ids(gen)
            prompt_tokens += len(prompt_ids)
            echoed = None  # the prompt's part of the logprobs, the same for each of its choices
            if request.echo and request.logprobs is not None and prompt_ids:
                first, rest, as_ids = prompt_ids[:1], prompt_ids[1:], request.return_tokens_as_token_ids
                # OpenAI legacy echo: the first prompt token has no logprob
                head = {"tokens": self._token_strings(first, as_ids), "token_logprobs": [None], "top_logprobs": [None]}
                scores = self.llm.score(first, rest, adapter=gen.adapter)
                echoed = joined_logprobs(head, self._legacy_logprobs(first, rest, scores, request.logprobs, gen.adapter,
                                                                     as_ids))
            for j, completion in enumerate(outs):
                choices.append(self._choice(i * n + j, gen, completion, prompt_ids, echoed, request))
        completion_tokens = sum(len(c["token_ids"]) for c in choices)
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": requests[0].adapter or self.model_name,
            "choices": choices,
            "usage": _usage(prompt_tokens, completion_tokens),
        }

    def chat_completions(self, body: dict, client: Client | None = None) -> dict | AsyncIterator[dict | str]:
        """A chat completion: the messages rendered by the model's chat template, then
        generated as a completion of those token ids."""
        deadline = time.monotonic() + self.limits.request_timeout_s
        request = validate(ChatRequest, body)
        if request.top_logprobs and not request.logprobs:
            raise HTTPError(400, f"top_logprobs={request.top_logprobs}: needs logprobs=true", param="top_logprobs")
        if request.top_logprobs and not callable(getattr(self.llm, "top_logprobs", None)):
            raise HTTPError(400, f"top_logprobs={request.top_logprobs}: this backend reports no alternative tokens; "
                                 "ask with logprobs=true alone", param="top_logprobs")
        prompt_ids = chat_prompt_ids(getattr(self.llm, "tokenizer", None), request.messages, self.model_name)
        max_tokens = request.max_completion_tokens if request.max_completion_tokens is not None else request.max_tokens
        if max_tokens is None:  # as many as the context and the server's ceiling leave
            context = getattr(self.llm, "context_length", None)
            room = [m for m in (self.max_tokens_limit, None if context is None else context - len(prompt_ids)) if m is not None]
            max_tokens = max(min(room), 0) if room else 256
        # a chat answer ends with its turn; completions and agentkit's own runs stop at <eos> alone
        requests = self._requests(request, [prompt_ids], max_tokens, param="messages",
                                  stop_token_ids=self.end_of_turn_ids)
        top = (request.top_logprobs or 0) if request.logprobs else None
        if request.stream:
            return self._stream(requests, request.stream_options.include_usage, deadline, chat=True, top=top)
        [outs] = self._generate(requests, client, deadline)
        choices = [{"index": j, "message": {"role": "assistant", "content": c.text},
                    "logprobs": None if top is None else self._chat_logprobs(c.prompt_ids, c.token_ids, c.logprobs,
                                                                             top, c.adapter),
                    "finish_reason": c.finish_reason, "stop_reason": None} for j, c in enumerate(outs)]
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": requests[0].adapter or self.model_name,
            "choices": choices,
            "usage": _usage(len(prompt_ids), sum(len(c.token_ids) for c in outs)),
        }

    @functools.cached_property
    def end_of_turn_ids(self) -> tuple[int, ...]:
        """The token that ends an assistant's turn under the model's chat template: a chat
        answer stops there."""
        return end_of_turn_ids(self.llm.tokenizer)

    def _alternatives(self, context: list[int], ids: list[int], k: int,
                      adapter: str | None) -> list[list[tuple[int, float]]] | None:
        """The ``k`` most likely tokens, as (id, logprob), at each position of ``ids`` after
        ``context``; None when k > 0 and the backend reports no alternatives. It waits for
        the backend's running batch."""
        top_logprobs = getattr(self.llm, "top_logprobs", None)
        if not k or not ids:
            return [[] for _ in ids]
        return top_logprobs(context, ids, k, adapter=adapter) if callable(top_logprobs) else None

    def _chat_logprobs(self, context: list[int], ids: list[int], values: list[float], top: int,
                       adapter: str | None) -> dict:
        """OpenAI's chat ``logprobs`` of ``ids`` (after ``context``): each token's text,
        log-probability and UTF-8 bytes, with the ``top`` most likely tokens at its position."""
        def entry(token_id: int, logprob: float) -> dict:
            text = self._decode([token_id]) or ""
            return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

        alternatives = self._alternatives(list(context), list(ids), top, adapter) or [[] for _ in ids]
        content = [{**entry(t, lp), "top_logprobs": [entry(a, alp) for a, alp in alts]}
                   for t, lp, alts in zip(ids, values, alternatives)]
        return {"content": content, "refusal": None}

    def _legacy_logprobs(self, context: list[int], ids: list[int], values: list[float | None], k: int,
                         adapter: str | None, as_ids: bool) -> dict:
        """OpenAI's legacy (completions) ``logprobs`` of ``ids`` after ``context``, without
        ``text_offset`` (see ``joined_logprobs``): each token's string and log-probability,
        and at its position a {token: logprob} of the ``k`` most likely tokens and the token
        itself (``top_logprobs`` is None from a backend that reports no alternatives)."""
        tokens = self._token_strings(list(ids), as_ids)
        alternatives = self._alternatives(list(context), list(ids), k, adapter)
        top = None if alternatives is None else [
            {**dict(zip(self._token_strings([a for a, _ in alts], as_ids), (v for _, v in alts))), token: value}
            for token, value, alts in zip(tokens, values, alternatives)]
        return {"tokens": tokens, "token_logprobs": list(values), "top_logprobs": top}

    def _stream(self, requests: list[GenerationRequest], include_usage: bool, deadline: float, chat: bool,
                top: int | None = None, as_ids: bool = False) -> AsyncIterator[dict | str]:
        """Start generating (so that a bad request still fails before any event is sent)
        and return the events: text as tokens arrive, then per choice its finish reason.
        With ``top`` (not None) each chunk carries the logprobs of the tokens it brings, with
        ``top`` alternatives at each position; alternatives wait for the running batch, so
        such a stream comes in fewer, larger chunks. The events are read on the event loop,
        which cancels them when the client goes away."""
        n, loop = requests[0].n, self._loop
        assert loop is not None, "streams are read on the server's event loop"
        tokens: asyncio.Queue = asyncio.Queue()

        def put(item: tuple[int, int, float] | None) -> None:  # on the backend's thread; must not raise
            try:
                loop.call_soon_threadsafe(tokens.put_nowait, item)
            except RuntimeError:  # the loop has closed: nobody reads any more
                pass

        streamable = callable(getattr(self.llm, "submit", None)) and callable(getattr(self.llm, "decode", None))
        on_token = (lambda i, j, token, logprob: put((i * n + j, token, logprob))) if streamable else None
        future = self._start(requests, on_token)
        future.add_done_callback(lambda _: put(None))
        texts = [StreamedText(self.llm.decode, r.stop) if streamable else None for r in requests for _ in range(n)]
        streamed: list[list[int]] = [[] for _ in texts]  # each choice's tokens sent so far
        offsets = [0] * len(texts)  # where each choice's next token string starts (legacy text_offset)
        prompts = [self._prompt_ids(r) if top else [] for r in requests]  # the context of alternatives
        head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
                "object": "chat.completion.chunk" if chat else "text_completion", "created": int(time.time()),
                "model": requests[0].adapter or self.model_name}

        def logprobs(index: int, ids: list[int], values: list[float]) -> dict:
            """The logprobs of choice ``index``'s next ``ids`` (blocks while alternatives wait)."""
            gen = requests[index // n]
            context = prompts[index // n] + streamed[index]
            if chat:
                return self._chat_logprobs(context, ids, values, top, gen.adapter)
            part = self._legacy_logprobs(context, ids, values, top, gen.adapter, as_ids)
            part = joined_logprobs(part, offset=offsets[index])
            offsets[index] += sum(map(len, part["tokens"]))
            return part

        async def logprobs_of(index: int, ids: list[int], values: list[float]) -> dict | None:
            if top is None or not ids:
                return None
            return await anyio.to_thread.run_sync(logprobs, index, ids, values, limiter=self.limiter)

        def chunk(index: int, text: str, finish_reason: str | None = None, lp: dict | None = None) -> dict:
            if chat:
                choice = {"index": index, "delta": {"content": text} if text else {}}
            else:
                choice = {"index": index, "text": text}
            return {**head, "choices": [{**choice, "logprobs": lp, "finish_reason": finish_reason, "stop_reason": None}]}

        async def events() -> AsyncIterator[dict | str]:
            try:
                if chat:  # OpenAI's first delta of each choice names the role
                    for index in range(len(texts)):
                        yield {**head, "choices": [{"index": index, "delta": {"role": "assistant", "content": ""},
                                                    "logprobs": None, "finish_reason": None}]}
                finished = False
                while not finished:
                    try:
                        batch = [await asyncio.wait_for(tokens.get(), _POLL_S)]
                    except TimeoutError:
                        batch = []
                    while not tokens.empty():  # every token sampled since the last look
                        batch.append(tokens.get_nowait())
                    finished = None in batch  # the future is done
                    if not finished:
                        self._check(future, None, deadline)
                    new: dict[int, list[tuple[int, float]]] = {}
                    for item in batch:
                        if item is not None:
                            new.setdefault(item[0], []).append(item[1:])
                    for index, arrived in sorted(new.items()):
                        ids, values = [t for t, _ in arrived], [v for _, v in arrived]
                        stops = requests[index // n].stop_token_ids  # their text is not the answer's
                        text = "".join(texts[index].add(t) for t in ids if t not in stops)
                        lp = await logprobs_of(index, ids, values)
                        streamed[index] += ids
                        if text or lp:
                            yield chunk(index, text, lp=lp)
                try:
                    results = future.result()
                except CancelledError:
                    raise HTTPError(503, _SHUTTING_DOWN) from None
                completions = [c for outs in results for c in outs]
                for index, completion in enumerate(completions):
                    sent = texts[index].sent if texts[index] else ""
                    if not completion.text.startswith(sent):  # decoding token by token gave other text
                        logger.warning("streamed text of choice %d differs from its completion; the rest is not sent", index)
                    rest = completion.text[len(sent):] if completion.text.startswith(sent) else ""
                    done = len(streamed[index])  # a backend without submit sends every token here
                    lp = await logprobs_of(index, completion.token_ids[done:], completion.logprobs[done:])
                    yield chunk(index, rest, completion.finish_reason, lp)
                if include_usage:
                    prompt_tokens = sum(len(outs[0].prompt_ids) for outs in results if outs)
                    yield {**head, "choices": [], "usage": _usage(prompt_tokens, sum(len(c.token_ids) for c in completions))}
            except HTTPError as exc:
                yield {"error": error_object(exc.status, exc.message, exc.param)}
            except Exception as exc:  # the backend failed after the stream began
                message = one_line(f"{type(exc).__name__}: {exc}")
                logger.error("stream failed: %s", message)
                yield {"error": error_object(500, f"the stream failed: {message}")}
            finally:  # also when the client went away: the generation stops with it
                future.cancel()
                self._finish(future)
            yield "[DONE]"

        return events()

    def _check_prompts(self, prompts: list[str | list[int]], max_tokens: int, param: str = "prompt") -> None:
        """A 400 for a prompt the model cannot take, before it reaches the backend (where
        it would fail the batch it landed in): a token id outside the vocabulary, or a
        prompt that, with ``max_tokens``, does not fit the model's context. The echo scoring
        of a long prompt (max_tokens 0) is bounded by the same check."""
        context = getattr(self.llm, "context_length", None)
        vocab = getattr(self.llm, "vocab_size", None)
        for i, prompt in enumerate(prompts):
            name = param if len(prompts) == 1 else f"{param}[{i}]"
            if context is not None:
                length = len(self.llm.tokenize(prompt)) if isinstance(prompt, str) else len(prompt)
                if length > context:
                    raise HTTPError(400, f"{name}: {length} tokens, more than the model's context length of {context}; "
                                         "send a shorter prompt", param=param)
                if length + max_tokens > context:
                    raise HTTPError(
                        400, f"max_tokens={max_tokens}: with a prompt of {length} tokens that is {length + max_tokens} "
                             f"tokens, more than the model's context length of {context}; ask for at most {context - length}",
                        param="max_tokens",
                    )
            if isinstance(prompt, list):
                bad = next((t for t in prompt if t < 0 or (vocab is not None and t >= vocab)), None)
                if bad is not None:
                    raise HTTPError(400, f"{name}: token id {bad} is {_id_range(vocab)}", param=param)

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        return self.llm.tokenize(request.prompt) if isinstance(request.prompt, str) else list(request.prompt)

    def _empty(self, request: GenerationRequest) -> Completion:
        return Completion("", [], [], "length", prompt_ids=self._prompt_ids(request), adapter=request.adapter)

    def _decode(self, ids: list[int]) -> str | None:
        """Text of ``ids`` when the backend can decode (``decode`` is not in the protocol)."""
        decode = getattr(self.llm, "decode", None)
        return decode(ids) if callable(decode) else None

    def _token_strings(self, ids: list[int], as_ids: bool) -> list[str]:
        if not as_ids and callable(getattr(self.llm, "decode", None)):
            return [self._decode([t]) for t in ids]
        return [f"token_id:{t}" for t in ids]

    def _choice(self, index: int, gen: GenerationRequest, completion: Completion, prompt_ids: list[int],
                echoed: dict | None, request: CompletionRequest) -> dict:
        """One choice; ``echoed``: the legacy logprobs of the prompt, with echo and logprobs."""
        text = completion.text
        if request.echo:
            prompt_text = gen.prompt if isinstance(gen.prompt, str) else (self._decode(prompt_ids) or "")
            text = prompt_text + text
        lp = None
        if request.logprobs is not None:
            own = self._legacy_logprobs(prompt_ids, completion.token_ids, completion.logprobs, request.logprobs,
                                        gen.adapter, request.return_tokens_as_token_ids)
            lp = joined_logprobs(*([echoed] if echoed else []), own)
        return {
            "index": index,
            "text": text,
            "logprobs": lp,
            "finish_reason": completion.finish_reason,
            "stop_reason": None,
            "token_ids": list(completion.token_ids),
            "prompt_token_ids": list(prompt_ids),
        }

    def tokenize(self, body: dict) -> dict:
        request = validate(TokenizeRequest, body)
        tokens = self.llm.tokenize(request.prompt)
        if not request.add_special_tokens:
            special = self.llm.tokenize("")  # what the backend adds around any text (BOS)
            if special and tokens[: len(special)] == special:
                tokens = tokens[len(special):]
        return {"tokens": tokens, "count": len(tokens)}

    def detokenize(self, body: dict) -> dict:
        tokens = validate(DetokenizeRequest, body).tokens
        vocab = getattr(self.llm, "vocab_size", None)
        bad = next((t for t in tokens if t < 0 or (vocab is not None and t >= vocab)), None)
        if bad is not None:
            raise HTTPError(400, f"tokens: token id {bad} is {_id_range(vocab)}", param="tokens")
        try:
            text = self.llm.decode(tokens)
        except (ValueError, TypeError, IndexError, OverflowError, KeyError) as exc:  # an id this tokenizer has no text for
            raise HTTPError(400, f"tokens: the model cannot decode them ({one_line(f'{type(exc).__name__}: {exc}')})",
                            param="tokens") from exc
        return {"prompt": text}

    def load_lora_adapter(self, body: dict) -> str:
        request = validate(LoadLoraRequest, body)
        name, path = request.lora_name, request.lora_path
        if name == self.model_name:
            raise HTTPError(400, f"lora_name={name!r}: is the base model's name; pick another", param="lora_name")
        try:
            self.llm.load_adapter(name, path)
        except Exception as exc:  # the backend's own reason (missing dir, wrong base model...)
            raise HTTPError(400, f"cannot load LoRA adapter '{shown(name)}' from {shown(path)}: {one_line(exc)}") from exc
        return f"Success: LoRA adapter '{shown(name)}' added successfully."

    def unload_lora_adapter(self, body: dict) -> str:
        name = validate(UnloadLoraRequest, body).lora_name
        if name not in self.llm.list_adapters():
            loaded = ", ".join(shown(a) for a in self.llm.list_adapters()) or "none"
            raise HTTPError(404, f"The lora adapter '{shown(name)}' cannot be found (loaded: {loaded}).", param="lora_name")
        self.llm.unload_adapter(name)
        return f"Success: LoRA adapter '{shown(name)}' removed successfully."


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _id_range(vocab: int | None) -> str:
    return f"outside the model's vocabulary of {vocab} ids (0-{vocab - 1})" if vocab is not None else "negative: token ids are >= 0"


def make_server(
    llm: LLM,
    host: str = "127.0.0.1",
    port: int = 8000,
    served_model_name: str | None = None,
    limits: ServerLimits | None = None,
) -> CompletionServer:
    """A bound, not yet running server: call ``.serve_forever()`` (e.g. in a thread) and
    ``.shutdown()``, or ``serve(server)``. ``port=0`` picks a free port, read it back from
    ``.port``."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise BackendError(f"--port {port}: must be between 0 and 65535 (0 picks a free port)")
    try:
        return CompletionServer(llm, host=host, port=port, served_model_name=served_model_name, limits=limits)
    except OSError as exc:
        raise listen_error(host, port, exc) from None


def serve(server: CompletionServer) -> int:
    """Serve on this thread until SIGINT (Ctrl-C) or SIGTERM, then shut down cleanly:
    cancel every request in flight and stop accepting (``server.stop()``), and close the
    backend. Returns the signal's number (0 when ``server.shutdown()`` stopped it). A second
    signal while shutting down ends the process at once."""
    fired: list[int] = []
    stop_requested = threading.Event()
    # the stop runs on its own thread while the event loop, on this one, answers the
    # cancelled requests; a signal handler only sets an event (it may interrupt any code)
    def stop_when_asked() -> None:
        stop_requested.wait()
        server.stop()

    stopper = threading.Thread(target=stop_when_asked, name="agentkit-stop", daemon=True)
    stopper.start()

    def on_signal(signum: int, frame: Any) -> None:
        if fired:
            os._exit(128 + signum)
        fired.append(signum)
        stop_requested.set()

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        fired.append(signal.SIGINT)
    finally:
        try:
            stop_requested.set()
            stopper.join()
            logger.info("stopping: %d request(s) in flight cancelled", server.cancelled_on_stop)
            server.llm.close()
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
    return int(fired[0]) if fired else 0
