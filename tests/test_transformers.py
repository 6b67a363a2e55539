"""The transformers backend beyond the shared protocol: batching, padding, dtypes,
sampling, and model resolution errors."""

from __future__ import annotations

import math
import threading
import time

import pytest
import torch

from agentkit.errors import BackendError, ModelNotFoundError
from agentkit.llm._packed import PackedLinear, can_pack, pack_linear_layers
from agentkit.llm._sampling import RowParams, exact_logprobs, select_tokens, top_k
from agentkit.llm.base import GenerationRequest
from agentkit.llm.device import packed_linear_unsupported
from agentkit.llm.models import resolve_model
from agentkit.llm.transformers import TransformersLLM, choose_dtype


def test_concurrent_callers_share_one_batch(tiny_llm):
    barrier = threading.Barrier(8)
    results = {}

    def call(i):
        barrier.wait()
        results[i] = tiny_llm.generate([GenerationRequest(f"Q{i}: " + "x" * i, max_tokens=6)])[0][0]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 8
    assert tiny_llm.stats["max_rows_in_batch"] >= 4  # gathered, not one at a time


def test_left_padding_does_not_change_answers(tiny_llm):
    prompts = ["a", "Question: what is 12 + 7?", "Step 1: 3 * 4 = 12\nStep 2:"]
    alone = [tiny_llm.generate([GenerationRequest(p, max_tokens=10)])[0][0] for p in prompts]
    batched = tiny_llm.generate([GenerationRequest(p, max_tokens=10) for p in prompts])
    for a, [b] in zip(alone, batched):
        assert a.token_ids == b.token_ids
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_equal_prompts_share_one_prefill_and_answer_as_if_alone(tiny_llm):
    """n samples of a request and equal prompts of different requests are prefilled once;
    each row still samples on its own and answers exactly as it would alone."""
    prompts = ["Step 1: 3 * 4 = 12\nStep 2:", "abc", "Step 1: 3 * 4 = 12\nStep 2:"]
    alone = [tiny_llm.generate([GenerationRequest(p, max_tokens=8)])[0][0] for p in prompts]
    rows_before = tiny_llm.stats["rows"]
    batched = tiny_llm.generate([GenerationRequest(p, n=3, max_tokens=8) for p in prompts])
    assert tiny_llm.stats["rows"] - rows_before == 9
    for a, samples in zip(alone, batched):
        for b in samples:  # greedy: every sample is the lone answer
            assert b.token_ids == a.token_ids
            assert b.logprobs == pytest.approx(a.logprobs, abs=1e-4)
    seeded = GenerationRequest(prompts[0], n=4, temperature=1.5, seed=3, max_tokens=8)
    [together, _] = tiny_llm.generate([seeded, GenerationRequest(prompts[1], max_tokens=8)])
    [[*apart]] = [tiny_llm.generate([seeded])[0]]
    assert [c.token_ids for c in together] == [c.token_ids for c in apart]
    assert len({tuple(c.token_ids) for c in together}) > 1


def test_rows_finish_independently(tiny_llm):
    [[short], [long]] = tiny_llm.generate(
        [GenerationRequest("abc", max_tokens=2), GenerationRequest("abc", max_tokens=9)]
    )
    assert len(short.token_ids) == 2 and len(long.token_ids) == 9
    assert long.token_ids[:2] == short.token_ids


def test_a_stop_token_ends_the_row_like_eos_and_only_for_its_request(tiny_llm):
    [[free]] = tiny_llm.generate([GenerationRequest("abc", max_tokens=9)])
    stop = free.token_ids[3]
    [[stopped], [other]] = tiny_llm.generate([GenerationRequest("abc", max_tokens=9, stop_token_ids=[stop]),
                                              GenerationRequest("abc", max_tokens=9)])
    cut = free.token_ids.index(stop) + 1
    assert stopped.token_ids == free.token_ids[:cut] and stopped.finish_reason == "stop"
    assert stopped.text == tiny_llm.decode(free.token_ids[:cut - 1])  # without the stop token's text
    assert other.token_ids == free.token_ids and other.finish_reason == "length"


