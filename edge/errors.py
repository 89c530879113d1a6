"""Exceptions the edge engine raises; servers map them onto status codes."""

from __future__ import annotations


class EngineError(RuntimeError):
    """Base class of the engine's errors; a bare one means the engine failed the request."""


class InvalidRequest(EngineError, ValueError):
    """The request cannot be served as sent; the message says what to change (INVALID_ARGUMENT)."""


class QueueFull(EngineError):
    """All slots are busy and the waiting queue is full (RESOURCE_EXHAUSTED).

    `retry_after_s` is the engine's estimate of when a retry has a fair chance.
    """

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EngineClosed(EngineError):
    """The engine is shutting down or closed and accepts no new requests (UNAVAILABLE)."""
