"""One protocol suite that every backend passes: scripted, transformers (a tiny random
Gemma-3 in fp32 and bf16), openai against agentkit serve on loopback, and vllm where it
is installed (a GPU machine)."""

from __future__ import annotations

import threading
import warnings

import pytest

from agentkit.errors import BackendError
from agentkit.llm.base import LLM, GenerationRequest
from agentkit.llm.models import DEFAULT_MODEL

from conftest import build_tiny_model, build_tiny_tokenizer, serve_in_thread

PROMPT = "Question: 12 + 7 =\nAnswer:"


def _scripted():
    from agentkit.llm.scripted import ScriptedLLM

    return ScriptedLLM(lambda prompt, req: f" {len(prompt)} because 12 + 7 = 19\nQuestion: next"), None, 0.0


def _transformers(dtype):
    def make():
        from agentkit.llm.transformers import TransformersLLM

        tok = build_tiny_tokenizer()
        return TransformersLLM.from_model(build_tiny_model(len(tok)), tok, name="tiny", dtype=dtype), None, (
            1e-3 if dtype == "fp32" else 0.1
        )

    return make


def _openai():
    from agentkit.llm.openai import OpenAIClientLLM
    from agentkit.llm.transformers import TransformersLLM

    tok = build_tiny_tokenizer()
    inner = TransformersLLM.from_model(build_tiny_model(len(tok)), tok, name="tiny", dtype="fp32")
    server, thread = serve_in_thread(inner)

    def stop():
        server.shutdown()
        thread.join(timeout=5)
        inner.close()

    return OpenAIClientLLM(server.url), stop, 1e-3


def _vllm():
    pytest.importorskip("vllm", reason="the vllm backend needs vLLM and a GPU")
    from agentkit.llm import load_backend

    # as `agentkit run --backend vllm` builds it: resolve_model turns the embedded name into
    # its converted directory (vLLM cannot read the bare name). A smaller GPU share leaves
    # room for the transformers cases' leftovers; eager mode skips CUDA-graph capture.
    llm = load_backend("vllm", DEFAULT_MODEL, gpu_memory_utilization=0.4, enforce_eager=True)
    return llm, None, 0.1  # bf16 on the GPU: prefill and decode kernels round differently


BACKENDS = {
    "scripted": _scripted,
    "transformers-fp32": _transformers("fp32"),
    "transformers-bf16": _transformers("bf16"),
    "openai-serve": _openai,
    "vllm": _vllm,
}


@pytest.fixture(params=list(BACKENDS), scope="module")
def backend(request):
    llm, stop, tol = BACKENDS[request.param]()
    yield request.param, llm, tol
    if stop:
        stop()
    else:
        llm.close()


def test_is_an_llm(backend):
    _, llm, _ = backend
    assert isinstance(llm, LLM)


def test_completions_carry_token_ids_and_logprobs(backend):
    _, llm, _ = backend
    [[c1], [c2, c3]] = llm.generate([GenerationRequest(PROMPT, max_tokens=12), GenerationRequest(PROMPT, n=2, max_tokens=5)])
    for c in (c1, c2, c3):
        assert 0 < len(c.token_ids) == len(c.logprobs)
        assert all(lp <= 0 for lp in c.logprobs)
        assert c.finish_reason in ("stop", "length")
        assert c.prompt_ids and c.prompt_ids == llm.tokenize(PROMPT)
    assert len(c2.token_ids) <= 5 and len(c3.token_ids) <= 5


def test_score_reproduces_recorded_logprobs(backend):
    _, llm, tol = backend
    for request in (GenerationRequest(PROMPT, max_tokens=16), GenerationRequest(PROMPT, temperature=1.0, seed=3, max_tokens=16)):
        [[c]] = llm.generate([request])
        scored = llm.score(c.prompt_ids, c.token_ids)
        assert len(scored) == len(c.token_ids)
        assert max(abs(a - b) for a, b in zip(scored, c.logprobs)) <= tol


def test_max_tokens_ends_with_length(backend):
    _, llm, _ = backend
    [[c]] = llm.generate([GenerationRequest(PROMPT, max_tokens=3)])
    assert len(c.token_ids) <= 3
    if len(c.token_ids) == 3 and c.finish_reason != "stop":
        assert c.finish_reason == "length"


