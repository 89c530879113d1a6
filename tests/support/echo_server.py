"""Small real Generator servers for tests, served with the shared plumbing.

EchoGenerator and ScriptedGenerator are the shipped scripted tiers (tierlm/app/scripted_tier.py,
`tierlm scripted serve`); the controlled and label tiers here steer failures, delays and label
log-probs for tests. They run in-process or as a subprocess
(`python -m tests.support.echo_server --kind scripted`), which is how SIGTERM draining and
killed tiers are exercised for real.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys

import grpc
import numpy as np

from tierlm.app.scripted_tier import EchoGenerator, ScriptedGenerator, start_generator
from tierlm.serving import GrpcServer, ServerConfig
from tierlm.v1 import generator_pb2, generator_pb2_grpc

__all__ = ["ControlledGenerator", "EchoGenerator", "LabelGenerator", "ScriptedGenerator", "start_echo", "start_generator"]


class ControlledGenerator(ScriptedGenerator):
    """A scripted tier the prompt steers, by the tier's name: ``<name>-fail`` answers UNAVAILABLE,
    ``<name>-slow`` waits ``slow_s`` first; every call's prompt is kept. Streams report the
    words they streamed as completion tokens."""

    def __init__(self, delay_s: float = 0.0, name: str = "controlled", slow_s: float = 3.0):
        super().__init__(delay_s, name)
        self.slow_s = slow_s
        self.prompts: list[str] = []

    async def _steer(self, request: generator_pb2.GenerateRequest, context: grpc.aio.ServicerContext) -> None:
        self.prompts.append(request.prompt)
        if f"{self.name}-fail" in request.prompt:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "scripted failure")
        if f"{self.name}-slow" in request.prompt:
            await asyncio.sleep(self.slow_s)

    async def Generate(self, request: generator_pb2.GenerateRequest, context: grpc.aio.ServicerContext):
        await self._steer(request, context)
        return await super().Generate(request, context)

    async def GenerateStream(self, request: generator_pb2.GenerateRequest, context: grpc.aio.ServicerContext):
        await self._steer(request, context)
        streamed = 0
        async for chunk in super().GenerateStream(request, context):
            if chunk.is_final:
                chunk.usage.completion_tokens = streamed
            streamed += 1
            yield chunk


LABELS = ("up", "down", "neutral", "none")


def scripted_label_answer(tier: str, request: generator_pb2.GenerateRequest) -> generator_pb2.GenerateResponse:
    """A label-choice answer with fixed log-probs per (tier, query): what an LLM tier answering
    HEADLINES-style label choices looks like to the router, instantly and reproducibly. The query
    is the prompt's last block (a retrieved prompt ends with it), the labels the request's choices
    (the HEADLINES labels without them); the answer is the likeliest label."""
    query = request.prompt.rsplit("\n\n", 1)[-1]
    choices = list(request.choices) or list(LABELS)
    seed = int.from_bytes(hashlib.sha256(f"{tier}\0{query}".encode()).digest()[:8], "little")
    logits = np.random.default_rng(seed).normal(scale=2.0, size=len(choices))
    logprobs = logits - np.log(np.exp(logits).sum())
    return generator_pb2.GenerateResponse(
        request_id=request.request_id, text=choices[int(np.argmax(logprobs))], is_final=True, model=tier,
        usage=generator_pb2.Usage(prompt_tokens=len(request.prompt) // 4 + 1, completion_tokens=1),
        finish_reason=generator_pb2.FINISH_REASON_CHOICE,
        choice_logprobs=[generator_pb2.ChoiceLogprob(choice=c, logprob=float(v), num_tokens=1) for c, v in zip(choices, logprobs)],
    )


class LabelGenerator(generator_pb2_grpc.GeneratorServicer):
    """An instant tier answering label choices (:func:`scripted_label_answer`)."""

    def __init__(self, name: str):
        self.name = name

    async def Generate(self, request: generator_pb2.GenerateRequest, context: grpc.aio.ServicerContext):
        return scripted_label_answer(self.name, request)

    async def GenerateStream(self, request: generator_pb2.GenerateRequest, context: grpc.aio.ServicerContext):
        yield scripted_label_answer(self.name, request)


async def start_echo(config: ServerConfig, delay_s: float = 0.0) -> GrpcServer:
    return await start_generator(config, EchoGenerator(delay_s))


async def _main(kind: str, delay_s: float, port: int, name: str) -> None:
    servicer = (ScriptedGenerator if kind == "scripted" else EchoGenerator)(delay_s, name)
    server = await start_generator(ServerConfig(port=port, drain_grace_s=10.0), servicer)
    print(f"PORT {server.port}", flush=True)
    await server.run_until_signal()
    print("DRAINED", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", choices=["echo", "scripted"], default="echo")
    parser.add_argument("--delay-s", type=float, default=0.0)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--name", default="echo")
    args = parser.parse_args()
    asyncio.run(_main(args.kind, args.delay_s, args.port, args.name))
    sys.exit(0)
