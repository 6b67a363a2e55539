"""Shared fixtures: a tiny randomly initialised Gemma-3 model with a character-level
tokenizer, built in-process (no download), and helpers to serve it over loopback."""

from __future__ import annotations

import os
import string
import threading

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest


def build_tiny_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    chars = list(string.printable)
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


def build_tiny_model(vocab_size: int, seed: int = 0):
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, sliding_window=128,
        layer_types=["sliding_attention", "full_attention"], max_position_embeddings=1024,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():  # pad, bos and unk never win, so decoded text is not empty
        model.model.embed_tokens.weight[[0, 2, 3]] = 0.0
    return model


@pytest.fixture
def store(tmp_path):
    """A fresh trajectory store (runs and steps) in the test's temporary directory."""
    from agentkit.store import TrajectoryStore

    with TrajectoryStore(tmp_path / "runs.db") as s:
        yield s


@pytest.fixture
def task():
    """One level-2 arithmetic training task: two operations, so a solution has two steps."""
    from agentkit.tasks import get_suite

    return get_suite("arithmetic").tasks("train", 1, level=2)[0]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_factory(tiny_tokenizer):
    def make(seed: int = 0):
        return build_tiny_model(len(tiny_tokenizer), seed)

    return make


@pytest.fixture
def tiny_llm(tiny_model_factory, tiny_tokenizer):
    from agentkit.llm.transformers import TransformersLLM

    llm = TransformersLLM.from_model(tiny_model_factory(), tiny_tokenizer, name="tiny", dtype="fp32")
    yield llm
    llm.close()


def serve_in_thread(llm):
    from agentkit.llm.server import make_server

    server = make_server(llm, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


def char_scripted(replies, tokenizer):
    """A scripted backend that speaks the tiny model's character tokenizer, so the ids it
    records are ids the tiny model can train on."""
    from agentkit.llm.scripted import ScriptedLLM

    class CharScripted(ScriptedLLM):
        def tokenize(self, text):
            return list(tokenizer(text)["input_ids"])

        def _encode(self, text):
            return list(tokenizer(text, add_special_tokens=False)["input_ids"])

        def decode(self, token_ids):
            return tokenizer.decode(list(token_ids), skip_special_tokens=True)

    return CharScripted(replies)
