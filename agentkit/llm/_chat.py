"""Chat templates as ``agentkit serve`` uses them: the prompt ids of a chat's messages, and
the token that ends the assistant's turn (where a chat answer stops)."""

from __future__ import annotations

from typing import Any, Sequence

from agentkit.llm._wire import ChatMessage, HTTPError, one_line, shown

__all__ = ["chat_prompt_ids", "end_of_turn_ids"]


def chat_prompt_ids(tokenizer: Any, messages: Sequence[ChatMessage], model_name: str) -> list[int]:
    """The token ids of ``messages`` under the tokenizer's chat template, ready for the
    assistant's turn; a 400 naming the fix when there is no template or it refuses them."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise HTTPError(400, f"messages: model '{shown(model_name)}' has no chat template to render them; send "
                             "the prompt as text to /v1/completions, or serve a model whose tokenizer has one",
                        param="messages")
    turns = [{"role": m.role, "content": m.text} for m in messages]
    try:
        text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # the template refuses them (roles out of turn...): its own words
        raise HTTPError(400, f"messages: the model's chat template refused them ({one_line(exc)})",
                        param="messages") from exc
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])  # the template wrote the BOS


def end_of_turn_ids(tokenizer: Any) -> tuple[int, ...]:
    """The token that closes an assistant's turn under ``tokenizer``'s chat template
    (Gemma's ``<end_of_turn>``, Llama 3's ``<|eot_id|>``, ChatML's ``<|im_end|>``): the
    first special token the template writes after an assistant's message. () when it
    writes none or renders no assistant turn."""
    marker = "agentkit-end-of-turn-probe"
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": marker}]
    try:
        text = tokenizer.apply_chat_template(turns, tokenize=False)
    except Exception:  # a template that takes no assistant turn (its own error)
        return ()
    if marker not in text:
        return ()
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    after = tokenizer(text[text.index(marker) + len(marker):], add_special_tokens=False)["input_ids"]
    return next(((t,) for t in after if t in special), ())