def test_n_samples_differ_and_top_k_one_is_greedy(tiny_llm):
    [samples] = tiny_llm.generate([GenerationRequest("abc", n=4, temperature=1.5, seed=1, max_tokens=8)])
    assert len({tuple(c.token_ids) for c in samples}) > 1
    [[greedy]] = tiny_llm.generate([GenerationRequest("abc", max_tokens=8)])
    [[top1]] = tiny_llm.generate([GenerationRequest("abc", temperature=1.0, top_k=1, seed=5, max_tokens=8)])
    assert top1.token_ids == greedy.token_ids


def test_bf16_logprobs_match_fp32(tiny_model_factory, tiny_tokenizer):
    fp32 = TransformersLLM.from_model(tiny_model_factory(), tiny_tokenizer, dtype="fp32")
    bf16 = TransformersLLM.from_model(tiny_model_factory(), tiny_tokenizer, dtype="bf16")
    try:
        assert bf16.dtype == torch.bfloat16
        [[c]] = fp32.generate([GenerationRequest("Question: 12 + 7 =", max_tokens=16)])
        a = fp32.score(c.prompt_ids, c.token_ids)
        b = bf16.score(c.prompt_ids, c.token_ids)
        assert max(abs(x - y) for x, y in zip(a, b)) < 0.1
    finally:
        fp32.close()
        bf16.close()


def test_dtype_choice_is_overridable_and_validated():
    assert choose_dtype("cpu", "fp32") == torch.float32
    assert choose_dtype("cpu", "bf16") == torch.bfloat16
    assert choose_dtype("cpu", "auto") in (torch.float32, torch.bfloat16)
    with pytest.raises(BackendError, match="dtype 'int3'"):
        choose_dtype("cpu", "int3")


def test_each_workload_takes_bf16_only_where_it_measures_faster(monkeypatch):
    import agentkit.llm.device as device

    # the Xeon: decoding (bound by reading weights) faster in bf16, a big matmul slower
    monkeypatch.setattr(device, "decode_speedup", lambda: 1.8)
    monkeypatch.setattr(device, "matmul_speedup", lambda: 0.5)
    assert choose_dtype("cpu") == torch.bfloat16
    assert choose_dtype("cpu", workload="train") == torch.float32
    monkeypatch.setattr(device, "matmul_speedup", lambda: 3.0)
    assert choose_dtype("cpu", workload="train") == torch.bfloat16
    # AVX2 only: bf16 emulated, slower in both
    monkeypatch.setattr(device, "decode_speedup", lambda: 0.2)
    monkeypatch.setattr(device, "matmul_speedup", lambda: 0.2)
    assert choose_dtype("cpu") == torch.float32
    assert choose_dtype("cpu", "bf16", workload="train") == torch.bfloat16  # a request wins
    with pytest.raises(ValueError, match="workload 'serve'"):
        choose_dtype("cpu", workload="serve")


def test_speed_probes_measure_this_machine():
    from agentkit.llm.device import decode_speedup, matmul_speedup

    for speedup in (decode_speedup(), matmul_speedup()):
        assert speedup > 0.0  # bf16 runs on every CPU torch supports, if slowly
    assert decode_speedup() is decode_speedup()  # measured once per process


def test_packing_is_found_by_trying_it(monkeypatch):
    from agentkit.llm import device

    monkeypatch.delenv("AGENTKIT_PACK_WEIGHTS", raising=False)
    device.packed_linear_unsupported.cache_clear()
    reason = device.packed_linear_unsupported(torch.float32)
    assert "only bf16 and fp16" in reason
    device.packed_linear_unsupported.cache_clear()
    monkeypatch.setenv("AGENTKIT_PACK_WEIGHTS", "0")
    try:
        assert "AGENTKIT_PACK_WEIGHTS=0" in device.packed_linear_unsupported(torch.bfloat16)
        assert not can_pack(torch.bfloat16, "cpu")
    finally:
        device.packed_linear_unsupported.cache_clear()

    def no_kernel(*args):  # what torch raises on a CPU without AVX-512 or AVX-NE-CONVERT
        raise RuntimeError("mkldnn_reorder_linear_weight: bf16 path needs the cpu support avx_ne_convert "
                           "or avx512bw, avx512vl and avx512dq")

    monkeypatch.delenv("AGENTKIT_PACK_WEIGHTS")
    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", no_kernel, raising=False)
    try:
        assert "avx512bw" in device.packed_linear_unsupported(torch.bfloat16)
        assert not can_pack(torch.bfloat16, "cpu")
    finally:
        device.packed_linear_unsupported.cache_clear()


