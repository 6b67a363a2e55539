"""The OpenAI-compatible client's checks before any request: a --base-url that is not a
server URL fails at once in one line, and a server that does not accept connections is
found within the connect timeout, not after minutes of silence."""

from __future__ import annotations

import socket
import time

import pytest

from agentkit.errors import BackendError
from agentkit.llm.openai import OpenAIClientLLM, check_base_url


@pytest.mark.parametrize("url, needle", [
    ("notaurl", "--base-url notaurl: not a server URL"),
    ("127.0.0.1:8000/v1", "--base-url 127.0.0.1:8000/v1: not a server URL"),
    ("ftp://127.0.0.1/v1", "--base-url ftp://127.0.0.1/v1: not a server URL"),
    ("http:///v1", "--base-url http:///v1: not a server URL"),
    ("http://127.0.0.1:99999/v1", "--base-url http://127.0.0.1:99999/v1: the port is not 0-65535"),
    # urlsplit's ValueError escaped as a traceback before
    ("http://[::1", "--base-url http://[::1: not a server URL (Invalid IPv6 URL)"),
    ("http://[nope]:8000/v1", "--base-url http://[nope]:8000/v1: not a server URL ("),
    ("no\nurl", "--base-url no\\nurl: not a server URL"),  # the newline shown escaped, on one line
])
def test_a_base_url_that_is_not_a_server_url_fails_at_once(url, needle):
    start = time.perf_counter()
    with pytest.raises(BackendError) as info:
        OpenAIClientLLM(url, model="m")
    assert time.perf_counter() - start < 1.0
    message = str(info.value)
    assert needle in message and "http://127.0.0.1:8000/v1" in message and "\n" not in message


def test_an_unclosed_ipv6_base_url_is_a_one_line_error_in_the_cli(tmp_path):
    from typer.testing import CliRunner

    from agentkit.cli.app import app

    env = {"AGENTKIT_STORE": str(tmp_path / "runs.db"), "AGENTKIT_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    result = CliRunner().invoke(app, ["run", "--backend", "openai", "--base-url", "http://[::1"], env=env)
    assert result.exit_code == 1 and not isinstance(result.exception, ValueError)
    assert result.stderr.startswith("error: --base-url http://[::1: not a server URL (Invalid IPv6 URL)")
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stdout + result.stderr


def test_check_base_url_names_the_flag_it_checks():
    assert check_base_url("http://127.0.0.1:8000/v1/") == "http://127.0.0.1:8000/v1/"
    with pytest.raises(BackendError, match="--serve-url nope: not a server URL"):
        check_base_url("nope", flag="--serve-url")


@pytest.fixture
def silent_host(monkeypatch):
    """A server address whose connections never complete (as a dropped SYN behaves)."""

    def never(address, timeout=None, *args, **kwargs):
        time.sleep(timeout if timeout is not None else 600)
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", never)
    return "http://10.255.255.1:8000/v1"


def test_a_server_that_never_accepts_is_found_within_the_connect_timeout(silent_host):
    start = time.perf_counter()
    with pytest.raises(BackendError) as info:
        OpenAIClientLLM(silent_host, connect_timeout=0.5)  # asks the server for its models
    took = time.perf_counter() - start
    assert took < 3.0, f"took {took:.1f} s"
    assert "10.255.255.1:8000" in str(info.value) and "0.5 s" in str(info.value)


def test_every_request_gets_the_connect_timeout(silent_host):
    client = OpenAIClientLLM(silent_host, model="m", connect_timeout=0.5, timeout=120)  # no request yet
    start = time.perf_counter()
    with pytest.raises(BackendError, match="within 0.5 s"):
        client.list_adapters()
    assert time.perf_counter() - start < 3.0


def test_the_default_connect_timeout_is_a_few_seconds():
    import inspect

    default = inspect.signature(OpenAIClientLLM).parameters["connect_timeout"].default
    assert 1 <= default <= 10


def test_a_server_that_returns_no_logprobs_for_zero_is_asked_for_one_alternative():
    """vLLM and agentkit serve return the sampled tokens' logprobs for logprobs=0, so the
    client asks for no alternatives (each costs the server a scoring pass). A server that
    reads 0 as "none", as llama.cpp's does, is asked again with 1, and with 1 from then on."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from agentkit.llm.base import GenerationRequest

    asked: list[int] = []

    class LlamaLike(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            asked.append(body["logprobs"])
            choice = {"index": 0, "text": "42", "finish_reason": "stop", "prompt_token_ids": [2, 5]}
            if body["logprobs"]:
                choice["logprobs"] = {"content": [{"id": 7, "token": "4", "logprob": -0.5},
                                                  {"id": 8, "token": "2", "logprob": -0.25}]}
            out = json.dumps({"model": body["model"], "choices": [choice]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), LlamaLike)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = OpenAIClientLLM(f"http://127.0.0.1:{server.server_port}/v1", model="m")
        for _ in range(2):
            (completion,), = client.generate([GenerationRequest("Q", max_tokens=4)])
            assert completion.token_ids == [7, 8] and completion.logprobs == [-0.5, -0.25]
    finally:
        server.shutdown()
    assert asked == [0, 1, 1]
