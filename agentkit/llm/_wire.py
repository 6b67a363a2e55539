"""The OpenAI completions wire format as the server reads and writes it: request fields
checked one by one (a 400 names the field), and error objects."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["ERROR_TYPES", "HTTPError", "error_object", "one_line", "shown", "field", "is_int", "is_number",
           "check_unicode", "parse_body", "parse_prompts", "parse_stop"]

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


def shown(text: object) -> str:
    """``text`` for a one-line message, unquoted: as repr escapes it (control characters,
    line separators, lone surrogates as escapes), so that a client's name cannot break the
    line."""
    value = text if isinstance(text, str) else json.dumps(text, default=str)
    return repr(value)[1:-1]


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
    """The JSON object of a request body, its text all valid Unicode, or a 400."""
    try:
        body = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HTTPError(400, f"request body is not valid JSON: {one_line(exc)}") from exc
    except RecursionError:  # arrays or objects nested deeper than the parser goes
        raise HTTPError(400, "request body is not valid JSON here: nested too deeply for this server to read") from None
    except ValueError as exc:  # Python's limit on the digits of an integer (4300 by default)
        raise HTTPError(400, "request body is not valid JSON here: a number with more digits than this server reads "
                             f"({one_line(str(exc).split(';')[0])})") from None
    if not isinstance(body, dict):
        raise HTTPError(400, "request body must be a JSON object")
    check_unicode(body)
    return body


def _bad_unicode(text: str) -> int | None:
    """Where ``text`` stops being encodable as UTF-8 (a lone surrogate), or None."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def check_unicode(body: dict) -> None:
    """A 400 naming the field when any string in ``body`` is not valid Unicode: JSON's
    ``\\ud800`` escapes decode to a lone surrogate, which no tokenizer (nor UTF-8) takes.
    Walked without recursion (the parser bounds the depth, not this walk)."""
    stack: list[tuple[str, str, Any]] = [(key, key, value) for key, value in body.items()]
    while stack:
        param, name, value = stack.pop()
        if isinstance(value, str):
            at = _bad_unicode(value)
            if at is not None:
                raise HTTPError(400, f"{shown(name)}: text must be valid Unicode; character {at} is a lone surrogate "
                                     f"({shown(value[at])})", param=param if shown(param) == param else None)
        elif isinstance(value, list):
            stack.extend((param, f"{name}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, dict):
            stack.extend((param, f"{name}.{k}", v) for k, v in value.items())


def parse_stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return tuple(value)
    raise HTTPError(400, f"stop={json.dumps(value)}: must be a string or a list of strings", param="stop")
