"""Validating a request and turning it into token ids, before it takes any engine capacity."""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from tierlm.edge.choices import ChoiceTree
from tierlm.edge.errors import InvalidRequest
from tierlm.edge.requests import ChatMessage, GenerationRequest

MAX_TEMPERATURE = 5.0
MAX_STOP_SEQUENCES = 16
MAX_STOP_CHARS = 256
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class PreparedRequest:
    """A validated request with its prompt (and choices) tokenized."""

    request: GenerationRequest
    prompt_ids: tuple[int, ...]
    stop: tuple[str, ...]
    seed: int
    choice_ids: tuple[tuple[int, ...], ...] | None = None
    #: The choices' token tree when the request asks for constrained scoring.
    choice_tree: ChoiceTree | None = None


class RequestPreparer:
    """Checks requests against the model's limits and tokenizes them.

    Every rejection is an `InvalidRequest` whose message names the field and what to change.
    """

    def __init__(self, tokenizer, max_seq_len: int, max_choices: int = 64) -> None:
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len
        self.max_choices = max_choices

    def prepare(self, request: GenerationRequest) -> PreparedRequest:
        """Validate `request`; return it tokenized, or raise `InvalidRequest`."""
        if not isinstance(request, GenerationRequest):
            raise InvalidRequest(f"expected a GenerationRequest, got {type(request).__name__}")
        prompt_ids = self._prompt_ids(request)
        stop = self._stop(request.stop)
        _check_sampling(request)
        choice_ids = choice_tree = None
        if request.choices is not None:
            choice_ids = self._choice_ids(request.choices, len(prompt_ids))
            if request.constrained_choices:
                choice_tree = ChoiceTree(choice_ids)
        elif request.constrained_choices:
            raise InvalidRequest("constrained_choices applies to choice scoring; send choices too")
        elif len(prompt_ids) >= self.max_seq_len:
            raise InvalidRequest(
                f"the prompt is {len(prompt_ids)} tokens but the context holds {self.max_seq_len} "
                f"(prompt and output together); shorten the prompt by at least "
                f"{len(prompt_ids) - self.max_seq_len + 1} tokens"
            )
        seed = secrets.randbelow(MAX_SEED) if request.seed is None else request.seed
        return PreparedRequest(request, tuple(prompt_ids), stop, seed, choice_ids, choice_tree)

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        if (request.prompt is None) == (request.messages is None):
            raise InvalidRequest("set exactly one of prompt and messages")
        if request.prompt is not None:
            text = _text(request.prompt, "prompt")
            if not text:
                raise InvalidRequest("prompt is empty; send at least one character of text")
            ids = self.tokenizer.encode(text)
        else:
            ids = self._chat_ids(request.messages)
        if not ids:
            raise InvalidRequest("the prompt encodes to no tokens; send some text")
        return list(ids)

    def _chat_ids(self, messages: Sequence[ChatMessage]) -> list[int]:
        if isinstance(messages, (str, bytes)) or not messages:
            raise InvalidRequest("messages is empty; send at least one {role, content} message")
        if not getattr(self.tokenizer, "chat_template", None):
            raise InvalidRequest("this model's tokenizer has no chat template; send a plain prompt instead")
        turns = []
        for i, m in enumerate(messages):
            if not isinstance(m, ChatMessage):
                raise InvalidRequest(f"messages[{i}] must be a ChatMessage(role, content)")
            turns.append(
                {"role": _text(m.role, f"messages[{i}].role"), "content": _text(m.content, f"messages[{i}].content")}
            )
        rendered = self.tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
        # The template writes the special tokens (BOS, turn markers) itself.
        return self.tokenizer.encode(rendered, add_special_tokens=False)

    def _stop(self, stop: Sequence[str] | str) -> tuple[str, ...]:
        stops = (stop,) if isinstance(stop, str) else tuple(stop)
        if len(stops) > MAX_STOP_SEQUENCES:
            raise InvalidRequest(f"stop has {len(stops)} sequences; send at most {MAX_STOP_SEQUENCES}")
        for i, s in enumerate(stops):
            s = _text(s, f"stop[{i}]")
            if not s or len(s) > MAX_STOP_CHARS:
                raise InvalidRequest(f"stop[{i}] must be 1 to {MAX_STOP_CHARS} characters long")
        return stops

    def _choice_ids(self, choices: Sequence[str], prompt_len: int) -> tuple[tuple[int, ...], ...]:
        if isinstance(choices, (str, bytes)) or not 1 <= len(choices) <= self.max_choices:
            raise InvalidRequest(f"choices must be a list of 1 to {self.max_choices} strings")
        out = []
        for i, choice in enumerate(choices):
            ids = self.tokenizer.encode(_text(choice, f"choices[{i}]"), add_special_tokens=False)
            if not ids:
                raise InvalidRequest(f"choices[{i}] is empty; every choice needs some text")
            if prompt_len + len(ids) > self.max_seq_len:
                raise InvalidRequest(
                    f"the prompt ({prompt_len} tokens) plus choices[{i}] ({len(ids)} tokens) exceed the "
                    f"context of {self.max_seq_len} tokens; shorten the prompt"
                )
            out.append(tuple(ids))
        return tuple(out)


def _text(value: object, name: str) -> str:
    """`value` as a string that encodes to UTF-8 (no lone surrogates), else InvalidRequest."""
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidRequest(f"{name} is not valid UTF-8 (character {e.start}); send valid UTF-8 text") from None
    return value


def _check_sampling(r: GenerationRequest) -> None:
    if isinstance(r.max_tokens, bool) or not isinstance(r.max_tokens, int) or r.max_tokens <= 0:
        raise InvalidRequest(f"max_tokens must be a positive integer, got {r.max_tokens!r}")
    if not _is_real(r.temperature) or not 0.0 <= r.temperature <= MAX_TEMPERATURE:
        raise InvalidRequest(f"temperature must be between 0 (greedy) and {MAX_TEMPERATURE}, got {r.temperature!r}")
    if not _is_real(r.top_p) or not 0.0 < r.top_p <= 1.0:
        raise InvalidRequest(f"top_p must be in (0, 1], got {r.top_p!r}")
    if r.seed is not None and (isinstance(r.seed, bool) or not isinstance(r.seed, int) or not 0 <= r.seed <= MAX_SEED):
        raise InvalidRequest(f"seed must be an integer in [0, 2**63 - 1], got {r.seed!r}")


def _is_real(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
