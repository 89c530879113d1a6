"""#19.9: the HTTP endpoint checks the key before reading a body, caps bodies (413), validates
ranges up front (400, OpenAI's error object) and accepts the header its own messages name."""

from __future__ import annotations

import json
import socket
import time

import httpx
import psutil
import pytest

from tests.support.policies import two_tier_policy, write
from tests.support.router_process import RouterProcess

KEY = "acme-key"


@pytest.fixture(scope="module")
def router(tier_ports, tmp_path_factory):
    work = tmp_path_factory.mktemp("http-input")
    policy = write(work / "policy.yaml", two_tier_policy(tier_ports["edge"], tier_ports["cloud"], {"acme": KEY}))
    with RouterProcess(policy, work / "ledger.sqlite", http=True) as process:
        yield process


def _url(router, path: str = "/v1/completions") -> str:
    return f"http://127.0.0.1:{router.http_port}{path}"


@pytest.mark.parametrize("field, value, param", [
    ("max_tokens", 2**40, "max_tokens"),
    ("max_tokens", 0, "max_tokens"),
    ("seed", -1, "seed"),
    ("seed", 2**64, "seed"),
    ("temperature", float("nan"), "temperature"),
    ("temperature", float("inf"), "temperature"),
    ("top_p", 0.0, "top_p"),
])
def test_out_of_range_values_are_400_on_a_connection_that_stays_usable(router, field, value, param):
    body = json.dumps({"model": "cascade", "prompt": "an easy one", field: value})  # NaN/Infinity as Python writes them
    with httpx.Client(headers={"Authorization": f"Bearer {KEY}", "content-type": "application/json"}) as http:
        refused = http.post(_url(router), content=body)
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert (error["type"], error["param"]) == ("invalid_request_error", param)
        # The same keep-alive connection still serves the next request.
        ok = http.post(_url(router), json={"model": "cascade", "prompt": "an easy one", "max_tokens": 4})
        assert ok.status_code == 200 and ok.json()["choices"][0]["text"] == "edge: an easy one"


def test_the_key_is_checked_before_the_body_is_read(router):
    """Headers announcing 60 MiB and no key: 401 at once, without waiting for (or buffering) the body."""
    rss_before = psutil.Process(router.process.pid).memory_info().rss
    with socket.create_connection(("127.0.0.1", router.http_port), timeout=5) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 62914560\r\n\r\n" + b"{" * 65536)
        started = time.monotonic()
        reply = b""
        while chunk := sock.recv(4096):  # the server answers and closes
            reply += chunk
        assert time.monotonic() - started < 2.0
    assert reply.startswith(b"HTTP/1.1 401"), reply
    assert b'"invalid_api_key"' in reply
    assert psutil.Process(router.process.pid).memory_info().rss - rss_before < 16 << 20


def test_bodies_over_the_limit_are_413_with_or_without_a_length(router):
    big = {"model": "cascade", "prompt": "x" * (2 << 20), "max_tokens": 4}
    headers = {"Authorization": f"Bearer {KEY}"}
    declared = httpx.post(_url(router), json=big, headers=headers)
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "request_too_large"
    payload = json.dumps(big).encode()

    def chunks():
        for start in range(0, len(payload), 64 << 10):
            yield payload[start:start + (64 << 10)]

    chunked = httpx.post(_url(router), content=chunks(), headers={**headers, "content-type": "application/json"})
    assert chunked.status_code == 413, chunked.text


def test_x_api_key_is_accepted_as_the_error_message_says(router):
    missing = httpx.post(_url(router), json={"model": "cascade", "prompt": "an easy one"})
    assert missing.status_code == 401 and "x-api-key" in missing.json()["error"]["message"]
    answered = httpx.post(_url(router), json={"model": "cascade", "prompt": "an easy one", "max_tokens": 4},
                          headers={"x-api-key": KEY})
    assert answered.status_code == 200, answered.text
