"""`agentkit serve` through the official `openai` client over loopback: completions and
chat, plain and streamed, 16 concurrent streams batched together, and 400s that name the
bad field. The backend is the tiny random Gemma (conftest) with a Gemma-style chat template."""

from __future__ import annotations

import threading

import openai
import pytest

from agentkit.llm.scripted import ScriptedLLM
from agentkit.llm.server import make_server
from conftest import build_tiny_model, build_tiny_tokenizer, char_scripted

pytestmark = pytest.mark.timeout(120)

TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
MESSAGES = [{"role": "user", "content": "What is 6*7?"}]


def start(llm):
    server = make_server(llm, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def server():
    from agentkit.llm.transformers import TransformersLLM

    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = TEMPLATE
    llm = TransformersLLM.from_model(build_tiny_model(len(tokenizer)), tokenizer, name="tiny", dtype="fp32")
    server = start(llm)
    yield server
    server.stop(grace_s=1)
    llm.close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=60)


def chat_prompt_ids(server) -> list[int]:
    tokenizer = server.llm.tokenizer
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_completion(client, server):
    got = client.completions.create(model="tiny", prompt="Hello", max_tokens=12, temperature=0)
    [want] = server.llm.generate([_request("Hello", 12)])[0]
    assert got.choices[0].text == want.text and got.choices[0].finish_reason == want.finish_reason
    assert got.model == "tiny" and got.usage.completion_tokens == len(want.token_ids)


def test_completion_streamed(client):
    plain = client.completions.create(model="tiny", prompt="Hello", max_tokens=20, temperature=0).choices[0]
    chunks = list(client.completions.create(model="tiny", prompt="Hello", max_tokens=20, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    *texts, usage = chunks
    assert "".join(c.choices[0].text for c in texts) == plain.text
    assert sum(1 for c in texts if c.choices[0].text) > 5  # token by token
    assert [c.choices[0].finish_reason for c in texts][-1] == plain.finish_reason
    assert usage.choices == [] and usage.usage.completion_tokens == 20


def test_chat_renders_the_chat_template(client, server):
    got = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, temperature=0)
    [want] = server.llm.generate([_request(chat_prompt_ids(server), 12)])[0]
    [choice] = got.choices
    assert choice.message.role == "assistant" and choice.message.content == want.text
    assert got.object == "chat.completion" and got.usage.prompt_tokens == len(chat_prompt_ids(server))


def test_chat_streamed(client):
    plain = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=20, temperature=0).choices[0]
    chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=20, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == plain.message.content
    assert chunks[-1].choices[0].finish_reason == plain.finish_reason
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_chat_logprobs_carry_each_token_and_its_top_alternatives(client, server):
    got = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, temperature=0,
                                         logprobs=True, top_logprobs=3)
    [choice] = got.choices
    content = choice.logprobs.content
    [want] = server.llm.generate([_request(chat_prompt_ids(server), 12)])[0]
    assert [t.token for t in content] == [server.llm.decode([i]) for i in want.token_ids]
    assert "".join(t.token for t in content) == choice.message.content
    assert [t.logprob for t in content] == pytest.approx(want.logprobs, abs=1e-4)
    for t in content:
        assert bytes(t.bytes).decode() == t.token
        top = [(a.token, a.logprob) for a in t.top_logprobs]
        assert len(top) == 3 and [lp for _, lp in top] == sorted((lp for _, lp in top), reverse=True)
        assert top[0] == (t.token, pytest.approx(t.logprob, abs=1e-4))  # greedy: the most likely token
    plain = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4, logprobs=True)
    assert all(t.top_logprobs == [] for t in plain.choices[0].logprobs.content)
    assert client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4).choices[0].logprobs is None


