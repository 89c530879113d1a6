"""What callers send to the engine and what they get back."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ChatMessage:
    """One turn of a chat; rendered with the tokenizer's chat template."""

    role: str
    content: str


@dataclass(frozen=True)
class GenerationRequest:
    """One generation (or choice-scoring) request.

    Exactly one of `prompt` (raw text, tokenized with the tokenizer's special tokens, e.g. BOS)
    and `messages` (rendered with the chat template, generation prompt appended) is set.

    - `temperature == 0` is greedy decoding; otherwise sampling with `temperature` and
      nucleus `top_p`, from a generator seeded with `seed` (a random seed when None), so the
      same seeded request gives the same tokens.
    - `stop`: strings that end generation; the output is cut before the first match.
    - `logprobs`: report each generated token's log-probability under the model (the
      unscaled distribution, independent of temperature and top_p).
    - `choices`: score instead of generating. Each choice is appended to the prompt
      (tokenized on its own, without special tokens, so include a leading space if the
      label follows a space); the result carries every choice's summed log-probability and
      picks the highest. `max_tokens`, sampling and stop settings are ignored.
    - `constrained_choices`: score the choices as constrained decoding would produce them:
      at each position the model's distribution renormalised over the tokens that continue
      some choice there (the first tokens of all choices, then the next tokens of the choices
      sharing the prefix so far). Only those rows of the output layer are computed, so a
      262k-vocabulary model scores labels without its full output layer. Single-token choices
      rank the same either way, and their probabilities renormalised over the choices are
      equal; multi-token choices differ (a token its siblings all share scores 0).
    - `ignore_eos`: keep generating past end-of-sequence tokens (for benchmarks).
    """

    prompt: str | None = None
    messages: Sequence[ChatMessage] | None = None
    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: Sequence[str] = ()
    logprobs: bool = False
    choices: Sequence[str] | None = None
    constrained_choices: bool = False
    ignore_eos: bool = False
    request_id: str = ""


class FinishReason(str, enum.Enum):
    """Why a request ended."""

    EOS = "eos"  # the model produced an end-of-sequence token
    STOP = "stop"  # a stop sequence matched
    LENGTH = "length"  # max_tokens reached, or the context is full
    SCORED = "scored"  # a choice-scoring request finished
    CANCELLED = "cancelled"  # the engine shut down without draining


@dataclass(frozen=True)
class TokenDelta:
    """One decoded token, streamed as soon as it exists.

    `text` is the new printable text; it can be empty while a token's text is held back
    (an incomplete UTF-8 character, or a possible start of a stop sequence) and later
    arrives with a following token. `logprob` is None unless the request asked for it.
    """

    token_id: int
    text: str
    logprob: float | None = None


@dataclass(frozen=True)
class ChoiceScore:
    """Summed log-probability of one choice continuation given the prompt."""

    text: str
    logprob: float
    num_tokens: int


@dataclass(frozen=True)
class Completion:
    """The final result (and the last event of a stream).

    `text` is the whole generated text (stop sequence removed), or the best choice for a
    scoring request. `token_ids`/`token_logprobs` cover every generated token, including
    those of a trimmed stop sequence and excluding EOS. Times are seconds from submission:
    `ttft_s` to the first generated token (or to the scores), `latency_s` to completion.
    """

    request_id: str
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    token_ids: tuple[int, ...] = ()
    token_logprobs: tuple[float, ...] | None = None
    choices: tuple[ChoiceScore, ...] | None = None
    ttft_s: float = 0.0
    latency_s: float = 0.0
