"""`tierlm edge ...`: run an edge node."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from tierlm import tracing
from tierlm.app.commands import server_options as opt
from tierlm.app.errors import CommandError, ExitCode
from tierlm.edge.speculative.vocabulary import DEFAULT_SIZE

app = typer.Typer(help="Run an edge node: a compressed small model behind the Generator gRPC service.", no_args_is_help=True)


@app.command()
def serve(
    model: Path = typer.Option(..., "--model", exists=True, help="Model folder: a tierlm artifact or an HF folder."),
    port: int = typer.Option(50061, "--port", min=0, max=opt.MAX_PORT, help="gRPC port."),
    threads: int = typer.Option(2, "--threads", min=1, help="threads of the decode loop: a compressed model's onnxruntime kernels get them as one shared pool and torch runs on one (docs/compression.md)."),
    max_batch: int = typer.Option(8, "--max-batch", min=1, help="Requests decoded together."),
    max_queue: int = typer.Option(64, "--max-queue", min=0, help="Requests waiting for a slot; beyond, RESOURCE_EXHAUSTED."),
    tier_name: str = typer.Option("edge", "--tier-name", help="Tier name put on answers."),
    compile_decode: bool = typer.Option(
        False, "--compile/--no-compile",
        help="Compile the decode step with torch.compile (needs a C compiler): faster tokens, a start-up a minute or two "
             "longer per graph the first time (cached under TORCHINDUCTOR_CACHE_DIR)."),
    api_keys: Path | None = opt.API_KEYS,
    no_auth: bool = opt.NO_AUTH,
    host: str = opt.HOST,
    metrics_port: int | None = opt.METRICS_PORT,
    tls_cert: Path | None = opt.TLS_CERT,
    tls_key: Path | None = opt.TLS_KEY,
    tls_client_ca: Path | None = opt.TLS_CLIENT_CA,
    max_request_bytes: int = opt.MAX_REQUEST_BYTES,
    drain_s: float = opt.DRAIN_S,
    verifier: str | None = typer.Option(
        None, "--verifier", help="host:port of a Verify server (the cloud tier): draft for it when a request asks for speculative decoding."),
    verifier_key_env: str | None = typer.Option(None, "--verifier-key-env", help="Environment variable holding the verifier's API key."),
    verifier_ca: Path | None = typer.Option(None, "--verifier-ca", exists=True, dir_okay=False,
                                            help="PEM CA of the verifier's certificate (turns TLS on)."),
    verifier_timeout_s: float = typer.Option(10.0, "--verifier-timeout", min=0.1, help="Seconds one verify round may take."),
    draft_k: int = typer.Option(4, "--draft-k", min=1, max=16, help="Draft tokens per round to start with (then adaptive)."),
    max_draft_k: int = typer.Option(8, "--max-draft-k", min=1, max=16, help="The most draft tokens per round."),
    draft_sessions: int = typer.Option(8, "--draft-sessions", min=1, help="Speculative generations drafted at once."),
    draft_vocab_text: Path | None = typer.Option(
        None, "--draft-vocab-text", exists=True,
        help="Text file or folder of .txt files like the traffic: draft only from its most frequent tokens, then the "
             "tokenizer's lowest ids (FR-Spec), a fraction of the output layer per draft step; the output stays the verifier's."),
    draft_vocab_size: int = typer.Option(DEFAULT_SIZE, "--draft-vocab-size", min=1,
                                         help="Tokens to draft from (--draft-vocab-text's ranking, then the lowest ids)."),
    verify_sessions: int = typer.Option(0, "--verify-sessions", min=0,
                                        help="Serve Verify for other nodes' drafters with this many sessions (0: off)."),
    session_ttl_s: float = typer.Option(300.0, "--session-ttl", min=1.0, help="Seconds an idle verify session is kept."),
) -> None:
    """Serve tierlm.v1.Generator for MODEL until SIGTERM (in-flight streams drain first)."""
    import os

    from tierlm.edge.server import SpeculationConfig, load_generator, serve_edge
    from tierlm.edge.speculative.client import VerifierEndpoint
    from tierlm.edge.config import ModelConfig
    from tierlm.edge.threads import share_pool_for_serving

    config = opt.server_config(host, port, metrics_port, tls_cert, tls_key, tls_client_ca, max_request_bytes, drain_s)
    config.keys = opt.key_ring(api_keys, no_auth)
    if draft_k > max_draft_k:
        raise CommandError("--draft-k must not exceed --max-draft-k", ExitCode.USAGE)
    endpoint = None
    if verifier is not None:
        key = os.environ.get(verifier_key_env, "") if verifier_key_env else ""
        endpoint = VerifierEndpoint(verifier, verifier_timeout_s, key, ca_file=str(verifier_ca) if verifier_ca else None)
    if draft_vocab_text is not None and verifier is None:
        raise CommandError("--draft-vocab-text needs --verifier (it shapes what this node drafts)", ExitCode.USAGE)
    speculation = SpeculationConfig(endpoint, draft_sessions, draft_k, max_draft_k, verify_sessions, session_ttl_s,
                                    draft_vocab_text, draft_vocab_size)
    # A folder that holds no model fails with its own error before the process commits to
    # onnxruntime's shared pool, which it cannot undo (and which refuses any other pool).
    ModelConfig.from_dir(model)
    share_pool_for_serving(threads)  # this process serves one model and nothing else
    generator = load_generator(model, tier_name, threads, max_batch, max_queue, speculation, compile=compile_decode)

    def ready(server) -> None:
        typer.echo(f"EDGE_PORT {server.port}")

    tracing.configure("tierlm-edge")  # OTLP export when OTEL_EXPORTER_OTLP_ENDPOINT is set
    asyncio.run(serve_edge(generator, config, ready))
