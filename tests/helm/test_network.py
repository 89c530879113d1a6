"""NetworkPolicies (only the router reaches the tiers) and ServiceMonitors (they select the
chart's Services and scrape a port that exists)."""

from __future__ import annotations


def pod_labels(chart, objects, component: str) -> list[dict]:
    """The labels of every pod template of a component."""
    labels = []
    for obj in objects:
        if obj["kind"] in {"Deployment", "DaemonSet"} and obj["metadata"]["labels"]["app.kubernetes.io/component"] == component:
            labels.append(obj["spec"]["template"]["metadata"]["labels"])
        if obj["kind"] == "RayService" and component == "cloud":
            cluster = obj["spec"]["rayClusterConfig"]
            labels += [g["template"]["metadata"]["labels"] for g in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]]
    return labels


def selects(selector: dict, labels: dict) -> bool:
    """Whether a matchLabels selector (the only form the chart uses) selects `labels`."""
    assert set(selector) == {"matchLabels"} and selector["matchLabels"], selector
    return selector["matchLabels"].items() <= labels.items()


def test_only_the_router_reaches_the_tiers(chart):
    objects = chart.render(chart.MATRIX["tls-networkpolicy-monitoring"])
    policies = {p["metadata"]["name"]: p["spec"] for p in chart.find(objects, "NetworkPolicy")}
    for policy in chart.find(objects, "NetworkPolicy"):
        assert chart.typed(policy).spec.policy_types == ["Ingress"]
    router_pods = pod_labels(chart, objects, "router")
    edge_pods = pod_labels(chart, objects, "edge")
    cloud_pods = pod_labels(chart, objects, "cloud")
    assert router_pods and edge_pods and cloud_pods

    edge = policies[chart.EDGE]
    assert all(selects(edge["podSelector"], labels) for labels in edge_pods)
    (grpc_rule,) = [r for r in edge["ingress"] if {"port": "grpc", "protocol": "TCP"} in r["ports"]]
    (peer,) = grpc_rule["from"]
    assert set(peer) == {"podSelector"}  # pods of this namespace only
    assert all(selects(peer["podSelector"], labels) for labels in router_pods)
    assert not any(selects(peer["podSelector"], labels) for labels in edge_pods + cloud_pods)
    (metrics_rule,) = [r for r in edge["ingress"] if r is not grpc_rule]
    assert metrics_rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]

    cloud = policies[chart.CLOUD]
    assert all(selects(cloud["podSelector"], labels) for labels in cloud_pods)
    (serve_rule,) = [r for r in cloud["ingress"] if {"port": 9000, "protocol": "TCP"} in r.get("ports", [])]
    (peer,) = serve_rule["from"]
    assert all(selects(peer["podSelector"], labels) for labels in router_pods)
    assert not any(selects(peer["podSelector"], labels) for labels in edge_pods)
    # Every other rule is Ray-to-Ray (all ports), the operator's dashboard calls, or metrics.
    for rule in cloud["ingress"]:
        if rule is serve_rule:
            continue
        ports = [p["port"] for p in rule.get("ports", [])]
        if not ports:
            (peer,) = rule["from"]
            assert all(selects(peer["podSelector"], labels) for labels in cloud_pods)
            assert not any(selects(peer["podSelector"], labels) for labels in router_pods + edge_pods)
        else:
            assert ports in ([8265], [8080]), rule

    router = policies[chart.ROUTER]
    (client_rule,) = [r for r in router["ingress"] if {"port": "grpc", "protocol": "TCP"} in r["ports"]]
    apps, test_pod = client_rule["from"]
    assert apps == {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "apps"}}}
    assert selects(test_pod["podSelector"], chart.one(objects, "Pod")["metadata"]["labels"])  # `helm test` still reaches it
    (metrics_rule,) = [r for r in router["ingress"] if r is not client_rule]
    assert metrics_rule == {"ports": [{"port": "metrics", "protocol": "TCP"}],
                            "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]}


def test_network_policies_are_on_by_default_and_opt_out(chart, defaults):
    """#19.8: a default install keeps every pod but the router away from the tiers (the edge
    nodes have no keys by default, the cloud tier no auth) and the Ray dashboard away from all but
    the KubeRay operator."""
    policies = {p["metadata"]["name"]: p["spec"] for p in chart.find(defaults, "NetworkPolicy")}
    assert set(policies) == {chart.ROUTER, chart.EDGE, chart.CLOUD}
    router_pods = pod_labels(chart, defaults, "router")
    for tier in (chart.EDGE, chart.CLOUD):
        for rule in policies[tier]["ingress"]:
            # Only scrapers' ports are open by default (networkPolicy.metricsFrom narrows them).
            if rule.get("ports") not in ([{"port": "metrics", "protocol": "TCP"}], [{"port": 8080, "protocol": "TCP"}]):
                assert rule.get("from"), f"{tier} takes calls from anyone: {rule}"
    (edge_rule,) = [r for r in policies[chart.EDGE]["ingress"] if {"port": "grpc", "protocol": "TCP"} in r["ports"]]
    assert all(selects(edge_rule["from"][0]["podSelector"], labels) for labels in router_pods)
    (dashboard,) = [r for r in policies[chart.CLOUD]["ingress"] if r.get("ports") == [{"port": 8265, "protocol": "TCP"}]]
    assert dashboard["from"] == [chart.values["networkPolicy"]["kuberayOperator"]]
    assert chart.find(chart.render(chart.MATRIX["no-auth-no-networkpolicy"]), "NetworkPolicy") == []


def test_service_monitors_select_the_chart_services_metrics_port(chart):
    objects = chart.render(chart.MATRIX["tls-networkpolicy-monitoring"])
    monitors = chart.find(objects, "ServiceMonitor")
    assert {m["metadata"]["name"] for m in monitors} == {chart.ROUTER, chart.EDGE}
    for monitor in monitors:
        assert monitor["metadata"]["labels"]["release"] == "prometheus"
        spec = monitor["spec"]
        assert spec["namespaceSelector"] == {"matchNames": [chart.NAMESPACE]}
        (service,) = [s for s in chart.find(objects, "Service") if selects(spec["selector"], s["metadata"]["labels"])]
        expected = f"{chart.ROUTER}-metrics" if monitor["metadata"]["name"] == chart.ROUTER else chart.EDGE
        assert service["metadata"]["name"] == expected
        ports = {p["name"] for p in service["spec"]["ports"]}
        assert {e["port"] for e in spec["endpoints"]} == {"metrics"} <= ports


def test_tenant_spend_is_not_on_the_clients_service(chart, case):
    """#19.7: the router's metrics (tierlm_router_tenant_cost_usd_total{tenant=...}) live on a Service of
    their own; the Service clients call exposes gRPC and HTTP only."""
    _, values = case
    objects = chart.render(values)
    router = chart.one(objects, "Service", chart.ROUTER)
    assert {p["name"] for p in router["spec"]["ports"]} == {"grpc", "http"}
    metrics = chart.one(objects, "Service", f"{chart.ROUTER}-metrics")
    assert [p["name"] for p in metrics["spec"]["ports"]] == ["metrics"]
    assert metrics["spec"]["selector"] == router["spec"]["selector"]
    for ingress in chart.find(objects, "Ingress"):
        assert {path["backend"]["service"]["port"]["name"] for rule in ingress["spec"]["rules"]
                for path in rule["http"]["paths"]} == {"http"}


def test_pod_monitor_scrapes_the_ray_pods(chart):
    objects = chart.render(chart.MATRIX["tls-networkpolicy-monitoring"])
    monitor = chart.one(objects, "PodMonitor")
    cloud_pods = pod_labels(chart, objects, "cloud")
    assert cloud_pods and all(selects(monitor["spec"]["selector"], labels) for labels in cloud_pods)
    (endpoint,) = monitor["spec"]["podMonitorEndpoints"] if "podMonitorEndpoints" in monitor["spec"] else monitor["spec"]["podMetricsEndpoints"]
    ray_service = chart.one(objects, "RayService")
    head = ray_service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert endpoint["port"] in {p["name"] for p in head["ports"]}