def test_completion_logprobs_carry_the_top_k_tokens_and_the_sampled_one(client, server):
    got = client.completions.create(model="tiny", prompt="Hello", max_tokens=8, temperature=0, logprobs=3).choices[0]
    [want] = server.llm.generate([_request("Hello", 8)])[0]
    lp = got.logprobs
    assert lp.tokens == [server.llm.decode([t]) for t in want.token_ids] and lp.token_logprobs == want.logprobs
    alternatives = server.llm.top_logprobs(want.prompt_ids, want.token_ids, 3)
    for token, logprob, top, alts in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, alternatives):
        assert list(top) == [server.llm.decode([a]) for a, _ in alts]  # greedy: the sampled token is the first
        assert list(top.values()) == pytest.approx([v for _, v in alts], abs=1e-4) and top[token] == logprob
    ids = client.completions.create(model="tiny", prompt="Hello", max_tokens=8, temperature=0, logprobs=1, echo=True,
                                    extra_body={"return_tokens_as_token_ids": True}).choices[0].logprobs
    prompt_alts = server.llm.top_logprobs(want.prompt_ids[:1], want.prompt_ids[1:], 1)
    alternatives = server.llm.top_logprobs(want.prompt_ids, want.token_ids, 1)
    assert ids.top_logprobs[0] is None  # echo: the first prompt token has no logprob
    assert ids.top_logprobs[1:] == [{f"token_id:{a}": v for a, v in alts} | {token: logprob} for token, logprob, alts
                                    in zip(ids.tokens[1:], ids.token_logprobs[1:], prompt_alts + alternatives)]
    sampled_only = client.completions.create(model="tiny", prompt="Hello", max_tokens=8, temperature=0, logprobs=0)
    assert sampled_only.choices[0].logprobs.top_logprobs == [{t: v} for t, v in zip(lp.tokens, lp.token_logprobs)]


@pytest.mark.parametrize("top", [0, 2])
def test_streamed_completion_logprobs_add_up_to_the_plain_ones(client, top):
    ask = {"model": "tiny", "prompt": ["Hello", "Bye"], "max_tokens": 12, "temperature": 0, "logprobs": top, "n": 2}
    plain = client.completions.create(**ask).choices
    chunks = [c.choices[0] for c in client.completions.create(**ask, stream=True)]
    assert sum(1 for c in chunks if c.logprobs and c.logprobs.tokens) > 4  # carried by the chunks, not only the last
    for want in plain:
        mine = [c.logprobs for c in chunks if c.index == want.index and c.logprobs]
        assert "".join(c.text for c in chunks if c.index == want.index) == want.text
        assert [t for lp in mine for t in lp.tokens] == want.logprobs.tokens
        assert [v for lp in mine for v in lp.token_logprobs] == want.logprobs.token_logprobs
        assert [o for lp in mine for o in lp.text_offset] == want.logprobs.text_offset
        tops = [t for lp in mine for t in lp.top_logprobs]
        assert [t.keys() for t in tops] == [t.keys() for t in want.logprobs.top_logprobs]
        assert [list(t.values()) for t in tops] == [pytest.approx(list(t.values()), abs=1e-4)
                                                    for t in want.logprobs.top_logprobs]


