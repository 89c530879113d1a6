"""`tierlm ask`: one question to a running router, through the client SDK."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import grpc
import typer
from google.protobuf.json_format import MessageToDict

from tierlm.app.errors import CommandError, ExitCode
from tierlm.client import Client, Completion, TierlmError
from tierlm.v1 import router_pb2


def completion_record(completion: Completion) -> dict:
    """The completion as JSON-ready data, its routing trace with the proto's field names."""
    record = {f.name: getattr(completion, f.name) for f in dataclasses.fields(completion) if f.name != "trace"}
    return record | {"trace": MessageToDict(completion.trace, preserving_proto_field_name=True)}


def ask(
    prompt: str = typer.Argument(..., help="The prompt to route."),
    router: str = typer.Option("127.0.0.1:50051", "--router", envvar="TIERLM_ROUTER", help="Router address host:port."),
    api_key: str | None = typer.Option(None, "--api-key", envvar="TIERLM_API_KEY", help="Tenant API key."),
    tls: bool = typer.Option(False, "--tls", help="Call the router over TLS (system roots unless --ca-file)."),
    ca_file: Path | None = typer.Option(None, "--ca-file", envvar="TIERLM_CA_FILE", exists=True, dir_okay=False,
                                        help="CA that signed the router's certificate (implies --tls)."),
    cert_file: Path | None = typer.Option(None, "--cert", envvar="TIERLM_CLIENT_CERT", exists=True, dir_okay=False,
                                          help="Client certificate, for a router that requires mutual TLS."),
    key_file: Path | None = typer.Option(None, "--key", envvar="TIERLM_CLIENT_KEY", exists=True, dir_okay=False,
                                         help="The client certificate's private key."),
    max_tokens: int = typer.Option(64, "--max-tokens", min=1),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0),
    choice: list[str] = typer.Option([], "--choice", help="Answer by label-choice scoring among these (repeatable)."),
    force_tier: str = typer.Option("", "--force-tier", help="Call only this tier."),
    max_tier: str = typer.Option("", "--max-tier", help="Never escalate past this tier."),
    stream: bool = typer.Option(False, "--stream", help="Print tokens as they arrive."),
    trace: bool = typer.Option(True, "--trace/--no-trace", help="Print which tiers were tried and why."),
    as_json: bool = typer.Option(False, "--json", help="Print the answer, its routing trace and cost as one JSON object."),
) -> None:
    """Send PROMPT to the router; print the answer, the tier that gave it and what it cost."""
    if force_tier and max_tier:
        raise CommandError("--force-tier and --max-tier conflict: a forced tier is the only one called", ExitCode.USAGE)
    if as_json and stream:
        raise CommandError("--json and --stream conflict: --json prints the whole answer once it is complete", ExitCode.USAGE)
    params = dict(max_tokens=max_tokens, temperature=temperature, choices=choice, force_tier=force_tier, max_tier=max_tier)
    try:
        with Client(router, api_key=api_key, tls=tls, ca_file=ca_file, cert_file=cert_file, key_file=key_file) as client:
            if stream:
                completion = None
                for chunk in client.stream(prompt, **params):
                    typer.echo(chunk.text, nl=False)
                    completion = chunk.completion or completion
                typer.echo()
            else:
                completion = client.complete(prompt, **params)
                typer.echo(json.dumps(completion_record(completion)) if as_json else completion.text)
    except TierlmError as exc:
        unreachable = exc.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        raise CommandError(f"{exc.code.name}: {exc.details}", ExitCode.UNREACHABLE if unreachable else ExitCode.FAILED) from None
    except ValueError as exc:  # e.g. a client certificate without its key
        raise CommandError(str(exc), ExitCode.USAGE) from None
    if completion is not None and not as_json:
        typer.echo(f"-- tier {completion.tier}, cost {completion.cost:.6g}, {completion.completion_tokens} tokens, "
                   f"request {completion.request_id} (for `tierlm router feedback`)", err=True)
        if trace:
            for attempt in completion.trace.attempts:
                outcome = router_pb2.TierOutcome.Name(attempt.outcome).removeprefix("TIER_OUTCOME_").lower()
                typer.echo(f"   {attempt.tier}: {outcome} ({attempt.reason})", err=True)
