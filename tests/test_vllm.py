"""The vLLM backend against a stand-in ``vllm`` module, since this machine has no GPU:
what it asks the engine for and what it makes of the answers. The stand-in refuses what
vLLM's ``SamplingParams`` refuses (greedy with n > 1, max_tokens < 1) and answers in
vLLM's output shapes; the real engine runs the protocol suite (test_llm_protocol.py) and
bench/gpu_smoke.sh on a GPU machine."""

from __future__ import annotations

import importlib.machinery
import json
import sys
import threading
import time
import types
from dataclasses import dataclass

import pytest

from agentkit.errors import BackendError
from agentkit.llm.base import GenerationRequest

BOS = 2


class FakeSamplingParams:
    def __init__(self, n=1, temperature=1.0, max_tokens=16, **rest):
        # as vllm/sampling_params.py: _verify_greedy_sampling and _verify_args
        if temperature < 1e-5 and n > 1:
            raise ValueError(f"n must be 1 when using greedy sampling, got {n}.")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}.")
        self.n, self.temperature, self.max_tokens = n, temperature, max_tokens
        self.prompt_logprobs = rest.pop("prompt_logprobs", None)
        self.rest = rest


@dataclass
class FakeLoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str


class FakeTokenizer:
    """Characters as token ids, BOS in front, like a Gemma tokenizer's encode()."""

    def encode(self, text):
        return [BOS] + [ord(c) for c in text]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(("" if skip_special_tokens else "<bos>") if t == BOS else chr(t) for t in ids)


class FakeLLM:
    """``vllm.LLM``: each sample repeats the prompt's last token (+ its index) max_tokens
    times; logprobs are -0.5 per token on the base model and -0.25 with an adapter."""

    max_model_len = 32

    def __init__(self, model, **kwargs):
        self.model, self.kwargs = model, kwargs
        self.calls: list[list] = []  # the prompts of each generate()
        self.params: list = []
        self.loras: dict[int, str] = {}  # the adapters the engine holds: id -> path
        self.hold: threading.Event | None = None  # the next generate() waits for it
        self.llm_engine = types.SimpleNamespace(add_lora=self._add_lora, remove_lora=self._remove_lora,
                                                model_config=types.SimpleNamespace(max_model_len=self.max_model_len))

    def get_tokenizer(self):
        return FakeTokenizer()

    def _add_lora(self, request):
        if not request.lora_path.startswith("/"):
            raise RuntimeError(f"Loading lora {request.lora_path} failed: No adapter found")
        self.loras[request.lora_int_id] = request.lora_path
        return True

    def _remove_lora(self, lora_id):
        return self.loras.pop(lora_id, None) is not None

    def generate(self, prompts, params, lora_request=None, use_tqdm=True):
        params = params if isinstance(params, list) else [params] * len(prompts)
        loras = lora_request if isinstance(lora_request, list) else [lora_request] * len(prompts)
        self.calls.append(list(prompts))
        self.params.extend(params)
        if self.hold is not None:
            hold, self.hold = self.hold, None
            hold.wait(timeout=10)
        ids = [FakeTokenizer().encode(p) if isinstance(p, str) else list(p["prompt_token_ids"]) for p in prompts]
        for i in ids:
            if len(i) > self.max_model_len:
                raise ValueError(f"The decoder prompt (length {len(i)}) is longer than the maximum model length of {self.max_model_len}.")
        outputs = []
        for prompt_ids, sp, lora in zip(ids, params, loras):
            lp = -0.25 if lora is not None else -0.5
            samples = []
            for index in range(sp.n):
                out = [prompt_ids[-1] + index] * sp.max_tokens
                samples.append(types.SimpleNamespace(
                    index=index, text=FakeTokenizer().decode(out, skip_special_tokens=True), token_ids=tuple(out),
                    logprobs=[{t: types.SimpleNamespace(logprob=lp)} for t in out], finish_reason="length",
                ))
            prompt_logprobs = None
            if sp.prompt_logprobs is not None:
                prompt_logprobs = [None] + [{t: types.SimpleNamespace(logprob=lp - k)} for k, t in enumerate(prompt_ids[1:])]
            outputs.append(types.SimpleNamespace(prompt_token_ids=prompt_ids, outputs=samples[::-1],
                                                 prompt_logprobs=prompt_logprobs))
        return outputs