@pytest.mark.parametrize("top", [None, 3])
def test_streamed_chat_logprobs_add_up_to_the_plain_ones(client, top):
    ask = {"model": "tiny", "messages": MESSAGES, "max_tokens": 12, "temperature": 0, "logprobs": True, "top_logprobs": top}
    plain = client.chat.completions.create(**ask).choices[0].logprobs.content
    chunks = list(client.chat.completions.create(**ask, stream=True))
    content = [t for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert sum(1 for c in chunks if c.choices[0].logprobs) > (1 if top else 4)
    assert [(t.token, t.logprob, t.bytes) for t in content] == [(t.token, t.logprob, t.bytes) for t in plain]
    assert [[a.token for a in t.top_logprobs] for t in content] == [[a.token for a in t.top_logprobs] for t in plain]
    assert [[a.logprob for a in t.top_logprobs] for t in content] == [
        pytest.approx([a.logprob for a in t.top_logprobs], abs=1e-4) for t in plain]
    assert len(plain) == 12 and all(len(t.top_logprobs) == (top or 0) for t in plain)


def test_chat_ends_at_the_chat_templates_end_of_turn_token():
    """A chat answer stops at the token that closes the assistant's turn (derived from the
    template), without its text; a completion of the same reply runs on to <eos>."""
    tokenizer = build_tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<end_of_turn>"]})
    tokenizer.chat_template = TEMPLATE
    [end] = tokenizer("<end_of_turn>", add_special_tokens=False)["input_ids"]
    llm = char_scripted(["42<end_of_turn>\n<start_of_turn>user\nand then?"], tokenizer)
    llm.tokenizer = tokenizer
    server = start(llm)
    try:
        assert server.end_of_turn_ids == (end,)
        client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)
        ask = {"model": "scripted", "messages": MESSAGES, "max_tokens": 40, "logprobs": True}
        [choice] = client.chat.completions.create(**ask).choices
        assert (choice.message.content, choice.finish_reason) == ("42", "stop")
        assert [t.token for t in choice.logprobs.content] == ["4", "2", ""]  # the end token, kept without text
        chunks = list(client.chat.completions.create(**ask, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == "42"
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert [t.token for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.content] == ["4", "2", ""]
        plain = client.completions.create(model="scripted", prompt="Q", max_tokens=40).choices[0]
        assert plain.text == "42\n<start_of_turn>user\nand then?"  # completions stop at <eos> alone
        assert [r.stop_token_ids for r in llm.requests] == [(end,), (end,), ()]
    finally:
        server.stop(grace_s=1)


def test_sixteen_concurrent_streams_are_batched(client, server):
    prompts = [f"Question {i}:" for i in range(16)]
    want = client.completions.create(model="tiny", prompt=prompts[0], max_tokens=16, temperature=0).choices[0].text
    before = server.llm.stats["max_rows_in_batch"]
    server.llm.stats["max_rows_in_batch"] = 0
    got: dict[int, str] = {}

    def stream(i: int) -> None:
        if i % 2:  # half of them chat
            chunks = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": prompts[i]}],
                                                    max_tokens=16, temperature=0, stream=True)
            got[i] = "".join(c.choices[0].delta.content or "" for c in chunks)
        else:
            chunks = client.completions.create(model="tiny", prompt=prompts[i], max_tokens=16, temperature=0, stream=True)
            got[i] = "".join(c.choices[0].text for c in chunks)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(got) == list(range(16))
    assert got[0] == want  # batching changes nothing of what a stream says
    assert server.llm.stats["max_rows_in_batch"] > 1, "the streams were decoded one at a time"
    server.llm.stats["max_rows_in_batch"] = max(before, server.llm.stats["max_rows_in_batch"])


@pytest.mark.parametrize("call, param, message", [
    (lambda c: c.completions.create(model="tiny", prompt="Hi", n=0), "n", "n=0: must be an integer >= 1"),
    (lambda c: c.completions.create(model="tiny", prompt="Hi", temperature="hot"), "temperature",
     'temperature="hot": must be a number >= 0'),
    (lambda c: c.completions.create(model="tiny", prompt=[[]]), "prompt",
     "prompt: must be a string, a list of token ids, or a list of those"),
    (lambda c: c.chat.completions.create(model="tiny", messages=[{"role": "user"}]), "messages",
     'messages[0].content: required (a string, or a list of {"type": "text", "text": ...} parts)'),
    (lambda c: c.chat.completions.create(model="tiny", messages=[]), "messages", "messages: must not be empty"),
    (lambda c: c.chat.completions.create(model="tiny", messages=MESSAGES, stream=True, stream_options={"include_usage": 1}),
     "stream_options", "stream_options.include_usage=1: must be true or false"),
    (lambda c: c.chat.completions.create(model="tiny", messages=MESSAGES, top_logprobs=2), "top_logprobs",
     "top_logprobs=2: needs logprobs=true"),
    (lambda c: c.chat.completions.create(model="tiny", messages=MESSAGES, logprobs=True, top_logprobs=21),
     "top_logprobs", "top_logprobs=21: must be an integer from 0 to 20"),
    (lambda c: c.completions.create(model="tiny", prompt="Hi", extra_body={"stop_token_ids": [1, "x"]}),
     "stop_token_ids", "stop_token_ids: must be a list of token ids"),
    (lambda c: c.completions.create(model="tiny", prompt="Hi", extra_body={"allowed_token_ids": []}),
     "allowed_token_ids", "allowed_token_ids: must not be empty"),
    (lambda c: c.completions.create(model="tiny", prompt="Hi", extra_body={"allowed_token_ids": [5, 10**6]}),
     "allowed_token_ids", "allowed_token_ids: token id 1000000 is outside the vocabulary (0-{last})"),
    (lambda c: c.completions.create(model="tiny", prompt="Hi", logprobs=6), "logprobs",
     "logprobs=6: must be an integer from 0 to 5"),
    (lambda c: c.completions.create(model="tiny", prompt="Hi", echo=True, logprobs=1, stream=True), "stream",
     "stream=true with echo: not supported here; drop one of them"),
    (lambda c: c.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=5000), "max_tokens",
     "max_tokens=5000: must be at most 1024, this server's limit (the model's context length); ask for fewer tokens"),
])
def test_a_bad_request_is_a_400_naming_the_field(client, server, call, param, message):
    with pytest.raises(openai.BadRequestError) as info:
        call(client)
    error = info.value.body
    message = message.replace("{last}", str(server.llm.vocab_size - 1))
    assert (error["message"], error["param"], error["type"]) == (message, param, "BadRequestError")


