"""The local stack launcher on tiny models: real child processes on 127.0.0.1, always cleaned up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tierlm.client import Client, RetryPolicy, Unavailable
from tierlm.config import PolicyError, parse_policy
from tierlm.app.stack import LocalStack, Service, StackError, plan_stack
from tierlm.router.workload import write_workload

from tests.support.workloads import headlines


def write_policy(path: Path, tiers: list[dict], order: list[str], thresholds: dict | None = None, **extra) -> Path:
    path.write_text(yaml.safe_dump({"tiers": tiers, "cascade": {"order": order, "thresholds": thresholds or {}}, **extra}))
    return path


def edge_tier(name: str, model: Path, cost: float) -> dict:
    return {"name": name, "address": "127.0.0.1:1", "model": str(model), "cost": {"per_output_token": cost},
            "launch": {"runtime": "edge", "threads": 1, "max_batch": 4, "max_queue": 16}}


def family(pids: list[int]) -> list[psutil.Process]:
    """The processes with these pids and their descendants, as they are now."""
    found = []
    for pid in pids:
        try:
            root = psutil.Process(pid)
            found += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    return found


def assert_all_gone(processes: list[psutil.Process]) -> None:
    survivors = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not survivors, f"processes survived the stack: {[(p.pid, p.cmdline()) for p in survivors]}"


@pytest.fixture
def two_edge_policy(tmp_path, llama_dir, gemma_dir) -> Path:
    return write_policy(tmp_path / "policy.yaml", [edge_tier("edge", llama_dir, 1e-7), edge_tier("big", gemma_dir, 1e-5)],
                        ["edge", "big"], {"edge": 0.5})


def test_stack_routes_through_launched_tiers_and_leaves_no_process(two_edge_policy, tmp_path):
    plan = plan_stack(two_edge_policy, tmp_path / "run", router_port=0, free_ports=True, no_auth=True)
    assert [s.name for s in plan.services] == ["edge", "big", "router"]
    routed = yaml.safe_load(plan.policy_path.read_text())
    assert [t["address"] for t in routed["tiers"]] == [s.address for s in plan.services[:2]]
    with LocalStack(plan) as stack:
        processes = family([s.process.pid for s in plan.services])
        with Client(stack.router_address) as client:
            tiers = {client.complete("The market rose", max_tokens=4, force_tier=name).tier for name in ("edge", "big")}
            cascaded = client.complete("Gold prices fell", max_tokens=4)
        assert tiers == {"edge", "big"}
        assert cascaded.trace.attempts[0].tier == "edge" and cascaded.text
    assert all(s.process is None for s in plan.services)
    assert_all_gone(processes)
    for service in plan.services:
        assert service.log_path.read_text().strip(), f"{service.name} wrote no log"


def test_killed_tier_gives_a_clear_status_then_restarts(two_edge_policy, tmp_path):
    with LocalStack(plan_stack(two_edge_policy, tmp_path / "run", router_port=0, free_ports=True, no_auth=True)) as stack:
        with Client(stack.router_address, retry=RetryPolicy(attempts=1)) as client:
            stack.plan.service("edge").kill()
            with pytest.raises(Unavailable):
                client.complete("Oil futures", max_tokens=4, force_tier="edge")
            # The cascade goes on without it: the next tier answers.
            assert client.complete("Oil futures", max_tokens=4).tier == "big"
            stack.restart("edge")
            # The router's channel to the old node reconnects on gRPC's backoff (seconds, not at once).
            deadline = time.monotonic() + 120
            while True:
                try:
                    assert client.complete("Oil futures", max_tokens=4, force_tier="edge").tier == "edge"
                    break
                except Unavailable:
                    assert time.monotonic() < deadline, "the router never reached the restarted edge node"
                    time.sleep(1.0)


def test_a_tier_that_cannot_start_stops_the_others(tmp_path, llama_dir):
    broken = tmp_path / "not-a-model"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    policy = write_policy(tmp_path / "policy.yaml", [edge_tier("edge", llama_dir, 1e-7), edge_tier("big", broken, 1e-5)],
                          ["edge", "big"], {"edge": 0.5})
    plan = plan_stack(policy, tmp_path / "run", router_port=0, free_ports=True, no_auth=True)
    stack = LocalStack(plan)
    with pytest.raises(StackError, match="big exited"):
        stack.start()
    assert all(s.process is None for s in plan.services)


def test_sigterm_is_followed_by_sigkill_after_the_grace_period(tmp_path):
    stubborn = Service("stubborn", "edge", [sys.executable, "-c",
                       "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(600)"],
                       port=1, log_path=tmp_path / "stubborn.log")
    stubborn.start()
    process = stubborn.process
    deadline = time.monotonic() + 30
    while "ready" not in stubborn.log_path.read_text().splitlines() and time.monotonic() < deadline:
        time.sleep(0.1)
    started = time.monotonic()
    stubborn.stop(grace_s=1.0)
    assert process.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 15


def test_children_die_with_the_launcher(tmp_path):
    # A launcher process starts a service and is SIGKILLed: the kernel sends the child SIGTERM.
    script = f"""
