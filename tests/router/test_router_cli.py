"""`tierlm router serve`, `tierlm ask` and `tierlm router ledger` as a user runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.router.test_router_service import KEYS, write_policy

REPO = Path(__file__).resolve().parents[2]
TIERLM = [sys.executable, "-m", "tierlm.cli"]


def _spawn(args: list[str]) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    return process, int(line.split()[-1].split(":")[-1].rstrip(","))


def test_serve_ask_reload_ledger(tmp_path):
    processes = []
    try:
        for name in ("edge", "cloud"):
            process, port = _spawn([sys.executable, "-m", "tests.support.echo_server", "--kind", "scripted", "--name", name])
            processes.append((process, port))
        policy, ledger = tmp_path / "policy.yaml", tmp_path / "ledger.sqlite"
        write_policy(policy, processes[0][1], processes[1][1])
        router = subprocess.Popen(
            [*TIERLM, "router", "serve", "--policy", str(policy), "--port", "0", "--ledger", str(ledger)],
            cwd=REPO, stdout=subprocess.PIPE, text=True,
        )
        processes.append((router, 0))
        port = int(router.stdout.readline().split(":")[-1])
        env = {**os.environ, "TIERLM_ROUTER": f"127.0.0.1:{port}", "TIERLM_API_KEY": KEYS["acme"]}

        def ask(prompt: str) -> subprocess.CompletedProcess:
            return subprocess.run([*TIERLM, "ask", prompt], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)

        first = ask("a tricky one")
        assert first.returncode == 0, first.stderr
        assert first.stdout.strip() == "cloud: a tricky one"
        assert "tier cloud" in first.stderr and "edge: low_score" in first.stderr

        settings = yaml.safe_load(policy.read_text())
        settings["cascade"]["thresholds"]["edge"] = 0.0
        policy.write_text(yaml.safe_dump(settings))
        router.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert ask("a tricky one").stdout.strip() == "edge: a tricky one"

        refused = subprocess.run([*TIERLM, "ask", "hi"], cwd=REPO, env={**env, "TIERLM_API_KEY": "bad"},
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr

        router.send_signal(signal.SIGTERM)
        assert router.wait(timeout=30) == 0
        summary = subprocess.run([*TIERLM, "router", "ledger", "--tenant", "acme", "--ledger", str(ledger)],
                                 cwd=REPO, capture_output=True, text=True, timeout=60)
        assert summary.returncode == 0, summary.stderr
        assert "2 requests, 2 answered" in summary.stdout
        assert "cloud: 1 answers" in summary.stdout and "edge: 1 answers" in summary.stdout
    finally:
        for process, _ in processes:
            process.kill()
            process.wait()
