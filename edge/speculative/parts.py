"""Building a node's drafter and verifier from its model folder."""

from __future__ import annotations

from pathlib import Path

import torch

from tierlm.edge.engine import DecoderEngine
from tierlm.edge.speculative.client import GrpcVerifier, VerifierEndpoint
from tierlm.edge.speculative.drafter import Drafter, SpeculativeOptions
from tierlm.edge.speculative.sessions import SessionEngine
from tierlm.edge.speculative.verifier import SessionVerifier


def drafter_for(
    model_path: Path, engine: DecoderEngine, endpoint: VerifierEndpoint, sessions: int, k: int, max_k: int,
    threads: int | None, draft_vocab: torch.Tensor | None = None,
) -> Drafter:
    """A drafter on its own copy of the node's model (its KV slots are per generation, not per
    request step), sharing the engine's tokenizer, calling the verifier at ``endpoint``;
    drafting from ``draft_vocab`` alone when given."""
    drafting = SessionEngine.from_pretrained(model_path, max_sessions=sessions, max_seq_len=engine.max_seq_len, threads=threads,
                                             draft_vocab=draft_vocab)
    eos = engine.model.config.eos_token_ids
    return Drafter(drafting, engine.tokenizer, GrpcVerifier(endpoint), SpeculativeOptions(k, max_k), eos)


def verifier_for(model_path: Path, sessions: int, ttl_s: float, threads: int | None) -> SessionVerifier:
    """A verifier on its own copy of the node's model, holding ``sessions`` sessions."""
    return SessionVerifier.from_pretrained(model_path, max_sessions=sessions, ttl_s=ttl_s, threads=threads)
