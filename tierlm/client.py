"""The tierlm client SDK: call the router (or any tier) over gRPC.

>>> from tierlm.client import Client
>>> with Client("127.0.0.1:50051", api_key="...") as client:
...     answer = client.complete("Q: gold rises 2%\\nA:", max_tokens=4)
...     print(answer.text, answer.tier, answer.cost)

`AsyncClient` has the same methods as coroutines / async iterators. Both retry
UNAVAILABLE and RESOURCE_EXHAUSTED with exponential backoff and full jitter, honouring the
server's `retry-after-s` hint, and never retry a request the server called invalid.
Errors arrive as `TierlmError` subclasses named after their gRPC status.

Several router replicas: give every address (`"10.0.0.5:50051,10.0.0.6:50051"`, IPs) or a
DNS name that resolves to all of them (`"dns:///tierlm-router:50051"`); calls are spread
round-robin, and a retry after UNAVAILABLE goes to a replica that answers. Every call carries
a request id (made here when not given) that its retries reuse, so the router never bills a
retried request twice.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from tierlm import tracing
from tierlm.v1 import generator_pb2, router_pb2, router_pb2_grpc

RETRY_AFTER_KEY = "retry-after-s"
# Trailing metadata on RESOURCE_EXHAUSTED when the tenant's budget, not load, refused the call.
QUOTA_KEY = "tierlm-quota"


class TierlmError(Exception):
    """A call failed; `code` is the gRPC status, `retry_after_s` the server's hint if it gave one."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, details: str, code: grpc.StatusCode | None = None, retry_after_s: float | None = None):
        super().__init__(details)
        self.details = details
        if code is not None:
            self.code = code
        self.retry_after_s = retry_after_s