import sys, time
from pathlib import Path
from tierlm.app.stack import Service
s = Service("sleeper", "edge", [sys.executable, "-c", "import time; time.sleep(600)"], 1, Path({str(tmp_path / 's.log')!r}))
s.start()
print(s.process.pid, flush=True)
time.sleep(600)
"""
    launcher = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = psutil.Process(int(launcher.stdout.readline()))
    launcher.kill()
    launcher.wait()
    gone, _ = psutil.wait_procs([child], timeout=10)
    assert gone, "the child outlived its launcher"


def test_lifeline_becomes_the_command_in_the_same_process():
    from tierlm.app import lifeline

    child = subprocess.Popen(lifeline.command(os.getpid(), [sys.executable, "-c", "import os; print(os.getpid())"]),
                             stdout=subprocess.PIPE, text=True)
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0 and int(out) == child.pid  # exec'd in place: the stack's pid is the service's


def test_lifeline_refuses_to_start_when_the_launcher_is_already_gone():
    # Its parent is this test, not pid 1: as if the launcher had died before the child started.
    result = subprocess.run([sys.executable, "-m", "tierlm.app.lifeline", "1", "--", "true"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "launcher 1 exited" in result.stderr
    usage = subprocess.run([sys.executable, "-m", "tierlm.app.lifeline", "true"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 1 and "usage" in usage.stderr


def test_launch_needs_a_model_for_edge_and_cloud():
    with pytest.raises(PolicyError, match="launch"):
        parse_policy(yaml.safe_dump({"tiers": [{"name": "edge", "address": "127.0.0.1:5", "launch": {"runtime": "edge"}}],
                                     "cascade": {"order": ["edge"]}}))


def test_tierlm_up_serves_until_ctrl_c(two_edge_policy, tmp_path):
    up = subprocess.Popen([sys.executable, "-m", "tierlm.app.cli", "up", "--policy", str(two_edge_policy), "--port", "0",
                           "--free-ports", "--run-dir", str(tmp_path / "run"), "--no-auth"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = up.stdout.readline()
        assert line.startswith("ROUTER "), up.stderr.read() if up.poll() is not None else line
        address = line.split()[1]
        processes = family([up.pid])
        ask = subprocess.run([sys.executable, "-m", "tierlm.app.cli", "ask", "--router", address, "--max-tokens", "3",
                              "--force-tier", "big", "The market rose"], capture_output=True, text=True, timeout=120)
        assert ask.returncode == 0, ask.stderr
        assert "tier big" in ask.stderr
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=120) == 0
        assert_all_gone(processes)
    finally:
        if up.poll() is None:
            os.kill(up.pid, signal.SIGKILL)
            up.wait()


@pytest.mark.slow
def test_knn_edge_and_ray_serve_cloud_tiers_start_answer_and_stop(tmp_path, llama_dir):
    from tierlm.edge.tiny import build_model

    cloud_model = tmp_path / "cloud-llama"
    build_model(cloud_model, "llama", hidden_size=128)
    pool = tmp_path / "pool.jsonl"  # a small labelled pool: the knn tier embeds it at start
    write_workload([row.model_dump() for row in list(headlines("train"))[:40]], pool)
    policy = write_policy(tmp_path / "policy.yaml", [
        {"name": "knn", "address": "127.0.0.1:1", "model": "knn-vote", "cost": {"per_call": 1e-8}, "launch": {"runtime": "knn"}},
        edge_tier("edge", llama_dir, 1e-7),
        {"name": "cloud", "address": "127.0.0.1:1", "model": str(cloud_model), "cost": {"per_output_token": 1e-5},
         "launch": {"runtime": "cloud", "threads": 1, "num_cpus": 2}},
    ], ["knn", "edge", "cloud"], {"knn": 0.9, "edge": 0.5}, pool=str(pool))
    plan = plan_stack(policy, tmp_path / "run", router_port=0, free_ports=True, no_auth=True)
    assert [s.kind for s in plan.services] == ["knn", "edge", "cloud", "router"]
    with LocalStack(plan) as stack:
        processes = family([s.process.pid for s in plan.services])
        # Ray's own processes run under the cloud service: they must go when it goes.
        assert any("raylet" in " ".join(p.cmdline()) for p in processes if p.is_running())
        with Client(stack.router_address) as client:
            vote = client.complete("gold rises on weak dollar", choices=[" up", " down"], force_tier="knn")
            assert vote.tier == "knn" and vote.text in (" up", " down")
            assert client.complete("The market rose", max_tokens=4, force_tier="cloud").tier == "cloud"
            assert client.complete("The market rose", max_tokens=4, force_tier="edge").tier == "edge"
    assert_all_gone(processes)
