"""An ``LLM`` over any OpenAI-compatible completions server: ``vllm serve``, llama.cpp's
server, or ``agentkit serve``.

Requests ask for logprobs and exact token ids (vLLM's ``return_token_ids``, >= 0.10, and
``return_tokens_as_token_ids``), so completions carry the ids the server sampled and
training never re-tokenizes. Requests of one ``generate`` call go out in parallel so that
a batching server batches them.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence
from urllib.parse import urlsplit

from agentkit.errors import BackendError
from agentkit.llm.base import Completion, GenerationRequest

__all__ = ["OpenAIClientLLM", "check_base_url"]

_TOKEN_ID = re.compile(r"token_id:(\d+)")
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_EXAMPLE_URL = "http://127.0.0.1:8000/v1"


def check_base_url(url: str, flag: str = "--base-url") -> str:
    """``url`` if it is a server's API root (http or https, a host, a valid port), else a
    one-line BackendError at once, before anything waits on the network."""
    shown = repr(url)[1:-1] if isinstance(url, str) else repr(url)  # a control character cannot break the line
    try:
        parts = urlsplit(url.strip()) if isinstance(url, str) else None
    except ValueError as exc:  # e.g. "Invalid IPv6 URL": an unclosed or invalid [host]
        raise BackendError(f"{flag} {shown}: not a server URL ({' '.join(str(exc).split())}); pass the server's API root "
                           f"with its scheme and host, e.g. {flag} {_EXAMPLE_URL}") from None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise BackendError(f"{flag} {shown}: not a server URL; pass the server's API root with its scheme and host, "
                           f"e.g. {flag} {_EXAMPLE_URL}")
    try:
        parts.port
    except ValueError:
        raise BackendError(f"{flag} {shown}: the port is not 0-65535; pass e.g. {flag} {_EXAMPLE_URL}") from None
    return url


class _ConnectTimeout(OSError):
    """No connection to the server within the connect timeout."""


def _connector(connect_timeout: float) -> Any:
    """http.client's ``_create_connection`` with its own, shorter timeout for connecting;
    the socket then waits for answers with the request's timeout."""

    def create_connection(address: Any, timeout: Any = None, source_address: Any = None) -> socket.socket:
        limit = connect_timeout if not isinstance(timeout, (int, float)) else min(timeout, connect_timeout)
        try:
            sock = socket.create_connection(address, limit, source_address)
        except (TimeoutError, socket.timeout):
            raise _ConnectTimeout(f"no connection within {connect_timeout:g} s") from None
        sock.settimeout(timeout if isinstance(timeout, (int, float)) else None)
        return sock

    return create_connection


def _connecting_with(cls: Any, connect: Any) -> Any:
    """A connection class for urllib's ``do_open`` whose connections connect with ``connect``."""

    def make(*args: Any, **kwargs: Any) -> Any:
        conn = cls(*args, **kwargs)
        conn._create_connection = connect
        return conn

    return make


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, connect_timeout: float):
        super().__init__()
        self._connect = _connector(connect_timeout)

    def http_open(self, req: Any) -> Any:
        return self.do_open(_connecting_with(http.client.HTTPConnection, self._connect), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, connect_timeout: float):
        super().__init__()
        self._connect = _connector(connect_timeout)

    def https_open(self, req: Any) -> Any:
        return self.do_open(_connecting_with(http.client.HTTPSConnection, self._connect), req, context=self._context)


