"""The chart as shipped starts: the image's files where the chart's arguments look for them, and the
router and an edge node started with exactly the arguments the rendered chart gives them.

The image is laid out from the Dockerfile's own instructions (tests/support/pod_layout.py) with
the tiny Llama standing in for the compressed edge model; Kubernetes' part is played by writing the
rendered ConfigMap, Secret and TLS files where the pods mount them, and by the cluster DNS: the
edge Service's name is answered with the edge node's loopback address, and the cloud tier (a Ray
Serve proxy in the cluster) by a scripted tier. Servers listen on 127.0.0.1, not the chart's 0.0.0.0.
"""

from __future__ import annotations

import base64
import os
import ssl
import subprocess
import sys

import grpc
import httpx
import openai
import pytest
import yaml

from tests.support.certs import make_certificates
from tests.support.pod_layout import REPO, PodRoot, dockerfile_stage, dockerignore_excludes
from tests.support.ports import free_port
from tests.support.router_process import scripted_tiers
from tierlm.auth import hash_key
from tierlm.client import Client, RetryPolicy
from tierlm.edge.catalog import prepared_dir

KEY = "acme-key"
TIERLM = [sys.executable, "-m", "tierlm.app.cli"]


def test_every_file_the_dockerfile_copies_is_in_the_build_context():
    copies = [line.split()[1:-1] for stage in ("build", "models") for line in dockerfile_stage(stage)
              if line.startswith("COPY ") and "--from" not in line]
    sources = [src for srcs in copies for src in srcs]
    assert "examples/demo/scorer" in sources and "examples/recipes" in sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert not dockerignore_excludes(source), f".dockerignore leaves {source} out of the build context"
    assert dockerignore_excludes("tests/support") and dockerignore_excludes("edge/__pycache__/x.pyc")


def test_the_cloud_model_path_is_where_prepare_writes_it(chart, defaults):
    """The image runs `tierlm model prepare` with TIERLM_CACHE=/models; the cloud config must point there."""
    assert "ENV TIERLM_CACHE=/models" in dockerfile_stage("models")
    rayservice = chart.one(defaults, "RayService")
    (app,) = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"]
    for model in app["args"]["models"]:
        assert model["path"] == str(prepared_dir(model["name"], "/models"))


def _container(objects, kind: str, name: str) -> dict:
    (workload,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return workload["spec"]["template"]["spec"]["containers"][0]


def _start(pod: PodRoot, container: dict, ready_word: str) -> tuple[subprocess.Popen, str]:
    """Run the container's args (chart paths mapped under the pod root, 0.0.0.0 as 127.0.0.1) with its env."""
    args = [pod.map(a) for a in container["args"]]
    args = ["127.0.0.1" if a == "0.0.0.0" else a for a in args]
    env = {**os.environ, **{e["name"]: pod.map(e["value"]) for e in container.get("env", []) if "value" in e}}
    process = subprocess.Popen([*TIERLM, *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if not line.startswith(ready_word):
        process.kill()
        raise AssertionError(f"{args[:2]} did not start:\n{process.stderr.read()[-4000:]}")
    return process, line


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
def test_router_and_edge_start_with_the_rendered_arguments(chart, llama_dir, tmp_path, tls):
    ports = {name: free_port() for name in ("grpc", "http", "metrics", "edge", "edge_metrics")}
    values = {
        "router": {"ports": {"grpc": ports["grpc"], "http": ports["http"], "metrics": ports["metrics"]},
                   "tenants": {"items": {"acme": {"key_sha256": hash_key(KEY)}}}},
        "edge": {"ports": {"grpc": ports["edge"], "metrics": ports["edge_metrics"]}, "server": {"threads": 1}},
    }
    if tls:
        values["tls"] = {"enabled": True, "secretName": "tierlm-tls"}
    objects = chart.render(values)
    pod = PodRoot(tmp_path / "pod")
    assert set(pod.lay_out_models(llama_dir)) >= {"/models/edge", "/models/scorer-headlines"}
    # What Kubernetes mounts: the policy ConfigMap, the tenants Secret, the TLS Secret.
    policy = yaml.safe_load(chart.one(objects, "ConfigMap", f"{chart.ROUTER}-policy")["data"]["policy.yaml"])
    tenants = base64.b64decode(chart.one(objects, "Secret", f"{chart.ROUTER}-tenants")["data"]["tenants.yaml"])
    pod.path("/etc/tierlm/tenants").mkdir(parents=True)
    pod.path("/etc/tierlm/tenants/tenants.yaml").write_bytes(tenants)
    edge_host = f"{chart.EDGE}.{chart.NAMESPACE}.svc"
    certs = make_certificates(pod.path("/etc/tierlm/tls"), dns_names=(edge_host,)) if tls else None

    with scripted_tiers("cloud") as cloud:
        # The cluster's DNS: the edge Service's name answers with the edge node, the Ray Serve proxy
        # with a scripted tier.
        for tier in policy["tiers"]:
            assert tier["address"] in (f"dns:///{edge_host}:{ports['edge']}",
                                       f"{chart.CLOUD}-serve-svc.{chart.NAMESPACE}.svc:9000")
            tier["address"] = f"127.0.0.1:{ports['edge']}" if tier["name"] == "edge" else f"127.0.0.1:{cloud['cloud']}"
        pod.path("/etc/tierlm/policy.yaml").write_text(pod.map(yaml.safe_dump(policy)))

        edge, _ = _start(pod, _container(objects, "Deployment", chart.EDGE), "EDGE_PORT")
        try:
            router, line = _start(pod, _container(objects, "Deployment", chart.ROUTER), "ROUTER_PORT")
            try:
                assert line.split() == ["ROUTER_PORT", str(ports["grpc"]), "HTTP_PORT", str(ports["http"])]
                _check_router(pod, objects, chart, ports, certs)
            finally:
                _stop(router)
        finally:
            _stop(edge)


def _check_router(pod, objects, chart, ports, certs) -> None:
    address = f"127.0.0.1:{ports['grpc']}"
    tls_options = {"ca_file": certs.ca} if certs else {}
    with Client(address, api_key=KEY, retry=RetryPolicy(attempts=1), timeout_s=120, **tls_options) as client:
        answer = client.complete("Gold prices rise as the dollar weakens.", max_tokens=4)
    first = answer.trace.attempts[0]
    # The edge node answered (over TLS when on) and the scorer from the image judged it.
    assert first.tier == "edge" and first.has_score, answer.trace
    assert answer.tier in {"edge", "cloud"}

    scheme = "https" if certs else "http"
    http = httpx.Client(verify=ssl.create_default_context(cafile=certs.ca) if certs else True)
    oai = openai.OpenAI(base_url=f"{scheme}://127.0.0.1:{ports['http']}/v1", api_key=KEY, max_retries=0, http_client=http)
    chat = oai.chat.completions.create(model="edge", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert chat.model_extra["tierlm"]["tiers"] == ["edge"]

    # `helm test`: the hook pod's command, as rendered.
    (hook,) = chart.one(objects, "Pod")["spec"]["containers"]
    args = [pod.map(a) for a in hook["args"]]
    args[args.index("--address") + 1] = address
    checked = subprocess.run([*TIERLM, *args], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and "SERVING" in checked.stdout, checked.stderr

    if certs:
        # Nothing answers in plaintext: not the gRPC port, not the HTTP port.
        with grpc.insecure_channel(address) as channel, pytest.raises(grpc.FutureTimeoutError):
            grpc.channel_ready_future(channel).result(timeout=3)
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{ports['http']}/health", timeout=3)
