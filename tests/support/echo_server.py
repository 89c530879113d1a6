"""A trivial Generator that echoes its prompt, served with the shared plumbing.

Tests use it in-process (EchoGenerator) and as a subprocess (python -m ... --delay-s),
which is how SIGTERM draining is exercised with a real signal.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import grpc

from tierlm.serving import GrpcServer, ServerConfig, current_tenant
from tierlm.v1 import generator_pb2, generator_pb2_grpc


class EchoGenerator(generator_pb2_grpc.GeneratorServicer):
    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s

    async def Generate(self, request: generator_pb2.GenerateRequest, context: grpc.aio.ServicerContext):
        await asyncio.sleep(self.delay_s)
        return generator_pb2.GenerateResponse(
            request_id=request.request_id, text=request.prompt, tier=current_tenant.get(), is_final=True
        )

    async def GenerateStream(self, request: generator_pb2.GenerateRequest, context: grpc.aio.ServicerContext):
        for word in request.prompt.split():
            await asyncio.sleep(self.delay_s)
            yield generator_pb2.GenerateResponse(text=word)
        yield generator_pb2.GenerateResponse(is_final=True)


async def start_echo(config: ServerConfig, delay_s: float = 0.0) -> GrpcServer:
    server = GrpcServer(config)
    servicer = EchoGenerator(delay_s)
    await server.start(
        [lambda s: generator_pb2_grpc.add_GeneratorServicer_to_server(servicer, s)],
        service_names=[generator_pb2.DESCRIPTOR.services_by_name["Generator"].full_name],
    )
    return server


async def _main(delay_s: float) -> None:
    server = await start_echo(ServerConfig(drain_grace_s=10.0), delay_s)
    print(f"PORT {server.port}", flush=True)
    await server.run_until_signal()
    print("DRAINED", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--delay-s", type=float, default=0.0)
    asyncio.run(_main(parser.parse_args().delay_s))
    sys.exit(0)
