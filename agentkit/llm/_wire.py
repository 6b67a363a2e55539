"""The OpenAI completions wire format as the server reads and writes it: request fields
checked one by one (a 400 names the field), and error objects."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["ERROR_TYPES", "HTTPError", "error_object", "one_line", "field", "is_int", "is_number",
           "parse_body", "parse_prompts", "parse_stop"]

ERROR_TYPES = {
    400: "BadRequestError", 404: "NotFoundError", 405: "MethodNotAllowedError", 411: "LengthRequiredError",
    413: "RequestTooLargeError", 500: "InternalServerError", 503: "ServiceUnavailableError", 504: "TimeoutError",
}


class HTTPError(Exception):
    """A request the server answers with ``status`` and a one-line ``message``."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


def error_object(status: int, message: str, param: str | None = None) -> dict:
    return {"message": message, "type": ERROR_TYPES.get(status, "Error"), "param": param, "code": status}


def one_line(text: object) -> str:
    return " ".join(str(text).split())


# --- request parsing ---------------------------------------------------------------------


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def field(body: dict, name: str, default: Any, check, expected: str) -> Any:
    """``body[name]`` (``default`` when absent or null), or a 400 naming the field."""
    value = body.get(name)
    if value is None:
        return default
    if not check(value):
        raise HTTPError(400, f"{name}={json.dumps(value)}: must be {expected}", param=name)
    return value


def parse_prompts(prompt: Any) -> list[str | list[int]]:
    """A string, a list of token ids, or a list of either (one prompt each)."""

    def is_ids(p: Any) -> bool:  # the ids' range is the model's to check (CompletionServer)
        return isinstance(p, list) and bool(p) and all(is_int(t) for t in p)

    if isinstance(prompt, str):
        return [prompt]
    if is_ids(prompt):
        return [list(prompt)]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) or is_ids(p) for p in prompt):
        return [p if isinstance(p, str) else list(p) for p in prompt]
    if prompt is None:
        raise HTTPError(400, "prompt: required (a string or a list of token ids)", param="prompt")
    raise HTTPError(400, "prompt: must be a string, a list of token ids, or a list of those", param="prompt")


def parse_body(raw: bytes) -> dict:
    try:
        body = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HTTPError(400, f"request body is not valid JSON: {one_line(exc)}") from exc
    if not isinstance(body, dict):
        raise HTTPError(400, "request body must be a JSON object")
    return body


def parse_stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return tuple(value)
    raise HTTPError(400, f"stop={json.dumps(value)}: must be a string or a list of strings", param="stop")
