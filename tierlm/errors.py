"""The errors every layer shares: what a failed generation tells its client, and the kinds of
failure an operator meets before anything is served (a bad file, a missing model, a busy port).

Each layer raises subclasses of the operator kinds; the command line turns each kind into one
line on stderr and an exit code of its own (tierlm/app/errors.py), so a script can tell a
typo in a policy from a port that another process holds.
"""

from __future__ import annotations

import os

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


class ConfigError(ValueError):
    """A file the operator wrote (policy, tenants, recipe, workload, cloud config) must not be
    used; str() names the file, and the line and field where it can."""


class MissingResource(LookupError):
    """Something a command needs is not there: a model package, a model or artifact folder,
    a scorer. The message names it and, where there is one, the command that makes it."""


class PortUnavailable(OSError):
    """A server could not listen on its address (the port is taken, or not permitted)."""

    def __init__(self, what: str, address: str, reason: str):
        super().__init__(f"cannot listen on {address} ({what}): {reason}")
        self.address = address

    @classmethod
    def refused(cls, what: str, address: str, exc: OSError) -> PortUnavailable:
        """From the OS's refusal, in its own words ("Address already in use")."""
        return cls(what, address, os.strerror(exc.errno) if exc.errno else str(exc))
