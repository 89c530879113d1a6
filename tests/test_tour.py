"""The README's five-minute tour, run as written: its shell block's `tierlm` commands, in order,
in real processes on 127.0.0.1 (on free ports instead of the README's fixed ones)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
TIERLM = [sys.executable, "-m", "tierlm.app.cli"]


def tour_commands() -> list[str]:
    """The `tierlm ...` lines of the first shell block under the README's tour heading."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## A five-minute tour", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip().startswith("tierlm ")]


def wait_serving(port: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.2)


def test_the_readme_tour_runs_as_written(tmp_path):
    commands = tour_commands()
    ports = {old: str(free_port()) for old in sorted(set(re.findall(r"\b50\d\d\d\b", " ".join(commands))))}
    policy = tmp_path / "policy.yaml"
    policy_text = (ROOT / "examples" / "tour" / "policy.yaml").read_text()
    for old, new in ports.items():
        policy_text = policy_text.replace(old, new)
    policy.write_text(policy_text)

    def argv(line: str) -> list[str]:
        line = line.removesuffix("&").strip()
        for old, new in ports.items():
            line = line.replace(old, new)
        return [*TIERLM, *[str(policy) if a == "examples/tour/policy.yaml" else a for a in shlex.split(line)[1:]]]

    servers: list[subprocess.Popen] = []
    outputs = []
    try:
        for line in commands:
            if line.endswith("&"):
                command = argv(line)
                servers.append(subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
                wait_serving(int(command[command.index("--port") + 1]))
            else:
                done = subprocess.run(argv(line), cwd=tmp_path, capture_output=True, text=True, timeout=60)
                assert done.returncode == 0, f"{line}\n{done.stderr}"
                outputs.append(done.stdout + done.stderr)
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(timeout=30)
    easy, hard, ledger = outputs
    assert easy.startswith("edge: an easy question") and "edge: accepted (score 0.990 >= threshold 0.500)" in easy
    assert hard.startswith("cloud: a hard question") and "edge: low_score (score 0.135 < threshold 0.500)" in hard
    assert "cloud: accepted" in hard
    assert "2 requests, 2 answered" in ledger and "cloud: 1 answers" in ledger and "edge: 1 answers" in ledger
