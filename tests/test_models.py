"""Model resolution: the embedded model's one-time conversion is guarded by a file lock."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import pytest

from agentkit.errors import ModelNotFoundError
from agentkit.llm import models


def _slow_convert(name: str, target: Path) -> None:
    with open(target.parent / "conversions.log", "a") as log:
        log.write(f"{name}\n")
    time.sleep(1.0)  # long enough that the other process arrives mid-conversion
    target.mkdir(parents=True, exist_ok=True)
    (target / "config.json").write_text("{}")
    (target / "model.safetensors").write_bytes(b"weights")


def _resolve_in_child(home: str, queue) -> None:
    import os

    os.environ["AGENTKIT_HOME"] = home
    queue.put(str(models._ensure_embedded("gemma-3-270m", convert=_slow_convert)))


def test_two_processes_never_convert_at_once(tmp_path):
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_resolve_in_child, args=(str(tmp_path), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=30)
    paths = {queue.get(timeout=5) for _ in procs}
    assert paths == {str(tmp_path / "models" / "gemma-3-270m")}
    assert (tmp_path / "models" / "conversions.log").read_text().splitlines() == ["gemma-3-270m"]


def test_cached_models_lists_converted_models(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTKIT_HOME", str(tmp_path))
    assert models.cached_models() == []
    models._ensure_embedded("gemma-3-270m", convert=_slow_convert)
    [cached] = models.cached_models()
    assert cached.name == "gemma-3-270m" and cached.path == tmp_path / "models" / "gemma-3-270m"


def test_unwritable_cache_names_the_fix(monkeypatch):
    monkeypatch.setenv("AGENTKIT_HOME", "/proc/agentkit-home")
    with pytest.raises(ModelNotFoundError, match="AGENTKIT_HOME"):
        models._ensure_embedded("gemma-3-270m", convert=_slow_convert)


def test_a_cache_converted_without_a_chat_template_gets_gemmas_on_load(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTKIT_HOME", str(tmp_path))
    target = tmp_path / "models" / "gemma-3-270m"
    models._ensure_embedded("gemma-3-270m", convert=_slow_convert)  # as old conversions left it: no template
    (target / "tokenizer_config.json").write_text('{"tokenizer_class": "GemmaTokenizer"}')
    assert models.resolve_model("gemma-3-270m") == target
    assert (target / "chat_template.jinja").read_text() == models.GEMMA3_CHAT_TEMPLATE
    (target / "chat_template.jinja").unlink()  # a template in the tokenizer's config is kept as it is
    (target / "tokenizer_config.json").write_text('{"chat_template": "{{ messages }}"}')
    models.resolve_model("gemma-3-270m")
    assert not (target / "chat_template.jinja").exists()


def test_gemmas_chat_template_renders_turns_as_gemma_3_does():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    template = ImmutableSandboxedEnvironment().from_string(models.GEMMA3_CHAT_TEMPLATE)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "6*7?"},
                {"role": "assistant", "content": " 42 "}, {"role": "user", "content": "2+2?"}]
    assert template.render(messages=messages, bos_token="<bos>", add_generation_prompt=True) == (
        "<bos><start_of_turn>user\nBe brief.\n\n6*7?<end_of_turn>\n<start_of_turn>model\n42<end_of_turn>\n"
        "<start_of_turn>user\n2+2?<end_of_turn>\n<start_of_turn>model\n")
