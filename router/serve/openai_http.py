"""An OpenAI-compatible HTTP front for the router (/v1/completions, /v1/chat/completions, SSE).

A thin translation layer: each HTTP request becomes a Router.Complete(Stream) call on the
router's own gRPC port, so auth, budgets, the ledger and the cascade behave exactly as for
gRPC clients. The `model` field picks the route: "cascade" (or anything unknown to the
policy) runs the cascade, a tier's name forces that tier.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import grpc
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from tierlm.client import build_request
from tierlm.errors import PortUnavailable
from tierlm.v1 import generator_pb2, router_pb2, router_pb2_grpc

CASCADE_MODEL = "cascade"

_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class _Sampling(BaseModel):
    model: str = CASCADE_MODEL
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False


class CompletionBody(_Sampling):
    prompt: str
    logprobs: int | None = None


class ChatMessageBody(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatBody(_Sampling):
    messages: list[ChatMessageBody] = Field(min_length=1)


def _finish_reason(answer: generator_pb2.GenerateResponse) -> str:
    return "length" if answer.finish_reason == generator_pb2.FINISH_REASON_LENGTH else "stop"


def build_app(router_address: str, tier_names: Callable[[], list[str]]) -> FastAPI:
    """The HTTP app; `tier_names` returns the current policy's tiers (it changes on reload)."""
    app = FastAPI(title="tierlm OpenAI-compatible API", version="1")
    channel: dict[str, Any] = {}

    def stub() -> router_pb2_grpc.RouterStub:
        # Created lazily so the channel belongs to the server's running event loop.
        if "stub" not in channel:
            channel["stub"] = router_pb2_grpc.RouterStub(grpc.aio.insecure_channel(router_address))
        return channel["stub"]

    def metadata(request: Request) -> tuple[tuple[str, str], ...]:
        auth = request.headers.get("authorization", "")
        return (("authorization", auth),) if auth else ()

    def to_request(body: _Sampling, **input_: Any) -> router_pb2.CompleteRequest:
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        force = body.model if body.model in tier_names() else ""
        return build_request(
            max_tokens=body.max_tokens, temperature=body.temperature, top_p=body.top_p, stop=stop, seed=body.seed,
            force_tier=force, request_id=f"http-{uuid.uuid4().hex}", **input_,
        )

    def error(exc: grpc.aio.AioRpcError) -> JSONResponse:
        status = _HTTP_STATUS.get(exc.code(), 500)
        return JSONResponse(
            {"error": {"message": exc.details(), "type": exc.code().name.lower(), "code": status}}, status_code=status
        )

    async def respond(body: _Sampling, request: Request, grpc_request: router_pb2.CompleteRequest, chat: bool):
        created = int(time.time())
        kind = "chat.completion" if chat else "text_completion"
        if not body.stream:
            try:
                reply = await stub().Complete(grpc_request, metadata=metadata(request))
            except grpc.aio.AioRpcError as exc:
                return error(exc)
            answer = reply.answer
            choice: dict[str, Any] = {"index": 0, "finish_reason": _finish_reason(answer)}
            if chat:
                choice["message"] = {"role": "assistant", "content": answer.text}
            else:
                choice["text"] = answer.text
            return {
                "id": answer.request_id, "object": kind, "created": created, "model": reply.trace.accepted_tier,
                "choices": [choice],
                "usage": {
                    "prompt_tokens": answer.usage.prompt_tokens, "completion_tokens": answer.usage.completion_tokens,
                    "total_tokens": answer.usage.prompt_tokens + answer.usage.completion_tokens,
                },
                "tierlm": {"tier": reply.trace.accepted_tier, "cost": reply.trace.total_cost},
            }

        call = stub().CompleteStream(grpc_request, metadata=metadata(request))
        try:
            # Wait for the first message so that auth and budget errors become HTTP errors.
            first = await call.read()
        except grpc.aio.AioRpcError as exc:
            return error(exc)

        async def events() -> AsyncIterator[str]:
            reply = first
            while reply is not grpc.aio.EOF:
                answer = reply.answer
                finish = _finish_reason(answer) if answer.is_final else None
                delta = {"content": answer.text} if chat else None
                choice = {"index": 0, "finish_reason": finish, **({"delta": delta} if chat else {"text": answer.text})}
                chunk = {"id": grpc_request.request.request_id, "object": f"{kind}.chunk" if chat else kind,
                         "created": created, "model": reply.trace.accepted_tier or body.model, "choices": [choice]}
                yield f"data: {json.dumps(chunk)}\n\n"
                try:
                    reply = await call.read()
                except grpc.aio.AioRpcError as exc:
                    yield f"data: {json.dumps({'error': {'message': exc.details(), 'type': exc.code().name.lower()}})}\n\n"
                    break
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(body: CompletionBody, request: Request):
        return await respond(body, request, to_request(body, prompt=body.prompt), chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatBody, request: Request):
        messages = [(m.role, m.content) for m in body.messages]
        return await respond(body, request, to_request(body, messages=messages), chat=True)

    @app.get("/v1/models")
    async def models():
        names = [CASCADE_MODEL, *tier_names()]
        return {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "tierlm"} for n in names]}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    return app


async def serve_http(app: FastAPI, host: str, port: int) -> Any:
    """Start uvicorn inside the running event loop; returns the server (call .should_exit to stop)."""
    import asyncio

    import uvicorn

    # Bound here rather than by uvicorn, which logs a failed bind and exits the process.
    try:
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as exc:
        raise PortUnavailable.refused("OpenAI HTTP", f"{host}:{port}", exc) from None
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()  # re-raises why it could not start (e.g. port in use)
        await asyncio.sleep(0.01)
    server.task = task
    return server
