"""The cloud tier as a real Ray Serve app, called through Serve's gRPC proxy on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.ports import free_port
from tierlm.cloud.config import CloudConfig
from tierlm.v1 import MODEL_METADATA_KEY, generator_pb2, generator_pb2_grpc

pytestmark = pytest.mark.slow
PROMPTS = ["The market rose today", "Gold prices fell sharply after", "Oil futures", "Headlines: stocks up"]


REPLACEMENT_S = 300


@dataclass(frozen=True)
class RunningCloud:
    grpc_address: str
    processes: list[psutil.Process]


def ray_processes() -> list[psutil.Process]:
    """Ray's and vLLM's processes that this test process started (VLLM:: names vLLM's engine-core
    and worker processes, which a vLLM replica starts); other users' on the machine do not count."""
    markers = ("ray::", "raylet", "gcs_server", "VLLM::")
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if any(marker in " ".join(process.cmdline()) for marker in markers):
                found.append(process)
        except psutil.NoSuchProcess:
            continue
    return found


# DecoderEngine options per engine; vLLM runs fp32 so its greedy tokens equal the edge engine's.
ENGINE_OPTIONS = {
    "torch": {"threads": 1, "max_batch": 8, "max_queue": 32},
    "vllm": {"dtype": "float32", "max_model_len": 256},
}


@pytest.fixture(scope="module")
def serve_model_dir(tmp_path_factory):
    from tierlm.edge.tiny import build_model

    # Hidden 128 (head size 32): the smallest head size vLLM's CPU attention takes.
    path = tmp_path_factory.mktemp("serve-llama")
    build_model(path, "llama", hidden_size=128)
    return path


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


@pytest.fixture(scope="module")
def cloud(serve_model_dir):
    """One cluster serving the model on both engines, one deployment each: Ray starts once per
    module (a second in-process ray.init after ray.shutdown once timed out on a busy CI machine),
    and requests reach each model by its name in the gRPC metadata, as a multi-model tier's do."""
    from tierlm.cloud.runner import start_cloud, stop_cloud

    engines = ["torch", "vllm"] if vllm_installed() else ["torch"]
    config = CloudConfig(
        models=[{"name": f"tiny-{engine}", "path": str(serve_model_dir), "engine": engine,
                 "engine_options": ENGINE_OPTIONS[engine], "verify": {"max_sessions": 4},
                 "health_check_period_s": 1.0, "graceful_shutdown_timeout_s": 5.0} for engine in engines],
        grpc_port=free_port(), http_port=free_port(),
    )
    endpoints = start_cloud(config, num_cpus=2)  # one CPU per model's replica
    # Taken while they run: once stopped, a leaked process would be re-parented and lost from view.
    yield RunningCloud(endpoints.grpc_address, ray_processes())
    stop_cloud()


@pytest.fixture(params=["torch", "vllm"])
def model_name(request) -> str:
    if request.param == "vllm" and not vllm_installed():
        pytest.skip("needs vLLM (requirements/cloud-cpu.txt)")
    return f"tiny-{request.param}"


@dataclass(frozen=True)
class ModelStub:
    """The Generator stub with the metadata that picks one model behind the ingress."""

    stub: generator_pb2_grpc.GeneratorStub
    metadata: tuple[tuple[str, str], ...]

    def generate(self, prompt: str, max_tokens: int, timeout: float) -> generator_pb2.GenerateResponse:
        request = generator_pb2.GenerateRequest(prompt=prompt, max_tokens=max_tokens)
        return self.stub.Generate(request, timeout=timeout, metadata=self.metadata)

    def stream(self, prompt: str, max_tokens: int, timeout: float) -> list[generator_pb2.GenerateResponse]:
        request = generator_pb2.GenerateRequest(prompt=prompt, max_tokens=max_tokens)
        return list(self.stub.GenerateStream(request, timeout=timeout, metadata=self.metadata))


@pytest.fixture
def stub(cloud, model_name):
    with grpc.insecure_channel(cloud.grpc_address) as channel:
        yield ModelStub(generator_pb2_grpc.GeneratorStub(channel), ((MODEL_METADATA_KEY, model_name),))


def direct_greedy(model_dir, prompt: str, max_tokens: int) -> str:
    import asyncio

    from tierlm.edge.engine import DecoderEngine
    from tierlm.edge.requests import GenerationRequest

    engine = DecoderEngine.from_pretrained(model_dir, max_batch=1, max_queue=1)
    try:
        return asyncio.run(engine.generate(GenerationRequest(prompt=prompt, max_tokens=max_tokens))).text
    finally:
        engine.close()


