"""The router's policy file as the chart writes it: tier addresses that reach the chart's own
Services, numbers every YAML reader agrees on, and mistakes refused at install time."""

from __future__ import annotations

import helm_python
import pytest
import yaml


def policy_of(chart, objects) -> dict:
    config_map = chart.one(objects, "ConfigMap", f"{chart.ROUTER}-policy")
    # PyYAML, the reader the router uses: what it sees is what the router gets.
    return yaml.safe_load(config_map["data"]["policy.yaml"])


def split_address(address: str) -> tuple[str, str, int]:
    host, port = address.removeprefix("dns:///").rsplit(":", 1)
    name, namespace, svc = host.split(".")
    assert svc == "svc", address
    return name, namespace, int(port)


def serve_service_ports(rayservice: dict) -> dict[str, int]:
    """The ports KubeRay (>= 1.6) puts on `<name>-serve-svc`: the head container's ports named
    "serve" or "serve-*"."""
    (head,) = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][:1]
    return {p["name"]: p["containerPort"] for p in head["ports"] if p["name"] == "serve" or p["name"].startswith("serve-")}


def test_policy_addresses_resolve_to_the_services_the_chart_creates(chart, case):
    _, values = case
    objects = chart.render(values)
    policy = policy_of(chart, objects)
    resolved = 0
    for tier in policy["tiers"]:
        overridden = next(t for t in chart.merge(chart.values, values)["router"]["policy"]["tiers"] if t["name"] == tier["name"]).get("address")
        if overridden:
            assert tier["address"] == overridden  # an address the user gives is kept verbatim
            continue
        name, namespace, port = split_address(tier["address"])
        assert namespace == chart.NAMESPACE
        if tier["name"] == "edge":
            # gRPC's DNS resolver and a headless Service: every edge pod's address, round-robin.
            assert tier["address"].startswith("dns:///")
            service = chart.typed(chart.one(objects, "Service", name))
            assert service.spec.cluster_ip == "None"
            (grpc,) = [p for p in service.spec.ports if p.name == "grpc"]
            assert grpc.port == port
            workload = next(o for o in objects if o["kind"] in {"Deployment", "DaemonSet"} and o["metadata"]["name"] == chart.EDGE)
            assert service.spec.selector.items() <= workload["spec"]["template"]["metadata"]["labels"].items()
            (container,) = workload["spec"]["template"]["spec"]["containers"]
            assert next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc") == port
        else:
            assert tier["name"] == "cloud"
            rayservice = chart.one(objects, "RayService")
            assert name == rayservice["metadata"]["name"] + "-serve-svc"
            assert serve_service_ports(rayservice)["serve-grpc"] == port
            serve_config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
            assert serve_config["grpc_options"]["port"] == port
        resolved += 1
    assert resolved >= 1


def test_policy_numbers_are_numbers_to_pyyaml(chart, defaults):
    """Helm writes 2e-06; PyYAML (YAML 1.1) reads that as a string. The chart writes 2.0e-06."""
    policy = policy_of(chart, defaults)
    edge, cloud = policy["tiers"]
    assert edge["cost"]["per_call"] == pytest.approx(2.0e-6)
    assert cloud["cost"]["per_output_token"] == pytest.approx(4.0e-7)
    assert policy["cascade"]["budget_per_query"] == pytest.approx(2.0e-5)
    assert policy["cascade"]["thresholds"]["edge"] == pytest.approx(0.82)
    for number in (edge["cost"]["per_call"], cloud["cost"]["per_input_token"], policy["cascade"]["budget_per_query"], edge["timeout_s"]):
        assert isinstance(number, (int, float)) and not isinstance(number, bool)


def test_policy_passes_router_fields_through_unchanged(chart):
    extra = {"tls": {"ca_file": "/etc/tierlm/tls/ca.crt"}, "prompt": {"demonstrations": 8, "selection": "retrieved"}}
    values = {"router": {"policy": {"tiers": [{"name": "edge", "cost": {"per_call": 1.0e-6}, "timeout_s": 1.5, **extra}], "cascade": {"order": ["edge"]}}}}
    (tier,) = policy_of(chart, chart.render(values))["tiers"]
    assert {k: tier[k] for k in extra} == extra
    assert tier["timeout_s"] == 1.5


def test_an_in_router_tier_gets_no_address(chart):
    knn = {"name": "knn", "in_router": True, "model": "knn-vote", "cost": {"per_call": 1.0e-8}, "timeout_s": 5.0}
    values = {"router": {"policy": {"tiers": [knn], "pool": "/data/pool.jsonl", "cascade": {"order": ["knn"]}}}}
    (tier,) = policy_of(chart, chart.render(values))["tiers"]
    assert tier == knn


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"cloud": {"enabled": False}}, r"router.policy.tiers\[1\] \(cloud\) has no address and cloud.enabled is false"),
        ({"edge": {"enabled": False}}, r"router.policy.tiers\[0\] \(edge\) has no address and edge.enabled is false"),
        (
            {"router": {"policy": {"tiers": [{"name": "edge", "cost": {}, "timeout_s": 1}, {"name": "edge", "cost": {}, "timeout_s": 2}], "cascade": {"order": ["edge"]}}}},
            r'tier name "edge" is used twice',
        ),
        (
            {"router": {"policy": {"cascade": {"order": ["edge", "clod"]}}}},
            r'cascade.order names "clod", which is not in router.policy.tiers \(edge, cloud\)',
        ),
        (
            {"router": {"policy": {"tiers": [{"name": "hosted", "cost": {}, "timeout_s": 1}], "cascade": {"order": ["hosted"]}}}},
            r"router.policy.tiers\[0\] \(hosted\): set address",
        ),
        (
            {"router": {"tenants": {"existingSecret": "prod", "items": {"acme": {"key_sha256": "ab" * 32}}}}},
            r"router.tenants: set either existingSecret or items, not both",
        ),
    ],
    ids=["cloud-off-but-in-policy", "edge-off-but-in-policy", "duplicate-tier", "unknown-tier-in-order", "foreign-tier-without-address", "two-tenant-sources"],
)
def test_config_mistakes_fail_the_install_with_a_clear_message(chart, values, message):
    with pytest.raises(helm_python.HelmRenderError, match=message):
        chart.render(values)