class InvalidArgument(TierlmError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class Unauthenticated(TierlmError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(TierlmError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(TierlmError):
    """A full queue, the router's concurrency limit, or a spent budget (the message says which)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(TierlmError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(TierlmError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(TierlmError):
    code = grpc.StatusCode.NOT_FOUND


_ERRORS = {
    cls.code: cls
    for cls in (InvalidArgument, Unauthenticated, PermissionDenied, ResourceExhausted, Unavailable, DeadlineExceeded, NotFound)
}
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}


def _error_from(exc: grpc.RpcError) -> TierlmError:
    hint = None
    for key, value in exc.trailing_metadata() or ():
        if key == RETRY_AFTER_KEY:
            hint = float(value)
    cls = _ERRORS.get(exc.code(), TierlmError)
    return cls(exc.details() or exc.code().name, exc.code(), hint)


@dataclass(frozen=True)
class Completion:
    """A routed answer: its text, which tier produced it, what it cost, and the routing trace."""

    text: str
    tier: str
    cost: float
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    latency_ms: float
    request_id: str
    trace: router_pb2.RoutingTrace
    logprobs: list[float] = field(default_factory=list)
    choice_logprobs: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_response(cls, reply: router_pb2.CompleteResponse, text: str | None = None) -> Completion:
        answer = reply.answer
        return cls(
            text=answer.text if text is None else text,
            tier=reply.trace.accepted_tier or answer.tier,
            cost=reply.trace.total_cost,
            prompt_tokens=answer.usage.prompt_tokens,
            completion_tokens=answer.usage.completion_tokens,
            finish_reason=generator_pb2.FinishReason.Name(answer.finish_reason).removeprefix("FINISH_REASON_").lower(),
            latency_ms=answer.latency_ms,
            request_id=answer.request_id,
            trace=reply.trace,
            logprobs=[t.logprob for t in answer.logprobs],
            choice_logprobs={c.choice: c.logprob for c in answer.choice_logprobs},
        )


@dataclass(frozen=True)
class Chunk:
    """One piece of a streamed answer; the last one has `completion` set."""

    text: str
    completion: Completion | None = None


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 5.0

    def delay(self, attempt: int, error: TierlmError) -> float | None:
        """Seconds to wait before retry number `attempt` (1-based), or None to give up."""
        if error.code not in _RETRYABLE or attempt >= self.attempts:
            return None
        if error.retry_after_s is not None:
            # A hint longer than we would ever back off (a daily budget) means: do not retry.
            return error.retry_after_s if error.retry_after_s <= self.max_backoff_s else None
        return random.uniform(0, min(self.max_backoff_s, self.initial_backoff_s * 2 ** (attempt - 1)))


Message = tuple[str, str] | Mapping[str, Any]


def _turn(message: Message) -> generator_pb2.ChatMessage:
    """One chat turn from a (role, content) pair or an OpenAI-style {"role", "content"} dict, whose
    content may be a list of text parts."""
    if isinstance(message, Mapping):
        if "role" not in message or "content" not in message:
            raise ValueError(f"a message dict needs 'role' and 'content': {dict(message)!r}")
        role, content = message["role"], message["content"]
        if isinstance(content, list):
            if any(not isinstance(part, Mapping) or part.get("type") != "text" for part in content):
                raise ValueError("only text content parts ({'type': 'text', 'text': ...}) can be sent")
            content = "".join(part["text"] for part in content)
    elif isinstance(message, tuple) and len(message) == 2:
        role, content = message
    else:
        raise ValueError(f"a message is a (role, content) pair or a dict with role and content, not {message!r}")
    if not isinstance(role, str) or not isinstance(content, str):
        raise ValueError(f"role and content must be text: {message!r}")
    return generator_pb2.ChatMessage(role=role, content=content)


def build_request(
    prompt: str | None = None,
    *,
    messages: Sequence[Message] | None = None,
    max_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float | None = None,
    stop: Sequence[str] = (),
    seed: int | None = None,
    return_logprobs: bool = False,
    choices: Sequence[str] = (),
    request_id: str = "",
    budget_per_query: float | None = None,
    max_tier: str = "",
    force_tier: str = "",
    tenant: str = "",
) -> router_pb2.CompleteRequest:
    """A CompleteRequest from keyword arguments; give `prompt`, or `messages` as (role, content) pairs
    or OpenAI-style dicts.

    `tenant` is optional: the router takes the tenant from the API key, but a call whose key it
    refuses is then booked to the named tenant, so a leaked or rotated key shows in its usage."""
    if (prompt is None) == (messages is None):
        raise ValueError("give exactly one of prompt or messages")
    inner = generator_pb2.GenerateRequest(
        # The retries of this call reuse the id: the router books and bills it once.
        request_id=request_id or uuid.uuid4().hex, max_tokens=max_tokens, temperature=temperature, stop=list(stop),
        return_logprobs=return_logprobs, choices=list(choices), tenant=tenant,
    )
    if prompt is not None:
        inner.prompt = prompt
    else:
        inner.messages.messages.extend(_turn(m) for m in messages)
    if top_p is not None:
        inner.top_p = top_p
    if seed is not None:
        inner.seed = seed
    routing = router_pb2.RoutingOptions(max_tier=max_tier, force_tier=force_tier)
    if budget_per_query is not None:
        routing.budget_per_query = budget_per_query
    return router_pb2.CompleteRequest(request=inner, routing=routing)


def feedback_request(
    request_id: str, *, correct: bool | None = None, score: float | None = None, reference: str | None = None
) -> router_pb2.FeedbackRequest:
    """Feedback on an answer (its ``Completion.request_id``): exactly one of ``correct``,
    ``score`` (in [0, 1]) or ``reference`` (a right answer, judged by the policy's judge)."""
    given = {name: value for name, value in (("correct", correct), ("score", score), ("reference", reference)) if value is not None}
    if len(given) != 1:
        raise ValueError(f"give exactly one of correct, score or reference (got {sorted(given) or 'none'})")
    return router_pb2.FeedbackRequest(request_id=request_id, **given)


def _credentials(
    tls: bool, ca_file: str | Path | None, cert_file: str | Path | None, key_file: str | Path | None
) -> grpc.ChannelCredentials | None:
    """TLS when asked for or implied by a file; a client certificate and key for mutual TLS."""
    if (cert_file is None) != (key_file is None):
        raise ValueError("cert_file and key_file go together (mutual TLS)")
    if not tls and ca_file is None and cert_file is None:
        return None
    ca, key, cert = (Path(path).read_bytes() if path else None for path in (ca_file, key_file, cert_file))
    return grpc.ssl_channel_credentials(ca, key, cert)


def channel_target(address: str | Sequence[str]) -> str:
    """The gRPC target for one address, a DNS name of several replicas, a list of IP:port
    replicas (``"a:1,b:2"`` or a sequence), or a gRPC target as is (``ipv4:a:1,b:2``,
    ``dns:///name:port``); gRPC itself balances and fails over between them."""
    if isinstance(address, str) and address.startswith(("ipv4:", "ipv6:", "dns:", "unix:")):
        return address  # already a gRPC target
    addresses = [a.strip() for a in (address.split(",") if isinstance(address, str) else address) if a.strip()]
    if not addresses:
        raise ValueError("no router address given")
    if len(addresses) == 1:
        return addresses[0]
    kinds = set()
    for item in addresses:
        host = item.rsplit(":", 1)[0].strip("[]")
        try:
            kinds.add("ipv6" if isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address) else "ipv4")
        except ValueError:
            raise ValueError(f"{item!r}: give replicas as IP:port, or one DNS name that resolves to all of them "
                             "(dns:///name:port)") from None
    if len(kinds) > 1:
        raise ValueError("give replicas all as IPv4 or all as IPv6 addresses")
    return f"{kinds.pop()}:{','.join(addresses)}"


class _Base:
    def __init__(
        self,
        address: str | Sequence[str],
        api_key: str | None = None,
        *,
        tls: bool = False,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        timeout_s: float = 30.0,
        retry: RetryPolicy = RetryPolicy(),
    ):
        self.address = channel_target(address)
        self.timeout_s = timeout_s
        self.retry = retry
        self._credentials = _credentials(tls, ca_file, cert_file, key_file)
        self._metadata: tuple[tuple[str, str], ...] = (("x-api-key", api_key),) if api_key else ()
        # gRPC's own reconnect backoff (1 s, growing to 120 s) would make our retries fail fast
        # against a channel still waiting to redial; keep it in step with the retry policy.
        # Round robin over every address the target resolves to: router replicas behind a headless
        # Service (dns:///name:port) each get calls, not just the first one resolved.
        self._channel_options = [
            ("grpc.initial_reconnect_backoff_ms", int(retry.initial_backoff_s * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(retry.max_backoff_s * 1000)),
            # Spread calls over every address the target resolves to (gRPC's default, pick_first, pins one).
            ("grpc.lb_policy_name", "round_robin"),
        ]

    def _retry_delay(self, attempt: int, exc: grpc.RpcError, retryable: bool = True) -> float:
        """Seconds to wait before the next attempt; raises the typed error when we give up."""
        error = _error_from(exc)
        delay = self.retry.delay(attempt, error) if retryable else None
        if delay is None:
            raise error from None
        return delay


class _StreamText:
    """Turns CompleteStream replies into Chunks; the final chunk carries the whole answer."""

    def __init__(self) -> None:
        self._parts: list[str] = []

    def chunk(self, reply: router_pb2.CompleteResponse) -> Chunk:
        if reply.answer.is_final:
            text = "".join(self._parts) + reply.answer.text
            return Chunk(reply.answer.text, Completion.from_response(reply, text))
        self._parts.append(reply.answer.text)
        return Chunk(reply.answer.text)


class Client(_Base):
    """Blocking client. Use as a context manager, or call close()."""

    def __init__(self, address: str | Sequence[str], api_key: str | None = None, **options: Any):
        super().__init__(address, api_key, **options)
        self._channel = (
            grpc.secure_channel(self.address, self._credentials, self._channel_options)
            if self._credentials
            else grpc.insecure_channel(self.address, self._channel_options)
        )
        self._stub = router_pb2_grpc.RouterStub(self._channel)

    def complete(self, prompt: str | None = None, *, timeout_s: float | None = None, **params: Any) -> Completion:
        """Route one request and return the accepted answer. See build_request for the parameters."""
        request = build_request(prompt, **params)
        reply = self._call(self._stub.Complete, request, timeout_s)
        return Completion.from_response(reply)

    def stream(self, prompt: str | None = None, *, timeout_s: float | None = None, **params: Any) -> Iterator[Chunk]:
        """Yield the answer's text as it arrives; the last chunk carries the Completion.

        Retries happen only before the first chunk: text already delivered cannot be replayed."""
        request = build_request(prompt, **params)
        attempt = 0
        while True:
            attempt += 1
            received = False
            text = _StreamText()
            try:
                for reply in self._stub.CompleteStream(request, timeout=timeout_s or self.timeout_s, metadata=tracing.with_context(self._metadata)):
                    received = True
                    chunk = text.chunk(reply)
                    yield chunk
                    if chunk.completion is not None:
                        return
                return
            except grpc.RpcError as exc:
                time.sleep(self._retry_delay(attempt, exc, retryable=not received))

    def usage(self, tenant: str = "", since_unix_s: float = 0.0) -> router_pb2.UsageResponse:
        """Your tenant's spend as the router's ledger records it."""
        request = router_pb2.UsageRequest(tenant=tenant, since_unix_s=since_unix_s)
        return self._call(self._stub.GetUsage, request)

    def feedback(self, request_id: str, **verdict: Any) -> bool:
        """Say whether an answer was right (see :func:`feedback_request`); False when the request
        already had feedback (the first verdict stands)."""
        request = feedback_request(request_id, **verdict)
        reply = self._call(self._stub.Feedback, request)
        return reply.stored

    def _call(self, method: Any, request: Any, timeout_s: float | None = None) -> Any:
        """``method(request)`` with the key, trace context and deadline, retried as the policy says."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return method(request, timeout=timeout_s or self.timeout_s, metadata=tracing.with_context(self._metadata))
            except grpc.RpcError as exc:
                time.sleep(self._retry_delay(attempt, exc))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """asyncio client; create it inside a running event loop. `async with` closes it."""

    def __init__(self, address: str | Sequence[str], api_key: str | None = None, **options: Any):
        super().__init__(address, api_key, **options)
        self._channel = (
            grpc.aio.secure_channel(self.address, self._credentials, self._channel_options)
            if self._credentials
            else grpc.aio.insecure_channel(self.address, self._channel_options)
        )
        self._stub = router_pb2_grpc.RouterStub(self._channel)

    async def complete(self, prompt: str | None = None, *, timeout_s: float | None = None, **params: Any) -> Completion:
        """Route one request and return the accepted answer. See build_request for the parameters."""
        request = build_request(prompt, **params)
        reply = await self._call(self._stub.Complete, request, timeout_s)
        return Completion.from_response(reply)

    async def usage(self, tenant: str = "", since_unix_s: float = 0.0) -> router_pb2.UsageResponse:
        """Your tenant's spend as the router's ledger records it."""
        request = router_pb2.UsageRequest(tenant=tenant, since_unix_s=since_unix_s)
        return await self._call(self._stub.GetUsage, request)

    async def feedback(self, request_id: str, **verdict: Any) -> bool:
        """Say whether an answer was right (see :func:`feedback_request`); False when the request
        already had feedback (the first verdict stands)."""
        request = feedback_request(request_id, **verdict)
        reply = await self._call(self._stub.Feedback, request)
        return reply.stored

    async def _call(self, method: Any, request: Any, timeout_s: float | None = None) -> Any:
        """``await method(request)`` with the key, trace context and deadline, retried as the policy says."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return await method(request, timeout=timeout_s or self.timeout_s, metadata=tracing.with_context(self._metadata))
            except grpc.aio.AioRpcError as exc:
                await asyncio.sleep(self._retry_delay(attempt, exc))

    async def stream(self, prompt: str | None = None, *, timeout_s: float | None = None, **params: Any) -> AsyncIterator[Chunk]:
        """Yield the answer's text as it arrives; retries only before the first chunk."""
        request = build_request(prompt, **params)
        attempt = 0
        while True:
            attempt += 1
            received = False
            text = _StreamText()
            try:
                async for reply in self._stub.CompleteStream(request, timeout=timeout_s or self.timeout_s, metadata=tracing.with_context(self._metadata)):
                    received = True
                    chunk = text.chunk(reply)
                    yield chunk
                    if chunk.completion is not None:
                        return
                return
            except grpc.aio.AioRpcError as exc:
                await asyncio.sleep(self._retry_delay(attempt, exc, retryable=not received))

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