def test_unary_and_stream_match_the_model_run_directly(stub, model_name, serve_model_dir):
    expected = direct_greedy(serve_model_dir, PROMPTS[1], 12)
    reply = stub.generate(PROMPTS[1], 12, timeout=60)
    assert (reply.text, reply.tier, reply.model) == (expected, "cloud", model_name)
    chunks = stub.stream(PROMPTS[1], 12, timeout=60)
    assert chunks[-1].is_final and "".join(c.text for c in chunks) == expected


def test_sixteen_concurrent_requests_complete(stub):
    def one(i: int) -> str:
        return stub.generate(PROMPTS[i % 4], 8, timeout=120).text

    with ThreadPoolExecutor(16) as pool:
        texts = list(pool.map(one, range(16)))
    assert len(texts) == 16 and texts[:4] == texts[4:8]


def test_health_and_bad_input_through_the_proxy(stub, cloud):
    with grpc.insecure_channel(cloud.grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as err:
        stub.generate("", 4, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        ModelStub(stub.stub, ((MODEL_METADATA_KEY, "no-such-model"),)).generate("Gold", 4, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown model" in err.value.details()


def test_verify_rounds_accept_the_models_own_tokens_and_correct_the_first_wrong_one(stub, model_name, serve_model_dir):
    """The Verify rpc through the proxy, on each engine (the torch engine's KV sessions, vLLM's
    prefix cache): drafts equal to the model's greedy tokens are accepted, a wrong one is
    replaced by the model's own token, and the second round sends only what is new."""
    from transformers import AutoTokenizer

    greedy = stub.stub.Generate(generator_pb2.GenerateRequest(prompt=PROMPTS[1], max_tokens=6, return_logprobs=True),
                                timeout=120, metadata=stub.metadata)
    tokens = [t.token_id for t in greedy.logprobs]
    prompt = AutoTokenizer.from_pretrained(serve_model_dir)(PROMPTS[1])["input_ids"]
    session = f"verify-{model_name}"

    def verify(start: int, fed: list[int], drafts: list[int]) -> generator_pb2.VerifyResponse:
        request = generator_pb2.VerifyRequest(session_id=session, start=start, tokens=fed, draft_tokens=drafts)
        return stub.stub.Verify(request, timeout=120, metadata=stub.metadata)

    first = verify(0, prompt, tokens[:3])
    assert (first.accepted, first.next_token, first.length) == (3, tokens[3], len(prompt) + 3)
    wrong = (tokens[5] + 1) % 256
    second = verify(first.length, [first.next_token], [tokens[4], wrong])
    assert (second.accepted, second.next_token, second.length) == (1, tokens[5], len(prompt) + 5)
    assert second.model == model_name


def test_a_router_tier_reaches_its_served_model(cloud, model_name):
    """A policy tier's `served_model` picks the deployment, as the router calls it; without
    it the app's first model answers."""
    import asyncio

    from tierlm.config import TierConfig
    from tierlm.router.serve.tiers import TierClient

    async def answered_by(**served: str) -> str:
        client = TierClient(TierConfig(name="cloud", address=cloud.grpc_address, timeout_s=60, **served))
        try:
            return (await client.generate(generator_pb2.GenerateRequest(prompt=PROMPTS[0], max_tokens=2), None)).model
        finally:
            await client.close()

    assert asyncio.run(answered_by(served_model=model_name)) == model_name
    assert asyncio.run(answered_by()) == "tiny-torch"


def test_killed_replica_is_replaced(stub, model_name):
    import ray
    from ray import serve

    from tierlm.cloud.runner import APP_NAME

    deployment = f"llm-{model_name}"
    assert serve.status().applications[APP_NAME].deployments[deployment].status == "HEALTHY"
    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True) if deployment in a["name"]]
    assert replicas, "no replica actor found"
    ray.kill(ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]), no_restart=True)
    # A new vLLM replica starts its engine-core process and loads the model: about a minute on
    # an idle 2-core machine, over two and a half when the machine is busy.
    deadline = time.monotonic() + REPLACEMENT_S
    while time.monotonic() < deadline:
        try:
            reply = stub.generate("Gold", 4, timeout=30)
            if reply.is_final:
                break
        except grpc.RpcError:
            time.sleep(1)
    else:
        pytest.fail(f"no successful request within {REPLACEMENT_S} s of killing the replica")
    assert serve.status().applications[APP_NAME].deployments[deployment].status == "HEALTHY"


def test_shutdown_leaves_no_ray_processes(cloud):
    # Runs last in this module (pytest keeps file order): stop the cluster and look.
    from tierlm.cloud.runner import stop_cloud

    started = cloud.processes
    assert started, "the cluster's processes were not found"
    stop_cloud()
    deadline = time.monotonic() + 30

    def alive() -> list[str]:
        return [f"{p.pid} {' '.join(p.cmdline())}" for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    while alive() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert alive() == []
