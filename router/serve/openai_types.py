"""OpenAI's request and response shapes, as the `openai` package's types define them.

Requests are checked here, before anything reaches the router. A field tierlm honours is checked
against what the Generator contract can carry (max_tokens an int32, seed a uint64, temperature a
finite number); a field OpenAI defines that tierlm cannot honour is refused with 400, not ignored;
an unknown field is refused, as OpenAI does. Responses follow ``openai.types.Completion``,
``openai.types.chat.ChatCompletion`` and ``ChatCompletionChunk``, with one extension object,
``tierlm``, naming the tier that answered and what it cost.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tierlm.v1 import generator_pb2

INT32_MAX = 2**31 - 1
UINT64_MAX = 2**64 - 1
# Choices (n, or prompts in a list) one request may ask for; each is a routed call.
MAX_CHOICES = 16
# OpenAI's documented default for the legacy completions endpoint.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16

# Fields of OpenAI's API that tierlm does not implement: refused by name, so the caller learns
# that the feature is missing instead of getting an answer that silently ignored it.
_UNSUPPORTED = {
    "tools", "tool_choice", "functions", "function_call", "parallel_tool_calls", "response_format",
    "audio", "modalities", "prediction", "web_search_options", "best_of", "reasoning_effort",
}


_CHOSEN_ONLY = "a tier returns only the chosen token's log-probability: logprobs above 0 are not supported"


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stop: str | list[str] | None = Field(None)
    seed: int | None = Field(None, ge=0, le=UINT64_MAX)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # an end-user id for the caller's own logs; accepted, not used
    # Sampling adjustments the tiers do not implement: accepted only when they change nothing.
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, value: float | None) -> float | None:
        if value:
            raise ValueError("penalties are not supported; send 0 or leave it out")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value:
            raise ValueError("logit_bias is not supported; send {} or leave it out")
        return value

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            named = sorted(_UNSUPPORTED & data.keys())
            if named:
                raise ValueError(f"tierlm does not support {', '.join(named)}")
        return data

    @model_validator(mode="after")
    def _consistent(self) -> _Body:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        if isinstance(self.stop, list) and len(self.stop) > 16:
            raise ValueError("stop takes at most 16 strings")
        return self

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(_Body):
    prompt: str | list[str]
    # OpenAI's `logprobs` here is how many alternatives per token; 0 asks for the chosen token's only,
    # which is all a tier returns.
    logprobs: int | None = Field(None, ge=0)
    echo: Literal[False] = False
    suffix: None = None

    @model_validator(mode="after")
    def _prompts(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and not 1 <= len(self.prompt) * self.n <= MAX_CHOICES:
            raise ValueError(f"prompt lists times n must give 1..{MAX_CHOICES} choices")
        if self.stream and len(self.prompts) * self.n > 1:
            raise ValueError("streaming answers one prompt with n=1")
        return self

    @field_validator("prompt", mode="before")
    @classmethod
    def _text_prompts(cls, value: Any) -> Any:
        if isinstance(value, list) and any(not isinstance(item, str) for item in value):
            raise ValueError("prompts are text or a list of texts; token-id prompts are not supported")
        return value

    @field_validator("logprobs")
    @classmethod
    def _chosen_token_only(cls, value: int | None) -> int | None:
        if value:
            raise ValueError(_CHOSEN_ONLY)
        return value

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    # Text, or a list of text parts (joined here); None for an assistant turn that only called tools.
    content: str | None = None
    name: str | None = None
    tool_call_id: str | None = None
    refusal: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        for part in value:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if kind != "text" or not isinstance(part.get("text"), str):
                raise ValueError(f"content parts of type {kind!r} are not supported; send text parts")
        return "".join(part["text"] for part in value)

    def as_turn(self) -> tuple[str, str]:
        """(role, text) as a tier's chat template takes them: `developer` is OpenAI's newer name for
        `system`."""
        return ("system" if self.role == "developer" else self.role), self.content or ""


class ChatRequest(_Body):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    logprobs: bool = False
    # Alternatives per token; a tier returns only the chosen token's log-probability.
    top_logprobs: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _limits(self) -> ChatRequest:
        if None not in (self.max_tokens, self.max_completion_tokens) and self.max_tokens != self.max_completion_tokens:
            raise ValueError("max_tokens and max_completion_tokens disagree; send max_completion_tokens only")
        if self.stream and self.n > 1:
            raise ValueError("streaming answers with n=1")
        if self.top_logprobs:
            raise ValueError(_CHOSEN_ONLY.replace("logprobs", "top_logprobs"))
        return self

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


_FINISH = {
    generator_pb2.FINISH_REASON_LENGTH: "length",
    generator_pb2.FINISH_REASON_STOP: "stop",
    generator_pb2.FINISH_REASON_CHOICE: "stop",
}


def finish_reason(answer: generator_pb2.GenerateResponse) -> str:
    return _FINISH.get(answer.finish_reason, "stop")


def chat_logprobs(answer: generator_pb2.GenerateResponse) -> dict[str, Any]:
    """ChatCompletion `choices[].logprobs`: the chosen tokens, no alternatives."""
    return {
        "content": [
            {"token": t.token, "logprob": t.logprob, "bytes": list(t.token.encode()), "top_logprobs": []}
            for t in answer.logprobs
        ],
        "refusal": None,
    }


def completion_logprobs(answer: generator_pb2.GenerateResponse, offset: int = 0) -> dict[str, Any]:
    """Completion `choices[].logprobs`: tokens, their log-probabilities and text offsets."""
    offsets = []
    for token in answer.logprobs:
        offsets.append(offset)
        offset += len(token.token)
    return {
        "tokens": [t.token for t in answer.logprobs],
        "token_logprobs": [t.logprob for t in answer.logprobs],
        "top_logprobs": None,
        "text_offset": offsets,
    }


def usage(answers: list[generator_pb2.GenerateResponse]) -> dict[str, int]:
    prompt = sum(a.usage.prompt_tokens for a in answers)
    completion = sum(a.usage.completion_tokens for a in answers)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


# gRPC status of the Router call -> (HTTP status, OpenAI error type).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def error_body(status: int, message: str, *, code: str | None = None, param: str | None = None,
               type_: str | None = None) -> dict[str, Any]:
    """OpenAI's error object: {"error": {"message", "type", "param", "code"}}."""
    kind = type_ or ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class FeedbackBody(BaseModel):
    """POST /v1/feedback: a request id (from the `tierlm.request_ids` of a response) and exactly
    one verdict, as Router.Feedback takes them."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    request_id: str = Field(min_length=1, max_length=256)
    correct: bool | None = None
    score: float | None = Field(None, ge=0.0, le=1.0)
    reference: str | None = Field(None, min_length=1, max_length=65_536)

    @model_validator(mode="after")
    def _one_verdict(self) -> FeedbackBody:
        given = [name for name in ("correct", "score", "reference") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of correct, score or reference (got {given or 'none'})")
        return self
