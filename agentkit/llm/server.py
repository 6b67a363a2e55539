"""agentkit's own OpenAI-compatible completions server over any ``LLM``.

Request and response shapes follow vLLM's ``/v1/completions`` (including its
``return_tokens_as_token_ids`` / ``return_token_ids`` extensions and the runtime LoRA
endpoints), so ``OpenAIClientLLM`` talks to ``agentkit serve`` and ``vllm serve`` alike.

Every HTTP request runs in its own thread and hands its prompts to the backend: a batching
backend gathers concurrent HTTP requests into one batch.

One client cannot stall the others (issue 13):
- ``max_tokens`` above the server's ceiling (by default the model's context length) or
  ``n`` above ``max_n`` is a 400, a body above ``max_body_bytes`` a 413, and a client that
  stops sending for ``read_timeout_s`` is dropped.
- While a request generates, its thread watches the client's socket. When the client goes
  away, or the request has run ``request_timeout_s`` (a 504), the request is cancelled. A
  backend with ``submit`` (the transformers backend) then drops its rows from the batch at
  the next decode step; any other backend finishes the call, unanswered.
- ``stop()`` stops accepting, cancels every request in flight (503) and returns; ``serve``
  calls it on SIGINT or SIGTERM.

``"stream": true`` answers with server-sent events as OpenAI does: chunks carrying
``choices[].text``, the last one per choice its ``finish_reason``, then ``data: [DONE]``.
A backend with ``submit`` reports every sampled token, so text is sent as it is generated;
with any other backend each choice's text comes in one chunk when it is done.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import select
import signal
import socket
import socketserver
import threading
import time
import uuid
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

from agentkit.errors import BackendError
from agentkit.llm._listen import address_family, check_listen_address, listen_error
from agentkit.llm._streaming import StreamedText
from agentkit.llm._wire import (
    HTTPError, error_object, field, is_int, is_number, one_line, parse_body, parse_prompts, parse_stop, shown,
)
from agentkit.llm.base import Completion, GenerationRequest, LLM

__all__ = ["CompletionServer", "ServerLimits", "check_listen_address", "make_server", "serve"]

logger = logging.getLogger(__name__)

_POLL_S = 0.1
"""How often a waiting request looks at its client's socket, its deadline and shutdown."""
_SHUTTING_DOWN = "the server is shutting down; send the request again once it is back"
_DISCARD_LIMIT = 64 * 2**20
"""An oversized body up to this size is read and dropped, so that the client, still
sending, reads the 413 instead of a reset connection; a larger one closes the connection."""


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
    """Seconds the server waits for a client to send the next bytes of a request (or the
    next request on a kept-alive connection) before it drops the connection."""


class _ClientGone(Exception):
    """The client closed its connection while its request was being answered."""


