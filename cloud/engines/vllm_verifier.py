"""Greedy verify rounds on vLLM: one request per round, the context read from its prefix cache.

A round asks vLLM to score the session's context plus the drafts as a prompt (`prompt_logprobs`
= 1: at every position the prompt token's log-probability and the model's top-1 token) and to
generate one token after them. The drafts are accepted while each is the top-1 token at its
position; the next token is the top-1 at the first rejected position, or the generated token
when all were accepted. The context's keys and values come from vLLM's automatic prefix caching
(`skip_reading_prefix_cache=False`): vLLM computes the prompt from the last cached block on, so
the positions this needs (the last context token's and the drafts') are always computed, never
read from the cache. A session is only its token list here; vLLM's cache evicts blocks under its
own policy, which costs recomputation, never a wrong answer.

What this engine cannot do: rejection sampling for temperature > 0 needs the verifier's whole
distribution at each draft position, and vLLM returns prompt log-probs as Python objects per
token (262k per position for Gemma 3): those rounds are refused (UNIMPLEMENTED), and a sampled
speculative request falls back as the router's policy says.

Per round vLLM recomputes up to a block (128 positions on CPU) of context before the drafts, so
it does more verifier work per token than the torch verifier's cached sessions.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

from tierlm.cloud.engines.vllm_engine import VLLMTextEngine
from tierlm.edge.errors import EngineError, InvalidRequest
from tierlm.edge.speculative.sessions import SessionLost
from tierlm.edge.speculative.verifier import MAX_DRAFT_TOKENS, VerifyOutcome, VerifyRound, VerifyUnsupported, check_round


@dataclass
class _Context:
    tokens: list[int]
    last_used: float


class VLLMVerifier:
    """Verifies greedy rounds on a running :class:`VLLMTextEngine` (its model, its batching).

    Sessions (token lists) are bounded by ``max_sessions`` (least recently used dropped first)
    and dropped after ``ttl_s`` idle.
    """

    def __init__(self, engine: VLLMTextEngine, max_sessions: int = 16, ttl_s: float = 300.0, max_draft: int = MAX_DRAFT_TOKENS) -> None:
        self.engine = engine
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        self.max_draft = max_draft
        self._sessions: OrderedDict[Hashable, _Context] = OrderedDict()

    async def verify(self, round_: VerifyRound) -> VerifyOutcome:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        check_round(round_, self.engine.vocab_size, self.max_draft)
        if round_.temperature > 0:
            raise VerifyUnsupported(
                "vLLM verifies greedy rounds only: speculative sampling needs the verifier's whole distribution at "
                "each draft position, which vLLM returns only as per-token Python objects; use the torch engine "
                "(engine: torch) to verify sampled rounds"
            )
        key = (round_.tenant, round_.session_id)
        context = self._context(key, round_.start) + list(round_.tokens)
        prompt = context + list(round_.drafts)
        if len(prompt) >= self.engine.max_model_len:
            raise InvalidRequest(f"the session would hold {len(prompt)} tokens; the verifier's context holds {self.engine.max_model_len - 1}")
        params = SamplingParams(
            max_tokens=1, temperature=0.0, prompt_logprobs=1, logprobs=0 if round_.logprobs else None,
            # Read the context from the prefix cache: prompt log-probs then cover the computed
            # positions only, which include every position a draft is checked at (see above).
            skip_reading_prefix_cache=False, detokenize=False, output_kind=RequestOutputKind.FINAL_ONLY,
        )
        output = await self.engine.final_output(prompt, params, f"verify-{uuid.uuid4().hex}")
        first = len(context)  # prompt index of the first draft
        if output.num_cached_tokens > first - 1:
            raise EngineError(f"vLLM read position {first - 1} from its cache; its prompt log-prob is not computed")
        entries = output.prompt_logprobs
        accepted = 0
        while accepted < len(round_.drafts) and round_.drafts[accepted] == _top(entries[first + accepted]):
            accepted += 1
        generated = output.outputs[0]
        if accepted < len(round_.drafts):
            token = _top(entries[first + accepted])
            token_logprob = entries[first + accepted][token].logprob
        else:
            token = generated.token_ids[0]
            token_logprob = generated.logprobs[0][token].logprob if round_.logprobs else 0.0
        logprobs = None
        if round_.logprobs:
            logprobs = tuple(entries[first + i][d].logprob for i, d in enumerate(round_.drafts[:accepted])) + (token_logprob,)
        self._keep(key, context + list(round_.drafts[:accepted]))
        processed = len(prompt) - output.num_cached_tokens
        return VerifyOutcome(accepted, token, first + accepted, processed, 1, logprobs, "")

    def _context(self, key: Hashable, start: int) -> list[int]:
        """The session's first ``start`` tokens; SessionLost when fewer are held."""
        self._expire()
        held = self._sessions.get(key)
        have = len(held.tokens) if held is not None else 0
        if start > have:
            state = "no tokens of the session" if held is None else f"only {have} tokens of the session"
            raise SessionLost(f"this verifier holds {state} (expired, evicted or restarted); resend the context from position {have}", have)
        return held.tokens[:start] if held is not None else []

    def _keep(self, key: Hashable, tokens: list[int]) -> None:
        self._sessions[key] = _Context(tokens, time.monotonic())
        self._sessions.move_to_end(key)
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, c in self._sessions.items() if now - c.last_used > self.ttl_s]:
            del self._sessions[key]

    async def aclose(self) -> None:
        """The engine is the replica's: it is closed with the replica, not here."""
        self._sessions.clear()


def _top(entry: dict) -> int:
    """The rank-1 token of a prompt log-prob entry (the prompt token is in it too, ranked)."""
    return next(token for token, logprob in entry.items() if logprob.rank == 1)
