"""Learning from live traffic against a real router: the Feedback contract, live calibration
metrics and their alarm, and exploration under its cap with concurrent requests."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from prometheus_client import REGISTRY

from tests.router.test_router_service import KEYS, Stack, write_policy
from tests.support.echo_server import ScriptedGenerator, start_generator
from tierlm.client import AsyncClient, NotFound, PermissionDenied
from tierlm.router.serve.learning import EXPLORE_TENANT
from tierlm.router.serve.server import start_router, stop_router
from tierlm.router.store import open_store
from tierlm.serving import ServerConfig
from tierlm.v1 import router_pb2, router_pb2_grpc

RECORD = {"learning": {"record": True}}


def feedback_rows(stack: Stack) -> list[tuple]:
    with sqlite3.connect(stack.ledger_path) as db:
        return db.execute("SELECT request_id, tenant, correct, score, reference FROM feedback ORDER BY ts").fetchall()


def metric(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_feedback_is_owned_idempotent_and_validated(loop, tiers, tmp_path):
    stack = Stack(loop, tmp_path, tiers["edge"][0].port, tiers["cloud"][0].port, **RECORD)
    try:
        with stack.client("acme") as acme, stack.client("globex") as globex:
            answer = acme.complete("an easy one", max_tokens=4)
            with pytest.raises(PermissionDenied, match="not tenant 'globex'"):
                globex.feedback(answer.request_id, correct=False)
            with pytest.raises(NotFound, match="no request 'no-such-id'"):
                acme.feedback("no-such-id", correct=True)
            with pytest.raises(ValueError, match="exactly one of correct, score or reference"):
                acme.feedback(answer.request_id, correct=True, score=0.5)
            assert acme.feedback(answer.request_id, correct=True) is True
            assert acme.feedback(answer.request_id, score=0.1) is False  # the first verdict stands
        assert feedback_rows(stack) == [(answer.request_id, "acme", 1, None, None)]

        # Malformed feedback, sent past the SDK's own checks: refused, nothing written.
        with stack.client("acme") as acme:
            other = acme.complete("another easy one", max_tokens=4).request_id
        malformed = [
            router_pb2.FeedbackRequest(request_id=other),  # no verdict
            router_pb2.FeedbackRequest(request_id=other, score=1.5),
            router_pb2.FeedbackRequest(request_id=other, score=float("nan")),
            router_pb2.FeedbackRequest(request_id=other, reference="   "),
            router_pb2.FeedbackRequest(request_id="", correct=True),
            router_pb2.FeedbackRequest(request_id="x" * 300, correct=True),
        ]
        with grpc.insecure_channel(stack.address) as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            for request in malformed:
                with pytest.raises(grpc.RpcError) as refused:
                    stub.Feedback(request, metadata=(("x-api-key", KEYS["acme"]),), timeout=5)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        assert len(feedback_rows(stack)) == 1
        # What the router recorded for learning is on the request's ledger row.
        details = json.loads(next(r.details for r in stack.rows() if r.request_id == answer.request_id))
        assert details["query"] == "an easy one" and details["accepted_tier"] == "edge"
        assert [a["tier"] for a in details["answers"]] == ["edge"] and details["answers"][0]["score"] > 0.9
    finally:
        stack.stop()


def test_live_calibration_metrics_and_the_alarm(loop, tiers, tmp_path):
    """The edge is confident (score 0.99) on easy prompts; callers say it is wrong every time:
    calibration error near 1 fires the alarm once ten labels are in, and it is logged."""
    alarm = {"metric": "ece", "above": 0.3, "window": 10, "min_labels": 10}
    stack = Stack(loop, tmp_path, tiers["edge"][0].port, tiers["cloud"][0].port,
                  learning={"record": True, "alarm": alarm})
    try:
        with stack.client("acme") as client:
            for i in range(9):
                client.feedback(client.complete(f"easy question {i}", max_tokens=4).request_id, correct=False)
            assert metric("tierlm_router_calibration_alarm", tier="edge") == 0  # 9 labels: too few to judge
            assert metric("tierlm_router_live_labels", tier="edge") == 9
            client.feedback(client.complete("easy question 9", max_tokens=4).request_id, reference="wrong text")
        assert metric("tierlm_router_calibration_alarm", tier="edge") == 1
        assert metric("tierlm_router_live_ece", tier="edge") > 0.9
        assert metric("tierlm_router_live_accuracy", tier="edge") == 0
        assert metric("tierlm_router_live_accept_rate", tier="edge") == 1
        assert metric("tierlm_router_live_escalation_rate", tier="edge") == 0
        assert metric("tierlm_router_live_served_accuracy") == 0
        with sqlite3.connect(stack.ledger_path) as db:
            decisions = db.execute("SELECT action, numbers FROM policy_decisions").fetchall()
        assert [action for action, _ in decisions] == ["alarm"]
        assert json.loads(decisions[0][1])["tier"] == "edge"
    finally:
        stack.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def store_location(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "ledger.sqlite")
    return request.getfixturevalue("postgres_dsn")


def test_exploration_never_spends_more_than_its_cap(loop, tmp_path, store_location):
    """30 concurrent requests, all answered by the edge, all drawn for exploration: the cloud
    call each exploration makes may cost up to 0.014 (it costs 0.012), and the day's cap is 0.05,
    so only the first few explorations may happen, whatever their overlap."""
    edge = ScriptedGenerator(name="edge")
    cloud = ScriptedGenerator(name="cloud", delay_s=0.3)  # explorations overlap while they run
    servers = [loop.run(start_generator(ServerConfig(), g)) for g in (edge, cloud)]
    cap = 0.05
    policy = tmp_path / "policy.yaml"
    write_policy(policy, servers[0].port, servers[1].port,
                 learning={"record": True, "explore": {"share": 1.0, "budget_per_day": cap}})
    server, service = loop.run(start_router(policy, ServerConfig(), store_location))
    try:
        async def burst() -> list[str]:
            async with AsyncClient(f"127.0.0.1:{server.port}", api_key=KEYS["acme"]) as client:
                answers = await asyncio.gather(*(client.complete(f"easy {i}", max_tokens=4) for i in range(30)))
            await service.drain_background()
            return [a.request_id for a in answers]

        request_ids = loop.run(burst())
        rows = loop.run(service.store.rows())
    finally:
        loop.run(stop_router(server, service))
        for s in servers:
            loop.run(s.stop(grace_s=0))
    explored = [r for r in rows if r.tenant == EXPLORE_TENANT]
    assert 1 <= len(explored) < 30
    assert sum(r.cost for r in explored) <= cap + 1e-12
    assert all(r.request_id.removesuffix(":explore") in request_ids and r.tiers == ["cloud"] for r in explored)
    assert cloud.calls == len(explored)  # every capped exploration was refused before calling


def test_explored_answers_join_the_request_record(loop, tiers, tmp_path):
    stack = Stack(loop, tmp_path, tiers["edge"][0].port, tiers["cloud"][0].port,
                  learning={"record": True, "explore": {"share": 1.0, "budget_per_day": 1.0}})
    try:
        with stack.client("acme") as client:
            answer = client.complete("an easy one", max_tokens=4)
            stack.loop.run(stack.service.drain_background())
            client.feedback(answer.request_id, reference="cloud: an easy one")

        async def labelled():
            store = await open_store(stack.ledger_path)
            try:
                return await store.labelled(request_id=answer.request_id)
            finally:
                await store.close()

        (found,) = stack.loop.run(labelled())
    finally:
        stack.stop()
    assert json.loads(found.details)["explore"] is True
    (explored,) = [json.loads(a) for a in found.explored]
    assert (explored["tier"], explored["text"], explored["explored"]) == ("cloud", "cloud: an easy one", True)
    assert 0 <= explored["score"] <= 1


def test_exploration_must_be_recorded_and_capped(tmp_path):
    from tierlm.config import load_policy

    policy = tmp_path / "policy.yaml"
    write_policy(policy, 1, 2, learning={"record": True, "explore": {"share": 0.1}})
    with pytest.raises(ValueError, match="explore.budget_per_day > 0"):
        load_policy(policy)
    write_policy(policy, 1, 2, learning={"explore": {"share": 0.1, "budget_per_day": 1.0}})
    with pytest.raises(ValueError, match="needs record: true"):
        load_policy(policy)


def test_many_tenants_giving_feedback_at_once(loop, tiers, tmp_path):
    stack = Stack(loop, tmp_path, tiers["edge"][0].port, tiers["cloud"][0].port, **RECORD)
    try:
        with stack.client("acme") as acme:
            ids = [acme.complete(f"easy {i}", max_tokens=4).request_id for i in range(8)]
            with ThreadPoolExecutor(8) as pool:  # each id judged twice, concurrently
                stored = list(pool.map(lambda rid: acme.feedback(rid, correct=True), ids + ids))
        assert sorted(stored) == [False] * 8 + [True] * 8
        assert len(feedback_rows(stack)) == 8
    finally:
        stack.stop()