@pytest.fixture
def fake_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.__spec__ = importlib.machinery.ModuleSpec("vllm", None)  # load_backend asks find_spec
    vllm.LLM, vllm.SamplingParams = FakeLLM, FakeSamplingParams
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = FakeLoRARequest
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.lora", types.ModuleType("vllm.lora"))
    monkeypatch.setitem(sys.modules, "vllm.lora.request", request)
    return vllm


@pytest.fixture
def llm(fake_vllm):
    from agentkit.llm.vllm import VLLMBackend

    backend = VLLMBackend("/models/tiny")
    yield backend
    backend.close()


def _adapter_dir(path):
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps({"r": 4, "peft_type": "LORA"}))
    return path


def _wait_for(condition, what):
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_load_backend_resolves_the_model_and_records_its_name(fake_vllm, monkeypatch, tmp_path):
    from agentkit.llm import load_backend
    from agentkit.llm import models

    monkeypatch.setattr(models, "resolve_model", lambda name: tmp_path if name == "gemma-3-270m" else None)
    llm = load_backend("vllm", "gemma-3-270m", dtype="bf16")
    assert llm._llm.model == str(tmp_path)  # vLLM gets the converted directory, never the bare name
    assert llm._llm.kwargs == {"dtype": "bfloat16", "enable_lora": True}
    assert llm.model_name == "gemma-3-270m"


def test_completions_carry_ids_logprobs_and_prompt_ids(llm):
    [[c]] = llm.generate([GenerationRequest("ab", max_tokens=3)])
    assert c.token_ids == [ord("b")] * 3 and c.text == "bbb"
    assert c.logprobs == [-0.5] * 3
    assert c.prompt_ids == llm.tokenize("ab") == [BOS, ord("a"), ord("b")]
    assert c.finish_reason == "length" and c.adapter is None


def test_requests_become_sampling_params(llm):
    llm.generate([GenerationRequest("ab", temperature=0.7, top_p=0.9, top_k=0, stop=("x",), seed=5, max_tokens=2)])
    [params] = llm._llm.params
    assert (params.n, params.temperature, params.max_tokens) == (1, 0.7, 2)
    assert params.rest == {"top_p": 0.9, "top_k": -1, "stop": ["x"], "stop_token_ids": None, "seed": 5, "logprobs": 0}
    llm.generate([GenerationRequest("ab", stop_token_ids=(106,), max_tokens=2)])  # a chat turn's end token
    assert llm._llm.params[-1].rest["stop_token_ids"] == [106]


def test_a_restricted_vocabulary_is_refused_because_vllm_reports_whole_vocabulary_logprobs(llm):
    calls = len(llm._llm.calls)
    with pytest.raises(BackendError, match="allowed_token_ids: vLLM .* whole-vocabulary logprobs"):
        llm.generate([GenerationRequest("ab", allowed_token_ids=(9, 7), max_tokens=2)])
    assert len(llm._llm.calls) == calls  # nothing reached the engine


def test_greedy_with_n_runs_once_and_repeats_the_sample(llm):
    [greedy, sampled] = llm.generate([GenerationRequest("ab", n=3, max_tokens=2),
                                      GenerationRequest("ab", n=2, temperature=1.0, max_tokens=2)])
    assert [p.n for p in llm._llm.params] == [1, 2]  # vLLM refuses n > 1 when greedy
    assert [c.token_ids for c in greedy] == [[ord("b")] * 2] * 3
    assert greedy[0] is not greedy[1] and greedy[0].token_ids is not greedy[1].token_ids
    assert [c.token_ids for c in sampled] == [[ord("b")] * 2, [ord("c")] * 2]  # in index order


def test_max_tokens_zero_answers_without_the_engine(llm):
    [[c]] = llm.generate([GenerationRequest("ab", max_tokens=0)])
    assert (c.token_ids, c.logprobs, c.finish_reason) == ([], [], "length")
    assert c.prompt_ids == [BOS, ord("a"), ord("b")]
    assert llm._llm.calls == []  # vLLM refuses max_tokens=0


