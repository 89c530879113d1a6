"""Answer collection: every tier answers every row of a workload split, once, cached in SQLite.

Each (tier, model, exact request) answer is stored with its log-probs, token counts, latency,
cost and the judge's verdict, keyed by a hash of what was asked; re-running skips what is
stored, so an interrupted collection resumes where it stopped and a changed prompt strategy
recomputes only what changed. The scorer, the optimizer and `tierlm eval cascade` read the store
back as AnswerRecords, the latest answer per tier and query.
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

from tierlm.config import CostModel, Policy
from tierlm.router.encoder_choice import offline_policy_encoder
from tierlm.router.learn.records import AnswerRecord
from tierlm.router.nollm.models import NO_LLM_MODELS, no_llm_tier
from tierlm.router.prompting import PromptBuilder
from tierlm.router.study.tier_setup import model_folder, prompt_builder
from tierlm.router.workload import Workload, WorkloadRow, load_workload
from tierlm.v1 import generator_pb2

Generate = Callable[[generator_pb2.GenerateRequest], Awaitable[generator_pb2.GenerateResponse]]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    tier TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_sha256 TEXT NOT NULL,    -- of the whole request and the row id: what was asked, exactly
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
        """The split's records: per tier and query, only the latest answer stored (another model
        or prompt strategy collected later replaces, never duplicates, what a tier answered)."""
        rows = self._db.execute(
            "SELECT tier, record FROM answers AS a WHERE split = ? AND rowid = ("
            " SELECT MAX(rowid) FROM answers AS b WHERE b.split = a.split AND b.tier = a.tier AND b.query_id = a.query_id"
            ") ORDER BY rowid",
            (split,),
        ).fetchall()
        return [AnswerRecord.from_dict(json.loads(r)) for t, r in rows if tiers is None or t in tiers]

    def token_counts(self, split: str) -> dict[tuple[str, str], tuple[int, int]]:
        """(tier, query id) -> (prompt, completion) tokens of the split's latest answers."""
        rows = self._db.execute(
            "SELECT tier, query_id, prompt_tokens, completion_tokens FROM answers WHERE split = ? ORDER BY rowid", (split,)
        )
        return {(tier, query_id): (prompt, completion) for tier, query_id, prompt, completion in rows}

    def latencies(self, split: str) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for tier, latency in self._db.execute("SELECT tier, latency_ms FROM answers WHERE split = ?", (split,)):
            out.setdefault(tier, []).append(latency)
        return out

    def close(self) -> None:
        self._db.close()


def request_for(builder: PromptBuilder, row: WorkloadRow) -> generator_pb2.GenerateRequest:
    """What a tier is asked about ``row``: its prompt under the tier's strategy, scored by label
    choice when the strategy or the row has labels, else generated (chat rows go as they are)."""
    strategy = builder.strategy
    request = generator_pb2.GenerateRequest(return_logprobs=True)
    if row.messages is not None:
        request.messages.messages.extend(generator_pb2.ChatMessage(role=m.role, content=m.content) for m in row.messages)
    else:
        request.prompt = builder.build_prompt(row.query)
    labels = strategy.labels or row.choices or ()
    if labels:
        request.choices.extend(f" {label}" for label in labels)
        request.max_tokens = 1
    else:
        request.max_tokens = row.max_tokens or strategy.max_tokens
        request.stop.extend(strategy.stop)
    return request


def prompt_key(request: generator_pb2.GenerateRequest, row_id: str) -> str:
    """What identifies a stored answer: the exact request, and the row (two rows may ask the same)."""
    return hashlib.sha256(request.SerializeToString(deterministic=True) + b"\0" + row_id.encode()).hexdigest()