def test_allowed_token_ids_reach_the_model_through_the_client_and_the_server(server):
    """vLLM's extension: OpenAIClientLLM sends a request's allowed_token_ids, agentkit serve
    decodes over them alone."""
    from agentkit.llm.base import GenerationRequest
    from agentkit.llm.openai import OpenAIClientLLM

    digits = tuple(sorted(set(server.llm.tokenize("0123456789")[1:])))
    llm = OpenAIClientLLM(server.url, model="tiny")
    free, [held] = llm.generate([GenerationRequest("Question: 3 + 4 =", max_tokens=12),
                                 GenerationRequest("Question: 3 + 4 =", max_tokens=12, allowed_token_ids=digits)])
    assert not set(free[0].token_ids) <= set(digits)  # the random model writes other tokens when it may
    assert held.token_ids and set(held.token_ids) <= set(digits) and held.text.isdigit()
    assert held.logprobs == pytest.approx(server.llm.score(held.prompt_ids, held.token_ids, allowed_token_ids=digits),
                                          abs=1e-4)


def test_an_unknown_model_is_a_404(client):
    with pytest.raises(openai.NotFoundError, match="The model `gpt-4` does not exist"):
        client.chat.completions.create(model="gpt-4", messages=MESSAGES)


def test_a_model_without_a_chat_template_is_a_400_naming_the_fix():
    server = start(ScriptedLLM(["Answer: 4"]))
    try:
        client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="has no chat template .* /v1/completions"):
            client.chat.completions.create(model="scripted", messages=MESSAGES)
        assert client.completions.create(model="scripted", prompt="Q").choices[0].text == "Answer: 4"
    finally:
        server.stop(grace_s=1)


def test_the_server_binds_loopback_by_default(server):
    assert server.url.startswith("http://127.0.0.1:")


def _request(prompt, max_tokens: int):
    from agentkit.llm.base import GenerationRequest

    return GenerationRequest(prompt=prompt, max_tokens=max_tokens, temperature=0)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_embedded_gemma_streams_the_same_text_through_the_openai_client():
    from agentkit.llm import load_backend

    llm = load_backend("transformers", "gemma-3-270m", dtype="fp32")
    server = start(llm)
    try:
        client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=300)
        ask = {"model": server.model_name, "prompt": "Question: 12 + 7 =\nAnswer:", "max_tokens": 24, "temperature": 0}
        plain = client.completions.create(**ask).choices[0].text
        streamed = "".join(c.choices[0].text for c in client.completions.create(**ask, stream=True))
        assert plain.strip() and streamed == plain  # SentencePiece's leading spaces survive token-by-token decoding

        # chat: the messages under Gemma 3's template, which the converted tokenizer carries
        chat = {"model": server.model_name, "messages": MESSAGES, "max_tokens": 16, "temperature": 0}
        answer = client.chat.completions.create(**chat)
        rendered = "<bos><start_of_turn>user\nWhat is 6*7?<end_of_turn>\n<start_of_turn>model\n"
        assert answer.usage.prompt_tokens == len(llm.tokenizer(rendered, add_special_tokens=False)["input_ids"])
        [choice] = answer.choices
        assert choice.message.role == "assistant" and choice.message.content.strip()
        chunks = list(client.chat.completions.create(**chat, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == choice.message.content
        assert chunks[-1].choices[0].finish_reason == choice.finish_reason

        # a chat answer ends at the template's end-of-turn token, found from the tokenizer
        assert server.end_of_turn_ids == (llm.tokenizer.convert_tokens_to_ids("<end_of_turn>"),)
    finally:
        server.stop(grace_s=1)
        llm.close()
