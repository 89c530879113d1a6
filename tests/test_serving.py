"""The shared server plumbing, over real channels on 127.0.0.1."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.support.echo_server import start_echo
from tierlm.auth import KeyRing, hash_key
from tierlm.serving import ServerConfig
from tierlm.v1 import generator_pb2, generator_pb2_grpc

REPO = Path(__file__).resolve().parents[1]
KEY = "s3cret-key"


@pytest.fixture
def echo(loop):
    config = ServerConfig(
        port=0, metrics_port=0, keys=KeyRing({hash_key(KEY): "acme"}), max_request_bytes=64 * 1024
    )
    server = loop.run(start_echo(config))
    yield server
    loop.run(server.stop(grace_s=0))


def _channel(port: int) -> grpc.Channel:
    return grpc.insecure_channel(f"127.0.0.1:{port}")


def test_health_reports_serving_without_a_key(echo):
    with _channel(echo.port) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "tierlm.v1.Generator"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service(echo):
    with _channel(echo.port) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {"tierlm.v1.Generator", "grpc.health.v1.Health"} <= names


def test_call_with_key_reaches_the_servicer_as_its_tenant(echo):
    with _channel(echo.port) as channel:
        stub = generator_pb2_grpc.GeneratorStub(channel)
        reply = stub.Generate(generator_pb2.GenerateRequest(prompt="hi"), metadata=[("x-api-key", KEY)], timeout=5)
        assert (reply.text, reply.tier) == ("hi", "acme")
        bearer = stub.Generate(
            generator_pb2.GenerateRequest(prompt="yo"), metadata=[("authorization", f"Bearer {KEY}")], timeout=5
        )
        assert bearer.text == "yo"


@pytest.mark.parametrize("metadata", [[], [("x-api-key", "wrong")]], ids=["missing", "wrong"])
def test_call_without_a_valid_key_is_unauthenticated(echo, metadata):
    with _channel(echo.port) as channel:
        stub = generator_pb2_grpc.GeneratorStub(channel)
        with pytest.raises(grpc.RpcError) as unary:
            stub.Generate(generator_pb2.GenerateRequest(prompt="hi"), metadata=metadata, timeout=5)
        assert unary.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as stream:
            list(stub.GenerateStream(generator_pb2.GenerateRequest(prompt="a b"), metadata=metadata, timeout=5))
        assert stream.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_oversized_request_gets_a_clear_error(echo):
    with _channel(echo.port) as channel:
        stub = generator_pb2_grpc.GeneratorStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Generate(generator_pb2.GenerateRequest(prompt="x" * 100_000), metadata=[("x-api-key", KEY)], timeout=5)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in err.value.details()


def test_malformed_request_is_invalid_argument(echo):
    with _channel(echo.port) as channel:
        # Field 3 (prompt) declared as a string but carrying bytes that are not UTF-8.
        raw = channel.unary_unary("/tierlm.v1.Generator/Generate")
        with pytest.raises(grpc.RpcError) as err:
            raw(b"\x1a\x02\xff\xfe", metadata=[("x-api-key", KEY)], timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed request" in err.value.details()


def test_metrics_endpoint_counts_calls(echo):
    with _channel(echo.port) as channel:
        generator_pb2_grpc.GeneratorStub(channel).Generate(
            generator_pb2.GenerateRequest(prompt="hi"), metadata=[("x-api-key", KEY)], timeout=5
        )
    body = urllib.request.urlopen(f"http://127.0.0.1:{echo.metrics_port}/metrics", timeout=5).read().decode()
    assert 'tierlm_grpc_handled_total{code="OK",method="Generate",service="tierlm.v1.Generator"}' in body


def test_sigterm_drains_in_flight_calls_before_exit():
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.echo_server", "--delay-s", "1.5"],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )
    try:
        port = int(process.stdout.readline().split()[1])
        result: dict[str, object] = {}

        def call() -> None:
            with _channel(port) as channel:
                stub = generator_pb2_grpc.GeneratorStub(channel)
                try:
                    result["reply"] = stub.Generate(generator_pb2.GenerateRequest(prompt="finish me"), timeout=10)
                except grpc.RpcError as exc:
                    result["error"] = exc.code()

        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(0.5)  # the call is now inside its 1.5 s of work
        process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        with _channel(port) as channel, pytest.raises(grpc.RpcError):
            generator_pb2_grpc.GeneratorStub(channel).Generate(generator_pb2.GenerateRequest(prompt="late"), timeout=2)
        caller.join(timeout=10)
        assert process.wait(timeout=15) == 0
        assert "error" not in result, result
        assert result["reply"].text == "finish me"
        assert "DRAINED" in process.stdout.read()
    finally:
        process.kill()
        process.wait()
