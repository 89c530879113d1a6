"""Live traffic as training data: what the router records of a request, and how feedback on it
becomes labelled answers (:class:`~tierlm.router.learn.records.AnswerRecord`).

When a policy records for learning, each request's ledger row carries ``details``: the query
and every answer a tier gave it (its text, confidence signals, cost and, where it was scored, the
scorer's P(correct)); exploration later adds the answers of the tiers the cascade skipped. A
caller's verdict then labels them:

- a **reference** answer labels every answer, through the policy's feedback judge;
- **correct / wrong** labels the answer the caller got, and every other answer with the same
  text (the same answer is right or wrong alike); the rest stay unlabelled;
- a **score** in [0, 1] is correct at 0.5 or more, like correct / wrong.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tierlm.router.judges import Judge
from tierlm.router.learn.records import AnswerRecord
from tierlm.router.store.base import Labelled, Verdict


def policy_version(path: Path) -> str:
    """A short hash of a policy file's bytes: how recorded requests, decisions and the live
    calibration metrics name the policy that routed them."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


@dataclass(frozen=True)
class SeenAnswer:
    """One tier's answer to a recorded request."""

    tier: str
    text: str
    cost: float
    token_logprobs: tuple[float, ...] = ()
    label_logprobs: Mapping[str, float] | None = None
    score: float | None = None  # the scorer's P(correct), when the cascade scored it
    explored: bool = False  # got by exploration, after the request was answered

    def to_json(self) -> str:
        return json.dumps({
            "tier": self.tier, "text": self.text, "cost": self.cost, "token_logprobs": list(self.token_logprobs),
            "label_logprobs": dict(self.label_logprobs) if self.label_logprobs else None, "score": self.score,
            "explored": self.explored,
        })

    @classmethod
    def from_dict(cls, data: Mapping) -> SeenAnswer:
        return cls(data["tier"], data["text"], float(data["cost"]), tuple(data.get("token_logprobs") or ()),
                   data.get("label_logprobs"), data.get("score"), bool(data.get("explored", False)))


def details_json(query: str, accepted_tier: str, answers: Sequence[SeenAnswer], policy_version: str, explore: bool) -> str:
    """The ``details`` a ledger row carries for learning."""
    return json.dumps({
        "query": query, "accepted_tier": accepted_tier, "policy": policy_version, "explore": explore,
        "answers": [json.loads(answer.to_json()) for answer in answers],
    })


@dataclass(frozen=True)
class LabelledRequest:
    """A recorded request with every answer the router saw and their labels (None: unknown)."""

    request_id: str
    ts: float
    query: str
    accepted_tier: str
    explored: bool
    answers: dict[str, SeenAnswer]
    correct: dict[str, bool | None]


def label(labelled: Labelled, judge: Judge) -> LabelledRequest:
    details = json.loads(labelled.details)
    answers = {a["tier"]: SeenAnswer.from_dict(a) for a in details["answers"]}
    for raw in labelled.explored:
        extra = SeenAnswer.from_dict(json.loads(raw))
        answers.setdefault(extra.tier, extra)
    accepted = details["accepted_tier"]
    return LabelledRequest(
        labelled.request_id, labelled.ts, details["query"], accepted, bool(details.get("explore")), answers,
        {tier: _verdict_on(answer, answers.get(accepted), labelled.verdict, judge) for tier, answer in answers.items()},
    )


def _verdict_on(answer: SeenAnswer, given: SeenAnswer | None, verdict: Verdict, judge: Judge) -> bool | None:
    if verdict.reference is not None:
        return judge.correct(answer.text, [verdict.reference])
    right = verdict.correct if verdict.correct is not None else (verdict.score is not None and verdict.score >= 0.5)
    if given is None or _same(answer.text, given.text):
        return right if given is not None else None
    return None


def _same(a: str, b: str) -> bool:
    return " ".join(a.casefold().split()) == " ".join(b.casefold().split())


def answer_records(requests: Iterable[LabelledRequest]) -> list[AnswerRecord]:
    """Every labelled answer as a training record (the request id is the query id)."""
    return [
        AnswerRecord(
            query=request.query, answer=answer.text.strip(), tier=tier, token_logprobs=answer.token_logprobs,
            label_logprobs=dict(answer.label_logprobs) if answer.label_logprobs else None,
            correct=request.correct[tier], query_id=request.request_id, cost=answer.cost,
        )
        for request in requests
        for tier, answer in request.answers.items()
        if request.correct[tier] is not None
    ]