def test_stop_string_is_cut_from_text(backend):
    _, llm, _ = backend
    [[free]] = llm.generate([GenerationRequest(PROMPT, max_tokens=24)])
    if len(free.text) < 4:
        pytest.skip("the model's text is too short to pick a stop string from")
    stop = free.text[2:4]
    [[c]] = llm.generate([GenerationRequest(PROMPT, max_tokens=24, stop=(stop,))])
    assert stop not in c.text
    assert c.finish_reason == "stop"
    assert free.text.startswith(c.text)


def test_greedy_is_deterministic_and_seeds_reproduce(backend):
    _, llm, _ = backend
    greedy = GenerationRequest(PROMPT, max_tokens=10)
    assert llm.generate([greedy])[0][0].token_ids == llm.generate([greedy])[0][0].token_ids
    seeded = GenerationRequest(PROMPT, n=3, temperature=1.0, seed=7, max_tokens=10)
    first = [c.token_ids for c in llm.generate([seeded])[0]]
    again = [c.token_ids for c in llm.generate([seeded])[0]]
    assert first == again


def test_concurrent_callers_get_their_own_answers(backend):
    _, llm, _ = backend
    prompts = [f"Question: {i} + {i} =\nAnswer:" for i in range(6)]
    alone = {p: llm.generate([GenerationRequest(p, max_tokens=8)])[0][0].token_ids for p in prompts}
    together: dict[str, list[int]] = {}

    def call(p):
        together[p] = llm.generate([GenerationRequest(p, max_tokens=8)])[0][0].token_ids

    threads = [threading.Thread(target=call, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    if backend[0] in ("transformers-bf16", "vllm"):  # batch shape changes bf16 rounding; most rows still agree
        assert sum(together[p] == alone[p] for p in prompts) >= len(prompts) // 2
    else:
        assert together == alone


def test_tokenize_decode_round_trip(backend):
    _, llm, _ = backend
    ids = llm.tokenize("Step 1: 3 + 4 = 7")
    assert llm.decode(ids).endswith("Step 1: 3 + 4 = 7")


def test_unknown_adapter_is_refused(backend):
    _, llm, _ = backend
    with pytest.raises(BackendError):
        llm.generate([GenerationRequest(PROMPT, max_tokens=2, adapter="never-loaded")])
    with pytest.raises(BackendError):
        llm.unload_adapter("never-loaded")


def test_adapter_loads_swaps_and_answers(backend, tmp_path):
    name, llm, _ = backend
    path = tmp_path / "adapter"
    _save_random_adapter(_adapter_base(name), path)
    llm.load_adapter("a1", str(path))
    assert llm.list_adapters() == ["a1"]
    request = GenerationRequest(PROMPT, max_tokens=12)
    [[base]] = llm.generate([request])
    [[tuned]] = llm.generate([GenerationRequest(PROMPT, max_tokens=12, adapter="a1")])
    assert tuned.adapter == "a1" and base.adapter is None
    if name != "scripted":
        # the adapter really answered: its logprobs differ from the base model's
        assert llm.score(base.prompt_ids, base.token_ids, adapter="a1") != pytest.approx(base.logprobs, abs=1e-3)
        assert llm.score(tuned.prompt_ids, tuned.token_ids, adapter="a1") == pytest.approx(tuned.logprobs, abs=0.1)
    llm.unload_adapter("a1")
    assert llm.list_adapters() == []
    [[again]] = llm.generate([request])
    assert again.token_ids == base.token_ids  # unloading restores the base model


def _adapter_base(backend_name):
    """The model an adapter for this backend must be trained on. vLLM serves the embedded
    Gemma 3 270M (see _vllm), and it loads only an adapter whose layer shapes match the
    model it serves: one saved from the tiny model (hidden size 64, not 640) would be
    refused. Every other backend serves the tiny model."""
    if backend_name == "vllm":
        from transformers import AutoModelForCausalLM

        from agentkit.llm.models import resolve_model

        return AutoModelForCausalLM.from_pretrained(str(resolve_model(DEFAULT_MODEL)))
    return build_tiny_model(len(build_tiny_tokenizer()))


def _save_random_adapter(model, path):
    """A real PEFT LoRA adapter of ``model``, saved with save_pretrained. Random A and B
    (not PEFT's B = 0), so that it changes what the model says."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    with warnings.catch_warnings():  # PEFT reads transformers' deprecated is_gradient_checkpointing
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(
            model, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
        )
    peft_model.save_pretrained(str(path))
