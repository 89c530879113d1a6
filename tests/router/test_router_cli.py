"""`tierlm router serve`, `tierlm ask` and `tierlm router ledger` as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.router.test_router_service import KEYS, write_policy

REPO = Path(__file__).resolve().parents[2]
TIERLM = [sys.executable, "-m", "tierlm.app.cli"]


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
            [*TIERLM, "router", "serve", "--policy", str(policy), "--port", "0", "--store", str(ledger),
             "--http-port", "0"],
            cwd=REPO, stdout=subprocess.PIPE, text=True,
        )
        processes.append((router, 0))
        words = router.stdout.readline().split()
        port, http_port = int(words[1]), int(words[3])
        env = {**os.environ, "TIERLM_ROUTER": f"127.0.0.1:{port}", "TIERLM_API_KEY": KEYS["acme"]}

        def ask(prompt: str) -> subprocess.CompletedProcess:
            return subprocess.run([*TIERLM, "ask", prompt], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)

        first = ask("a tricky one")
        assert first.returncode == 0, first.stderr
        assert first.stdout.strip() == "cloud: a tricky one"
        assert "tier cloud" in first.stderr and "edge: low_score" in first.stderr

        as_json = subprocess.run([*TIERLM, "ask", "--json", "another tricky one"], cwd=REPO, env=env,
                                 capture_output=True, text=True, timeout=60)
        assert as_json.returncode == 0, as_json.stderr
        answer = json.loads(as_json.stdout)
        assert (answer["text"], answer["tier"]) == ("cloud: another tricky one", "cloud") and answer["cost"] > 0
        assert [a["tier"] for a in answer["trace"]["attempts"]] == ["edge", "cloud"]
        assert answer["trace"]["attempts"][0]["outcome"] == "TIER_OUTCOME_LOW_SCORE"

        settings = yaml.safe_load(policy.read_text())
        settings["cascade"]["thresholds"]["edge"] = 0.0
        policy.write_text(yaml.safe_dump(settings))
        router.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert ask("a tricky one").stdout.strip() == "edge: a tricky one"

        # Existing OpenAI clients work unchanged against the HTTP endpoint.
        import openai

        oai = openai.OpenAI(base_url=f"http://127.0.0.1:{http_port}/v1", api_key=KEYS["acme"], max_retries=0)
        text = oai.completions.create(model="cascade", prompt="an easy one", max_tokens=4)
        assert (text.choices[0].text, text.model, text.model_extra["tierlm"]["tiers"]) == ("edge: an easy one", "cascade", ["edge"])
        chat = oai.chat.completions.create(model="cloud", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert chat.model == "cloud" and chat.choices[0].message.content.startswith("cloud:")
        streamed = oai.completions.create(model="cloud", prompt="stream these words", max_tokens=4, stream=True)
        assert "".join(c.choices[0].text for c in streamed).strip() == "cloud: stream these words"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{http_port}/v1", api_key="bad", max_retries=0).completions.create(
                model="cascade", prompt="x", max_tokens=1)

        refused = subprocess.run([*TIERLM, "ask", "hi"], cwd=REPO, env={**env, "TIERLM_API_KEY": "bad"},
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1
        assert refused.stderr == "Error: UNAUTHENTICATED: missing or unknown API key (send it as x-api-key)\n"

        router.send_signal(signal.SIGTERM)
        assert router.wait(timeout=30) == 0
        summary = subprocess.run([*TIERLM, "router", "ledger", "--tenant", "acme", "--store", str(ledger)],
                                 cwd=REPO, capture_output=True, text=True, timeout=60)
        assert summary.returncode == 0, summary.stderr
        # 3 via gRPC, 3 via HTTP; unauthenticated calls never reach the ledger (no tenant to book them to).
        assert "6 requests, 6 answered" in summary.stdout
        assert "cloud: 4 answers" in summary.stdout and "edge: 2 answers" in summary.stdout
        as_json = subprocess.run([*TIERLM, "router", "ledger", "--tenant", "acme", "--store", str(ledger), "--json"],
                                 cwd=REPO, capture_output=True, text=True, timeout=60)
        booked = json.loads(as_json.stdout)
        assert booked["tenant"] == "acme" and booked["since"] is None
        assert (booked["requests"], booked["ok"], booked["by_tier"]) == (6, 6, {"cloud": 4, "edge": 2})
        assert booked["cost"] > 0 and booked["prompt_tokens"] > 0
    finally:
        for process, _ in processes:
            process.kill()
            process.wait()
