"""What answer collection produces and the scorer learns from: one tier's answer to one query.

Records are plain frozen dataclasses with a JSON-lines round trip, so the collection step can
write them from any process and the scorer, the optimizer and the evaluation read them back.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class AnswerRecord:
    """A tier's answer to a query, with the confidence signals the tier reported.

    Attributes:
        query: the user's query as the scorer should read it (for HEADLINES, the headline text,
            not the prompt with demonstrations the tier was given).
        answer: the answer text the tier returned.
        tier: the tier's name in the policy.
        token_logprobs: natural-log probability of each generated token, in order; empty when
            the tier reports none.
        label_logprobs: for label-choice scoring, the log-probability the tier gave each label's
            continuation (calibrated or not, as the tier answered); ``None`` when not scored that way.
        correct: whether the answer matched the label; ``None`` where unknown (serving time).
        query_id: the dataset row id, to join records of several tiers on the same query.
        cost: the tier's cost for this answer, in the policy's currency units.
    """

    query: str
    answer: str
    tier: str
    token_logprobs: tuple[float, ...] = ()
    label_logprobs: Mapping[str, float] | None = None
    correct: bool | None = None
    query_id: str = ""
    cost: float = 0.0

    def __post_init__(self) -> None:
        # JSON gives lists and ints; normalise so a record read back equals the one written.
        object.__setattr__(self, "token_logprobs", tuple(float(x) for x in self.token_logprobs))
        if self.label_logprobs is not None:
            object.__setattr__(self, "label_logprobs", {str(k): float(v) for k, v in self.label_logprobs.items()})
        bad = [x for x in self.token_logprobs if math.isnan(x) or x > 0.0]
        if bad:
            raise ValueError(f"token log-probs must be <= 0 and not NaN, got {bad[:3]}")

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        out = asdict(self)
        out["token_logprobs"] = list(self.token_logprobs)
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> AnswerRecord:
        """Inverse of :meth:`to_dict`; unknown keys are an error, so schema drift is caught early."""
        return cls(**data)


def write_records(path: Path, records: Iterable[AnswerRecord]) -> int:
    """Write records as JSON lines; returns how many were written."""
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
            count += 1
    return count


def read_records(path: Path) -> Iterator[AnswerRecord]:
    """Read records written by :func:`write_records`."""
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield AnswerRecord.from_dict(json.loads(line))
