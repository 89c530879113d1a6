"""#19.5: TLS everywhere a key or a prompt travels: the router's gRPC and HTTP ports (mutual TLS
when a client CA is given), the SDK and `tierlm ask` with client certificates, and `tierlm knn
serve` with TLS and keys. (The chart's TLS values are started for real in
tests/helm/test_image_layout.py.)"""

from __future__ import annotations

import json
import ssl
import subprocess

import grpc
import httpx
import pytest

from tests.support.certs import make_certificates
from tests.support.policies import tenants, two_tier_policy, write
from tests.support.router_process import REPO, TIERLM, RouterProcess
from tests.support.workloads import HEADLINES
from tierlm.client import Client, RetryPolicy, TierlmError
from tierlm.v1 import generator_pb2, generator_pb2_grpc

KEY = "acme-key"
NO_RETRY = RetryPolicy(attempts=1)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("certs"))


def _tls_args(certs, mutual: bool) -> list[str]:
    args = ["--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)]
    return args + ["--tls-client-ca", str(certs.ca)] if mutual else args


def test_mutual_tls_on_both_router_ports_with_the_sdk_ask_and_openai(tier_ports, certs, tmp_path):
    policy = write(tmp_path / "policy.yaml", two_tier_policy(tier_ports["edge"], tier_ports["cloud"], {"acme": KEY}))
    with RouterProcess(policy, tmp_path / "ledger.sqlite", *_tls_args(certs, mutual=True), http=True) as router:
        client_cert = {"ca_file": certs.ca, "cert_file": certs.client_cert, "key_file": certs.client_key}
        with Client(router.address, api_key=KEY, retry=NO_RETRY, **client_cert) as client:
            assert client.complete("an easy one", max_tokens=4).text == "edge: an easy one"
        with Client(router.address, api_key=KEY, retry=NO_RETRY, ca_file=certs.ca) as no_cert, pytest.raises(TierlmError):
            no_cert.complete("an easy one", max_tokens=4)

        asked = subprocess.run(
            [*TIERLM, "ask", "an easy one", "--router", router.address, "--api-key", KEY, "--ca-file", str(certs.ca),
             "--cert", str(certs.client_cert), "--key", str(certs.client_key)],
            cwd=REPO, capture_output=True, text=True, timeout=60)
        assert asked.returncode == 0 and asked.stdout.strip() == "edge: an easy one", asked.stderr

        context = ssl.create_default_context(cafile=certs.ca)
        context.load_cert_chain(certs.client_cert, certs.client_key)
        url = f"https://127.0.0.1:{router.http_port}/v1/completions"
        body = {"model": "cascade", "prompt": "an easy one", "max_tokens": 4}
        answered = httpx.post(url, json=body, headers={"x-api-key": KEY}, verify=context)
        assert answered.status_code == 200 and answered.json()["choices"][0]["text"] == "edge: an easy one"
        with pytest.raises(httpx.HTTPError):  # no client certificate: the handshake fails
            httpx.post(url, json=body, headers={"x-api-key": KEY}, verify=ssl.create_default_context(cafile=certs.ca))
        with pytest.raises(httpx.HTTPError):  # plaintext HTTP on the TLS port
            httpx.post(url.replace("https", "http"), json=body, headers={"x-api-key": KEY})


def test_knn_tier_serves_tls_with_keys(certs, tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(line for line in (HEADLINES / "train.jsonl").read_text().splitlines(keepends=True)[:24]))
    keys = write(tmp_path / "keys.yaml", tenants({"router": KEY}))
    process = subprocess.Popen(
        [*TIERLM, "knn", "serve", "--pool", str(pool), "--port", "0", "--api-keys", str(keys), *_tls_args(certs, mutual=False)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("KNN_PORT"), process.stderr.read()
        address = f"127.0.0.1:{line.split()[1]}"
        first = json.loads((HEADLINES / "train.jsonl").read_text().splitlines()[0])
        request = generator_pb2.GenerateRequest(prompt=first["prompt"], choices=first["choices"], max_tokens=4)
        credentials = grpc.ssl_channel_credentials(certs.ca.read_bytes())
        with grpc.secure_channel(address, credentials) as channel:
            stub = generator_pb2_grpc.GeneratorStub(channel)
            assert stub.Generate(request, metadata=(("x-api-key", KEY),), timeout=30).text in first["choices"]
            with pytest.raises(grpc.RpcError) as refused:
                stub.Generate(request, timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_tier_servers_refuse_to_start_without_keys_or_an_explicit_no_auth(tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text((HEADLINES / "train.jsonl").read_text().splitlines(keepends=True)[0])
    refused = subprocess.run([*TIERLM, "knn", "serve", "--pool", str(pool), "--port", "0"], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "--no-auth" in refused.stderr
