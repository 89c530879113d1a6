"""#19.1: authentication is on unless the operator says `--no-auth`, and says so loudly.

An empty tenants list, at start or after a reload, refuses every call; it never opens the router."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.support.policies import tenants, two_tier_policy, write
from tests.support.router_process import RouterProcess
from tierlm.client import Client, RetryPolicy, Unauthenticated

NO_RETRY = RetryPolicy(attempts=1)
OFF_WARNING = "authentication is OFF (--no-auth)"


def test_a_policy_without_tenants_refuses_every_call(tier_ports, tmp_path):
    policy = write(tmp_path / "policy.yaml", two_tier_policy(tier_ports["edge"], tier_ports["cloud"]))
    with RouterProcess(policy, tmp_path / "ledger.sqlite", http=True) as router:
        with Client(router.address, retry=NO_RETRY) as keyless, pytest.raises(Unauthenticated):
            keyless.complete("an easy one", max_tokens=4)
        with Client(router.address, api_key="any-key", retry=NO_RETRY) as guessing, pytest.raises(Unauthenticated):
            guessing.complete("an easy one", max_tokens=4)
        base = f"http://127.0.0.1:{router.http_port}/v1"
        body = {"model": "cascade", "prompt": "an easy one", "max_tokens": 4}
        assert httpx.post(f"{base}/completions", json=body).status_code == 401
        assert httpx.get(f"{base}/models").status_code == 401
        assert "no tenants are configured: every call is refused" in router.log()


def test_emptying_the_tenants_file_at_run_time_keeps_auth_on(tier_ports, tmp_path):
    policy = write(tmp_path / "policy.yaml", two_tier_policy(tier_ports["edge"], tier_ports["cloud"]))
    tenants_file = write(tmp_path / "tenants.yaml", tenants({"acme": "acme-key"}))
    with RouterProcess(policy, tmp_path / "ledger.sqlite", "--tenants", str(tenants_file), http=True) as router:
        with Client(router.address, api_key="acme-key", retry=NO_RETRY) as acme:
            assert acme.complete("an easy one", max_tokens=4).tier == "edge"
        write(tenants_file, {})
        router.reload()
        for key in ("acme-key", None):
            with Client(router.address, api_key=key, retry=NO_RETRY) as client, pytest.raises(Unauthenticated):
                client.complete("an easy one", max_tokens=4)


def test_no_auth_is_an_explicit_flag_logged_at_start_and_on_every_reload(tier_ports, tmp_path):
    policy = write(tmp_path / "policy.yaml", two_tier_policy(tier_ports["edge"], tier_ports["cloud"]))
    with RouterProcess(policy, tmp_path / "ledger.sqlite", "--no-auth", http=True) as router:
        with Client(router.address, retry=NO_RETRY) as keyless:
            assert keyless.complete("an easy one", max_tokens=4).tier == "edge"
        assert router.log().count(OFF_WARNING) == 1
        router.reload()
        deadline = time.monotonic() + 5
        while router.log().count(OFF_WARNING) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert router.log().count(OFF_WARNING) == 2
