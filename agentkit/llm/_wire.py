"""The OpenAI wire format as the server reads and writes it: request bodies as pydantic
models (a bad field is a 400 whose one-line message names it), and error objects."""

from __future__ import annotations

import itertools
import json
import types
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

__all__ = ["ERROR_TYPES", "HTTPError", "error_object", "joined_logprobs", "one_line", "shown", "parse_body", "validate",
           "Sampling", "CompletionRequest", "ChatRequest", "TokenizeRequest", "DetokenizeRequest", "LoadLoraRequest",
           "UnloadLoraRequest"]

ERROR_TYPES = {
    400: "BadRequestError", 404: "NotFoundError", 405: "MethodNotAllowedError", 408: "RequestTimeoutError",
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


def joined_logprobs(*parts: dict, offset: int = 0) -> dict:
    """Legacy logprobs ``parts`` one after the other, each token given its ``text_offset``:
    where its string starts, counting from ``offset``."""
    tokens = [t for part in parts for t in part["tokens"]]
    tops = [part["top_logprobs"] for part in parts]
    return {"tokens": tokens, "token_logprobs": [v for part in parts for v in part["token_logprobs"]],
            "top_logprobs": None if None in tops else [t for top in tops for t in top],
            "text_offset": list(itertools.accumulate(map(len, tokens[:-1]), initial=offset)) if tokens else []}


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def shown(text: object) -> str:
    """``text`` for a one-line message, unquoted: as repr escapes it (control characters,
    line separators, lone surrogates as escapes), so that a client's name cannot break the
    line."""
    value = text if isinstance(text, str) else json.dumps(text, default=str)
    return repr(value)[1:-1]


# --- request bodies ----------------------------------------------------------------------
# Each field's description is what the 400 says it must be: "n=0: must be an integer >= 1".


class _Body(BaseModel):
    # strict: 1 is not true and "3" is not 3; unknown fields (user, presence_penalty...) are ignored
    model_config = ConfigDict(strict=True, extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


class StreamOptions(_Body):
    include_usage: bool = Field(False, description="true or false")


class Sampling(_Body):
    """What /v1/completions and /v1/chat/completions share."""

    model: str | None = Field(None, description="a model name from /v1/models")
    n: int = Field(1, ge=1, description="an integer >= 1")
    temperature: float = Field(1.0, ge=0, allow_inf_nan=False, description="a number >= 0")
    top_p: float = Field(1.0, gt=0, le=1, description="a number in (0, 1]")
    top_k: int = Field(0, ge=-1, description="an integer >= 1, or -1 / 0 for no cut")
    seed: int | None = Field(None, description="an integer")
    stop: str | list[str] = Field((), description="a string or a list of strings")
    stop_token_ids: list[int] = Field([], description="a list of token ids")
    allowed_token_ids: list[int] | None = Field(None, min_length=1, description="a non-empty list of token ids")
    stream: bool = Field(False, description="true or false")
    stream_options: StreamOptions = Field(default_factory=StreamOptions, description='an object, e.g. {"include_usage": true}')

    @property
    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class CompletionRequest(Sampling):
    prompt: Any = Field(description="a string, a list of token ids, or a list of those")
    """Normalised by the validator to a list of prompts, each text or token ids."""
    max_tokens: int = Field(16, ge=0, description="an integer >= 0")
    logprobs: int | None = Field(None, ge=0, le=5, description="an integer from 0 to 5")
    """OpenAI's legacy API: the log-probability of each token and of the ``logprobs`` most
    likely tokens at its position (at most 5)."""
    echo: bool = Field(False, description="true or false")
    return_tokens_as_token_ids: bool = Field(False, description="true or false")

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, prompt: Any) -> list[str | list[int]]:
        def is_ids(p: Any) -> bool:  # the ids' range is the model's to check (the server)
            return isinstance(p, list) and bool(p) and all(isinstance(t, int) and not isinstance(t, bool) for t in p)

        if isinstance(prompt, str):
            return [prompt]
        if is_ids(prompt):
            return [list(prompt)]
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) or is_ids(p) for p in prompt):
            return [p if isinstance(p, str) else list(p) for p in prompt]
        raise PydanticCustomError("agentkit", "must be a string, a list of token ids, or a list of those")


class TextPart(_Body):
    type: Literal["text"] = Field(description='"text"')
    text: str = Field(description="a string")


class ChatMessage(_Body):
    role: str = Field(description="a string: system, user or assistant")
    content: str | list[TextPart] = Field(description='a string, or a list of {"type": "text", "text": ...} parts')

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ChatRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1, description='a list of {"role": ..., "content": ...} messages')
    max_tokens: int | None = Field(None, ge=0, description="an integer >= 0")
    """None: as many as the model's context (and the server's ceiling) leave."""
    max_completion_tokens: int | None = Field(None, ge=0, description="an integer >= 0")
    """OpenAI's newer name for max_tokens; it wins when both are given."""
    logprobs: bool = Field(False, description="true or false")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="an integer from 0 to 20")


class TokenizeRequest(_Body):
    prompt: str = Field(description="a string")
    add_special_tokens: bool = Field(True, description="true or false")


class DetokenizeRequest(_Body):
    tokens: list[int] = Field(description="a list of token ids")


class LoadLoraRequest(_Body):
    lora_name: str = Field(min_length=1, description="a string")
    lora_path: str = Field(min_length=1, description="a string")


class UnloadLoraRequest(_Body):
    lora_name: str = Field(min_length=1, description="a string")


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds, directly, in a list, or in a union (``content: str | list[TextPart]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (list, Union, types.UnionType):
        return next((m for m in map(_submodel, get_args(annotation)) if m is not None), None)
    return None


def _error(model: type[BaseModel], body: dict, error: dict) -> HTTPError:
    """The first validation error as a 400 naming the field: ``messages[1].role``, its value
    when it is a scalar, and what the field must be. A union's branch names in the error's
    location ("str", "list[str]") and list indexes that lead nowhere are left out."""
    name, param, value, description = "", None, body, ""
    fields, pending, at = model.model_fields, "", body  # at: the value under the named path
    for part in error["loc"]:
        if isinstance(part, int) and isinstance(value, list) and part < len(value):
            pending += f"[{part}]"
            value = value[part]
        elif isinstance(part, str) and fields is not None and part in fields and isinstance(value, dict):
            name += pending + ("." if name else "") + part
            param, pending = param or part, ""
            value = at = value.get(part)
            field = fields[part]
            description = field.description or ""
            sub = _submodel(field.annotation)
            fields = sub.model_fields if sub else None
        else:
            break
    if error["type"] == "missing":
        message = f"{name}: required ({description})"
    elif error["type"] == "agentkit":
        message = f"{name}: {error['msg']}"
    elif error["type"] in ("string_too_short", "too_short"):
        message = f"{name}: must not be empty"
    elif isinstance(at, (dict, list)):
        message = f"{name}: must be {description}"
    else:
        text = json.dumps(at)
        message = f"{name}={text if len(text) <= 60 else text[:57] + '...'}: must be {description}"
    return HTTPError(400, message if name else f"request body: {one_line(error['msg'])}", param=param)


def validate(model: type[BaseModel], body: dict) -> Any:
    """``body`` as ``model``, or a 400 naming the first bad field."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise _error(model, body, exc.errors()[0]) from None


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
