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
    assert client_rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "apps"}}}]


def test_network_policies_are_off_by_default(chart, defaults):
    assert chart.find(defaults, "NetworkPolicy") == []


def test_service_monitors_select_the_chart_services_metrics_port(chart):
    objects = chart.render(chart.MATRIX["tls-networkpolicy-monitoring"])
    monitors = chart.find(objects, "ServiceMonitor")
    assert {m["metadata"]["name"] for m in monitors} == {chart.ROUTER, chart.EDGE}
    for monitor in monitors:
        assert monitor["metadata"]["labels"]["release"] == "prometheus"
        spec = monitor["spec"]
        assert spec["namespaceSelector"] == {"matchNames": [chart.NAMESPACE]}
        (service,) = [s for s in chart.find(objects, "Service") if selects(spec["selector"], s["metadata"]["labels"])]
        assert service["metadata"]["name"] == monitor["metadata"]["name"]
        ports = {p["name"] for p in service["spec"]["ports"]}
        assert {e["port"] for e in spec["endpoints"]} == {"metrics"} <= ports