def test_bf16_serves_through_plain_layers_where_packing_cannot_run(tiny_model_factory, tiny_tokenizer, monkeypatch):
    """The path an AVX2-only CPU takes: bf16 weights in plain ``nn.Linear`` layers."""
    from agentkit.llm import device

    device.packed_linear_unsupported.cache_clear()
    monkeypatch.setenv("AGENTKIT_PACK_WEIGHTS", "0")
    fp32 = TransformersLLM.from_model(tiny_model_factory(), tiny_tokenizer, dtype="fp32")
    bf16 = TransformersLLM.from_model(tiny_model_factory(), tiny_tokenizer, dtype="bf16")
    try:
        assert bf16.dtype == torch.bfloat16
        assert not any(isinstance(m, PackedLinear) for m in bf16.model.modules())
        [[c]] = fp32.generate([GenerationRequest("Question: 12 + 7 =", max_tokens=16)])
        [[d]] = bf16.generate([GenerationRequest("Question: 12 + 7 =", max_tokens=16)])
        assert len(d.token_ids) == 16 and all(x <= 0 for x in d.logprobs)
        a, b = fp32.score(c.prompt_ids, c.token_ids), bf16.score(c.prompt_ids, c.token_ids)
        assert max(abs(x - y) for x, y in zip(a, b)) < 0.1
    finally:
        fp32.close()
        bf16.close()
        device.packed_linear_unsupported.cache_clear()


def test_exact_logprobs_recovers_fp32_from_rounded_logits():
    torch.manual_seed(0)
    head = torch.randn(5000, 32)
    hidden = torch.randn(4, 32) * 3
    exact_logits = hidden @ head.T  # (4, V)
    rounded = exact_logits.bfloat16().float()
    tokens = exact_logits.argmax(-1)
    truth = torch.log_softmax(exact_logits, -1).gather(1, tokens[:, None]).squeeze(1)
    naive = torch.log_softmax(rounded, -1).gather(1, tokens[:, None]).squeeze(1)
    refined = exact_logprobs(rounded, hidden, head, tokens)
    assert (refined - truth).abs().max() < (naive - truth).abs().max() / 5
    assert (refined - truth).abs().max() < 1e-2


def test_full_vocab_sampling_follows_the_distribution():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().repeat(4000, 1)
    gen = torch.Generator().manual_seed(0)
    tokens, logprobs = select_tokens(logits, [RowParams(1.0, 1.0, 0, gen)] * 4000)
    freq = torch.bincount(tokens, minlength=4).float() / 4000
    assert torch.allclose(freq, probs, atol=0.03)
    assert logprobs[0].item() == pytest.approx(math.log(probs[tokens[0]].item()), abs=1e-5)


def test_top_p_keeps_only_the_nucleus():
    logits = torch.tensor([[3.0, 2.0, 0.0, -1.0, -5.0]]).repeat(500, 1)
    gen = torch.Generator().manual_seed(0)
    tokens, _ = select_tokens(logits, [RowParams(1.0, 0.7, 0, gen)] * 500)
    assert set(tokens.tolist()) <= {0, 1}


def test_batched_truncated_sampling_follows_each_rows_distribution():
    # rows alternate: top-k 2 at temperature 1 -> [0.625, 0.375]; top-p 0.9 at temperature 0.5
    # -> p^2 renormalised [0.685, 0.247, 0.062, 0.007], nucleus keeps the first two -> [0.735, 0.265]
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().repeat(8000, 1)
    gen = torch.Generator().manual_seed(0)
    params = [RowParams(1.0, 1.0, 2, gen), RowParams(0.5, 0.9, 0, gen)] * 4000
    tokens, _ = select_tokens(logits, params)
    for offset, expected in ((0, [0.625, 0.375, 0, 0]), (1, [0.735, 0.265, 0, 0])):
        freq = torch.bincount(tokens[offset::2], minlength=4).float() / 4000
        assert torch.allclose(freq, torch.tensor(expected), atol=0.03), (offset, freq)


def test_a_nucleus_wider_than_the_candidate_set_is_sampled_over_the_whole_vocabulary():
    logits = torch.zeros(3000, 5000)  # flat: the top-1024 candidates hold only 20% of the mass
    gen = torch.Generator().manual_seed(0)
    tokens, _ = select_tokens(logits, [RowParams(1.0, 0.5, 0, gen)] * 3000)
    assert len(set(tokens.tolist())) > 1024


