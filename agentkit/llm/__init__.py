"""Model backends behind one protocol (``base.LLM``), and ``load_backend`` to build one by name.

Importing this package stays light: torch, transformers and vLLM load inside
``load_backend`` (and the backend modules), never here.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from agentkit.errors import BackendError
from agentkit.llm.base import LLM, Completion, GenerationRequest, mean_logprob

__all__ = ["LLM", "GenerationRequest", "Completion", "mean_logprob", "BACKENDS", "DEFAULT_BASE_URL", "load_backend"]

BACKENDS = ("transformers", "openai", "vllm")
"""What ``load_backend`` builds. The scripted test backend is deliberately not one of them."""

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"

_VLLM_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def load_backend(
    backend: str,
    model: str | None = None,
    *,
    base_url: str | None = None,
    dtype: str = "auto",
    **kw: Any,
) -> LLM:
    """A ready backend by name: ``transformers`` (in process), ``openai`` (a client of any
    OpenAI-compatible server) or ``vllm`` (in-process vLLM on a GPU).

    ``model``: for transformers and vllm, a name, local directory or Hugging Face id as
    ``resolve_model`` takes it (None: the embedded default); for openai, the model name the
    server serves (None: the first model it lists). ``base_url`` is for openai only.
    ``kw`` goes to the backend's constructor (``max_batch=``, ``device=`` for transformers;
    ``api_key=``, ``timeout=`` for openai; engine arguments for vllm).

    A bad model name, a missing extra or a dead server fails here with a one-line
    BackendError, before anything heavy loads where that can be checked first.
    """
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if base_url is not None and backend != "openai":
        raise BackendError(f"a base URL is for the openai backend, not {backend!r}; drop --base-url or use --backend openai")

    if backend == "openai":
        from agentkit.llm.openai import OpenAIClientLLM

        llm = OpenAIClientLLM(base_url or DEFAULT_BASE_URL, model=model, **kw)
        if model is not None:
            # without a model name the client already asked the server for its models;
            # with one, ask now, so a dead server fails before any run starts
            llm.list_adapters()
        return llm

    from agentkit.llm.models import DEFAULT_MODEL, resolve_model

    model = model or DEFAULT_MODEL
    if backend == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise BackendError("the vllm backend needs vLLM and a GPU: pip install 'agentkit[vllm]'")
        path = resolve_model(model)
        from agentkit.llm.vllm import VLLMBackend

        llm = VLLMBackend(str(path), dtype=_VLLM_DTYPES.get(dtype, dtype), **kw)
        llm.model_name = model  # record the name the user gave, not the cache directory
        return llm

    resolve_model(model)  # a bad name or path fails here, before torch is imported
    from agentkit.llm.transformers import TransformersLLM

    return TransformersLLM(model, dtype=dtype, **kw)
