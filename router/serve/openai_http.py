"""An OpenAI-compatible HTTP front for the router: /v1/completions, /v1/chat/completions (SSE
streaming too) and /v1/models, plus tierlm's POST /v1/feedback.

A thin translation layer: each HTTP request becomes Router.Complete(Stream) calls on the router's own
gRPC service, through a Unix socket private to the router process (so with TLS on there is no
plaintext TCP hop), so auth, budgets, the ledger and the cascade behave exactly as for gRPC clients.
The `model` field picks a route from the policy's `models` section (by default "cascade" and each
tier's name); an unknown model is 404. Every 4xx is OpenAI's error object.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from tierlm.auth import KeyRing
from tierlm.client import QUOTA_KEY, RETRY_AFTER_KEY, build_request
from tierlm.config import ModelRoute, Policy
from tierlm.router.serve.http_guard import FrontDoor, api_key
from tierlm.router.serve.openai_types import (
    COMPLETIONS_DEFAULT_MAX_TOKENS, ChatRequest, CompletionRequest, FeedbackBody, chat_logprobs, completion_logprobs,
    error_body, finish_reason, usage,
)
from tierlm.v1 import router_pb2, router_pb2_grpc

_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class OpenAIError(Exception):
    """Answered as OpenAI's error object with `status`; `headers` e.g. Retry-After."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 type_: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.type_ = status, message, code, param, type_
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = error_body(self.status, self.message, code=self.code, param=self.param, type_=self.type_)
        return JSONResponse(body, status_code=self.status, headers=self.headers)

    @classmethod
    def from_rpc(cls, exc: grpc.aio.AioRpcError) -> OpenAIError:
        status = _HTTP_STATUS.get(exc.code(), 500)
        trailers = dict(exc.trailing_metadata() or ())
        headers = {}
        if RETRY_AFTER_KEY in trailers:
            headers["Retry-After"] = str(math.ceil(float(trailers[RETRY_AFTER_KEY])))
        if trailers.get(QUOTA_KEY):
            # OpenAI's answer to a spent quota; the header tells OpenAI's SDKs not to retry it.
            headers["x-should-retry"] = "false"
            return cls(429, exc.details(), code="insufficient_quota", type_="insufficient_quota", headers=headers)
        return cls(status, exc.details() or exc.code().name, code=exc.code().name.lower(), headers=headers)


class _Router:
    """Router stubs on one channel, created inside the serving event loop on first use."""

    def __init__(self, target: str):
        self._target = target
        self._stub: router_pb2_grpc.RouterStub | None = None

    @property
    def stub(self) -> router_pb2_grpc.RouterStub:
        if self._stub is None:
            self._stub = router_pb2_grpc.RouterStub(grpc.aio.insecure_channel(self._target))
        return self._stub


def _route(policy: Policy, model: str) -> ModelRoute:
    routes = policy.model_routes()
    if model not in routes:
        raise OpenAIError(404, f"The model `{model}` does not exist; this router serves {sorted(routes)}",
                          code="model_not_found", param="model")
    return routes[model]


def _metadata(request: Request) -> tuple[tuple[str, str], ...]:
    key = api_key(request.scope)
    return (("x-api-key", key),) if key else ()


def _grpc_request(body: Any, route: ModelRoute, request_id: str, max_tokens: int, logprobs: bool, **input_: Any):
    return build_request(
        max_tokens=max_tokens, temperature=body.temperature or 0.0, top_p=body.top_p, stop=body.stops, seed=body.seed,
        return_logprobs=logprobs, request_id=request_id, force_tier=route.force_tier or "", max_tier=route.max_tier or "",
        budget_per_query=route.budget_per_query, **input_,
    )


def _tierlm(replies: list[router_pb2.CompleteResponse]) -> dict[str, Any]:
    """The extension object: which tier answered each choice, what the request cost, and each
    choice's request id (what POST /v1/feedback takes)."""
    return {"tiers": [r.trace.accepted_tier for r in replies], "cost": sum(r.trace.total_cost for r in replies),
            "request_ids": [r.answer.request_id for r in replies]}


@dataclass(frozen=True)
class _ChunkShape:
    """Server-sent events of one streamed choice, shaped as OpenAI's ChatCompletionChunk (`chat`)
    or streamed Completion: a role delta first (chat), a chunk per piece of text, a finishing chunk
    (carrying the `tierlm` extension), and with include_usage a last chunk with usage, no choices."""

    head: dict[str, Any]
    chat: bool
    logprobs: bool
    include_usage: bool

    def _chunk(self, **fields: Any) -> dict[str, Any]:
        choice = {"index": 0, **({"delta": {}} if self.chat else {"text": ""}), "logprobs": None, "finish_reason": None}
        return {**self.head, "choices": [choice | fields]}

    def opening(self) -> list[dict[str, Any]]:
        return [self._chunk(delta={"role": "assistant", "content": ""})] if self.chat else []

    def chunks(self, reply: router_pb2.CompleteResponse) -> list[dict[str, Any]]:
        answer = reply.answer
        out = []
        if answer.text:
            if self.chat:
                out.append(self._chunk(delta={"content": answer.text}, logprobs=chat_logprobs(answer) if self.logprobs else None))
            else:
                out.append(self._chunk(text=answer.text, logprobs=completion_logprobs(answer) if self.logprobs else None))
        if answer.is_final:
            out.append({**self._chunk(finish_reason=finish_reason(answer)), "tierlm": _tierlm([reply])})
            if self.include_usage:
                out.append({**self.head, "choices": [], "usage": usage([answer])})
        return out

    def event(self, data: dict[str, Any]) -> str:
        if self.include_usage and "error" not in data:
            data.setdefault("usage", None)  # OpenAI sends usage: null on every chunk but the last
        return f"data: {json.dumps(data)}\n\n"


