"""Incremental detokenization with text-level stop sequences."""

from __future__ import annotations

from collections.abc import Sequence

# Prompt tokens decoded together with the output, so tokenizers whose decoders treat the
# first token specially (e.g. strip a leading space) render the output as it reads in context.
_CONTEXT_TOKENS = 4


class TextAssembler:
    """Turns generated token ids into releasable text, one token at a time.

    Text that may still change is held back: a trailing incomplete UTF-8 character, and a
    suffix that could be the start of a stop sequence. When a stop sequence appears, the
    text is cut right before it and `stopped` becomes True.
    """

    def __init__(self, tokenizer, prompt_ids: Sequence[int], stop: Sequence[str]) -> None:
        self._tokenizer = tokenizer
        self._context = list(prompt_ids[-_CONTEXT_TOKENS:])
        self._context_text = self._decode(self._context)
        self._stop = tuple(stop)
        self._ids: list[int] = []
        self.text = ""  # the output so far (cut at a stop sequence once one matched)
        self.released = 0  # characters of `text` handed out
        self.stopped = False

    def add(self, token_id: int) -> str:
        """Append a token; return the newly releasable text (possibly empty)."""
        self._ids.append(token_id)
        full = self._decode(self._context + self._ids)
        text = full[len(self._context_text) :] if full.startswith(self._context_text) else self._decode(self._ids)
        cut = min((i for i in (text.find(s, self.released) for s in self._stop) if i >= 0), default=-1)
        if cut >= 0:
            self.text, self.stopped = text[:cut], True
            return self._release(cut)
        self.text = text
        return self._release(len(text) - self._held_back(text))

    def flush(self) -> str:
        """Release everything still held back (the output ended without a stop match)."""
        return self._release(len(self.text))

    def _release(self, end: int) -> str:
        if end <= self.released:
            return ""
        delta, self.released = self.text[self.released : end], end
        return delta

    def _held_back(self, text: str) -> int:
        hold = len(text) - len(text.rstrip("\ufffd"))  # bytes of a character still arriving
        for stop in self._stop:
            for k in range(min(len(stop) - 1, len(text)), hold, -1):
                if text.endswith(stop[:k]):
                    hold = k
                    break
        return hold

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)