class _HTTPStatusError(BackendError):
    """The server answered with an error status."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def _server_message(raw: bytes) -> str:
    """The one-line reason from an error body: OpenAI/vLLM ``{"error": {"message"}}``,
    older vLLM's flat ``{"message"}``, FastAPI's ``{"detail"}``, or plain text."""
    text = raw.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            text = str(error["message"])
        elif isinstance(error, str):
            text = error
        elif data.get("message"):
            text = str(data["message"])
        elif data.get("detail"):
            text = str(data["detail"])
    return " ".join(text.split())[:500] or "(empty body)"


class OpenAIClientLLM:
    """``base_url`` is the server's API root, e.g. ``http://127.0.0.1:8000/v1``; ``model``
    defaults to the first model the server lists."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000/v1",
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 120,
        max_workers: int = 64,
        connect_timeout: float = 5.0,
    ):
        """``timeout``: seconds a request may wait for the server's answer; ``connect_timeout``:
        seconds to reach it at all, so a dead or silent address fails in seconds."""
        root = check_base_url(base_url).strip().rstrip("/")
        root = root[: -len("/v1")] if root.endswith("/v1") else root
        self._root = root
        self.base_url = root + "/v1"
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_workers = max_workers
        self._logprobs = 0
        """The sampled tokens' logprobs alone (vLLM, agentkit serve); 1 for a server that
        needs an alternative asked for to return any."""
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        # a proxy from the environment must not swallow requests to a local server
        local = urlsplit(root).hostname in _LOOPBACK
        handlers = [_HTTPHandler(connect_timeout), _HTTPSHandler(connect_timeout)]
        if local:
            handlers.append(urllib.request.ProxyHandler({}))
        self._opener = urllib.request.build_opener(*handlers)
        self.model_name = model or self._first_model()

    # --- HTTP ------------------------------------------------------------------------

    def _request(self, path: str, body: dict | None = None) -> Any:
        """GET (``body`` None) or POST JSON to ``root + path``; parsed JSON or text back."""
        url = self._root + path
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(url, data=data, headers=self._headers, method="GET" if body is None else "POST")
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise _HTTPStatusError(f"{url}: HTTP {exc.code}: {_server_message(exc.read())}", exc.code) from None
        except urllib.error.URLError as exc:
            raise self._unreachable(exc.reason) from None
        except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, cut-off answers
            raise self._unreachable(exc) from None
        text = raw.decode("utf-8", "replace")
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text

    def _unreachable(self, reason: object) -> BackendError:
        if isinstance(reason, _ConnectTimeout):
            port = urlsplit(self._root).port or 8000
            return BackendError(
                f"no server accepted a connection at {self.base_url} within {self.connect_timeout:g} s; "
                f"check the host and port, or start one with `agentkit serve --port {port}`"
            )
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return BackendError(
                f"the server at {self.base_url} did not answer within {self.timeout:g} s; "
                "pass a larger timeout or check that it is not stuck"
            )
        if isinstance(reason, ConnectionRefusedError):
            why = "connection refused"
        else:
            why = " ".join(str(getattr(reason, "strerror", None) or reason).split()) or type(reason).__name__
        port = urlsplit(self._root).port or 8000
        return BackendError(
            f"no OpenAI-compatible server answers at {self.base_url} ({why}); "
            f"start one with `agentkit serve --port {port}` or pass --base-url"
        )

    def _first_model(self) -> str:
        models = self._models()
        if not models:
            raise BackendError(f"the server at {self.base_url} lists no models (GET /v1/models); pass model=")
        return models[0]["id"]

    def _models(self) -> list[dict]:
        data = self._request("/v1/models")
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            raise BackendError(f"{self.base_url}/models did not return an OpenAI model list: {str(data)[:200]}")
        return data["data"]

    def _completions(self, body: dict) -> dict:
        data = self._request("/v1/completions", body)
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise BackendError(f"{self.base_url}/completions did not return completions: {str(data)[:200]}")
        if data.get("model") != body["model"]:
            # never pass off the base model's (or another adapter's) answer as the requested one
            raise BackendError(
                f"asked {self.base_url} for model {body['model']!r} but {data.get('model')!r} answered; "
                f"load the adapter first (loaded: {', '.join(self.list_adapters()) or 'none'})"
            )
        return data

    # --- the LLM protocol --------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        requests = list(requests)
        if len(requests) <= 1:
            return [self._generate_one(r) for r in requests]
        with ThreadPoolExecutor(max_workers=min(len(requests), self.max_workers)) as pool:
            return list(pool.map(self._generate_one, requests))

    def _generate_one(self, request: GenerationRequest) -> list[Completion]:
        body: dict[str, Any] = {
            "model": request.adapter or self.model_name,
            "prompt": request.prompt if isinstance(request.prompt, str) else list(request.prompt),
            "n": request.n,
            "temperature": request.temperature,  # 0 is greedy on every server
            "top_p": request.top_p,
            "top_k": request.top_k if request.top_k > 0 else -1,  # -1: off for vLLM old and new, llama.cpp
            "max_tokens": request.max_tokens,
            "logprobs": self._logprobs,
            "return_tokens_as_token_ids": True,
            "return_token_ids": True,
        }
        if request.stop:
            body["stop"] = list(request.stop)
        if request.stop_token_ids:  # vLLM's extension, also read by agentkit serve
            body["stop_token_ids"] = list(request.stop_token_ids)
        if request.allowed_token_ids is not None:  # vLLM's extension (a vLLM server logs whole-vocabulary logprobs; agentkit serve the restricted ones)
            body["allowed_token_ids"] = list(request.allowed_token_ids)
        if request.seed is not None:
            body["seed"] = request.seed
        start = time.perf_counter()
        data = self._completions(body)
        if self._logprobs == 0 and not all(isinstance(c.get("logprobs"), dict) for c in data["choices"]):
            # a server that reads logprobs=0 as "none" (llama.cpp): ask for one alternative from now on
            self._logprobs = body["logprobs"] = 1
            data = self._completions(body)
        latency = time.perf_counter() - start
        choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
        if len(choices) != request.n:
            raise BackendError(f"{self.base_url}/completions returned {len(choices)} choices for n={request.n}")
        prompt_ids: list[int] | None = None
        completions = []
        for choice in choices:
            token_ids, logprobs = self._tokens_and_logprobs(choice)
            ids = choice.get("prompt_token_ids") or data.get("prompt_token_ids")
            if ids is None:
                if prompt_ids is None:
                    prompt_ids = self._prompt_ids(request.prompt)
                ids = prompt_ids
            completions.append(
                Completion(
                    text=choice.get("text") or "",
                    token_ids=token_ids,
                    logprobs=logprobs,
                    finish_reason=choice.get("finish_reason") or "length",
                    prompt_ids=[int(t) for t in ids],
                    adapter=request.adapter,
                    latency_s=latency,
                )
            )
        return completions

    def _prompt_ids(self, prompt: str | Sequence[int]) -> list[int]:
        return list(prompt) if not isinstance(prompt, str) else self._tokenize(prompt, add_special=True)

    def _tokens_and_logprobs(self, choice: dict) -> tuple[list[int], list[float]]:
        lp = choice.get("logprobs")
        if not isinstance(lp, dict):
            raise BackendError(f"{self.base_url}/completions returned no logprobs; this server cannot serve training")
        ids = choice.get("token_ids")
        if isinstance(lp.get("content"), list):  # llama.cpp: [{"id", "token", "logprob"}, ...]
            logprobs = [e["logprob"] for e in lp["content"]]
            if ids is None and all("id" in e for e in lp["content"]):
                ids = [e["id"] for e in lp["content"]]
            strings = [e.get("token") for e in lp["content"]]
        else:
            logprobs, strings = lp.get("token_logprobs") or [], lp.get("tokens") or []
        if ids is None:
            matches = [_TOKEN_ID.fullmatch(s) if isinstance(s, str) else None for s in strings]
            if all(matches):
                ids = [int(m.group(1)) for m in matches]
        if ids is None:
            ids = self._completion_ids_by_tokenizing(choice.get("text") or "")
        if len(ids) != len(logprobs):
            raise BackendError(
                f"{self.base_url} returned {len(logprobs)} logprobs for {len(ids)} token ids; "
                "use a server that returns token ids (vLLM >= 0.10 or `agentkit serve`)"
            )
        return [int(t) for t in ids], [float(x) for x in logprobs]

    def _completion_ids_by_tokenizing(self, text: str) -> list[int]:
        try:
            return self._tokenize(text, add_special=False)
        except BackendError:
            raise BackendError(
                f"the server at {self.base_url} returns no token ids and has no /tokenize; "
                "use vLLM >= 0.10, a llama.cpp server, or `agentkit serve`"
            ) from None

    def score(self, prompt_ids: Sequence[int], completion_ids: Sequence[int], adapter: str | None = None) -> list[float]:
        prompt_ids, completion_ids = [int(t) for t in prompt_ids], [int(t) for t in completion_ids]
        if not completion_ids:
            return []
        if not prompt_ids:
            raise BackendError("score() needs at least one prompt token (the BOS from tokenize())")
        body = {
            "model": adapter or self.model_name,
            "prompt": prompt_ids + completion_ids,
            "echo": True,
            "max_tokens": 0,
            "logprobs": 1,
            "temperature": 0,
            "return_tokens_as_token_ids": True,
        }
        try:
            data = self._completions(body)
        except _HTTPStatusError as exc:
            if exc.status != 400:
                raise
            body["max_tokens"] = 1  # servers that refuse max_tokens=0; the extra token is ignored
            data = self._completions(body)
        values = ((data["choices"] or [{}])[0].get("logprobs") or {}).get("token_logprobs") or []
        start, end = len(prompt_ids), len(prompt_ids) + len(completion_ids)
        out = values[start:end]
        if len(out) != len(completion_ids) or any(v is None for v in out):
            raise BackendError(f"{self.base_url} did not return echo logprobs for all {end} prompt tokens")
        return [float(v) for v in out]

    def tokenize(self, text: str) -> list[int]:
        return self._tokenize(text, add_special=True)

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of ``token_ids`` via the server's /detokenize (vLLM and agentkit serve)."""
        data = self._request("/detokenize", {"model": self.model_name, "tokens": [int(t) for t in token_ids]})
        if not isinstance(data, dict) or not isinstance(data.get("prompt"), str):
            raise BackendError(f"{self._root}/detokenize did not return text: {str(data)[:200]}")
        return data["prompt"]

    def _tokenize(self, text: str, add_special: bool) -> list[int]:
        try:
            data = self._request("/tokenize", {"model": self.model_name, "prompt": text, "add_special_tokens": add_special})
        except _HTTPStatusError as exc:
            if exc.status in (404, 405):
                raise BackendError(f"the server at {self.base_url} has no /tokenize endpoint") from None
            data = None
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if not tokens and text:  # llama.cpp reads "content", and answers [] to "prompt"
            data = self._request("/tokenize", {"content": text, "add_special": add_special})
            tokens = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(tokens, list):
            raise BackendError(f"{self._root}/tokenize did not return a token list: {str(data)[:200]}")
        return [int(t["id"]) if isinstance(t, dict) else int(t) for t in tokens]

    def load_adapter(self, name: str, path: str) -> None:
        path = os.path.abspath(path) if os.path.exists(path) else str(path)  # the server resolves it
        if name in self.list_adapters():  # vLLM refuses to load a name twice: replace it
            self.unload_adapter(name)
        try:
            self._request("/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})
        except _HTTPStatusError as exc:
            if exc.status != 404:
                raise
            raise BackendError(
                f"{exc}; for vLLM start it with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"
            ) from None

    def unload_adapter(self, name: str) -> None:
        self._request("/v1/unload_lora_adapter", {"lora_name": name})

    def list_adapters(self) -> list[str]:
        return [m["id"] for m in self._models() if m.get("parent")]

    def close(self) -> None:
        pass  # no pooled connections to release
