"""The Generator contract's speculative side, over any text engine.

:class:`SpeculativeGenerator` is the :class:`~tierlm.edge.generator.ProtoGenerator` of a node
that may also draft (a GenerateRequest with `speculative` options goes to its drafter, which
has its verifier check every round) and verify (the Verify rpc, for other nodes' drafters).
A node without a drafter or a verifier says so with FAILED_PRECONDITION or UNIMPLEMENTED.
"""

from __future__ import annotations

import grpc

from tierlm.edge.errors import EngineError, InvalidRequest
from tierlm.edge.generator import ProtoGenerator, to_generation_request
from tierlm.edge.protocol import EventStream, TextEngine
from tierlm.edge.requests import Completion
from tierlm.edge.speculative.drafter import Drafter, SpeculativeCompletion, VerifierFailed
from tierlm.edge.speculative.sessions import SessionLost
from tierlm.edge.speculative.verifier import Verifier, VerifyUnsupported
from tierlm.edge.speculative.wire import SESSION_LENGTH_KEY, STATS_KEY, outcome_to_proto, round_from_proto, stats_to_proto
from tierlm.errors import GenerationError
from tierlm.v1 import generator_pb2


class SpeculativeGenerator(ProtoGenerator):
    """A text engine behind tierlm.v1 messages, plus an optional drafter and verifier."""

    def __init__(
        self, engine: TextEngine, model_name: str, tier_name: str, *, drafter: Drafter | None = None,
        verifier: Verifier | None = None,
    ):
        super().__init__(engine, model_name, tier_name)
        self.drafter = drafter
        self.verifier = verifier

    def open(self, request: generator_pb2.GenerateRequest) -> EventStream:
        if not request.HasField("speculative"):
            return super().open(request)
        if self.drafter is None:
            raise _NoDrafter(f"tier {self.tier_name!r} drafts only when started with a verifier (tierlm edge serve --verifier ADDRESS)")
        options = request.speculative
        return self.drafter.stream(to_generation_request(request), options.k, options.max_k)

    def error(self, exc: EngineError) -> GenerationError:
        if isinstance(exc, _NoDrafter):
            return GenerationError(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        if isinstance(exc, VerifyUnsupported):
            return GenerationError(grpc.StatusCode.UNIMPLEMENTED, str(exc))
        if isinstance(exc, VerifierFailed):
            # What the rounds so far cost travels with the failure, so the caller can bill it.
            stats = stats_to_proto(exc.stats).SerializeToString()
            return GenerationError(grpc.StatusCode.UNAVAILABLE, f"speculative generation stopped: {exc}", metadata=((STATS_KEY, stats),))
        return super().error(exc)

    def _final(self, done: Completion, request_id: str, with_text: bool) -> generator_pb2.GenerateResponse:
        message = super()._final(done, request_id, with_text)
        if isinstance(done, SpeculativeCompletion):
            message.speculative.CopyFrom(stats_to_proto(done.speculative))
            # The text is the verifier model's, token for token (or in distribution).
            message.model = done.speculative.verifier_model or message.model
        return message

    async def verify(self, request: generator_pb2.VerifyRequest, tenant: str = "") -> generator_pb2.VerifyResponse:
        """One verify round; GenerationError carries the status (and, for a lost session, the
        `tierlm-session-length` metadata)."""
        if self.verifier is None:
            raise GenerationError(
                grpc.StatusCode.UNIMPLEMENTED,
                f"tier {self.tier_name!r} does not verify: start it with verify sessions (edge: --verify-sessions N; cloud: `verify` in the model's config)",
            )
        try:
            outcome = await self.verifier.verify(round_from_proto(request, tenant))
        except SessionLost as lost:
            raise GenerationError(grpc.StatusCode.INVALID_ARGUMENT, str(lost), metadata=((SESSION_LENGTH_KEY, str(lost.held)),)) from None
        except EngineError as exc:
            raise self.error(exc) from None
        return outcome_to_proto(outcome, request.session_id, self.model_name)

    async def aclose_speculation(self) -> None:
        """Stop the drafter's and the verifier's engines (the text engine is closed apart)."""
        if self.drafter is not None:
            await self.drafter.aclose()
        if self.verifier is not None:
            await self.verifier.aclose()


class _NoDrafter(InvalidRequest):
    """A speculative request to a node that has no verifier to draft for."""
