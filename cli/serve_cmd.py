"""``agentkit serve``: a model in process over an OpenAI-compatible API. Only
typer is imported at module level (see app.py)."""

from __future__ import annotations

from typing import Optional

import typer

from agentkit.cli._common import _load_backend, _quiet_hub, _require, _stderr_console

__all__ = ["serve"]


def serve(
    model: str = typer.Option("gemma-3-270m", help="gemma-3-270m, a local save_pretrained directory, or a Hugging Face id in the HF cache."),
    port: int = typer.Option(8000, help="TCP port (0 picks a free one)."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on: 127.0.0.1 is this machine only; 0.0.0.0 every interface."),
    dtype: str = typer.Option("auto", help="auto, bf16, fp16 or fp32."),
    backend: str = typer.Option("transformers", help="transformers (in process, CPU or GPU) or vllm (a GPU)."),
    max_batch: int = typer.Option(64, help="Most requests decoded together in one batch (transformers)."),
    max_tokens_limit: Optional[int] = typer.Option(
        None, show_default="the model's context length", help="Largest max_tokens one request may ask for; above it, a 400."
    ),
    max_body_mb: float = typer.Option(16.0, help="Largest request body in MB; above it, a 413."),
    request_timeout: float = typer.Option(600.0, help="Seconds one completion may run before it is cancelled with a 504."),
) -> None:
    """Serve a model in process over an OpenAI-compatible API (completions and chat, streaming too), until Ctrl-C or SIGTERM."""
    _require(backend in ("transformers", "vllm"), f"--backend {backend}: serve runs transformers or vllm; "
             "to relay another server, point clients at it directly")
    _require(max_batch >= 1, f"--max-batch {max_batch}: must be at least 1")
    _require(max_tokens_limit is None or max_tokens_limit >= 1, f"--max-tokens-limit {max_tokens_limit}: must be at least 1")
    _require(max_body_mb > 0, f"--max-body-mb {max_body_mb:g}: must be above 0")
    _require(request_timeout > 0, f"--request-timeout {request_timeout:g}: must be above 0 seconds")
    import signal

    # the server module brings Starlette and uvicorn: loaded here only, so `agentkit --help` stays fast
    from agentkit.llm.server import ServerLimits, check_listen_address, make_server
    from agentkit.llm.server import serve as serve_until_signal

    check_listen_address(host, port)  # a bad --host or --port fails now, not after the model load
    _quiet_hub()
    extra = {"max_batch": max_batch} if backend == "transformers" else {}
    llm = _load_backend(backend, model, spinner=_stderr_console().is_terminal, dtype=dtype, **extra)
    try:
        context = getattr(llm, "context_length", None)
        _require(max_tokens_limit is None or context is None or max_tokens_limit <= context,
                 f"--max-tokens-limit {max_tokens_limit}: above {model}'s context length of {context} tokens; "
                 f"pass at most {context}")
        limits = ServerLimits(max_tokens=max_tokens_limit, max_body_bytes=int(max_body_mb * 2**20),
                              request_timeout_s=request_timeout)
        server = make_server(llm, host=host, port=port, limits=limits)
    except BaseException:
        llm.close()
        raise
    typer.echo(f"serving {llm.model_name} at {server.url}")
    typer.echo(f"use it with: agentkit run --backend openai --base-url {server.url}", err=True)
    signum = serve_until_signal(server)  # until SIGINT or SIGTERM; then in-flight requests are cancelled
    stopped_by = signal.Signals(signum).name if signum else "shutdown"
    typer.echo(f"stopped ({stopped_by}); {server.cancelled_on_stop} request(s) in flight cancelled", err=True)
    if signum == signal.SIGINT:
        raise typer.Exit(130)

