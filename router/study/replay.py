"""Replay tiers: Generator servers that answer from collected answers instead of a model.

A replay tier answers a request whose prompt is a workload query with what its tier answered
to that query when the answers were collected (`tierlm router collect`): the same text,
log-probs, label log-probs and token counts, so a router in front of it scores, accepts,
escalates and bills exactly as it would with the model, at no model cost. That makes it
possible to run a real router, policy reloads and feedback included, over thousands of
requests of a recorded workload (bench/drift.py does).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import grpc

from tierlm.router.learn.records import AnswerRecord
from tierlm.router.prompting import request_query
from tierlm.router.study.collect import AnswerStore
from tierlm.serving import GrpcServer, ServerConfig
from tierlm.v1 import generator_pb2, generator_pb2_grpc


@dataclass(frozen=True)
class RecordedAnswer:
    record: AnswerRecord
    prompt_tokens: int
    completion_tokens: int


def recorded_answers(store: AnswerStore, split: str, tier: str) -> dict[str, RecordedAnswer]:
    """A tier's answers on a split by query text (the first answer where a query repeats)."""
    tokens = store.token_counts(split)
    answers: dict[str, RecordedAnswer] = {}
    for record in store.records(split, [tier]):
        answers.setdefault(record.query, RecordedAnswer(record, *tokens[(tier, record.query_id)]))
    return answers


class ReplayGenerator(generator_pb2_grpc.GeneratorServicer):
    """One tier's recorded answers, served by query text; an unknown query is NOT_FOUND."""

    def __init__(self, name: str, answers: Mapping[str, RecordedAnswer]):
        self.name = name
        self.answers = dict(answers)
        self.calls = 0

    def add(self, answers: Mapping[str, RecordedAnswer]) -> None:
        self.answers.update(answers)

    async def Generate(self, request: generator_pb2.GenerateRequest, context: grpc.aio.ServicerContext):
        self.calls += 1
        query = request_query(request)
        recorded = self.answers.get(query)
        if recorded is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"tier {self.name} has no recorded answer to {query[:80]!r}")
        record = recorded.record
        return generator_pb2.GenerateResponse(
            request_id=request.request_id, text=record.answer, is_final=True, tier=self.name, model=f"replay-{self.name}",
            logprobs=[generator_pb2.TokenLogprob(logprob=lp) for lp in record.token_logprobs],
            choice_logprobs=[generator_pb2.ChoiceLogprob(choice=label, logprob=lp)
                             for label, lp in (record.label_logprobs or {}).items()],
            usage=generator_pb2.Usage(prompt_tokens=recorded.prompt_tokens, completion_tokens=recorded.completion_tokens),
            finish_reason=generator_pb2.FINISH_REASON_STOP,
        )

    async def GenerateStream(self, request: generator_pb2.GenerateRequest, context: grpc.aio.ServicerContext):
        yield await self.Generate(request, context)


async def start_replay(tiers: Iterable[ReplayGenerator]) -> dict[str, GrpcServer]:
    """Each replay tier on its own free port of 127.0.0.1; the caller stops them."""
    servers = {}
    for tier in tiers:
        server = GrpcServer(ServerConfig())
        await server.start(
            [lambda s, tier=tier: generator_pb2_grpc.add_GeneratorServicer_to_server(tier, s)],
            service_names=[generator_pb2.DESCRIPTOR.services_by_name["Generator"].full_name],
        )
        servers[tier.name] = server
    return servers
