"""The one error type engines and servers use to say which gRPC status a failure deserves."""

from __future__ import annotations

import grpc

Metadata = tuple[tuple[str, str | bytes], ...]


class GenerationError(Exception):
    """A generation request failed; `code` is the status the client should get.

    `retry_after_s` is set for overload (RESOURCE_EXHAUSTED): servers send it as the
    `retry-after-s` trailing metadata the client SDK honours. `metadata` is more trailing
    metadata for the client (keys ending in `-bin` carry bytes).
    """

    def __init__(self, code: grpc.StatusCode, message: str, retry_after_s: float | None = None, metadata: Metadata = ()):
        super().__init__(message)
        self.code = code
        self.retry_after_s = retry_after_s
        self.metadata = tuple(metadata)

    def __reduce__(self) -> tuple:
        # Ray pickles exceptions across actors; rebuild with every argument.
        return (GenerationError, (self.code, str(self), self.retry_after_s, self.metadata))

    def trailing_metadata(self) -> Metadata:
        retry = (("retry-after-s", f"{self.retry_after_s:.3f}"),) if self.retry_after_s is not None else ()
        return retry + self.metadata
