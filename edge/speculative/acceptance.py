"""Which drafts the verifier accepts, and the token that follows them.

Greedy: drafts are accepted while each one is the verifier's argmax; the next token is the
argmax after the last accepted one, so the output is exactly the verifier's greedy output.

Sampling (Leviathan et al. 2023, "Fast Inference from Transformers via Speculative Decoding";
Chen et al. 2023, "Accelerating Large Language Model Decoding with Speculative Sampling"): draft
i, drawn from the drafter's q_i, is accepted with probability min(1, p_i(d_i) / q_i(d_i)); at the
first rejection the next token is drawn from the residual max(0, p_i - q_i), renormalised; when
every draft is accepted, from p_{k+1}. The output then follows the verifier's distribution p
exactly, for any q, provided q is the distribution each draft was really drawn from. The drafter
therefore draws from its own distribution cut to its `support` most likely tokens and sends that
cut distribution, which keeps a round's message small without giving up exactness.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from tierlm.edge.sampling import greedy_tokens, probabilities

#: Tokens a drafter keeps of its distribution per draft (the rest of its mass is cut).
DRAFT_SUPPORT = 256
#: The largest sparse draft distribution a verifier takes.
MAX_SUPPORT = 1024


@dataclass(frozen=True)
class SparseDistribution:
    """A distribution over a few token ids (probabilities summing to 1)."""

    token_ids: Tensor  # [n] int64
    probs: Tensor  # [n] float32

    def prob_of(self, token: int) -> float:
        hits = (self.token_ids == token).nonzero()
        return float(self.probs[hits[0, 0]]) if len(hits) else 0.0


def draft_distribution(logits: Tensor, temperature: float, top_p: float, support: int = DRAFT_SUPPORT) -> SparseDistribution:
    """The drafter's sampling distribution for one position ([V] logits), cut to its ``support``
    most likely tokens and renormalised: what the draft is drawn from and what the verifier is sent."""
    probs = probabilities(logits, temperature, top_p)
    top = torch.topk(probs, min(support, probs.shape[-1]))
    kept = top.values[top.values > 0]
    ids = top.indices[: len(kept)]
    # Normalised in float32, the precision it travels in, so the two sides agree on q.
    kept = kept.float()
    return SparseDistribution(ids, kept / kept.sum())


def draw(distribution: SparseDistribution, generator: torch.Generator | None) -> int:
    """One token from a sparse distribution."""
    return int(distribution.token_ids[torch.multinomial(distribution.probs, 1, generator=generator)])


def accept_greedy(logits: Tensor, drafts: Sequence[int]) -> tuple[int, int]:
    """(accepted drafts, next token) for greedy verification; ``logits`` [k+1, V] are the
    verifier's predictions for each draft position and the one after the last draft."""
    best = greedy_tokens(logits)
    accepted = 0
    while accepted < len(drafts) and drafts[accepted] == best[accepted]:
        accepted += 1
    return accepted, best[accepted]


def accept_sampled(
    logits: Tensor,
    drafts: Sequence[int],
    draft_distributions: Sequence[SparseDistribution],
    temperature: float,
    top_p: float,
    generator: torch.Generator,
) -> tuple[int, int]:
    """(accepted drafts, next token) by speculative sampling against the verifier's sampling
    distribution (temperature, top_p) of ``logits`` [k+1, V]."""
    p = probabilities(logits, temperature, top_p)
    for i, (draft, q) in enumerate(zip(drafts, draft_distributions)):
        p_draft, q_draft = float(p[i, draft]), q.prob_of(draft)
        if float(torch.rand((), generator=generator)) * q_draft < p_draft:
            continue
        residual = p[i].index_add(0, q.token_ids, -q.probs.to(p.dtype)).clamp_(min=0.0)
        if float(residual.sum()) <= 0.0:  # p <= q everywhere only when p == q up to rounding
            residual = p[i]
        return i, int(torch.multinomial(residual, 1, generator=generator))
    return len(drafts), int(torch.multinomial(p[len(drafts)], 1, generator=generator))


def round_generator(seed: int, position: int) -> torch.Generator:
    """The verifier's random numbers for the round whose first draft sits at ``position``: a
    function of the request's seed and the position only, so a rebuilt session draws the same."""
    mixed = (seed * 0x9E3779B97F4A7C15 + position * 0xBF58476D1CE4E5B9) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)
