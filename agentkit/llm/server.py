"""agentkit's own OpenAI-compatible completions server over any ``LLM``.

Request and response shapes follow vLLM's ``/v1/completions`` (including its
``return_tokens_as_token_ids`` / ``return_token_ids`` extensions and the runtime LoRA
endpoints), so ``OpenAIClientLLM`` talks to ``agentkit serve`` and ``vllm serve`` alike.

Every HTTP request runs in its own thread and calls ``llm.generate`` for itself alone: a
batching backend gathers concurrent HTTP requests into one batch.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from agentkit.errors import BackendError
from agentkit.llm.base import Completion, GenerationRequest, LLM

__all__ = ["CompletionServer", "make_server", "serve"]

logger = logging.getLogger(__name__)

_ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 405: "MethodNotAllowedError", 500: "InternalServerError"}


class _HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


# --- request parsing ---------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _field(body: dict, name: str, default: Any, check, expected: str) -> Any:
    """``body[name]`` (``default`` when absent or null), or a 400 naming the field."""
    value = body.get(name)
    if value is None:
        return default
    if not check(value):
        raise _HTTPError(400, f"{name}={json.dumps(value)}: must be {expected}")
    return value


def _parse_prompts(prompt: Any) -> list[str | list[int]]:
    """A string, a list of token ids, or a list of either (one prompt each)."""

    def is_ids(p: Any) -> bool:
        return isinstance(p, list) and bool(p) and all(_is_int(t) and t >= 0 for t in p)

    if isinstance(prompt, str):
        return [prompt]
    if is_ids(prompt):
        return [list(prompt)]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) or is_ids(p) for p in prompt):
        return [p if isinstance(p, str) else list(p) for p in prompt]
    if prompt is None:
        raise _HTTPError(400, "prompt: required (a string or a list of token ids)")
    raise _HTTPError(400, "prompt: must be a string, a list of token ids, or a list of those")


def _parse_body(raw: bytes) -> dict:
    try:
        body = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _HTTPError(400, f"request body is not valid JSON: {_one_line(exc)}") from exc
    if not isinstance(body, dict):
        raise _HTTPError(400, "request body must be a JSON object")
    return body


def _parse_stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return tuple(value)
    raise _HTTPError(400, f"stop={json.dumps(value)}: must be a string or a list of strings")


# --- the server --------------------------------------------------------------------------


class CompletionServer(ThreadingHTTPServer):
    """A ``ThreadingHTTPServer`` serving one ``LLM``; ``.port`` is the bound port."""

    daemon_threads = True

    def __init__(self, llm: LLM, host: str = "127.0.0.1", port: int = 8000, served_model_name: str | None = None):
        self.llm = llm
        self.model_name = served_model_name or llm.model_name
        self._started = threading.Event()
        super().__init__((host, port), _Handler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.server_address[0]}:{self.port}/v1"

    def serve_forever(self, poll_interval: float = 0.1) -> None:
        self._started.set()
        super().serve_forever(poll_interval)

    def shutdown(self) -> None:
        """Stop ``serve_forever`` (running in another thread) and close the socket."""
        if self._started.is_set():  # the stdlib's shutdown() waits forever otherwise
            super().shutdown()
        self.server_close()

    # --- endpoints: each takes the parsed JSON body and returns a JSON object or text;
    # --- failures raise _HTTPError

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
        served = ", ".join([self.model_name, *adapters])
        raise _HTTPError(404, f"The model `{model}` does not exist (served: {served}).")

    def completions(self, body: dict) -> dict:
        prompts = _parse_prompts(body.get("prompt"))
        adapter = self._adapter_for(body.get("model"))
        n = _field(body, "n", 1, lambda v: _is_int(v) and v >= 1, "an integer >= 1")
        max_tokens = _field(body, "max_tokens", 16, lambda v: _is_int(v) and v >= 0, "an integer >= 0")
        temperature = _field(body, "temperature", 1.0, lambda v: _is_number(v) and v >= 0, "a number >= 0")
        top_p = _field(body, "top_p", 1.0, lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]")
        top_k = _field(body, "top_k", 0, lambda v: _is_int(v) and v >= -1, "an integer >= 1, or -1 / 0 for no cut")
        seed = _field(body, "seed", None, _is_int, "an integer")
        logprobs = _field(body, "logprobs", None, lambda v: _is_int(v) and v >= 0, "an integer >= 0")
        echo = _field(body, "echo", False, lambda v: isinstance(v, bool), "true or false")
        as_ids = _field(body, "return_tokens_as_token_ids", False, lambda v: isinstance(v, bool), "true or false")
        stop = _parse_stop(body.get("stop"))
        try:
            requests = [
                GenerationRequest(
                    prompt=p, n=n, temperature=float(temperature), top_p=float(top_p), top_k=max(top_k, 0),
                    max_tokens=max_tokens, stop=stop, seed=seed, adapter=adapter,
                )
                for p in prompts
            ]
        except ValueError as exc:
            raise _HTTPError(400, _one_line(exc)) from exc

        if max_tokens == 0:  # pure scoring (echo): nothing to sample
            results = [[self._empty(r) for _ in range(n)] for r in requests]
        else:
            results = self.llm.generate(requests)

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
            raise _HTTPError(400, "prompt: required (a string)")
        add_special = _field(body, "add_special_tokens", True, lambda v: isinstance(v, bool), "true or false")
        tokens = self.llm.tokenize(prompt)
        if not add_special:
            special = self.llm.tokenize("")  # what the backend adds around any text (BOS)
            if special and tokens[: len(special)] == special:
                tokens = tokens[len(special):]
        return {"tokens": tokens, "count": len(tokens)}

    def detokenize(self, body: dict) -> dict:
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise _HTTPError(400, "tokens: required (a list of token ids)")
        return {"prompt": self.llm.decode(tokens)}

    def load_lora_adapter(self, body: dict) -> str:
        name, path = body.get("lora_name"), body.get("lora_path")
        if not isinstance(name, str) or not name:
            raise _HTTPError(400, "lora_name: required (a string)")
        if not isinstance(path, str) or not path:
            raise _HTTPError(400, "lora_path: required (a string)")
        if name == self.model_name:
            raise _HTTPError(400, f"lora_name={name!r}: is the base model's name; pick another")
        try:
            self.llm.load_adapter(name, path)
        except Exception as exc:  # the backend's own reason (missing dir, wrong base model...)
            raise _HTTPError(400, f"cannot load LoRA adapter '{name}' from {path}: {_one_line(exc)}") from exc
        return f"Success: LoRA adapter '{name}' added successfully."

    def unload_lora_adapter(self, body: dict) -> str:
        name = body.get("lora_name")
        if not isinstance(name, str) or not name:
            raise _HTTPError(400, "lora_name: required (a string)")
        if name not in self.llm.list_adapters():
            loaded = ", ".join(self.llm.list_adapters()) or "none"
            raise _HTTPError(404, f"The lora adapter '{name}' cannot be found (loaded: {loaded}).")
        self.llm.unload_adapter(name)
        return f"Success: LoRA adapter '{name}' removed successfully."


_GET_ROUTES = {"/v1/models": "models", "/health": "health"}
_POST_ROUTES = {
    "/v1/completions": "completions",
    "/tokenize": "tokenize",
    "/detokenize": "detokenize",
    "/v1/load_lora_adapter": "load_lora_adapter",
    "/v1/unload_lora_adapter": "unload_lora_adapter",
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every response carries Content-Length
    server: CompletionServer

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        path = urlsplit(self.path).path.rstrip("/") or "/"
        length = self.headers.get("Content-Length", "0").strip()
        raw = self.rfile.read(int(length)) if length.isdigit() else b""  # always drained, for keep-alive
        try:
            routes = _GET_ROUTES if method == "GET" else _POST_ROUTES
            if path not in routes:
                if path in _GET_ROUTES or path in _POST_ROUTES:
                    raise _HTTPError(405, f"{method} {path}: method not allowed")
                raise _HTTPError(404, f"no route {method} {path} (routes: {', '.join([*_GET_ROUTES, *_POST_ROUTES])})")
            body = _parse_body(raw) if method == "POST" else {}
            self._send(200, getattr(self.server, routes[path])(body))
        except _HTTPError as exc:
            self._send_error(exc.status, exc.message)
        except Exception as exc:  # never a traceback in a response; one line in the log
            message = _one_line(f"{type(exc).__name__}: {exc}")
            logger.error("%s %s failed: %s", method, path, message)
            self._send_error(500, f"{method} {path} failed: {message}")

    def _send_error(self, status: int, message: str) -> None:
        error = {"message": message, "type": _ERROR_TYPES.get(status, "Error"), "param": None, "code": status}
        self._send(status, {"error": error})

    def _send(self, status: int, result: dict | str) -> None:
        if isinstance(result, str):
            payload, content_type = result.encode("utf-8"), "text/plain; charset=utf-8"
        else:
            payload, content_type = json.dumps(result).encode("utf-8"), "application/json"
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:  # the client went away
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - %s", self.address_string(), format % args)


def make_server(llm: LLM, host: str = "127.0.0.1", port: int = 8000, served_model_name: str | None = None) -> CompletionServer:
    """A bound, not yet running server: call ``.serve_forever()`` (e.g. in a thread) and
    ``.shutdown()``. ``port=0`` picks a free port, read it back from ``.port``."""
    try:
        return CompletionServer(llm, host=host, port=port, served_model_name=served_model_name)
    except OSError as exc:
        raise BackendError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port") from None


def serve(llm: LLM, host: str = "127.0.0.1", port: int = 8000, served_model_name: str | None = None) -> None:
    """Serve ``llm`` until interrupted (Ctrl-C)."""
    server = make_server(llm, host=host, port=port, served_model_name=served_model_name)
    logger.info("serving %s at %s", server.model_name, server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