def test_sampling_is_reproducible_by_seed():
    logits = torch.randn(6, 300)
    draw = lambda: select_tokens(logits, [RowParams(0.8, 0.95, 64, torch.Generator().manual_seed(i)) for i in range(6)])[0]  # noqa: E731
    assert torch.equal(draw(), draw())


def test_model_resolution_errors_name_the_value(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model("./no/such/model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))
    with pytest.raises(ModelNotFoundError, match="nobody/no-such-model"):
        resolve_model("nobody/no-such-model")


def test_adapter_path_without_config_is_refused(tiny_llm, tmp_path):
    with pytest.raises(BackendError, match="adapter_config.json"):
        tiny_llm.load_adapter("x", str(tmp_path))


def test_shared_prefix_cache_gives_the_same_answers(tiny_model_factory, tiny_tokenizer):
    shots = "Question: 1 + 1 =\nAnswer: 2\n\nQuestion: 2 + 5 =\nAnswer: 7\n\n"
    prompts = [shots + f"Question: {a} + {b} =\nAnswer:" for a, b in [(3, 4), (12, 30), (7, 77)]]
    cached = TransformersLLM.from_model(tiny_model_factory(), tiny_tokenizer, dtype="fp32")
    plain = TransformersLLM.from_model(tiny_model_factory(), tiny_tokenizer, dtype="fp32")
    plain.min_prefix = 10**9
    try:
        for _ in range(2):  # the second round reuses the stored prefix
            a = cached.generate([GenerationRequest(p, max_tokens=12) for p in prompts])
            b = plain.generate([GenerationRequest(p, max_tokens=12) for p in prompts])
            for [x], [y] in zip(a, b):
                assert x.token_ids == y.token_ids
                assert x.logprobs == pytest.approx(y.logprobs, abs=1e-4)
        assert cached._prefixes and not plain._prefixes
        [[single]] = cached.generate([GenerationRequest(prompts[1], max_tokens=12)])  # one row, cached prefix
        assert single.token_ids == b[1][0].token_ids
    finally:
        cached.close()
        plain.close()


def test_loading_an_adapter_keeps_the_plain_cpu_gemm_path(tiny_llm, tiny_model_factory, tmp_path):
    # PEFT freezes base weights; frozen bf16 CPU linears take a oneDNN path that re-packs the
    # weight for every input shape (6.4 GB and several times slower on Gemma's LM head), so
    # the backend keeps every weight marked trainable (decoding runs under inference_mode)
    from test_llm_protocol import _save_random_adapter

    _save_random_adapter(tiny_model_factory(), tmp_path / "a1")
    tiny_llm.load_adapter("a1", str(tmp_path / "a1"))
    assert all(p.requires_grad for p in tiny_llm.model.parameters())
    [[c]] = tiny_llm.generate([GenerationRequest("abc", max_tokens=4, adapter="a1")])
    assert c.adapter == "a1" and not any(p.grad is not None for p in tiny_llm.model.parameters())


def test_the_appending_kv_cache_matches_dynamic_cache(tiny_model_factory):
    import torch
    from transformers import DynamicCache

    from agentkit.llm._kvcache import appending_cache, cache_argument

    model = tiny_model_factory()
    kv = cache_argument(model)
    torch.manual_seed(0)
    prompt, steps = torch.randint(4, 90, (1, 20)), torch.randint(4, 90, (6, 3, 1))

    def run(cache):
        out = []
        with torch.inference_mode():
            out.append(model(input_ids=prompt, **{kv: cache}, use_cache=True).logits[:, -1])
            cache.batch_repeat_interleave(3)  # one prompt, three rows
            for k, tokens in enumerate(steps):
                if k == 3:  # the middle row finishes
                    cache.batch_select_indices(torch.tensor([0, 2]))
                tokens = tokens if k < 3 else tokens[[0, 2]]
                out.append(model(input_ids=tokens, **{kv: cache}, use_cache=True).logits[:, -1])
        return out, cache

    reference, dynamic = run(DynamicCache(config=model.config))
    appended, appending = run(appending_cache(model.config, reserve=24))  # outgrows its reservation
    for a, b in zip(appended, reference):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    for a, b in zip(appending.layers, dynamic.layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    assert appending.get_seq_length() == dynamic.get_seq_length() == 26


def test_a_staggered_burst_of_callers_lands_in_one_batch(tiny_llm):
    """Callers that arrive a few ms apart (each first writes its run to the store) are
    gathered while they keep coming, not cut off by the first caller's wait."""
    results = {}

    def call(i):
        results[i] = tiny_llm.generate([GenerationRequest(f"Q{i}: " + "x" * i, max_tokens=4)])[0][0]

    threads = []
    for i in range(8):
        threads.append(threading.Thread(target=call, args=(i,)))
        threads[-1].start()
        time.sleep(0.002)  # less than batch_wait (5 ms); the burst outlasts it
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 8
    assert tiny_llm.stats["max_rows_in_batch"] == 8


def test_a_request_joins_the_running_batch_and_is_answered_before_it_ends(tiny_llm):
    """Continuous batching: a request that arrives while a long one decodes joins its batch
    (left-padded into its KV cache), answers exactly as it would alone, and is handed back
    as soon as its own rows are done."""
    short, long_ = GenerationRequest("Q1: xx", max_tokens=5), GenerationRequest("A long story: ", max_tokens=100)
    short_alone, long_alone = (c[0] for c in tiny_llm.generate([short, long_]))
    stats_before = dict(tiny_llm.stats)
    results, resolved, long_row = {}, [], []
    joiner = threading.Thread(target=lambda: results.setdefault("short", tiny_llm.generate([short])[0][0]))
    append, resolve = tiny_llm._append, tiny_llm._resolve_finished

    def on_token(row, token, logprob):
        append(row, token, logprob)
        if row.request is long_ and len(row.out_ids) == 10:  # mid-decode: the short request arrives
            long_row.append(row)
            joiner.start()
            while tiny_llm._queue.empty():
                time.sleep(0.001)

    def on_resolve():
        open_before = [job for job, _ in tiny_llm._open]
        resolve()
        still = {id(job) for job, _ in tiny_llm._open}
        resolved.extend((job.payload[0], len(long_row[0].out_ids)) for job in open_before if id(job) not in still)

    tiny_llm._append, tiny_llm._resolve_finished = on_token, on_resolve
    [[long_done]] = tiny_llm.generate([long_])
    joiner.join(timeout=60)
    assert tiny_llm.stats["joined_rows"] - stats_before["joined_rows"] == 1
    assert long_done.token_ids == long_alone.token_ids and len(long_done.token_ids) > 20
    assert results["short"].token_ids == short_alone.token_ids
    assert results["short"].logprobs == pytest.approx(short_alone.logprobs, abs=1e-4)
    when = dict((request.prompt, length) for request, length in resolved)
    assert when["Q1: xx"] < len(long_done.token_ids)  # answered while the long one still ran


@pytest.mark.skipif(not can_pack(torch.bfloat16, "cpu"), reason=str(packed_linear_unsupported(torch.bfloat16)))
def test_packed_bf16_weights_give_the_same_tokens_and_logprobs(tiny_model_factory, tiny_tokenizer):
    plain = TransformersLLM.from_model(tiny_model_factory(), tiny_tokenizer, dtype="bf16", pack_weights=False)
    packed = TransformersLLM.from_model(tiny_model_factory(), tiny_tokenizer, dtype="bf16")
    try:
        assert any(isinstance(m, PackedLinear) for m in packed.model.modules())
        assert not any(isinstance(m, PackedLinear) for m in plain.model.modules())
        requests = [GenerationRequest(p, max_tokens=12) for p in ("Question: 12 + 7 =", "abc", "Step 1: 3 * 4")]
        a, b = plain.generate(requests), packed.generate(requests)
        for [x], [y] in zip(a, b):
            assert x.token_ids == y.token_ids and x.logprobs == y.logprobs
    finally:
        plain.close()
        packed.close()


@pytest.mark.skipif(not can_pack(torch.bfloat16, "cpu"), reason=str(packed_linear_unsupported(torch.bfloat16)))
def test_packed_weights_serve_lora_adapters_like_plain_ones(tiny_model_factory, tiny_tokenizer, tmp_path):
    from test_llm_protocol import _save_random_adapter

    _save_random_adapter(tiny_model_factory(), tmp_path / "a1")
    backends = [TransformersLLM.from_model(tiny_model_factory(), tiny_tokenizer, dtype="bf16", pack_weights=pack)
                for pack in (False, True)]
    try:
        answers = []
        for llm in backends:
            llm.load_adapter("a1", str(tmp_path / "a1"))
            requests = [GenerationRequest("Question: 12 + 7 =", max_tokens=12, adapter=adapter) for adapter in ("a1", None)]
            answers.append([c.token_ids + c.logprobs for [c] in llm.generate(requests)])
        assert answers[0] == answers[1]
        assert answers[1][0] != answers[1][1]  # the adapter changed the answer: it was applied
        assert any(isinstance(m, PackedLinear) for m in backends[1].model.modules())
    finally:
        for llm in backends:
            llm.close()


@pytest.mark.skipif(not can_pack(torch.bfloat16, "cpu"), reason=str(packed_linear_unsupported(torch.bfloat16)))
def test_a_packed_layer_follows_weight_updates_and_still_trains():
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 48, bias=False).bfloat16()
    pack_linear_layers(layer)
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    with torch.inference_mode():
        before = layer(x)
    with torch.no_grad():
        layer.weight.mul_(2)  # an in-place update: the packed copy must be redone
    with torch.inference_mode():
        after = layer(x)
    torch.testing.assert_close(after, torch.nn.functional.linear(x, layer.weight))
    assert not torch.equal(before, after)
    layer(x).float().sum().backward()  # with autograd on, the plain path and its gradient
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("vocab", [262144, 8192, 4096, 5000])
def test_blockwise_top_k_equals_topk(vocab):
    torch.manual_seed(vocab)
    logits = (torch.randn(6, vocab) * 4).bfloat16().float()  # rounded: many ties
    values, indices = top_k(logits, 32)
    expected = logits.topk(32, dim=-1).values
    assert torch.equal(values, expected)
    assert torch.equal(logits.gather(1, indices), values)
    assert all(len(set(row.tolist())) == 32 for row in indices)  # no index twice


# --- a bad request fails alone --------------------------------------------------------------


def test_an_empty_prompt_is_answered_with_a_one_line_error_not_left_pending(tiny_llm):
    future = tiny_llm.submit([GenerationRequest(prompt=[])])
    with pytest.raises(BackendError, match="empty prompt") as info:
        future.result(timeout=5)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("prompt, max_tokens, message", [
    ([], 4, "empty prompt"),
    ([5, 10**6], 4, "token id 1000000 in the prompt is outside the vocabulary of 104 ids (0-103)"),
    ([5, -1], 4, "token id -1 in the prompt is outside the vocabulary of 104 ids (0-103)"),
    ([5] * 1000, 30, "prompt of 1000 tokens + max_tokens=30 is 1030 tokens: more than the model's context length of 1024"),
    ("x" * 1100, 0, "prompt of 1101 tokens + max_tokens=0 is 1101 tokens: more than the model's context length of 1024"),
])
def test_a_bad_request_fails_alone_and_its_batch_neighbours_are_answered(tiny_llm, prompt, max_tokens, message):
    good = GenerationRequest("Q: 1 + 1 =", max_tokens=5)
    [[alone]] = tiny_llm.generate([good])
    batches = tiny_llm.stats["batches"]
    before = tiny_llm.submit([good])  # all three land in one batch (submitted within batch_wait)
    bad = tiny_llm.submit([GenerationRequest(prompt, max_tokens=max_tokens)])
    after = tiny_llm.submit([good, good])
    with pytest.raises(BackendError) as info:
        bad.result(timeout=10)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert before.result(timeout=10)[0][0].token_ids == alone.token_ids
    assert [c[0].token_ids for c in after.result(timeout=10)] == [alone.token_ids] * 2
    assert tiny_llm.stats["batches"] == batches + 1  # they did share a batch
    # the worker is still alive
    assert tiny_llm.generate([good])[0][0].token_ids == alone.token_ids


def test_a_failing_batch_answers_every_job_it_took(tiny_llm, monkeypatch):
    def broken(rows, adapter, allowed=None):
        raise RuntimeError("the model failed")

    monkeypatch.setattr(tiny_llm, "_prefill", broken)
    futures = [tiny_llm.submit([GenerationRequest("Hi", max_tokens=3)]) for _ in range(3)]
    futures.append(tiny_llm.submit([GenerationRequest([], max_tokens=3)]))
    for future in futures[:3]:
        with pytest.raises(RuntimeError, match="the model failed"):
            future.result(timeout=5)
    with pytest.raises(BackendError, match="empty prompt"):
        futures[3].result(timeout=5)


def test_a_cancelled_row_gets_no_more_tokens(tiny_llm):
    """A row cancelled mid-decode leaves at the next step without another token: no decode
    and no on_token call for a client that has gone."""
    seen = []
    futures = []

    def on_token(request_index, sample_index, token, logprob):
        seen.append(token)
        futures[0].cancel()  # the client goes away after its first token

    futures.append(tiny_llm.submit([GenerationRequest("Hello", max_tokens=50)], on_token=on_token))
    wait = time.monotonic() + 10
    while not seen and time.monotonic() < wait:
        time.sleep(0.01)
    tiny_llm.generate([GenerationRequest("Hi", max_tokens=2)])  # the cancelled batch has moved on
    assert len(seen) == 1


def test_closing_cancels_a_long_batch_and_fails_later_calls(tiny_model_factory, tiny_tokenizer):
    """close() does not wait for a batch to run to its end, its callers are not left
    waiting, and a call after it is a one-line BackendError."""
    import concurrent.futures

    llm = TransformersLLM.from_model(tiny_model_factory(), tiny_tokenizer, dtype="fp32")
    future = llm.submit([GenerationRequest("abc", max_tokens=900)])
    time.sleep(0.3)  # decoding
    start = time.perf_counter()
    llm.close()
    assert time.perf_counter() - start < 5
    with pytest.raises(concurrent.futures.CancelledError):
        future.result(timeout=5)
    with pytest.raises(BackendError, match="closed"):
        llm.generate([GenerationRequest("abc", max_tokens=2)])


def _restricted_logprobs(llm, prompt_ids, completion_ids, allowed):
    """The reference: full-vocabulary logits of one unbatched forward, softmax over ``allowed``."""
    ids = torch.tensor([list(prompt_ids) + list(completion_ids)])
    with torch.no_grad():
        logits = llm.model(input_ids=ids).logits[0, len(prompt_ids) - 1:-1].float()  # (T, V)
    within = torch.log_softmax(logits[:, list(allowed)], -1)  # (T, A)
    return [within[t, list(allowed).index(tok)].item() for t, tok in enumerate(completion_ids)], logits


def test_allowed_token_ids_decode_the_softmax_over_them_alone(tiny_llm, tiny_tokenizer):
    allowed = tuple(sorted(set(tiny_llm.tokenize("Step 1: 12 + 7 = 19\nAnswer: 19"))))
    [[greedy]] = tiny_llm.generate([GenerationRequest("Question: 12 + 7?", max_tokens=12, allowed_token_ids=allowed)])
    [sampled] = tiny_llm.generate([GenerationRequest("Question: 12 + 7?", n=6, temperature=1.5, seed=2, max_tokens=12,
                                                     allowed_token_ids=allowed)])
    for c in [greedy, *sampled]:
        assert c.token_ids and set(c.token_ids) <= set(allowed)
        expected, logits = _restricted_logprobs(tiny_llm, c.prompt_ids, c.token_ids, allowed)
        assert c.logprobs == pytest.approx(expected, abs=1e-4)
        assert tiny_llm.score(c.prompt_ids, c.token_ids, allowed_token_ids=allowed) == pytest.approx(expected, abs=1e-4)
    # greedy over the allowed ids: each token is the best of them, not of the whole vocabulary
    _, logits = _restricted_logprobs(tiny_llm, greedy.prompt_ids, greedy.token_ids, allowed)
    assert greedy.token_ids == [allowed[i] for i in logits[:, list(allowed)].argmax(-1).tolist()]
    assert (logits.argmax(-1) != torch.tensor(greedy.token_ids)).any()  # the random model prefers others
    assert len({tuple(c.token_ids) for c in sampled}) > 1


def test_requests_over_different_vocabularies_in_one_call_each_decode_their_own(tiny_llm):
    digits = tuple(sorted(set(tiny_llm.tokenize("0123456789"))))
    words = tuple(sorted(set(tiny_llm.tokenize("Step Answer"))))
    alone = [tiny_llm.generate([GenerationRequest("Q: 3 + 4?", max_tokens=8, allowed_token_ids=v)])[0][0]
             for v in (digits, words, None)]
    mixed = tiny_llm.generate([GenerationRequest("Q: 3 + 4?", max_tokens=8, allowed_token_ids=v)
                               for v in (digits, words, None)])
    for a, [b], v in zip(alone, mixed, (digits, words, None)):
        assert b.token_ids == a.token_ids and b.logprobs == pytest.approx(a.logprobs, abs=1e-4)
        assert v is None or set(b.token_ids) <= set(v)


def test_an_allowed_id_outside_the_vocabulary_fails_its_request_alone(tiny_llm):
    good = GenerationRequest("abc", max_tokens=4)
    bad = GenerationRequest("abc", max_tokens=4, allowed_token_ids=(3, tiny_llm.vocab_size + 5))
    with pytest.raises(BackendError, match=f"allowed token id {tiny_llm.vocab_size + 5} is outside the vocabulary"):
        tiny_llm.generate([bad])
    assert tiny_llm.generate([good])[0][0].token_ids
    with pytest.raises(ValueError, match="at least one token id"):
        GenerationRequest("abc", allowed_token_ids=())


def test_a_request_joins_a_running_batch_only_over_the_same_vocabulary(tiny_llm):
    """Continuous batching keeps one vocabulary per batch: mid-decode, a request over the
    batch's allowed ids joins it, one over other ids waits for a batch of its own; each
    answers exactly as it would alone."""
    letters = tuple(sorted(set(tiny_llm.tokenize("abcdefghij ")[1:])))
    digits = tuple(sorted(set(tiny_llm.tokenize("0123456789 ")[1:])))
    long_ = GenerationRequest("A long story: ", max_tokens=60, allowed_token_ids=letters)
    same, other = (GenerationRequest("Q1: xx", max_tokens=5, allowed_token_ids=v) for v in (letters, digits))
    alone = {id(r): tiny_llm.generate([r])[0][0] for r in (long_, same, other)}
    joined_before = tiny_llm.stats["joined_rows"]
    results: dict[int, object] = {}
    callers = [threading.Thread(target=lambda r=r: results.setdefault(id(r), tiny_llm.generate([r])[0][0]))
               for r in (same, other)]
    append = tiny_llm._append

    def on_token(row, token, logprob):
        append(row, token, logprob)
        if row.request is long_ and len(row.out_ids) == 10:  # mid-decode: both requests arrive
            for caller in callers:
                caller.start()
            while tiny_llm._queue.qsize() < 2:
                time.sleep(0.001)

    tiny_llm._append = on_token
    [[long_done]] = tiny_llm.generate([long_])
    for caller in callers:
        caller.join(timeout=60)
    assert tiny_llm.stats["joined_rows"] - joined_before == 1  # the same vocabulary's request, not the other
    for request, done in ((long_, long_done), (same, results[id(same)]), (other, results[id(other)])):
        assert done.token_ids == alone[id(request)].token_ids
        assert done.logprobs == pytest.approx(alone[id(request)].logprobs, abs=1e-4)
        assert set(done.token_ids) <= set(request.allowed_token_ids)


def test_allowed_token_ids_decode_through_a_lora_adapter_in_bf16(tiny_model_factory, tiny_tokenizer, tmp_path):
    from test_llm_protocol import _save_random_adapter

    _save_random_adapter(tiny_model_factory(), tmp_path / "a1")
    llm = TransformersLLM.from_model(tiny_model_factory(), tiny_tokenizer, dtype="bf16")
    try:
        llm.load_adapter("a1", str(tmp_path / "a1"))
        allowed = tuple(sorted(set(llm.tokenize("Step 1: 12 + 7 = 19\nAnswer: 19")[1:])))
        outs = {adapter: llm.generate([GenerationRequest("Question: 12 + 7?", max_tokens=12, adapter=adapter,
                                                         allowed_token_ids=allowed)])[0][0] for adapter in (None, "a1")}
        for adapter, c in outs.items():
            assert c.adapter == adapter and c.token_ids and set(c.token_ids) <= set(allowed)
            scored = llm.score(c.prompt_ids, c.token_ids, adapter=adapter, allowed_token_ids=allowed)
            assert c.logprobs == pytest.approx(scored, abs=0.05)  # bf16 body, fp32 head rows
        assert outs[None].logprobs != pytest.approx(outs["a1"].logprobs, abs=1e-3)  # the adapter is applied
    finally:
        llm.close()
