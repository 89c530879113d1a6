"""Reaching a tier by speculative decoding: the policy's `speculative` pair (docs/speculative.md).

For a request whose max_tokens is above the pair's threshold, the cascade's call of the verify
tier goes to the draft tier with speculative options instead: the draft tier drafts and has the
verify tier check every round, so the answer is the verify tier's own, for a fraction of its
compute. What it costs is what each tier did: the draft tier's price for its prompt and every
token it drafted, and the verify tier's for every token it ran through its model (prompt,
corrections, drafts: priced as input tokens, which is what a scoring pass is) plus one output
token per round (the token it chose).
"""

from __future__ import annotations

from dataclasses import dataclass

from tierlm.config import Policy, SpeculativeConfig, TierConfig
from tierlm.edge.speculative.tokenizers import model_fingerprint
from tierlm.edge.speculative.metadata import STATS_KEY
from tierlm.errors import ConfigError
from tierlm.router.serve.tiers import TierFailure
from tierlm.v1 import generator_pb2


@dataclass(frozen=True)
class SpeculativePair:
    """The policy's draft and verify tiers, and how the cascade uses them."""

    config: SpeculativeConfig
    draft: TierConfig
    verify: TierConfig
    fallback: TierConfig

    @classmethod
    def from_policy(cls, policy: Policy) -> SpeculativePair | None:
        spec = policy.speculative
        if spec is None:
            return None
        return cls(spec, policy.tier(spec.draft), policy.tier(spec.verify), policy.tier(spec.fallback_tier))

    def applies(self, tier: TierConfig, request: generator_pb2.GenerateRequest) -> bool:
        """Whether the cascade reaches ``tier`` by speculation for ``request``: it is the verify
        tier and the request generates more than the threshold (choice scoring never does)."""
        return tier.name == self.verify.name and not request.choices and request.max_tokens > self.config.min_max_tokens

    def request(self, verify_request: generator_pb2.GenerateRequest) -> generator_pb2.GenerateRequest:
        """What the draft tier is sent: the verify tier's own request, with speculative options."""
        request = generator_pb2.GenerateRequest()
        request.CopyFrom(verify_request)
        request.speculative.k = self.config.k
        request.speculative.max_k = self.config.max_k
        return request

    def cost(self, prompt_tokens: int, stats: generator_pb2.SpeculativeStats) -> float:
        """What the two tiers' work costs (see the module's docstring); the verify tier is not
        charged when it was never reached."""
        verify = self.verify.cost
        verified = verify.per_call + verify.per_input_token * stats.verifier_tokens + verify.per_output_token * stats.rounds
        return self.draft.cost.cost(prompt_tokens, stats.drafted_tokens) + (verified if stats.verifier_tokens else 0.0)

    def worst_case_cost(self, prompt_tokens: int, max_tokens: int) -> float:
        """The most a speculative generation may cost (``prompt_tokens`` an upper bound): every
        round commits one token after drafting max_k, and the verifier runs the prompt and each
        round's token and drafts."""
        prompt, rounds = prompt_tokens, max(max_tokens, 0)
        drafted = rounds * self.config.max_k
        worst = generator_pb2.SpeculativeStats(rounds=rounds, drafted_tokens=drafted, verifier_tokens=prompt + rounds + drafted)
        return self.cost(prompt, worst)


def failure_stats(failure: TierFailure) -> generator_pb2.SpeculativeStats:
    """The work a failed speculative generation reported having done (none if it said nothing)."""
    stats = generator_pb2.SpeculativeStats()
    for key, value in failure.metadata:
        if key == STATS_KEY and isinstance(value, bytes):
            stats.ParseFromString(value)
    return stats


def check_tokenizers(policy: Policy) -> None:
    """Refuse a speculative pair whose models tokenize differently (a draft token id would mean
    another text to the verifier); ConfigError says which models and what to do."""
    pair = SpeculativePair.from_policy(policy)
    if pair is None:
        return
    try:
        draft, verify = model_fingerprint(pair.draft.model), model_fingerprint(pair.verify.model)
    except (FileNotFoundError, OSError, ValueError) as exc:
        raise ConfigError(f"speculative: cannot compare the draft and verify tiers' tokenizers: {exc}") from None
    if draft != verify:
        raise ConfigError(
            f"speculative: tier {pair.draft.name!r} (model {pair.draft.model}) and tier {pair.verify.name!r} "
            f"(model {pair.verify.model}) tokenize differently (tokenizer fingerprints {draft} and {verify}); "
            "speculative decoding needs the same tokenizer on both sides, e.g. a compressed artifact of the verify model"
        )
