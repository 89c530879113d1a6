"""The Generator contract over any text engine: tierlm.v1 messages in, tierlm.v1 messages out.

Shared by the edge node's gRPC servicer and the cloud tier's Serve replicas (edge engine or
vLLM), so every tier speaks the contract through one translation, and engine errors become
one GenerationError type.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from tierlm.edge.errors import EngineClosed, EngineError, InvalidRequest, QueueFull
from tierlm.edge.protocol import EventStream, TextEngine
from tierlm.edge.requests import ChatMessage, Completion, FinishReason, GenerationRequest, TokenDelta
from tierlm.errors import GenerationError
from tierlm.v1 import generator_pb2

_FINISH = {
    FinishReason.EOS: generator_pb2.FINISH_REASON_STOP,
    FinishReason.STOP: generator_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: generator_pb2.FINISH_REASON_LENGTH,
    FinishReason.SCORED: generator_pb2.FINISH_REASON_CHOICE,
    FinishReason.CANCELLED: generator_pb2.FINISH_REASON_CANCELLED,
}


def to_generation_request(request: generator_pb2.GenerateRequest) -> GenerationRequest:
    """Translate the wire request; the engine validates values and says what to change."""
    messages = None
    if request.WhichOneof("input") == "messages":
        messages = [ChatMessage(m.role, m.content) for m in request.messages.messages]
    return GenerationRequest(
        prompt=request.prompt if messages is None else None,
        messages=messages,
        max_tokens=request.max_tokens,
        temperature=request.temperature,
        top_p=request.top_p if request.HasField("top_p") else 1.0,
        seed=request.seed if request.HasField("seed") else None,
        stop=tuple(request.stop),
        logprobs=request.return_logprobs,
        choices=tuple(request.choices) or None,
        constrained_choices=request.constrained_choices,
        request_id=request.request_id,
    )


def _generation_error(exc: EngineError) -> GenerationError:
    if isinstance(exc, InvalidRequest):
        return GenerationError(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, QueueFull):
        return GenerationError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), exc.retry_after_s)
    if isinstance(exc, EngineClosed):
        return GenerationError(grpc.StatusCode.UNAVAILABLE, str(exc))
    return GenerationError(grpc.StatusCode.INTERNAL, f"engine failure: {exc}")


class ProtoGenerator:
    """A text engine behind tierlm.v1 messages, labelled with a model and a tier name."""

    def __init__(self, engine: TextEngine, model_name: str, tier_name: str):
        self.engine = engine
        self.model_name = model_name
        self.tier_name = tier_name

    async def generate(self, request: generator_pb2.GenerateRequest) -> generator_pb2.GenerateResponse:
        final = None
        async for message in self.stream(request, deltas=False):
            final = message
        assert final is not None  # stream always ends with the final message or raises
        return final

    async def stream(
        self, request: generator_pb2.GenerateRequest, deltas: bool = True
    ) -> AsyncIterator[generator_pb2.GenerateResponse]:
        """Token deltas (when `deltas`), then the final message with usage.

        Leaving the iteration early (client cancel, deadline) cancels the engine request,
        which frees its batch slot within one decode step."""
        try:
            events = self.open(request)
        except EngineError as exc:
            raise self.error(exc) from None
        try:
            async for event in events:
                if isinstance(event, Completion):
                    yield self._final(event, request.request_id, with_text=not deltas)
                    return
                if deltas:
                    yield self._delta(event)
        except EngineError as exc:
            raise self.error(exc) from None
        finally:
            events.cancel()

    def open(self, request: generator_pb2.GenerateRequest) -> EventStream:
        """Admit ``request``: the engine's event stream for it (a subclass may serve some
        requests from elsewhere, e.g. a speculative drafter)."""
        return self.engine.stream(to_generation_request(request))

    def error(self, exc: EngineError) -> GenerationError:
        """The status an engine error gets."""
        return _generation_error(exc)

    def _delta(self, delta: TokenDelta) -> generator_pb2.GenerateResponse:
        message = generator_pb2.GenerateResponse(text=delta.text)
        if delta.logprob is not None:
            message.logprobs.add(token_id=delta.token_id, logprob=delta.logprob)
        return message

    def _final(self, done: Completion, request_id: str, with_text: bool) -> generator_pb2.GenerateResponse:
        message = generator_pb2.GenerateResponse(
            request_id=done.request_id or request_id,
            text=done.text if with_text or done.choices else "",
            usage=generator_pb2.Usage(prompt_tokens=done.prompt_tokens, completion_tokens=done.completion_tokens),
            finish_reason=_FINISH[done.finish_reason],
            latency_ms=done.latency_s * 1e3,
            ttft_ms=done.ttft_s * 1e3,
            model=self.model_name,
            tier=self.tier_name,
            is_final=True,
        )
        if with_text and done.token_logprobs is not None:
            for token_id, logprob in zip(done.token_ids, done.token_logprobs):
                message.logprobs.add(token_id=token_id, logprob=logprob)
        for choice in done.choices or ():
            message.choice_logprobs.add(choice=choice.text, logprob=choice.logprob, num_tokens=choice.num_tokens)
        return message