async def collect(
    workload: Workload,
    split: str,
    tiers: Sequence[CollectTier],
    store: AnswerStore,
    concurrency: int = 4,
    limit: int | None = None,
) -> dict[str, int]:
    """Ask every tier about every row of ``split`` not yet stored; returns new answers per tier."""
    rows = workload.split(split)[:limit]
    fresh = {tier.name: 0 for tier in tiers}
    work = []
    # Row by row, every tier: in-process tiers run on their own engines, so asking them side by
    # side keeps every engine busy (tier by tier, one engine works while the others idle).
    for row in rows:
        for tier in tiers:
            request = request_for(tier.prompts, row)
            key = prompt_key(request, row.id)
            if not store.has(tier.name, tier.model, key):
                work.append((tier, row, request, key))
    gate = asyncio.Semaphore(concurrency)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns) as progress:
        task = progress.add_task(f"collect {split} ({len(rows)} rows x {len(tiers)} tiers, {len(work)} to ask)", total=len(work))

        async def ask(tier: CollectTier, row: WorkloadRow, request: generator_pb2.GenerateRequest, key: str) -> None:
            async with gate:
                started = time.perf_counter()
                answer = await tier.generate(request)
                latency_ms = (time.perf_counter() - started) * 1e3
            record = AnswerRecord(
                query=row.query,
                answer=answer.text.strip(),
                tier=tier.name,
                token_logprobs=tuple(t.logprob for t in answer.logprobs),
                label_logprobs={c.choice.strip(): c.logprob for c in answer.choice_logprobs} or None,
                correct=workload.judge_for(row).correct(answer.text, row.reference),
                query_id=row.id,
                cost=tier.cost.cost(answer.usage.prompt_tokens, answer.usage.completion_tokens),
            )
            store.put(tier.name, tier.model, key, split, record, answer.usage.prompt_tokens,
                      answer.usage.completion_tokens, latency_ms)
            fresh[tier.name] += 1
            progress.advance(task)

        await asyncio.gather(*(ask(*item) for item in work))
    return fresh


def collect_policy_tiers(
    policy: Policy,
    workload_path: Path,
    split: str,
    store_path: Path,
    *,
    limit: int | None = None,
    concurrency: int = 4,
    threads: int = 1,
    only: Sequence[str] = (),
) -> dict[str, int]:
    """Run the policy's tiers (all, or ``only``) on one split of a workload and store their answers.

    Tiers whose model is a no-LLM classifier or a language model run in-process (the latter
    through the edge engine); others are called at their address. Prompts draw demonstrations
    from the policy's pool.
    """
    from tierlm.edge.server import load_generator
    from tierlm.router.serve.tiers import TierClient

    workload = load_workload(workload_path)
    if split not in workload.splits:
        raise ValueError(f"{workload_path} has no split {split!r}; it has {workload.splits}")
    pool = list(load_workload(policy.pool)) if policy.pool is not None else []
    chosen = [t for t in policy.tiers if not only or t.name in only]
    needs_encoder = any((t.prompt and t.prompt.selection == "retrieved") or t.model in NO_LLM_MODELS for t in chosen)
    encoder = offline_policy_encoder(policy, threads) if needs_encoder else None
    store = AnswerStore(store_path)

    async def main() -> dict[str, int]:
        runs, engines, clients = [], [], []
        for tier in chosen:
            no_llm = no_llm_tier(tier, encoder, pool) if encoder is not None else None
            if no_llm is not None:
                model_id, generate = no_llm.model_name, no_llm.generate
            elif tier.model is not None:
                generator = load_generator(model_folder(tier), tier.name, threads, max_batch=concurrency, max_queue=4 * concurrency)
                engines.append(generator.engine)
                model_id, generate = tier.model, generator.generate
            else:
                client = TierClient(tier)
                clients.append(client)
                model_id, generate = tier.address, (lambda request, c=client: c.generate(request, None))
            runs.append(CollectTier(tier.name, model_id, prompt_builder(tier, pool, encoder), tier.cost, generate))
        try:
            return await collect(workload, split, runs, store, concurrency, limit)
        finally:
            for engine in engines:
                await engine.aclose(drain=False)
            for client in clients:
                await client.close()

    try:
        return asyncio.run(main())
    finally:
        store.close()
