"""What the OpenAI endpoint checks before the application reads a request: the API key, then the size.

An ASGI middleware, so both checks happen on the headers alone: a caller without a valid key is
answered 401 before a byte of its body is read (a 60 MiB body costs the router nothing), and a body
over the limit is refused with 413, by its Content-Length up front or as it streams in when it has
none (it is then read here, never more than the limit). Keys are read from ``Authorization: Bearer`` or ``x-api-key``, like the gRPC port.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tierlm.auth import KeyRing, key_from_metadata
from tierlm.router.serve.openai_types import error_body

# Paths anyone may call: load balancer and Kubernetes probes carry no key.
OPEN_PATHS = frozenset({"/health"})

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


async def send_error(send: Send, status: int, message: str, code: str) -> None:
    body = json.dumps(error_body(status, message, code=code)).encode()
    await send({
        "type": "http.response.start", "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close")],
    })
    await send({"type": "http.response.body", "body": body})


def api_key(scope: Scope) -> str | None:
    """The key a request presents, from either header."""
    headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"]]
    return key_from_metadata(headers)


class FrontDoor:
    """ASGI middleware: authenticate, then cap the body, then hand over to `app`.

    Args:
        keys: the router's current key ring (it changes on reload); None means auth is off.
        max_body_bytes: the largest request body accepted.
    """

    def __init__(self, app: Any, keys: Callable[[], KeyRing | None], max_body_bytes: int):
        self.app = app
        self._keys = keys
        self._max = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        ring = self._keys()
        if ring is not None:
            key = api_key(scope)
            if key is None or ring.tenant_for(key) is None:
                await send_error(send, 401, "missing or unknown API key (send it as Authorization: Bearer <key> "
                                            "or x-api-key)", "invalid_api_key")
                return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            # HTTP framing holds the body to its declared length.
            if not declared.isdigit() or int(declared) > self._max:
                await self._too_large(send)
                return
            await self.app(scope, receive, send)
            return
        # A chunked body: read it here, up to the limit, and hand it on in one piece.
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            if len(body) > self._max:
                await self._too_large(send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send) -> None:
        await send_error(send, 413, f"request body is larger than {self._max} bytes", "request_too_large")
