"""One name, several servers: the router spreads a tier's calls over every edge server its address
resolves to, and the SDK spreads calls over every router.

In Kubernetes the name is a headless Service's DNS name (`dns:///edge.ns.svc:50061`), which gRPC's
DNS resolver turns into every ready pod's address. The test cannot add a DNS name without changing
the machine (/etc/hosts), so it gives the same channel the resolved list directly, gRPC's
`ipv4:host:port,host:port` target: the same round-robin policy over the same list of addresses,
only the resolver step differs (DNS for the chart, the literal list here).
"""

from __future__ import annotations

import collections

import pytest

from tests.support.echo_server import ScriptedGenerator, start_generator
from tests.support.policies import two_tier_policy, write
from tierlm.client import Client
from tierlm.router.serve.server import start_router
from tierlm.serving import ServerConfig

CALLS = 40


def test_router_spreads_a_tier_over_every_address_and_the_sdk_spreads_over_routers(loop, tmp_path):
    edges = [ScriptedGenerator(name="edge"), ScriptedGenerator(name="edge")]
    cloud = ScriptedGenerator(name="cloud")
    servers = [loop.run(start_generator(ServerConfig(), s)) for s in (*edges, cloud)]
    policy = two_tier_policy(0, servers[2].port)
    policy["tiers"][0]["address"] = "ipv4:" + ",".join(f"127.0.0.1:{s.port}" for s in servers[:2])
    write(tmp_path / "policy.yaml", policy)
    routers = [loop.run(start_router(tmp_path / "policy.yaml", ServerConfig(), tmp_path / f"ledger-{i}.sqlite", auth=False))
               for i in range(2)]
    try:
        target = "ipv4:" + ",".join(f"127.0.0.1:{server.port}" for server, _ in routers)
        with Client(target) as client:
            answers = [client.complete("an easy one", max_tokens=4, request_id=f"r{i}") for i in range(CALLS)]
        assert {a.tier for a in answers} == {"edge"}
        assert sum(e.calls for e in edges) == CALLS
        assert all(e.calls >= CALLS // 4 for e in edges), [e.calls for e in edges]
        per_router = [loop.run(service.store.summarize("anonymous", 0)).requests for _, service in routers]
        assert sum(per_router) == CALLS and all(n >= CALLS // 4 for n in per_router), per_router
    finally:
        for server, service in routers:
            loop.run(server.stop(grace_s=0))
            loop.run(service.store.close())
        for server in servers:
            loop.run(server.stop(grace_s=0))
