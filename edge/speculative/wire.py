"""Speculative decoding's values as tierlm.v1 messages, both ways."""

from __future__ import annotations

import torch

from tierlm.edge.errors import InvalidRequest
from tierlm.edge.speculative.acceptance import SparseDistribution
from tierlm.edge.speculative.drafter import SpeculationStats
from tierlm.edge.speculative.metadata import SESSION_LENGTH_KEY, STATS_KEY
from tierlm.edge.speculative.verifier import VerifyOutcome, VerifyRound
from tierlm.v1 import generator_pb2

__all__ = ["SESSION_LENGTH_KEY", "STATS_KEY", "outcome_from_proto", "outcome_to_proto", "round_from_proto", "round_to_proto", "stats_to_proto"]



def round_to_proto(round_: VerifyRound) -> generator_pb2.VerifyRequest:
    message = generator_pb2.VerifyRequest(
        session_id=round_.session_id,
        start=round_.start,
        tokens=round_.tokens,
        draft_tokens=round_.drafts,
        temperature=round_.temperature,
        return_logprobs=round_.logprobs,
    )
    if round_.top_p != 1.0:
        message.top_p = round_.top_p
    if round_.seed is not None:
        message.seed = round_.seed
    for q in round_.draft_distributions:
        message.draft_distributions.add(token_ids=q.token_ids.tolist(), probs=q.probs.tolist())
    return message


def round_from_proto(message: generator_pb2.VerifyRequest, tenant: str = "") -> VerifyRound:
    distributions = []
    for i, q in enumerate(message.draft_distributions):
        if len(q.token_ids) != len(q.probs):
            raise InvalidRequest(f"draft_distributions[{i}] has {len(q.token_ids)} token_ids but {len(q.probs)} probs")
        distributions.append(
            SparseDistribution(torch.tensor(list(q.token_ids), dtype=torch.int64), torch.tensor(list(q.probs), dtype=torch.float32))
        )
    return VerifyRound(
        session_id=message.session_id,
        start=message.start,
        tokens=tuple(message.tokens),
        drafts=tuple(message.draft_tokens),
        temperature=message.temperature,
        top_p=message.top_p if message.HasField("top_p") else 1.0,
        draft_distributions=tuple(distributions),
        seed=message.seed if message.HasField("seed") else None,
        logprobs=message.return_logprobs,
        tenant=tenant,
    )


def outcome_to_proto(outcome: VerifyOutcome, session_id: str, model: str) -> generator_pb2.VerifyResponse:
    return generator_pb2.VerifyResponse(
        session_id=session_id,
        accepted=outcome.accepted,
        next_token=outcome.next_token,
        logprobs=outcome.logprobs or (),
        length=outcome.length,
        processed_tokens=outcome.processed_tokens,
        forward_passes=outcome.forward_passes,
        model=model or outcome.model,
    )


def outcome_from_proto(message: generator_pb2.VerifyResponse, logprobs: bool) -> VerifyOutcome:
    return VerifyOutcome(
        accepted=message.accepted,
        next_token=message.next_token,
        length=message.length,
        processed_tokens=message.processed_tokens,
        forward_passes=message.forward_passes,
        logprobs=tuple(message.logprobs) if logprobs else None,
        model=message.model,
    )


def stats_to_proto(stats: SpeculationStats) -> generator_pb2.SpeculativeStats:
    return generator_pb2.SpeculativeStats(
        rounds=stats.rounds,
        drafted_tokens=stats.drafted_tokens,
        accepted_tokens=stats.accepted_tokens,
        verifier_tokens=stats.verifier_tokens,
        verifier_passes=stats.verifier_passes,
        session_rebuilds=stats.session_rebuilds,
        verifier_model=stats.verifier_model,
        final_k=stats.final_k,
    )
