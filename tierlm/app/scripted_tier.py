"""Tiers without a model, for the README's tour and for tests: real Generator servers whose
answers are scripted, so a cascade can be watched (and tested) in seconds on any machine.

``EchoGenerator`` answers with its prompt. ``ScriptedGenerator`` answers ``"<name>: <prompt>"``
with a confidence the prompt dictates: prompts that say "easy" get a confident token
(log-prob -0.01), others an unsure one (-2.0), so a policy with a threshold between the two
accepts the cheap tier's answer to easy prompts and escalates the rest.
"""

from __future__ import annotations

import asyncio

import grpc

from tierlm.serving import GrpcServer, ServerConfig, current_tenant
from tierlm.v1 import generator_pb2, generator_pb2_grpc

CONFIDENT_LOGPROB = -0.01
UNSURE_LOGPROB = -2.0


class EchoGenerator(generator_pb2_grpc.GeneratorServicer):
    """Answers with the prompt after ``delay_s`` (per streamed word when streaming)."""

    def __init__(self, delay_s: float = 0.0, name: str = "echo"):
        self.delay_s = delay_s
        self.name = name
        self.calls = 0

    async def Generate(self, request: generator_pb2.GenerateRequest, context: grpc.aio.ServicerContext):
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        return self.answer(request)

    async def GenerateStream(self, request: generator_pb2.GenerateRequest, context: grpc.aio.ServicerContext):
        self.calls += 1
        answer = self.answer(request)
        for word in answer.text.split(" "):
            await asyncio.sleep(self.delay_s)
            yield generator_pb2.GenerateResponse(text=word + " ")
        yield generator_pb2.GenerateResponse(is_final=True, usage=answer.usage, finish_reason=answer.finish_reason)

    def answer(self, request: generator_pb2.GenerateRequest) -> generator_pb2.GenerateResponse:
        return generator_pb2.GenerateResponse(
            request_id=request.request_id, text=request.prompt, tier=current_tenant.get(), is_final=True
        )


class ScriptedGenerator(EchoGenerator):
    """Answers "<name>: <prompt>" (chat turns written as "role=content" joined by " | "), confident
    when the prompt says "easy"; a request whose input says "max_tokens?" is answered with the
    max_tokens it carried."""

    def answer(self, request: generator_pb2.GenerateRequest) -> generator_pb2.GenerateResponse:
        said = request.prompt if request.WhichOneof("input") != "messages" else " | ".join(
            f"{m.role}={m.content}" for m in request.messages.messages)
        logprob = CONFIDENT_LOGPROB if "easy" in said else UNSURE_LOGPROB
        return generator_pb2.GenerateResponse(
            request_id=request.request_id,
            text=f"{self.name}: {request.max_tokens if 'max_tokens?' in said else said}",
            logprobs=[generator_pb2.TokenLogprob(token="x", logprob=logprob)] if request.return_logprobs else [],
            usage=generator_pb2.Usage(prompt_tokens=len(said.split()), completion_tokens=2),
            finish_reason=generator_pb2.FINISH_REASON_STOP,
            model=self.name,
            is_final=True,
        )


async def start_generator(config: ServerConfig, servicer: generator_pb2_grpc.GeneratorServicer) -> GrpcServer:
    """Serve ``servicer`` as tierlm.v1.Generator with the shared plumbing (health, auth, limits)."""
    server = GrpcServer(config)
    await server.start(
        [lambda s: generator_pb2_grpc.add_GeneratorServicer_to_server(servicer, s)],
        service_names=[generator_pb2.DESCRIPTOR.services_by_name["Generator"].full_name],
    )
    return server
