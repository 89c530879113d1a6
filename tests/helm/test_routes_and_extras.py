"""The value sets added for platform teams: Ingress and Gateway API routes to the router, extra
volumes and environment, edge autoscaling, Ray GCS fault tolerance, and the `helm test` hook."""

from __future__ import annotations

import helm_python
import pytest


def router_service_ports(chart, objects) -> dict[str, int]:
    service = chart.one(objects, "Service", chart.ROUTER)
    return {p["name"]: p["port"] for p in service["spec"]["ports"]}


def test_ingress_and_gateway_routes_reach_the_router_service(chart):
    objects = chart.render(chart.MATRIX["ingress-and-gateway-routes"])
    ports = router_service_ports(chart, objects)
    ingress = chart.typed(chart.one(objects, "Ingress"), "V1Ingress")
    assert ingress.spec.ingress_class_name == "nginx" and ingress.spec.tls[0].secret_name == "llm-example-tls"
    (path,) = ingress.spec.rules[0].http.paths
    assert (path.path, path.backend.service.name, path.backend.service.port.name) == ("/v1", chart.ROUTER, "http")
    http_route, grpc_route = chart.one(objects, "HTTPRoute"), chart.one(objects, "GRPCRoute")
    for route, port in ((http_route, ports["http"]), (grpc_route, ports["grpc"])):
        (rule,) = route["spec"]["rules"]
        assert rule["backendRefs"] == [{"name": chart.ROUTER, "port": port}]
    assert http_route["spec"]["parentRefs"] == [{"name": "public", "sectionName": "https"}]
    assert grpc_route["spec"]["rules"][0]["matches"] == [{"method": {"service": "tierlm.v1.Router"}}]


def test_a_route_without_a_gateway_fails_the_install(chart):
    with pytest.raises(helm_python.HelmError, match="parentRefs"):
        chart.render({"gateway": {"grpcRoute": {"enabled": True}}})


def test_extra_volumes_env_and_env_from_reach_the_containers(chart):
    objects = chart.render(chart.MATRIX["extra-volumes-and-env"])
    for name, volume, mount in ((chart.ROUTER, "scorer", "/models/scorer-headlines"), (chart.EDGE, "cache", "/var/cache/tierlm")):
        spec = chart.one(objects, "Deployment", name)["spec"]["template"]["spec"]
        assert volume in {v["name"] for v in spec["volumes"]}
        (container,) = spec["containers"]
        assert {"name": volume, "mountPath": mount} | ({"readOnly": True} if volume == "scorer" else {}) in container["volumeMounts"]
        assert container["envFrom"]
    edge = chart.one(objects, "Deployment", chart.EDGE)["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "OMP_NUM_THREADS", "value": "2"} in edge["env"]


def test_edge_autoscaling_owns_the_edge_replica_count(chart):
    objects = chart.render(chart.MATRIX["edge-autoscaling"])
    hpa = chart.typed(chart.one(objects, "HorizontalPodAutoscaler", chart.EDGE), "V2HorizontalPodAutoscaler")
    assert (hpa.spec.scale_target_ref.kind, hpa.spec.scale_target_ref.name) == ("Deployment", chart.EDGE)
    assert (hpa.spec.min_replicas, hpa.spec.max_replicas) == (2, 6)
    assert "replicas" not in chart.one(objects, "Deployment", chart.EDGE)["spec"]
    with pytest.raises(helm_python.HelmError, match="edge.kind Deployment"):
        chart.render(chart.merge(chart.MATRIX["edge-autoscaling"], {"edge": {"kind": "DaemonSet"}}))


def test_gcs_fault_tolerance_keeps_ray_state_in_redis(chart):
    cluster = chart.one(chart.render(chart.MATRIX["gcs-fault-tolerance"]), "RayService")["spec"]["rayClusterConfig"]
    assert cluster["gcsFaultToleranceOptions"] == {
        "redisAddress": "redis.ml.svc:6379",
        "redisPassword": {"valueFrom": {"secretKeyRef": {"name": "redis-auth", "key": "password"}}},
    }
    assert "gcsFaultToleranceOptions" not in chart.one(chart.render(), "RayService")["spec"]["rayClusterConfig"]


def test_helm_test_hook_checks_the_router(chart, defaults):
    pod = chart.one(defaults, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    port = router_service_ports(chart, defaults)["grpc"]
    assert container["args"] == ["health", "--address", f"{chart.ROUTER}.{chart.NAMESPACE}.svc:{port}"]
    assert pod["spec"]["restartPolicy"] == "Never"


def test_auth_is_on_unless_the_values_turn_it_off(chart, defaults):
    """#19.1: the chart never renders an open router by accident; false passes --no-auth, loudly."""
    args = chart.one(defaults, "Deployment", chart.ROUTER)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--no-auth" not in args
    opened = chart.render(chart.MATRIX["no-auth-no-networkpolicy"])
    assert "--no-auth" in chart.one(opened, "Deployment", chart.ROUTER)["spec"]["template"]["spec"]["containers"][0]["args"]
    notes = chart.render_files()["tierlm/templates/NOTES.txt"]
    assert "every call is refused" in notes and "--no-auth" not in notes
    opened_notes = chart.render_files(chart.MATRIX["no-auth-no-networkpolicy"])["tierlm/templates/NOTES.txt"]
    assert "runs with --no-auth" in opened_notes and "networkPolicy.enabled is false" in opened_notes
