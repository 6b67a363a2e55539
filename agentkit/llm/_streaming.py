"""Incremental text for streamed completions: what of a choice's text may be sent as each
token arrives."""

from __future__ import annotations

from typing import Callable

__all__ = ["StreamedText"]


class StreamedText:
    """One choice's text as its tokens arrive: what may be sent so far.

    Tokens are decoded in a short window before the new ones, so that a tokenizer that
    decodes a token differently at the start of a sequence (SentencePiece's leading space)
    still gives the right text; an incomplete UTF-8 character, and any tail that could be
    the start of a stop string, are held back until the next token decides them."""

    def __init__(self, decode: Callable[[list[int]], str], stop: tuple[str, ...]):
        self._decode, self._stop = decode, stop
        self._hold = max((len(s) for s in stop), default=1) - 1
        self._ids: list[int] = []
        self._prefix = self._read = 0  # ids[prefix:read] decode to the end of self._text
        self._text = ""
        self.sent = ""
        self.stopped = False

    def add(self, token: int) -> str:
        """The text to send for ``token`` (often "")."""
        if self.stopped:
            return ""
        self._ids.append(token)
        before = self._decode(self._ids[self._prefix : self._read])
        now = self._decode(self._ids[self._prefix :])
        if len(now) <= len(before) or now.endswith("\ufffd"):
            return ""
        self._text += now[len(before) :]
        self._prefix, self._read = self._read, len(self._ids)
        tail_from = max(len(self.sent) - self._hold, 0)  # a stop string may span the last send
        cuts = [i for i in (self._text.find(s, tail_from) for s in self._stop) if i >= 0]
        if cuts:
            self.stopped = True
            end = min(cuts)
        else:
            end = len(self._text) - self._hold
        new = self._text[len(self.sent) : end] if end > len(self.sent) else ""
        self.sent += new
        return new