def build_app(router_target: str, policy: Callable[[], Policy], keys: Callable[[], KeyRing | None],
              max_body_bytes: int) -> FrontDoor:
    """The HTTP app over the Router at `router_target`; `policy` and `keys` return the current ones
    (both change on reload); None from `keys` means auth is off."""
    app = FastAPI(title="tierlm OpenAI-compatible API", version="1")
    router = _Router(router_target)

    @app.exception_handler(OpenAIError)
    async def _openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        loc = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = ".".join(loc)
        message = first.get("msg", "invalid request").removeprefix("Value error, ")
        if first.get("type") == "extra_forbidden":
            message = f"Unrecognized request argument supplied: {param}"
        elif param:
            message = f"{param}: {message}"
        return OpenAIError(400, message, param=param or None, code="invalid_request").response()

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return OpenAIError(exc.status_code, str(exc.detail), code=None).response()

    async def complete_all(requests: list[router_pb2.CompleteRequest], request: Request) -> list[router_pb2.CompleteResponse]:
        calls = [router.stub.Complete(r, metadata=_metadata(request)) for r in requests]
        try:
            return list(await asyncio.gather(*calls))
        except grpc.aio.AioRpcError as exc:
            for call in calls:
                call.cancel()
            raise OpenAIError.from_rpc(exc) from None

    async def stream(grpc_request: router_pb2.CompleteRequest, request: Request, shape: _ChunkShape) -> StreamingResponse:
        call = router.stub.CompleteStream(grpc_request, metadata=_metadata(request))
        try:
            # The first message before the first byte: auth, model and budget errors stay HTTP errors.
            first = await call.read()
        except grpc.aio.AioRpcError as exc:
            call.cancel()
            raise OpenAIError.from_rpc(exc) from None

        async def events() -> AsyncIterator[str]:
            reply = first
            try:
                for chunk in shape.opening():
                    yield shape.event(chunk)
                while reply is not grpc.aio.EOF:
                    for chunk in shape.chunks(reply):
                        yield shape.event(chunk)
                    reply = await call.read()
            except grpc.aio.AioRpcError as exc:
                # Text already sent cannot be unsent: the stream ends with OpenAI's error event.
                failure = OpenAIError.from_rpc(exc)
                yield shape.event(error_body(failure.status, failure.message, code=failure.code))
            finally:
                call.cancel()  # a client that went away cancels the routed call with it
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        route = _route(policy(), body.model)
        response_id = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        logprobs = body.logprobs is not None
        max_tokens = body.max_tokens or COMPLETIONS_DEFAULT_MAX_TOKENS
        requests = [
            _grpc_request(body, route, f"{response_id}-{i}", max_tokens, logprobs, prompt=prompt)
            for i, prompt in enumerate(p for p in body.prompts for _ in range(body.n))
        ]
        head = {"id": response_id, "object": "text_completion", "created": created, "model": body.model}
        if body.stream:
            return await stream(requests[0], request, _ChunkShape(head, chat=False, logprobs=logprobs, include_usage=body.include_usage))
        replies = await complete_all(requests, request)
        choices = [
            {"index": i, "text": r.answer.text, "finish_reason": finish_reason(r.answer),
             "logprobs": completion_logprobs(r.answer) if logprobs else None}
            for i, r in enumerate(replies)
        ]
        return {**head, "choices": choices, "usage": usage([r.answer for r in replies]), "tierlm": _tierlm(replies)}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        route = _route(policy(), body.model)
        response_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        turns = [m.as_turn() for m in body.messages]
        max_tokens = body.token_limit or route.default_max_tokens
        requests = [
            _grpc_request(body, route, f"{response_id}-{i}", max_tokens, body.logprobs, messages=turns)
            for i in range(body.n)
        ]
        head = {"id": response_id, "object": "chat.completion", "created": created, "model": body.model}
        if body.stream:
            shape = _ChunkShape({**head, "object": "chat.completion.chunk"}, chat=True, logprobs=body.logprobs,
                                include_usage=body.include_usage)
            return await stream(requests[0], request, shape)
        replies = await complete_all(requests, request)
        choices = [
            {"index": i, "message": {"role": "assistant", "content": r.answer.text, "refusal": None},
             "finish_reason": finish_reason(r.answer), "logprobs": chat_logprobs(r.answer) if body.logprobs else None}
            for i, r in enumerate(replies)
        ]
        return {**head, "choices": choices, "usage": usage([r.answer for r in replies]), "tierlm": _tierlm(replies)}

    def model_card(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 0, "owned_by": "tierlm"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card(name) for name in policy().model_routes()]}

    @app.get("/v1/models/{model:path}")
    async def model(model: str):
        _route(policy(), model)
        return model_card(model)

    @app.post("/v1/feedback")
    async def feedback(body: FeedbackBody, request: Request):
        """tierlm's own endpoint: a verdict on an answer (see Router.Feedback and docs/learning.md)."""
        verdict = {k: v for k, v in body.model_dump(exclude={"request_id"}).items() if v is not None}
        try:
            reply = await router.stub.Feedback(router_pb2.FeedbackRequest(request_id=body.request_id, **verdict),
                                               metadata=_metadata(request))
        except grpc.aio.AioRpcError as exc:
            raise OpenAIError.from_rpc(exc) from None
        return {"request_id": reply.request_id, "stored": reply.stored}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    return FrontDoor(app, keys, max_body_bytes)
