"""One client cannot stall `agentkit serve` (issue 13): the max_tokens ceiling, cancellation
when a client goes away or runs past the timeout, body limits, streaming, arguments checked
before the model loads, and a clean stop on SIGINT/SIGTERM while busy.

The tiny random Gemma (conftest) decodes a 1000-token greedy row in ~20 s on a 2-core
machine, long enough to see a stall; every test that starts one ends it within seconds."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from agentkit.llm.scripted import ScriptedLLM
from agentkit.llm.server import ServerLimits, make_server

pytestmark = pytest.mark.timeout(120)

LONG = 1000  # tokens: the tiny model's context is 1024, so within the default ceiling


def start(llm, **limits):
    server = make_server(llm, port=0, limits=ServerLimits(**limits))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


def post(port: int, body: bytes | dict, timeout: float = 10, path: str = "/v1/completions") -> tuple[int, str]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def raw_request(port: int, body: dict) -> socket.socket:
    """A POST sent on a raw socket, left unread: the test decides when the client goes away."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
    return sock


def wait_for(condition, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def settled_tokens(llm, quiet: float = 0.3, timeout: float = 5.0) -> int:
    """The backend's generated-token count once it has not grown for ``quiet`` seconds: the
    step that was running when a request was cancelled finishes, then the batch is idle."""
    deadline = time.monotonic() + timeout
    count = llm.stats["generated_tokens"]
    while True:
        time.sleep(quiet)
        now = llm.stats["generated_tokens"]
        if now == count:
            return count
        assert time.monotonic() < deadline, "the backend is still generating"
        count = now


def events(response) -> list:
    """The `data:` payloads of a server-sent-event response, JSON-decoded except [DONE]."""
    out = []
    for line in response:
        line = line.decode().strip()
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


@pytest.fixture
def tiny_server(tiny_llm):
    server = start(tiny_llm)
    yield server
    server.stop(grace_s=1)


@pytest.fixture
def scripted_server():
    server = start(ScriptedLLM(lambda prompt, request: "Answer: 42\nDone."), max_tokens=1024, max_body_bytes=65536)
    yield server
    server.stop(grace_s=1)


# --- max_tokens ceiling ------------------------------------------------------------------------


def test_max_tokens_above_the_ceiling_is_400_naming_the_field_and_the_limit(scripted_server, tiny_server):
    status, text = post(scripted_server.port, {"prompt": "Hi", "max_tokens": 100_000_000})
    assert status == 400
    error = json.loads(text)["error"]
    assert error["message"] == ("max_tokens=100000000: must be at most 1024, this server's limit "
                                "(its --max-tokens-limit); ask for fewer tokens")
    assert (error["param"], error["type"]) == ("max_tokens", "BadRequestError")
    assert post(scripted_server.port, {"prompt": "Hi", "max_tokens": 1024})[0] == 200

    # by default the ceiling is the model's context length
    status, text = post(tiny_server.port, {"prompt": "Hi", "max_tokens": 100_000_000, "temperature": 0})
    assert status == 400 and "must be at most 1024, this server's limit (the model's context length)" in text
    assert tiny_server.llm.stats["generated_tokens"] == 0


# --- cancellation ------------------------------------------------------------------------------


def test_a_client_that_goes_away_is_cancelled_and_the_next_request_answers_at_once(tiny_server):
    llm = tiny_server.llm
    sock = raw_request(tiny_server.port, {"prompt": "Hello", "max_tokens": LONG, "temperature": 0})
    wait_for(lambda: llm.stats["generated_tokens"] >= 5)
    sock.close()  # the client gives up

    start_s = time.monotonic()
    status, text = post(tiny_server.port, {"prompt": "Hi", "max_tokens": 4, "temperature": 0}, timeout=10)
    elapsed = time.monotonic() - start_s
    assert status == 200 and len(json.loads(text)["choices"][0]["token_ids"]) == 4
    assert elapsed < 3, f"a 4-token request waited {elapsed:.1f} s behind a cancelled one"
    assert settled_tokens(llm) < LONG  # the long row left the batch


def test_a_request_past_the_timeout_is_cancelled_with_504(tiny_llm):
    server = start(tiny_llm, request_timeout_s=0.5)
    try:
        start_s = time.monotonic()
        status, text = post(server.port, {"prompt": "Hello", "max_tokens": LONG, "temperature": 0})
        assert time.monotonic() - start_s < 3
        assert status == 504
        message = json.loads(text)["error"]["message"]
        assert "request timeout of 0.5 s" in message and "--request-timeout" in message
        assert settled_tokens(tiny_llm) < LONG
    finally:
        server.stop(grace_s=1)


def test_a_body_over_the_limit_is_413_and_the_connection_stays_usable(scripted_server):
    body = json.dumps({"prompt": "x" * 200_000}).encode()
    status, text = post(scripted_server.port, body)
    assert status == 413
    assert json.loads(text)["error"]["message"] == (
        f"request body of {len(body)} bytes is over this server's limit of 65536 bytes; "
        "send less (or start the server with a larger --max-body-mb)"
    )
    assert post(scripted_server.port, {"prompt": "Hi", "max_tokens": 6})[0] == 200


def raw_answer(port: int, data: bytes) -> str:
    """What the server sends back for ``data`` on a raw socket, up to its closing the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out.decode()


def test_a_chunked_body_over_the_limit_is_413_and_a_body_that_stalls_is_408():
    server = start(ScriptedLLM(["Answer: 4"]), max_body_bytes=1000, read_timeout_s=0.5)
    try:
        answer = raw_answer(server.port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                         b"400\r\n" + b"x" * 1024 + b"\r\n")
        assert answer.startswith("HTTP/1.1 413") and "over this server's limit" in answer
        start_s = time.monotonic()
        answer = raw_answer(server.port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        assert answer.startswith("HTTP/1.1 408") and "the client sent nothing for 0.5 s" in answer
        assert time.monotonic() - start_s < 3
        assert post(server.port, {"prompt": "Hi"}, path="/v1/completions/")[0] == 200  # a trailing slash, as before
    finally:
        server.stop(grace_s=1)


# --- streaming ---------------------------------------------------------------------------------


def test_stream_sends_text_as_it_is_generated_then_done(tiny_server):
    llm = tiny_server.llm
    body = {"prompt": "Hello", "max_tokens": 50, "temperature": 0}
    want = json.loads(post(tiny_server.port, body, timeout=60)[1])["choices"][0]
    before = llm.stats["generated_tokens"]

    request = urllib.request.Request(
        f"http://127.0.0.1:{tiny_server.port}/v1/completions", method="POST",
        data=json.dumps({**body, "stream": True, "stream_options": {"include_usage": True}}).encode(),
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        first = response.readline()  # the first event arrives while the row is still decoding
        generated_at_first = llm.stats["generated_tokens"] - before
        got = events([first, *response])
    assert generated_at_first < 50

    assert got[-1] == "[DONE]"
    *chunks, usage = got[:-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 50
    assert all(c["object"] == "text_completion" and len(c["choices"]) == 1 for c in chunks)
    texts = [c["choices"][0]["text"] for c in chunks]
    assert sum(1 for t in texts if t) > 10  # token by token, not one block at the end
    assert "".join(texts) == want["text"]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + ["length"]


def test_stream_stops_at_a_stop_string_like_the_plain_answer(tiny_server):
    body = {"prompt": "Hello", "max_tokens": 40, "temperature": 0}
    full = json.loads(post(tiny_server.port, body, timeout=60)[1])["choices"][0]["text"]
    stop = next(full[i : i + 2] for i in range(10, len(full) - 2) if full.find(full[i : i + 2]) >= 10)
    request = urllib.request.Request(f"http://127.0.0.1:{tiny_server.port}/v1/completions", method="POST",
                                     data=json.dumps({**body, "stop": [stop], "stream": True}).encode())
    with urllib.request.urlopen(request, timeout=60) as response:
        got = events(response)
    assert got[-1] == "[DONE]"
    assert "".join(c["choices"][0]["text"] for c in got[:-1]) == full[: full.find(stop)]
    assert got[-2]["choices"][0]["finish_reason"] == "stop"


def test_stream_from_a_backend_without_token_reports_sends_each_choice_when_done(scripted_server):
    request = urllib.request.Request(f"http://127.0.0.1:{scripted_server.port}/v1/completions", method="POST",
                                     data=json.dumps({"prompt": "Q", "n": 2, "max_tokens": 64, "stream": True}).encode())
    with urllib.request.urlopen(request, timeout=10) as response:
        got = events(response)
    assert got[-1] == "[DONE]"
    assert [(c["choices"][0]["index"], c["choices"][0]["text"], c["choices"][0]["finish_reason"]) for c in got[:-1]] == [
        (0, "Answer: 42\nDone.", "stop"), (1, "Answer: 42\nDone.", "stop")
    ]
    body = {"prompt": "Q", "max_tokens": 64, "logprobs": 1}
    plain = json.loads(post(scripted_server.port, body)[1])["choices"][0]["logprobs"]
    request = urllib.request.Request(f"http://127.0.0.1:{scripted_server.port}/v1/completions", method="POST",
                                     data=json.dumps({**body, "stream": True}).encode())
    with urllib.request.urlopen(request, timeout=10) as response:
        got = events(response)
    assert [c["choices"][0]["logprobs"] for c in got[:-1]] == [plain]  # in the one chunk, with its text
    assert plain["top_logprobs"] is None and len(plain["tokens"]) == len("Answer: 42\nDone.")  # no alternatives here


# --- the command line: arguments first, a clean stop ---------------------------------------------


def agentkit(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "agentkit.cli", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


@pytest.fixture(scope="module")
def busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("args, message", [
    (["--port", "-1"], "error: --port -1: must be between 0 and 65535 (0 picks a free port)"),
    (["--port", "70000"], "error: --port 70000: must be between 0 and 65535 (0 picks a free port)"),
    (["--host", "no-such-host.invalid"], "error: --host no-such-host.invalid: cannot resolve it"),
    (["--host", "192.0.2.1"], "error: --host 192.0.2.1: not an address of this machine"),
    (["--port", "BUSY"], "error: cannot listen on 127.0.0.1:BUSY (Address already in use); pick another --port"),
    (["--max-tokens-limit", "0"], "error: --max-tokens-limit 0: must be at least 1"),
])
def test_bad_arguments_fail_in_one_line_before_the_model_loads(args, message, busy_port):
    args = [a.replace("BUSY", str(busy_port)) for a in args]
    message = message.replace("BUSY", str(busy_port))
    start_s = time.monotonic()
    # a model directory that does not exist: had it been looked at first, the error would name it
    proc = agentkit("serve", "--model", "/no/such/model", *args)
    stdout, stderr = proc.communicate(timeout=30)
    elapsed = time.monotonic() - start_s
    assert proc.returncode == 1, stderr
    assert stderr.startswith(message) and stderr.count("\n") == 1, stderr
    if "--host" in args:
        assert "--host 127.0.0.1" in stderr and "--port" not in stderr
    assert "Traceback" not in stderr and stdout == ""
    assert elapsed < 10, f"{elapsed:.1f} s"  # a model load takes 20 s; this is the interpreter starting


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tiny_model_factory, tiny_tokenizer):
    path = tmp_path_factory.mktemp("tiny-model")
    tiny_model_factory().save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def test_sigint_and_sigterm_stop_a_busy_server_promptly_and_cleanly(tiny_model_dir):
    """SIGINT exits 130 as Ctrl-C does everywhere in the CLI; SIGTERM, a request to stop, 0.
    Both servers start at once: most of this test is two interpreters importing torch."""
    cases = {signal.SIGINT: 130, signal.SIGTERM: 0}
    procs = {sig: agentkit("serve", "--model", str(tiny_model_dir), "--port", "0", "--dtype", "fp32") for sig in cases}
    try:
        for sig, proc in procs.items():
            line = proc.stdout.readline()  # "serving <model> at <url>" once the model is loaded
            assert line.startswith("serving "), proc.stderr.read() if proc.poll() is not None else line
            url = line.split(" at ")[1].strip()
            request = urllib.request.Request(
                f"{url}/completions", method="POST",
                data=json.dumps({"prompt": "Hello", "max_tokens": LONG, "temperature": 0, "stream": True}).encode(),
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                response.readline()  # the first token is out: the server is busy generating
                start_s = time.monotonic()
                proc.send_signal(sig)
                rest = events(response)  # the stream ends: an error event, then [DONE]
                proc.wait(timeout=15)
                elapsed = time.monotonic() - start_s
            stderr = proc.stderr.read()
            assert proc.returncode == cases[sig], stderr
            assert elapsed < 5, f"{sig.name}: the server took {elapsed:.1f} s to stop"
            assert rest[-2]["error"]["code"] == 503 and rest[-1] == "[DONE]"
            assert f"stopped ({sig.name}); 1 request(s) in flight cancelled" in stderr
            assert "Traceback" not in stderr and "terminate called" not in stderr, stderr
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# --- prompts the model cannot take ---------------------------------------------------------------


@pytest.mark.parametrize("body, param, message", [
    ({"prompt": [5, 10**6]}, "prompt",
     "prompt: token id 1000000 is outside the model's vocabulary of 104 ids (0-103)"),
    ({"prompt": [[5, 6], [5, -1]]}, "prompt",
     "prompt[1]: token id -1 is outside the model's vocabulary of 104 ids (0-103)"),
    ({"prompt": [5] * 1000, "max_tokens": 30}, "max_tokens",
     "max_tokens=30: with a prompt of 1000 tokens that is 1030 tokens, more than the model's context length of 1024; "
     "ask for at most 24"),
    ({"prompt": "x" * 1100, "max_tokens": 0}, "prompt",
     "prompt: 1101 tokens, more than the model's context length of 1024; send a shorter prompt"),
    ({"prompt": [5] * 20_000, "max_tokens": 0, "echo": True, "logprobs": 0}, "prompt",
     "prompt: 20000 tokens, more than the model's context length of 1024; send a shorter prompt"),
    # the tokenizer's TypeError used to be lost in the batcher: the request hung to the 504
    ({"prompt": "Q: \ud800"}, "prompt",
     "prompt: text must be valid Unicode; character 3 is a lone surrogate (\\ud800)"),
])
def test_a_prompt_the_model_cannot_take_is_400_and_its_neighbours_are_answered(tiny_server, body, param, message):
    llm = tiny_server.llm
    good = {"prompt": "Q: 1 + 1 =", "max_tokens": 5, "temperature": 0}
    status, text = post(tiny_server.port, good)
    assert status == 200
    alone = json.loads(text)["choices"][0]["token_ids"]
    scored = []
    score = llm.score
    llm.score = lambda *a, **kw: scored.append(a) or score(*a, **kw)

    answers = {}
    threads = [threading.Thread(target=lambda k=k, b=b: answers.setdefault(k, post(tiny_server.port, b)))
               for k, b in [("bad", {**body, "temperature": 0}), ("good", good)]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    status, text = answers["bad"]
    assert status == 400, text
    error = json.loads(text)["error"]
    assert (error["message"], error["param"], error["type"]) == (message, param, "BadRequestError")
    status, text = answers["good"]
    assert status == 200 and json.loads(text)["choices"][0]["token_ids"] == alone
    assert scored == []  # refused before it reached the backend


def test_a_prompt_that_fits_the_context_exactly_is_answered(tiny_server):
    status, text = post(tiny_server.port, {"prompt": [5] * 1020, "max_tokens": 4, "temperature": 0})
    assert status == 200 and len(json.loads(text)["choices"][0]["token_ids"]) == 4
    status, text = post(tiny_server.port, {"prompt": [5] * 1024, "max_tokens": 0, "echo": True, "logprobs": 0})
    assert status == 200 and len(json.loads(text)["choices"][0]["logprobs"]["token_logprobs"]) == 1024


def test_a_negative_token_id_is_400_for_a_backend_without_a_vocabulary_size(scripted_server):
    status, text = post(scripted_server.port, {"prompt": [5, -3], "max_tokens": 2})
    assert status == 400
    error = json.loads(text)["error"]
    assert (error["message"], error["param"]) == ("prompt: token id -3 is negative: token ids are >= 0", "prompt")


# --- bodies the fuzz found (tests/test_fuzz.py): each a 400 naming what is wrong, not a 500 -------


def error_of(status: int, text: str) -> dict:
    assert status == 400, text
    error = json.loads(text)["error"]
    assert error["type"] == "BadRequestError" and "\n" not in error["message"]
    return error


@pytest.mark.parametrize("path, body, param, message", [
    ("/v1/completions", {"prompt": "\ud800", "max_tokens": 2}, "prompt",
     "prompt: text must be valid Unicode; character 0 is a lone surrogate (\\ud800)"),
    ("/v1/completions", {"prompt": ["ok", "a\udfff"]}, "prompt",
     "prompt[1]: text must be valid Unicode; character 1 is a lone surrogate (\\udfff)"),
    ("/v1/completions", {"prompt": "Hi", "stop": ["x", "\ud800"]}, "stop",
     "stop[1]: text must be valid Unicode; character 0 is a lone surrogate (\\ud800)"),
    ("/tokenize", {"prompt": "\udf60\ud8a7"}, "prompt",
     "prompt: text must be valid Unicode; character 0 is a lone surrogate (\\udf60)"),
])
def test_text_that_is_not_valid_unicode_is_400_before_the_backend(scripted_server, path, body, param, message):
    llm = scripted_server.llm
    tokenized = []
    tokenize = llm.tokenize
    llm.tokenize = lambda text: tokenized.append(text) or tokenize(text)
    error = error_of(*post(scripted_server.port, body, path=path))
    assert (error["message"], error["param"]) == (message, param)
    assert llm.requests == [] and tokenized == []


@pytest.mark.parametrize("body, message", [
    (b"[" * 1000, "request body is not valid JSON here: nested too deeply for this server to read"),
    (b"[" * 60_000, "request body is not valid JSON here: nested too deeply for this server to read"),
    (b'{"prompt": "hi", "max_tokens": ' + b"9" * 5000 + b"}",
     "request body is not valid JSON here: a number with more digits than this server reads "
     "(Exceeds the limit (4300 digits) for integer string conversion: value has 5000 digits)"),
])
def test_json_python_cannot_read_is_400(scripted_server, body, message):
    error = error_of(*post(scripted_server.port, body))
    assert error["message"] == message and error["param"] is None
    assert post(scripted_server.port, {"prompt": "Hi", "max_tokens": 2})[0] == 200  # the server is still fine


def test_n_above_the_servers_limit_is_400_naming_n_and_the_limit(scripted_server):
    llm = scripted_server.llm
    for n in (10**9, 65):
        error = error_of(*post(scripted_server.port, {"prompt": "hi", "n": n, "max_tokens": 0}))
        assert error == {"message": f"n={n}: must be at most 64, this server's limit on samples per prompt; ask for fewer",
                         "type": "BadRequestError", "param": "n", "code": 400}
    assert llm.requests == []
    status, text = post(scripted_server.port, {"prompt": "hi", "n": 64, "max_tokens": 2})
    assert status == 200 and len(json.loads(text)["choices"]) == 64

    server = start(ScriptedLLM(["Answer: 4"]), max_n=2)
    try:
        assert "n=3: must be at most 2" in error_of(*post(server.port, {"prompt": "hi", "n": 3}))["message"]
        assert post(server.port, {"prompt": "hi", "n": 2})[0] == 200
    finally:
        server.stop(grace_s=1)


def test_detokenize_ids_outside_the_vocabulary(scripted_server, tiny_server):
    # the scripted backend has no vocab_size: an id past its 256 bytes has no text, a negative id is a 400
    assert post(scripted_server.port, {"tokens": [300]}, path="/detokenize") == (200, '{"prompt": ""}')
    assert post(scripted_server.port, {"tokens": [3 + 104, 300, 3 + 105]}, path="/detokenize") == (200, '{"prompt": "hi"}')
    error = error_of(*post(scripted_server.port, {"tokens": [5, -1]}, path="/detokenize"))
    assert (error["message"], error["param"]) == ("tokens: token id -1 is negative: token ids are >= 0", "tokens")
    # a backend with a vocabulary: the ids are checked against it
    error = error_of(*post(tiny_server.port, {"tokens": [5, 10**6]}, path="/detokenize"))
    assert (error["message"], error["param"]) == (
        "tokens: token id 1000000 is outside the model's vocabulary of 104 ids (0-103)", "tokens")


def test_detokenize_a_decode_failure_is_400():
    class Strict(ScriptedLLM):
        @staticmethod
        def decode(token_ids):
            raise IndexError("piece id is out of range.")

    server = start(Strict(["x"]))
    try:
        error = error_of(*post(server.port, {"tokens": [7]}, path="/detokenize"))
        assert (error["message"], error["param"]) == (
            "tokens: the model cannot decode them (IndexError: piece id is out of range.)", "tokens")
    finally:
        server.stop(grace_s=1)


def test_a_model_name_with_a_control_character_stays_on_one_line(scripted_server):
    status, text = post(scripted_server.port, {"model": "a\nb\u2028c`", "prompt": "hi"})
    assert status == 404
    assert json.loads(text)["error"]["message"] == "The model `a\\nb\\u2028c`` does not exist (served: scripted)."


def test_an_unexpected_failure_in_a_handler_is_a_one_line_500(scripted_server):
    def broken(body):
        raise KeyError("first\nsecond")

    scripted_server.tokenize = broken
    status, text = post(scripted_server.port, {"prompt": "hi"}, path="/tokenize")
    assert status == 500
    error = json.loads(text)["error"]
    assert error["message"] == "POST /tokenize failed: KeyError: 'first\\nsecond'"
    assert error["type"] == "InternalServerError"