def test_concurrent_callers_share_one_engine_call(llm):
    engine = llm._llm
    hold = engine.hold = threading.Event()
    answers: dict[str, list[int]] = {}

    def call(prompt):
        [[c]] = llm.generate([GenerationRequest(prompt, max_tokens=2)])
        answers[prompt] = c.token_ids

    first = threading.Thread(target=call, args=("a",))
    first.start()
    _wait_for(lambda: len(engine.calls) == 1, "the first call to reach the engine")
    others = [threading.Thread(target=call, args=(p,)) for p in "bcd"]
    for t in others:
        t.start()
    _wait_for(lambda: len(llm._waiting) == 3, "three callers to queue behind it")
    hold.set()
    for t in [first, *others]:
        t.join(timeout=10)
    assert [len(prompts) for prompts in engine.calls] == [1, 3]
    assert answers == {p: [ord(p)] * 2 for p in "abcd"}


def test_a_prompt_the_engine_refuses_fails_only_its_own_caller(llm):
    engine = llm._llm
    hold = engine.hold = threading.Event()
    outcome: dict[str, object] = {}

    def call(prompt):
        try:
            outcome[prompt] = llm.generate([GenerationRequest(prompt, max_tokens=1)])[0][0].text
        except ValueError as exc:
            outcome[prompt] = exc

    first = threading.Thread(target=call, args=("a",))
    first.start()
    _wait_for(lambda: len(engine.calls) == 1, "the first call to reach the engine")
    good, bad = threading.Thread(target=call, args=("b",)), threading.Thread(target=call, args=("x" * 40,))
    good.start()
    _wait_for(lambda: len(llm._waiting) == 1, "the good call to queue")
    bad.start()
    _wait_for(lambda: len(llm._waiting) == 2, "the bad call to queue")
    hold.set()
    for t in (first, good, bad):
        t.join(timeout=10)
    assert outcome["a"] == "a" and outcome["b"] == "b"
    assert "longer than the maximum model length" in str(outcome["x" * 40])
    assert [len(prompts) for prompts in engine.calls] == [1, 2, 1, 1]  # together, then one at a time


def test_unknown_adapter_is_refused(llm):
    with pytest.raises(BackendError, match="adapter 'never-loaded' is not loaded"):
        llm.generate([GenerationRequest("ab", max_tokens=2, adapter="never-loaded")])
    with pytest.raises(BackendError, match=r"adapter 'never-loaded' is not loaded \(loaded: none\)"):
        llm.unload_adapter("never-loaded")


def test_adapters_load_replace_answer_and_unload(llm, tmp_path):
    engine = llm._llm
    llm.load_adapter("a1", str(_adapter_dir(tmp_path / "v1")))
    llm.load_adapter("a1", str(_adapter_dir(tmp_path / "v2")))  # replaces: the old id leaves the engine
    assert llm.list_adapters() == ["a1"]
    assert engine.loras == {2: str(tmp_path / "v2")}
    [[base], [tuned]] = llm.generate([GenerationRequest("ab", max_tokens=2),
                                      GenerationRequest("ab", max_tokens=2, adapter="a1")])
    assert (base.adapter, base.logprobs) == (None, [-0.5, -0.5])
    assert (tuned.adapter, tuned.logprobs) == ("a1", [-0.25, -0.25])
    llm.unload_adapter("a1")
    assert llm.list_adapters() == [] and engine.loras == {}
    with pytest.raises(BackendError, match="is not loaded"):
        llm.unload_adapter("a1")


def test_a_directory_without_an_adapter_is_refused(llm, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackendError, match="no LoRA adapter in .*adapter_config.json"):
        llm.load_adapter("a1", str(tmp_path / "empty"))
    with pytest.raises(BackendError, match="vLLM cannot load LoRA adapter 'a1' from no/such/adapter: Loading lora"):
        llm.load_adapter("a1", "no/such/adapter")
    assert llm.list_adapters() == [] and llm._llm.loras == {}


def test_score_reads_prompt_logprobs_of_the_completion(llm):
    assert llm.score([BOS, 97], [98, 99]) == [-1.5, -2.5]  # positions 2 and 3 of the stand-in's ramp
    assert llm.score([BOS, 97], [98], adapter=None) == [-1.5]
    assert llm.score([BOS], []) == []
    with pytest.raises(BackendError, match="at least one prompt token"):
        llm.score([], [98])


def test_context_length_is_the_engines_max_model_len(llm):
    assert llm.context_length == FakeLLM.max_model_len


def test_decode_drops_special_tokens_like_the_completions(llm):
    assert llm.decode(llm.tokenize("Step 1")) == "Step 1"


def test_a_closed_backend_says_so(llm):
    llm.close()
    with pytest.raises(BackendError, match="closed"):
        llm.generate([GenerationRequest("ab", max_tokens=2)])
