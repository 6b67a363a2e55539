"""agentkit's OpenAI-compatible server and OpenAIClientLLM, over real loopback HTTP."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import urllib.error
import urllib.request

import pytest

from agentkit.errors import BackendError
from agentkit.llm.base import GenerationRequest
from agentkit.llm.openai import OpenAIClientLLM
from agentkit.llm.scripted import ScriptedLLM
from agentkit.llm.server import make_server


def reply(prompt: str, request: GenerationRequest) -> str:
    return f"You asked: {prompt[-10:]}. Answer: 42\nDone."


class PathCheckingLLM(ScriptedLLM):
    """ScriptedLLM, but refuses adapter paths that do not exist, as a real backend does."""

    def load_adapter(self, name: str, path: str) -> None:
        if not os.path.isdir(path):
            raise FileNotFoundError(f"no adapter directory at {path}")
        super().load_adapter(name, path)


class BarrierLLM(ScriptedLLM):
    """Each generate() call waits until `parties` calls are in flight at once."""

    def __init__(self, replies, parties: int):
        super().__init__(replies)
        self.barrier = threading.Barrier(parties, timeout=5)

    def generate(self, requests):
        self.barrier.wait()
        return super().generate(requests)


def start(llm):
    server = make_server(llm, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture
def server():
    server, thread = start(PathCheckingLLM(reply))
    yield server
    server.shutdown()
    thread.join(timeout=5)


@pytest.fixture
def client(server):
    return OpenAIClientLLM(f"http://127.0.0.1:{server.port}/v1")


def post(server, path: str, body: bytes | dict) -> tuple[int, str]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", data=data, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def get(server, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- client over the server ----------------------------------------------------------------


def test_generate_matches_the_backend_exactly(client, server):
    reference = ScriptedLLM(reply)
    request = GenerationRequest(prompt="What is 6*7?", max_tokens=64)
    [[got]] = client.generate([request])
    [[want]] = reference.generate([request])
    assert client.model_name == "scripted"
    assert got.text == want.text == "You asked: at is 6*7?. Answer: 42\nDone."
    assert got.token_ids == want.token_ids
    assert got.logprobs == want.logprobs  # exact: floats round-trip through JSON
    assert got.prompt_ids == want.prompt_ids == reference.tokenize("What is 6*7?")
    assert got.finish_reason == "stop" and got.adapter is None
    assert server.llm.requests[-1] == request  # every sampling field arrived unchanged


def test_token_id_prompt_and_sampling_fields(client, server):
    ids = ScriptedLLM(reply).tokenize("Hi")
    request = GenerationRequest(prompt=ids, n=1, temperature=0.7, top_p=0.9, top_k=5, max_tokens=8, seed=3)
    [[got]] = client.generate([request])
    assert got.prompt_ids == ids
    assert got.finish_reason == "length" and len(got.token_ids) == 8
    assert server.llm.requests[-1] == request


def test_n_samples(client):
    [completions] = client.generate([GenerationRequest(prompt="Q", n=3, max_tokens=64)])
    [want] = ScriptedLLM(reply).generate([GenerationRequest(prompt="Q", n=3, max_tokens=64)])
    assert len(completions) == 3
    assert [c.token_ids for c in completions] == [w.token_ids for w in want]


def test_stop_string_cuts_text_but_keeps_tokens(client):
    request = GenerationRequest(prompt="Q?", stop=("\n",), max_tokens=64)
    [[got]] = client.generate([request])
    [[want]] = ScriptedLLM(reply).generate([request])
    assert got.text == "You asked: Q?. Answer: 42"
    assert (got.text, got.token_ids, got.logprobs, got.finish_reason) == (
        want.text, want.token_ids, want.logprobs, want.finish_reason
    )


def test_score_equals_backend_score(client):
    reference = ScriptedLLM(reply)
    prompt_ids = reference.tokenize("Question: 2+2?")
    [[completion]] = reference.generate([GenerationRequest(prompt=prompt_ids, max_tokens=64)])
    assert client.score(prompt_ids, completion.token_ids) == reference.score(prompt_ids, completion.token_ids)
    assert client.score(prompt_ids, []) == []


def test_tokenize(client):
    assert client.tokenize("héllo") == ScriptedLLM(reply).tokenize("héllo")


def test_concurrent_requests_are_sent_in_parallel():
    parties = 8  # the backend answers only once 8 generate() calls are in flight together
    server, thread = start(BarrierLLM(reply, parties))
    try:
        client = OpenAIClientLLM(f"http://127.0.0.1:{server.port}/v1")
        requests = [GenerationRequest(prompt=f"question {i}", max_tokens=64) for i in range(parties)]
        results = client.generate(requests)
        assert [r[0].text for r in results] == [f"You asked: question {i}. Answer: 42\nDone." for i in range(parties)]
    finally:
        server.shutdown()
        thread.join(timeout=5)


def test_adapter_round_trip(client, server, tmp_path):
    client.load_adapter("step1", str(tmp_path))
    assert client.list_adapters() == ["step1"]
    assert server.llm.list_adapters() == ["step1"]
    [[completion]] = client.generate([GenerationRequest(prompt="Q", adapter="step1", max_tokens=64)])
    assert completion.adapter == "step1"
    assert server.llm.requests[-1].adapter == "step1"
    client.load_adapter("step1", str(tmp_path))  # loading a name again replaces it
    assert client.list_adapters() == ["step1"]

    client.unload_adapter("step1")
    assert client.list_adapters() == []
    with pytest.raises(BackendError, match="The model `step1` does not exist"):
        client.generate([GenerationRequest(prompt="Q", adapter="step1")])
    with pytest.raises(BackendError, match="cannot be found"):
        client.unload_adapter("step1")


def test_an_answer_from_another_model_is_refused(client, server, tmp_path, monkeypatch):
    client.load_adapter("step1", str(tmp_path))
    answer = server.completions

    def base_model_answers(body, **kw):  # a server that quietly falls back to the base model
        return {**answer({**body, "model": "scripted"}, **kw), "model": "scripted"}

    monkeypatch.setattr(server, "completions", base_model_answers)
    with pytest.raises(BackendError, match="for model 'step1' but 'scripted' answered"):
        client.generate([GenerationRequest(prompt="Q", adapter="step1")])


def test_unreachable_server_is_one_line_backend_error():
    port = free_port()
    with pytest.raises(BackendError) as info:
        OpenAIClientLLM(f"http://127.0.0.1:{port}/v1")
    message = str(info.value)
    assert message == (
        f"no OpenAI-compatible server answers at http://127.0.0.1:{port}/v1 (connection refused); "
        f"start one with `agentkit serve --port {port}` or pass --base-url"
    )
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no chained traceback

    client = OpenAIClientLLM(f"http://127.0.0.1:{port}", model="m")
    with pytest.raises(BackendError, match="connection refused") as info:
        client.generate([GenerationRequest(prompt="Q")])
    assert "\n" not in str(info.value)


def test_busy_port_is_backend_error(server):
    with pytest.raises(BackendError, match=f"cannot listen on 127.0.0.1:{server.port} .*pick another --port"):
        make_server(ScriptedLLM(reply), port=server.port)


# --- the server's wire format ------------------------------------------------------------


def test_models_lists_base_and_adapters(server, tmp_path):
    status, text = get(server, "/v1/models")
    assert status == 200
    assert json.loads(text)["data"] == [
        {"id": "scripted", "object": "model", "created": 0, "owned_by": "agentkit", "root": "scripted", "parent": None}
    ]
    status, text = post(server, "/v1/load_lora_adapter", {"lora_name": "a", "lora_path": str(tmp_path)})
    assert (status, text) == (200, "Success: LoRA adapter 'a' added successfully.")
    [_, adapter] = json.loads(get(server, "/v1/models")[1])["data"]
    assert (adapter["id"], adapter["parent"], adapter["owned_by"]) == ("a", "scripted", "agentkit")


def test_completion_response_shape(server):
    status, text = post(
        server,
        "/v1/completions",
        {"model": "scripted", "prompt": "Hi", "max_tokens": 5, "logprobs": 1, "return_tokens_as_token_ids": True},
    )
    assert status == 200
    data = json.loads(text)
    assert data["object"] == "text_completion" and data["model"] == "scripted"
    [choice] = data["choices"]
    ids = ScriptedLLM(reply).tokenize("You a")[1:]
    assert choice["text"] == "You a" and choice["finish_reason"] == "length"
    assert choice["token_ids"] == ids
    assert choice["prompt_token_ids"] == ScriptedLLM(reply).tokenize("Hi")
    assert choice["logprobs"]["tokens"] == [f"token_id:{t}" for t in ids]
    assert choice["logprobs"]["text_offset"][:2] == [0, len(f"token_id:{ids[0]}")]
    assert data["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}

    # without return_tokens_as_token_ids, token strings are decoded text
    data = json.loads(post(server, "/v1/completions", {"prompt": "Hi", "max_tokens": 3, "logprobs": 0})[1])
    assert data["choices"][0]["logprobs"]["tokens"] == ["Y", "o", "u"]
    assert data["choices"][0]["logprobs"]["text_offset"] == [0, 1, 2]


def test_echo_scores_the_prompt(server):
    reference = ScriptedLLM(reply)
    prompt_ids = reference.tokenize("abc")
    status, text = post(server, "/v1/completions", {"prompt": prompt_ids, "max_tokens": 0, "echo": True, "logprobs": 1})
    assert status == 200
    [choice] = json.loads(text)["choices"]
    assert choice["text"] == "abc"
    assert choice["logprobs"]["token_logprobs"] == [None, *reference.score(prompt_ids[:1], prompt_ids[1:])]
    assert server.llm.requests == []  # pure scoring samples nothing


def test_unknown_model_is_404(server):
    status, text = post(server, "/v1/completions", {"model": "gpt-4", "prompt": "Hi"})
    assert status == 404
    assert json.loads(text) == {
        "error": {
            "message": "The model `gpt-4` does not exist (served: scripted).",
            "type": "NotFoundError",
            "param": None,
            "code": 404,
        }
    }


@pytest.mark.parametrize(
    "body, field",
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        ({"max_tokens": 3}, "prompt: required"),
        ({"prompt": [[]]}, "prompt: must be"),
        ({"prompt": "Hi", "n": 0}, "n=0: must be an integer >= 1"),
        ({"prompt": "Hi", "temperature": -1}, "temperature=-1: must be a number >= 0"),
        ({"prompt": "Hi", "top_p": 0}, "top_p=0: must be"),
        ({"prompt": "Hi", "max_tokens": "ten"}, 'max_tokens="ten": must be'),
        ({"prompt": "Hi", "stop": 5}, "stop=5: must be"),
    ],
)
def test_malformed_requests_are_400(server, body, field):
    status, text = post(server, "/v1/completions", body)
    assert status == 400
    error = json.loads(text)["error"]
    assert field in error["message"] and "\n" not in error["message"]
    assert (error["type"], error["code"]) == ("BadRequestError", 400)


def test_adapter_endpoint_errors(server):
    status, text = post(server, "/v1/load_lora_adapter", {"lora_name": "a", "lora_path": "/no/such/dir"})
    assert status == 400
    assert json.loads(text)["error"]["message"] == (
        "cannot load LoRA adapter 'a' from /no/such/dir: no adapter directory at /no/such/dir"
    )
    status, text = post(server, "/v1/load_lora_adapter", {"lora_name": "a"})
    assert (status, json.loads(text)["error"]["message"]) == (400, "lora_path: required (a string)")
    status, text = post(server, "/v1/unload_lora_adapter", {"lora_name": "nope"})
    assert status == 404 and "'nope' cannot be found" in json.loads(text)["error"]["message"]


def test_unknown_route_is_404_and_backend_failure_is_500_without_traceback(server, caplog):
    status, text = get(server, "/v2/whatever")
    assert status == 404 and "no route GET /v2/whatever" in json.loads(text)["error"]["message"]

    def broken(prompt, request):
        raise RuntimeError("CUDA out of memory\nsecond line")

    server.llm._replies = broken
    status, text = post(server, "/v1/completions", {"prompt": "Hi"})
    assert status == 500
    message = json.loads(text)["error"]["message"]
    assert message == "POST /v1/completions failed: RuntimeError: CUDA out of memory second line"
    assert "Traceback" not in text and "Traceback" not in caplog.text


def test_vllm_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm fails, whatever is installed
    from agentkit.llm.vllm import VLLMBackend

    with pytest.raises(BackendError) as info:
        VLLMBackend("Qwen/Qwen2.5-0.5B")
    assert str(info.value) == "the vllm backend needs vLLM and a GPU: pip install 'agentkit[vllm]'"


def test_older_vllm_shapes(client, server, monkeypatch):
    """vLLM < 0.10: no token_ids / prompt_token_ids fields, and max_tokens=0 refused."""
    from agentkit.llm._wire import HTTPError

    answer = server.completions

    def old_vllm(body, **kw):
        if body.get("max_tokens") == 0:
            raise HTTPError(400, "max_tokens must be at least 1, got 0.")
        data = answer(body, **kw)
        for choice in data["choices"]:
            del choice["token_ids"], choice["prompt_token_ids"]
        return data

    monkeypatch.setattr(server, "completions", old_vllm)
    reference = ScriptedLLM(reply)
    request = GenerationRequest(prompt="Q?", max_tokens=64)
    [[got]] = client.generate([request])
    [[want]] = reference.generate([request])
    assert (got.token_ids, got.logprobs, got.prompt_ids) == (want.token_ids, want.logprobs, want.prompt_ids)
    assert client.score(want.prompt_ids, want.token_ids) == want.logprobs


def test_client_implements_the_protocol(client):
    from agentkit.llm.base import LLM

    assert isinstance(client, LLM)
