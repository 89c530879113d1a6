"""How a command fails: `Error: <what went wrong>` on stderr, no traceback, and an exit code
per kind of failure, so a script can tell a typo in a policy from a port another process holds.

Commands raise the operator errors of `tierlm.errors` (or their subclasses) wherever they
arise; `CommandGroup` turns them into a `CommandError` once, for every command. Anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

import typer
from typer.core import TyperGroup

from tierlm.errors import ConfigError, MissingResource, PortUnavailable


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2  # click's own code for a bad command line
    BAD_CONFIG = 3
    MISSING = 4
    PORT_UNAVAILABLE = 5
    UNREACHABLE = 6

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]


_MEANINGS = {
    ExitCode.OK: "success",
    ExitCode.FAILED: "the command ran and failed (a request refused, a service that stopped)",
    ExitCode.USAGE: "bad command line: unknown option, bad value or path, conflicting flags",
    ExitCode.BAD_CONFIG: "a policy, tenants, recipe, workload or cloud file is invalid",
    ExitCode.MISSING: "a model, artifact, scorer or other file the command needs is missing",
    ExitCode.PORT_UNAVAILABLE: "a port could not be bound (in use or not permitted)",
    ExitCode.UNREACHABLE: "the router or a tier could not be reached",
}

# The exit codes in `tierlm --help` (click rewraps an epilog unless a paragraph starts with \b).
EPILOG = "\b\nExit codes:\n" + "\n".join(f"  {code.value}  {code.meaning}" for code in ExitCode)

_KINDS: tuple[tuple[type[Exception], ExitCode], ...] = (
    (ConfigError, ExitCode.BAD_CONFIG),
    (MissingResource, ExitCode.MISSING),
    # A file the command opened on the way (a policy's pool, say): the message names it.
    (FileNotFoundError, ExitCode.MISSING),
    (PortUnavailable, ExitCode.PORT_UNAVAILABLE),
)


class CommandError(Exception):
    """A failure the operator can act on, shown as `Error: <message>` with its exit code.

    Conflicting flags are one too (`ExitCode.USAGE`): a sentence naming both is clearer than
    click's usage dump, and typer's vendored click keeps its exception classes private."""

    def __init__(self, message: str, exit_code: ExitCode = ExitCode.FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class CommandGroup(TyperGroup):
    """The top-level group: every command's operator errors leave as one `Error:` line and a code."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CommandError as exc:
            message, code = str(exc), exc.exit_code
        except tuple(kind for kind, _ in _KINDS) as exc:
            message, code = str(exc), next(code for kind, code in _KINDS if isinstance(exc, kind))
        typer.echo(f"Error: {message}", err=True)
        raise typer.Exit(code)
