"""The router's per-process state, without a server: circuit breaker and response cache."""

from __future__ import annotations

from tierlm.router.serve.breaker import BreakerState, CircuitBreaker
from tierlm.router.serve.response_cache import ResponseCache, cache_key
from tierlm.v1 import generator_pb2, router_pb2

class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_and_a_success_resets_the_count() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures_to_open=2, cooldown_s=5.0, clock=clock)
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and not breaker.allow()


def test_breaker_lets_one_probe_through_after_the_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures_to_open=1, cooldown_s=5.0, clock=clock)
    breaker.record_failure()
    clock.now += 5.0
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow() and not breaker.allow()  # one probe only
    breaker.record_failure()  # the probe failed: open for another cool-down
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    clock.now += 5.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.allow() and breaker.allow()


def request(prompt: str, temperature: float = 0.0, seed: int | None = None) -> router_pb2.CompleteRequest:
    inner = generator_pb2.GenerateRequest(prompt=prompt, temperature=temperature, request_id="x")
    if seed is not None:
        inner.seed = seed
    return router_pb2.CompleteRequest(request=inner)


def test_cache_keys_ignore_request_ids_and_separate_tenants() -> None:
    a, b = request("gold"), request("gold")
    b.request.request_id = "another"
    assert cache_key("acme", a) == cache_key("acme", b) != cache_key("other", a)
    assert cache_key("acme", request("gold", temperature=0.7)) is None  # sampled: not reproducible
    assert cache_key("acme", request("gold", temperature=0.7, seed=3)) is not None


def test_cache_expires_entries_and_evicts_the_least_recently_used() -> None:
    clock = Clock()
    cache = ResponseCache(max_entries=2, ttl_s=10.0, clock=clock)
    cache.put("a", generator_pb2.GenerateResponse(text="A"))
    cache.put("b", generator_pb2.GenerateResponse(text="B"))
    assert cache.get("a").text == "A"  # a is now the most recently used
    cache.put("c", generator_pb2.GenerateResponse(text="C"))
    assert cache.get("b") is None and len(cache) == 2
    clock.now += 10.5
    assert cache.get("a") is None and cache.get("c") is None