class _Stopped(BaseException):
    """Raised by the signal handler in ``serve`` (a BaseException, so that socketserver's
    per-request ``except Exception`` does not swallow it)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


# --- the server --------------------------------------------------------------------------


class _EventStream:
    """The events of one streamed completion; ``close()`` cancels the generation if it is
    still running (the client went away, or the stream failed)."""

    def __init__(self, events: Iterator[dict | str], future: Future, finish: Callable[[Future], None]):
        self._events, self._future, self._finish = events, future, finish

    def __iter__(self) -> Iterator[dict | str]:
        return self._events

    def close(self) -> None:
        self._events.close()  # type: ignore[attr-defined]  # a generator
        self._future.cancel()
        self._finish(self._future)


class CompletionServer(ThreadingHTTPServer):
    """A ``ThreadingHTTPServer`` serving one ``LLM``; ``.port`` is the bound port."""

    daemon_threads = True

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
        self._started = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._inflight: set[Future] = set()
        self.cancelled_on_stop = 0
        self.address_family = address_family(host, port)
        super().__init__((host, port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host's name up (socket.getfqdn), which can wait
        # on DNS; nothing here uses that name
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        host = self.server_address[0]
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/v1"

    def serve_forever(self, poll_interval: float = 0.1) -> None:
        self._started.set()
        super().serve_forever(poll_interval)

    def shutdown(self) -> None:
        """Stop ``serve_forever`` (running in another thread) and close the socket."""
        if self._started.is_set():  # the stdlib's shutdown() waits forever otherwise
            super().shutdown()
        self.server_close()

    def stop(self, grace_s: float = 2.0) -> int:
        """Stop accepting, cancel every request in flight (answered 503, or their streams
        end with an error event), wait up to ``grace_s`` for their handlers to answer, and
        close the socket. Returns how many requests were cancelled: every request whose
        handler had not finished answering, also one whose tokens were all generated but
        still being streamed (its stream ends with the error event too)."""
        self._stopping.set()
        with self._lock:
            running = list(self._inflight)  # before shutdown() waits a poll: a fast model may finish meanwhile
        self.shutdown()
        for future in running:
            future.cancel()
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            with self._lock:
                if not self._inflight:
                    break
            time.sleep(0.02)
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
        request's thread can stop waiting for it."""
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

    def _check(self, future: Future, client: "_Handler | None", deadline: float) -> None:
        """Cancel ``future`` and raise when its request must stop: the server is stopping,
        the client went away, or the request ran past its timeout."""
        error: Exception | None = None
        if self._stopping.is_set():
            error = HTTPError(503, _SHUTTING_DOWN)
        elif client is not None and client.gone():
            error = _ClientGone()
        elif time.monotonic() > deadline:
            error = HTTPError(
                504,
                f"the completion took longer than the server's request timeout of {self.limits.request_timeout_s:g} s "
                "and was cancelled; ask for fewer max_tokens, or start the server with a larger --request-timeout",
            )
        if error is not None:
            future.cancel()
            raise error

    def _wait(self, future: Future, client: "_Handler | None", deadline: float) -> Any:
        while True:
            try:
                return future.result(timeout=_POLL_S)
            except FutureTimeout:
                self._check(future, client, deadline)
            except CancelledError:  # by stop()
                raise HTTPError(503, _SHUTTING_DOWN) from None

    # --- endpoints: each takes the parsed JSON body and returns a JSON object or text;
    # --- failures raise HTTPError

    def health(self, body: dict) -> str:
        return ""

    def models(self, body: dict) -> dict:
        data = [{"id": self.model_name, "object": "model", "created": 0, "owned_by": "agentkit", "root": self.model_name, "parent": None}]
        for name in self.llm.list_adapters():
            data.append({"id": name, "object": "model", "created": 0, "owned_by": "agentkit", "root": name, "parent": self.model_name})
        return {"object": "list", "data": data}

    def _adapter_for(self, model: Any) -> str | None:
        if model is None or model == self.model_name:
            return None
        adapters = self.llm.list_adapters()
        if isinstance(model, str) and model in adapters:
            return model
        served = ", ".join(shown(name) for name in [self.model_name, *adapters])
        # vLLM's wording; the name escaped as repr does it, so that it cannot break the line
        raise HTTPError(404, f"The model `{shown(model)}` does not exist (served: {served}).")

    def completions(self, body: dict, client: "_Handler | None" = None) -> dict | _EventStream:
        """The completion as a JSON object, or with ``"stream": true`` its events.
        ``client``, the request's handler, is watched while the backend generates."""
        deadline = time.monotonic() + self.limits.request_timeout_s
        prompts = parse_prompts(body.get("prompt"))
        adapter = self._adapter_for(body.get("model"))
        n = field(body, "n", 1, lambda v: is_int(v) and v >= 1, "an integer >= 1")
        if n > self.limits.max_n:
            raise HTTPError(400, f"n={n}: must be at most {self.limits.max_n}, this server's limit on samples per prompt; "
                                 "ask for fewer", param="n")
        max_tokens = field(body, "max_tokens", 16, lambda v: is_int(v) and v >= 0, "an integer >= 0")
        limit = self.max_tokens_limit
        if limit is not None and max_tokens > limit:
            raise HTTPError(
                400, f"max_tokens={max_tokens}: must be at most {limit}, this server's limit ({self._limit_source}); "
                "ask for fewer tokens", param="max_tokens",
            )
        temperature = field(body, "temperature", 1.0, lambda v: is_number(v) and v >= 0, "a number >= 0")
        top_p = field(body, "top_p", 1.0, lambda v: is_number(v) and 0 < v <= 1, "a number in (0, 1]")
        top_k = field(body, "top_k", 0, lambda v: is_int(v) and v >= -1, "an integer >= 1, or -1 / 0 for no cut")
        seed = field(body, "seed", None, is_int, "an integer")
        logprobs = field(body, "logprobs", None, lambda v: is_int(v) and v >= 0, "an integer >= 0")
        echo = field(body, "echo", False, lambda v: isinstance(v, bool), "true or false")
        as_ids = field(body, "return_tokens_as_token_ids", False, lambda v: isinstance(v, bool), "true or false")
        stream = field(body, "stream", False, lambda v: isinstance(v, bool), "true or false")
        options = field(body, "stream_options", {}, lambda v: isinstance(v, dict), 'an object, e.g. {"include_usage": true}')
        include_usage = field(options, "include_usage", False, lambda v: isinstance(v, bool), "true or false")
        if stream and (echo or logprobs is not None):
            raise HTTPError(400, f"stream=true with {'echo' if echo else 'logprobs'}: not supported here; drop one of them",
                            param="stream")
        stop = parse_stop(body.get("stop"))
        try:
            requests = [
                GenerationRequest(
                    prompt=p, n=n, temperature=float(temperature), top_p=float(top_p), top_k=max(top_k, 0),
                    max_tokens=max_tokens, stop=stop, seed=seed, adapter=adapter,
                )
                for p in prompts
            ]
        except ValueError as exc:
            raise HTTPError(400, one_line(exc)) from exc
        self._check_prompts(prompts, max_tokens)

        if stream:
            return self._stream(requests, include_usage, client, deadline)
        future = self._start(requests)
        try:
            results = self._wait(future, client, deadline)
        finally:
            self._finish(future)

        choices, prompt_tokens = [], 0
        for i, (request, outs) in enumerate(zip(requests, results)):
            prompt_ids = list(outs[0].prompt_ids) if outs and outs[0].prompt_ids else self._prompt_ids(request)
            prompt_tokens += len(prompt_ids)
            prompt_logprobs = None
            if echo and logprobs is not None and prompt_ids:
                # OpenAI legacy echo: the first prompt token has no logprob
                prompt_logprobs = [None, *self.llm.score(prompt_ids[:1], prompt_ids[1:], adapter=adapter)]
            for j, completion in enumerate(outs):
                choices.append(
                    self._choice(i * n + j, request, completion, prompt_ids, prompt_logprobs, echo, logprobs is not None, as_ids)
                )
        completion_tokens = sum(len(c["token_ids"]) for c in choices)
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": adapter or self.model_name,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _stream(self, requests: list[GenerationRequest], include_usage: bool, client: "_Handler | None",
                deadline: float) -> _EventStream:
        """Start generating (so that a bad request still fails before any event is sent)
        and return the events: text as tokens arrive, then per choice its finish reason."""
        n = requests[0].n
        tokens: queue.SimpleQueue = queue.SimpleQueue()
        streamable = callable(getattr(self.llm, "submit", None)) and callable(getattr(self.llm, "decode", None))
        on_token = (lambda i, j, token: tokens.put((i * n + j, token))) if streamable else None
        future = self._start(requests, on_token)
        future.add_done_callback(lambda _: tokens.put(None))
        texts = [StreamedText(self.llm.decode, r.stop) if streamable else None for r in requests for _ in range(n)]
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": requests[0].adapter or self.model_name}

        def chunk(index: int, text: str, finish_reason: str | None = None) -> dict:
            return {**head, "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason,
                                         "stop_reason": None}]}

        def events() -> Iterator[dict | str]:
            try:
                finished = False
                while not finished:
                    try:
                        batch = [tokens.get(timeout=_POLL_S)]
                    except queue.Empty:
                        batch = []
                    while not tokens.empty():  # every token sampled since the last look
                        batch.append(tokens.get())
                    finished = None in batch  # the future is done
                    if not finished:
                        self._check(future, client, deadline)
                    new: dict[int, str] = {}
                    for item in batch:
                        if item is not None:
                            index, token = item
                            new[index] = new.get(index, "") + texts[index].add(token)
                    for index in sorted(new):
                        if new[index]:
                            yield chunk(index, new[index])
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
                    yield chunk(index, rest, completion.finish_reason)
                if include_usage:
                    prompt_tokens = sum(len(outs[0].prompt_ids) for outs in results if outs)
                    completion_tokens = sum(len(c.token_ids) for c in completions)
                    yield {**head, "choices": [], "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                                            "total_tokens": prompt_tokens + completion_tokens}}
            except _ClientGone:
                return
            except HTTPError as exc:
                yield {"error": error_object(exc.status, exc.message, exc.param)}
            except Exception as exc:  # the backend failed after the stream began
                message = one_line(f"{type(exc).__name__}: {exc}")
                logger.error("POST /v1/completions (stream) failed: %s", message)
                yield {"error": error_object(500, f"POST /v1/completions failed: {message}")}
            yield "[DONE]"

        return _EventStream(events(), future, self._finish)

    def _check_prompts(self, prompts: list[str | list[int]], max_tokens: int) -> None:
        """A 400 for a prompt the model cannot take, before it reaches the backend (where
        it would fail the batch it landed in): a token id outside the vocabulary, or a
        prompt that, with ``max_tokens``, does not fit the model's context. The echo scoring
        of a long prompt (max_tokens 0) is bounded by the same check."""
        context = getattr(self.llm, "context_length", None)
        vocab = getattr(self.llm, "vocab_size", None)
        for i, prompt in enumerate(prompts):
            name = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
            if context is not None:
                length = len(self.llm.tokenize(prompt)) if isinstance(prompt, str) else len(prompt)
                if length > context:
                    raise HTTPError(400, f"{name}: {length} tokens, more than the model's context length of {context}; "
                                         "send a shorter prompt", param="prompt")
                if length + max_tokens > context:
                    raise HTTPError(
                        400, f"max_tokens={max_tokens}: with a prompt of {length} tokens that is {length + max_tokens} "
                             f"tokens, more than the model's context length of {context}; ask for at most {context - length}",
                        param="max_tokens",
                    )
            if isinstance(prompt, list):
                bad = next((t for t in prompt if t < 0 or (vocab is not None and t >= vocab)), None)
                if bad is not None:
                    limit = (f"outside the model's vocabulary of {vocab} ids (0-{vocab - 1})" if vocab is not None
                             else "negative: token ids are >= 0")
                    raise HTTPError(400, f"{name}: token id {bad} is {limit}", param="prompt")

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

    def _choice(self, index, request, completion, prompt_ids, prompt_logprobs, echo, want_logprobs, as_ids) -> dict:
        text = completion.text
        if echo:
            prompt_text = request.prompt if isinstance(request.prompt, str) else (self._decode(prompt_ids) or "")
            text = prompt_text + text
        lp = None
        if want_logprobs:
            ids, values = list(completion.token_ids), list(completion.logprobs)
            if echo:
                ids = prompt_ids + ids
                values = (prompt_logprobs or [None] * len(prompt_ids)) + values
            tokens = self._token_strings(ids, as_ids)
            offsets, offset = [], 0
            for token in tokens:
                offsets.append(offset)
                offset += len(token)
            lp = {"tokens": tokens, "token_logprobs": values, "top_logprobs": None, "text_offset": offsets}
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
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise HTTPError(400, "prompt: required (a string)", param="prompt")
        add_special = field(body, "add_special_tokens", True, lambda v: isinstance(v, bool), "true or false")
        tokens = self.llm.tokenize(prompt)
        if not add_special:
            special = self.llm.tokenize("")  # what the backend adds around any text (BOS)
            if special and tokens[: len(special)] == special:
                tokens = tokens[len(special):]
        return {"tokens": tokens, "count": len(tokens)}

    def detokenize(self, body: dict) -> dict:
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(is_int(t) for t in tokens):
            raise HTTPError(400, "tokens: required (a list of token ids)", param="tokens")
        vocab = getattr(self.llm, "vocab_size", None)
        bad = next((t for t in tokens if t < 0 or (vocab is not None and t >= vocab)), None)
        if bad is not None:
            limit = (f"outside the model's vocabulary of {vocab} ids (0-{vocab - 1})" if vocab is not None
                     else "negative: token ids are >= 0")
            raise HTTPError(400, f"tokens: token id {bad} is {limit}", param="tokens")
        try:
            text = self.llm.decode(tokens)
        except (ValueError, TypeError, IndexError, OverflowError, KeyError) as exc:  # an id this tokenizer has no text for
            raise HTTPError(400, f"tokens: the model cannot decode them ({one_line(f'{type(exc).__name__}: {exc}')})",
                            param="tokens") from exc
        return {"prompt": text}

    def load_lora_adapter(self, body: dict) -> str:
        name, path = body.get("lora_name"), body.get("lora_path")
        if not isinstance(name, str) or not name:
            raise HTTPError(400, "lora_name: required (a string)", param="lora_name")
        if not isinstance(path, str) or not path:
            raise HTTPError(400, "lora_path: required (a string)", param="lora_path")
        if name == self.model_name:
            raise HTTPError(400, f"lora_name={name!r}: is the base model's name; pick another", param="lora_name")
        try:
            self.llm.load_adapter(name, path)
        except Exception as exc:  # the backend's own reason (missing dir, wrong base model...)
            raise HTTPError(400, f"cannot load LoRA adapter '{shown(name)}' from {shown(path)}: {one_line(exc)}") from exc
        return f"Success: LoRA adapter '{shown(name)}' added successfully."

    def unload_lora_adapter(self, body: dict) -> str:
        name = body.get("lora_name")
        if not isinstance(name, str) or not name:
            raise HTTPError(400, "lora_name: required (a string)", param="lora_name")
        if name not in self.llm.list_adapters():
            loaded = ", ".join(shown(a) for a in self.llm.list_adapters()) or "none"
            raise HTTPError(404, f"The lora adapter '{shown(name)}' cannot be found (loaded: {loaded}).", param="lora_name")
        self.llm.unload_adapter(name)
        return f"Success: LoRA adapter '{shown(name)}' removed successfully."


_GET_ROUTES = {"/v1/models": "models", "/health": "health"}
_POST_ROUTES = {
    "/v1/completions": "completions",
    "/tokenize": "tokenize",
    "/detokenize": "detokenize",
    "/v1/load_lora_adapter": "load_lora_adapter",
    "/v1/unload_lora_adapter": "unload_lora_adapter",
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every response carries Content-Length or is chunked
    server: CompletionServer

    def setup(self) -> None:
        self.timeout = self.server.limits.read_timeout_s  # applied to the socket by setup()
        super().setup()

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def gone(self) -> bool:
        """True when the client has closed its end of the connection (looked at without
        blocking: readable with nothing to read means the peer closed)."""
        sock = self.connection
        try:
            if hasattr(select, "poll"):
                poller = select.poll()
                poller.register(sock, select.POLLIN)
                if not poller.poll(0):
                    return False
            elif not select.select([sock], [], [], 0)[0]:
                return False
            return sock.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False
        except (OSError, ValueError):
            return True

    def _read_body(self) -> bytes:
        """The request body, within the server's size limit. Every path leaves the
        connection either fully read (kept alive) or marked to close."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise HTTPError(411, "send the request body with a Content-Length header (chunked bodies are not read)")
        length = (self.headers.get("Content-Length") or "0").strip()
        if not length.isdigit():
            self.close_connection = True
            raise HTTPError(400, f"Content-Length {length!r}: must be a number of bytes")
        size, limit = int(length), self.server.limits.max_body_bytes
        if size > limit:
            remaining = size if size <= _DISCARD_LIMIT else 0
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                remaining -= len(chunk)
            if size > _DISCARD_LIMIT:
                self.close_connection = True
            raise HTTPError(413, f"request body of {size} bytes is over this server's limit of {limit} bytes; "
                                 "send less (or start the server with a larger --max-body-mb)")
        return self.rfile.read(size)

    def _dispatch(self, method: str) -> None:
        path = urlsplit(self.path).path.rstrip("/") or "/"
        try:
            try:
                raw = self._read_body()
            except OSError:  # the client went away, or sent nothing for read_timeout_s
                self.close_connection = True
                return
            routes = _GET_ROUTES if method == "GET" else _POST_ROUTES
            if path not in routes:
                if path in _GET_ROUTES or path in _POST_ROUTES:
                    raise HTTPError(405, f"{method} {path}: method not allowed")
                raise HTTPError(404, f"no route {method} {shown(path)} (routes: {', '.join([*_GET_ROUTES, *_POST_ROUTES])})")
            body = parse_body(raw) if method == "POST" else {}
            endpoint = getattr(self.server, routes[path])
            result = endpoint(body, client=self) if routes[path] == "completions" else endpoint(body)
            if isinstance(result, _EventStream):
                self._send_events(result)
            else:
                self._send(200, result)
        except _ClientGone:
            self.close_connection = True
            logger.info("%s %s: the client went away; its request was cancelled", method, path)
        except HTTPError as exc:
            self._send(exc.status, {"error": error_object(exc.status, exc.message, exc.param)})
        except Exception as exc:  # never a traceback in a response; one line in the log
            message = one_line(f"{type(exc).__name__}: {exc}")
            logger.error("%s %s failed: %s", method, path, message)
            self._send(500, {"error": error_object(500, f"{method} {shown(path)} failed: {message}")})

    def _send(self, status: int, result: dict | str) -> None:
        if isinstance(result, str):
            payload, content_type = result.encode("utf-8", "backslashreplace"), "text/plain; charset=utf-8"
        else:
            payload, content_type = json.dumps(result).encode("utf-8"), "application/json"
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(payload)
        except OSError:  # the client went away
            self.close_connection = True

    def _send_events(self, events: _EventStream) -> None:
        """Server-sent events in HTTP chunks, one ``data:`` line per event."""
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for event in events:
                data = f"data: {event if isinstance(event, str) else json.dumps(event)}\n\n".encode("utf-8")
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client went away: close() below cancels the generation
            self.close_connection = True
            logger.info("POST /v1/completions: the client went away during its stream; the request was cancelled")
        except Exception as exc:  # a failure after the status line: nothing to answer with but a closed stream
            self.close_connection = True
            logger.error("POST /v1/completions (stream) failed: %s", one_line(f"{type(exc).__name__}: {exc}"))
        finally:
            events.close()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - %s", self.address_string(), format % args)


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
    if not is_int(port) or not 0 <= port <= 65535:
        raise BackendError(f"--port {port}: must be between 0 and 65535 (0 picks a free port)")
    try:
        return CompletionServer(llm, host=host, port=port, served_model_name=served_model_name, limits=limits)
    except OSError as exc:
        raise listen_error(host, port, exc) from None


def serve(server: CompletionServer) -> int:
    """Serve on this thread until SIGINT (Ctrl-C) or SIGTERM, then shut down cleanly: stop
    accepting, cancel every request in flight (``server.stop()``) and close the backend.
    Returns the signal's number (0 when ``server.shutdown()`` stopped it). A second signal
    while shutting down ends the process at once."""
    fired: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        if fired:
            os._exit(128 + signum)
        fired.append(signum)
        raise _Stopped(signum)

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    signum = 0
    try:
        server.serve_forever()
    except _Stopped as stop:
        signum = stop.signum
    except KeyboardInterrupt:
        signum = signal.SIGINT
    finally:
        try:
            logger.info("stopping: %d request(s) in flight cancelled", server.stop())
            server.llm.close()
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
    return int(signum)
