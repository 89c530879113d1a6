"""Answer collection: every tier answers every labelled query, once, cached in SQLite.

Each (tier, model, exact prompt) answer is stored with its log-probs, token counts, latency,
cost and correctness, keyed by a hash of what was asked; re-running skips what is stored,
so an interrupted collection resumes where it stopped and a changed prompt strategy
recomputes only what changed. The scorer, the optimizer and `tierlm eval cascade` read the
store back as AnswerRecords.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tierlm.config import CostModel
from tierlm.router.datasets import Example, is_correct
from tierlm.router.prompting import PromptBuilder
from tierlm.router.records import AnswerRecord
from tierlm.v1 import generator_pb2

Generate = Callable[[generator_pb2.GenerateRequest], Awaitable[generator_pb2.GenerateResponse]]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    tier TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_sha256 TEXT NOT NULL,    -- of the prompt and the choices: what was asked, exactly
    query_id TEXT NOT NULL,
    split TEXT NOT NULL,
    record TEXT NOT NULL,           -- AnswerRecord as JSON
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    latency_ms REAL NOT NULL,
    PRIMARY KEY (tier, model, prompt_sha256)
);
CREATE INDEX IF NOT EXISTS answers_split ON answers (split, tier);
"""


@dataclass(frozen=True)
class CollectTier:
    """A tier as collection sees it: a model behind `generate`, its prompts and its prices."""

    name: str
    model: str
    prompts: PromptBuilder
    cost: CostModel
    generate: Generate


class AnswerStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Several collectors (one per tier, each its own process) may write one store: wait
        # for a writer's lock instead of failing after sqlite's default 5 s.
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=120.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def has(self, tier: str, model: str, prompt_sha256: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM answers WHERE tier = ? AND model = ? AND prompt_sha256 = ?", (tier, model, prompt_sha256)
        ).fetchone()
        return row is not None

    def put(self, tier: str, model: str, prompt_sha256: str, split: str, record: AnswerRecord,
            prompt_tokens: int, completion_tokens: int, latency_ms: float) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (tier, model, prompt_sha256, record.query_id, split, json.dumps(record.to_dict()),
             prompt_tokens, completion_tokens, latency_ms),
        )

    def records(self, split: str, tiers: Sequence[str] | None = None) -> list[AnswerRecord]:
        """The split's records (latest model per tier wins if several were collected)."""
        rows = self._db.execute("SELECT tier, record FROM answers WHERE split = ? ORDER BY rowid", (split,)).fetchall()
        return [AnswerRecord.from_dict(json.loads(r)) for t, r in rows if tiers is None or t in tiers]

    def latencies(self, split: str) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for tier, latency in self._db.execute("SELECT tier, latency_ms FROM answers WHERE split = ?", (split,)):
            out.setdefault(tier, []).append(latency)
        return out

    def close(self) -> None:
        self._db.close()


def request_for(prompt: str, choices: Sequence[str]) -> generator_pb2.GenerateRequest:
    """Label-choice scoring: the model scores each label continuation of the prompt."""
    return generator_pb2.GenerateRequest(prompt=prompt, max_tokens=1, choices=list(choices), return_logprobs=True)


def prompt_key(request: generator_pb2.GenerateRequest) -> str:
    return hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()


async def collect(
    rows: Sequence[Example],
    split: str,
    tiers: Sequence[CollectTier],
    store: AnswerStore,
    concurrency: int = 4,
) -> dict[str, int]:
    """Ask every tier about every row not yet stored; returns new answers per tier."""
    fresh = {tier.name: 0 for tier in tiers}
    work = []
    for tier in tiers:
        labels = tier.prompts.strategy.label_continuations
        for row in rows:
            request = request_for(tier.prompts.build_prompt(row.headline), labels)
            key = prompt_key(request)
            if not store.has(tier.name, tier.model, key):
                work.append((tier, row, request, key))
    gate = asyncio.Semaphore(concurrency)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns) as progress:
        task = progress.add_task(f"collect {split} ({len(rows)} rows x {len(tiers)} tiers, {len(work)} to ask)", total=len(work))

        async def ask(tier: CollectTier, row: Example, request: generator_pb2.GenerateRequest, key: str) -> None:
            async with gate:
                started = time.perf_counter()
                answer = await tier.generate(request)
                latency_ms = (time.perf_counter() - started) * 1e3
            record = AnswerRecord(
                query=row.headline,
                answer=answer.text.strip(),
                tier=tier.name,
                token_logprobs=tuple(t.logprob for t in answer.logprobs),
                label_logprobs={c.choice.strip(): c.logprob for c in answer.choice_logprobs} or None,
                correct=is_correct(answer.text, row.label),
                query_id=row.id,
                cost=tier.cost.cost(answer.usage.prompt_tokens, answer.usage.completion_tokens),
            )
            store.put(tier.name, tier.model, key, split, record, answer.usage.prompt_tokens,
                      answer.usage.completion_tokens, latency_ms)
            fresh[tier.name] += 1
            progress.advance(task)

        await asyncio.gather(*(ask(*item) for item in work))
    return fresh
