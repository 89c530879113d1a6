"""`send_all`'s bookkeeping, against a stand-in client (the real SDK path runs in tests/stack)."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from tierlm.client import Unavailable
from tierlm.app.loadgen import send_all


class FakeClient:
    """Answers `prompt` upper-cased after a short wait; "down" fails UNAVAILABLE, "bug" raises a bug."""

    def __init__(self) -> None:
        self.in_flight = self.most_in_flight = 0
        self.calls: list[dict] = []

    async def complete(self, prompt: str, **params):
        self.calls.append({"prompt": prompt, **params})
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.01)
            if prompt == "down":
                raise Unavailable("tier down", grpc.StatusCode.UNAVAILABLE)
            if prompt == "bug":
                raise KeyError("bug")
            return prompt.upper()
        finally:
            self.in_flight -= 1


def test_outcomes_keep_prompt_order_and_concurrency_stays_bounded():
    client, done = FakeClient(), []
    prompts = [f"q{i}" for i in range(20)] + ["down", "bug"]
    outcomes = asyncio.run(send_all(client, prompts, concurrency=3, on_done=lambda: done.append(1), max_tokens=1))
    assert [o.completion for o in outcomes[:20]] == [p.upper() for p in prompts[:20]]
    assert all(o.error is None and o.status is None and o.latency_ms >= 10 for o in outcomes[:20])
    assert outcomes[20].completion is None and outcomes[20].status == "UNAVAILABLE"
    assert outcomes[21].status == "KeyError"
    assert client.most_in_flight == 3 and len(done) == len(prompts)
    assert all(call["max_tokens"] == 1 and "request_id" not in call for call in client.calls)


def test_request_ids_reach_the_client_and_must_match_the_prompts():
    client = FakeClient()
    asyncio.run(send_all(client, ["a", "b"], concurrency=2, request_ids=["id-a", "id-b"]))
    assert {c["prompt"]: c["request_id"] for c in client.calls} == {"a": "id-a", "b": "id-b"}
    with pytest.raises(ValueError, match="2 request ids for 3 prompts"):
        asyncio.run(send_all(client, ["a", "b", "c"], concurrency=1, request_ids=["x", "y"]))


def test_calls_not_started_by_stop_at_are_not_sent():
    client = FakeClient()
    outcomes = asyncio.run(send_all(client, [f"q{i}" for i in range(10)], concurrency=2, stop_at=time.perf_counter() + 0.015))
    sent = [o for o in outcomes if o is not None]
    assert 2 <= len(sent) < 10 and outcomes[: len(sent)] == sent  # the first ones go, the rest never do
    assert len(client.calls) == len(sent)
