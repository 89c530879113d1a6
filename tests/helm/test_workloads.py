"""The router and edge workloads: the things that break in production (probes, root, sizing,
rollouts on config change, disruption budgets, where the model comes from)."""

from __future__ import annotations

import base64

import yaml


def containers_of(spec: dict) -> list[dict]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def port_named(container: dict, name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return port


def test_probes_use_the_grpc_health_port(chart, defaults):
    for name in (chart.ROUTER, chart.EDGE):
        deployment = chart.typed(chart.one(defaults, "Deployment", name))
        (container,) = deployment.spec.template.spec.containers
        grpc_port = next(p.container_port for p in container.ports if p.name == "grpc")
        for probe in (container.startup_probe, container.readiness_probe, container.liveness_probe):
            # Native gRPC probe: the kubelet calls grpc.health.v1.Health/Check on this port.
            assert probe.grpc is not None and probe.grpc.port == grpc_port
            assert probe.tcp_socket is None and probe.http_get is None and probe._exec is None
        # The server's --port flag and the Service's target are that same port.
        assert container.args[container.args.index("--port") + 1] == str(grpc_port)
        service = chart.typed(chart.one(defaults, "Service", name))
        (grpc,) = [p for p in service.spec.ports if p.name == "grpc"]
        assert grpc.target_port == "grpc" and grpc.app_protocol == "grpc"


def test_tls_serves_certificates_and_probes_the_port_over_tcp(chart):
    objects = chart.render({"tls": {"enabled": True, "secretName": "tierlm-tls"}})
    for name in (chart.ROUTER, chart.EDGE):
        spec = chart.one(objects, "Deployment", name)["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        args = container["args"]
        cert, key = args[args.index("--tls-cert") + 1], args[args.index("--tls-key") + 1]
        assert cert == "/etc/tierlm/tls/tls.crt" and key == "/etc/tierlm/tls/tls.key"
        grpc_port = port_named(container, "grpc")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            # The kubelet's gRPC probe cannot do TLS; a TCP probe on the same port can.
            assert container[probe]["tcpSocket"] == {"port": grpc_port}
            assert "grpc" not in container[probe]
        # Each --tls-* file lies in a volume fed by the TLS Secret's key of the same name.
        for path in (cert, key):
            mount = max((m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")), key=lambda m: len(m["mountPath"]))
            (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
            relative = path[len(mount["mountPath"]) + 1 :]
            if "secret" in volume:
                assert volume["secret"]["secretName"] == "tierlm-tls" and relative == path.rsplit("/", 1)[1]
            else:
                items = [(s["secret"]["name"], i["key"], i["path"]) for s in volume["projected"]["sources"] if "secret" in s for i in s["secret"]["items"]]
                assert ("tierlm-tls", relative.rsplit("/", 1)[1], relative) in items


def test_no_container_runs_as_root(chart, case):
    _, values = case
    objects = chart.render(values)
    for where, spec in chart.pod_specs(objects).items():
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True and pod.get("runAsUser", 0) != 0, where
        for container in containers_of(spec):
            ctx = container.get("securityContext", {})
            assert ctx.get("runAsNonRoot") is True and ctx.get("runAsUser", 0) != 0, (where, container["name"])
            assert ctx.get("allowPrivilegeEscalation") is False, (where, container["name"])
            assert ctx.get("readOnlyRootFilesystem") is True, (where, container["name"])
            assert ctx["capabilities"]["drop"] == ["ALL"], (where, container["name"])
        for container in spec["containers"]:
            # tierlm and Ray write under HOME (/tmp): a read-only root needs it writable.
            assert "/tmp" in {m["mountPath"] for m in container.get("volumeMounts", [])}, (where, container["name"])
    for rayservice in chart.find(objects, "RayService"):
        autoscaler = rayservice["spec"]["rayClusterConfig"].get("autoscalerOptions")
        if autoscaler:
            assert autoscaler["securityContext"]["runAsNonRoot"] is True


def test_every_container_has_requests_and_limits(chart, case):
    _, values = case
    objects = chart.render(values)
    sized = []
    for where, spec in chart.pod_specs(objects).items():
        for container in containers_of(spec):
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(kind, {})), (where, container["name"], kind)
            sized.append(container["name"])
    for rayservice in chart.find(objects, "RayService"):
        autoscaler = rayservice["spec"]["rayClusterConfig"].get("autoscalerOptions")
        if autoscaler:
            assert {"cpu", "memory"} <= set(autoscaler["resources"]["limits"])
    assert {"router", "edge"} <= set(sized)


def test_policy_checksum_rolls_the_router_only_when_the_policy_changes(chart, defaults):
    def checksum(objects):
        return chart.one(objects, "Deployment", chart.ROUTER)["spec"]["template"]["metadata"]["annotations"]["checksum/policy"]

    before = checksum(defaults)
    changed = chart.render({"router": {"policy": {"cascade": {"thresholds": {"edge": 0.9}}}}})
    assert checksum(changed) != before
    # A change that leaves the policy alone leaves the pods alone.
    assert checksum(chart.render({"edge": {"replicas": 5}})) == before
    # Moving the edge Service's port changes the address in the policy, so it rolls too.
    assert checksum(chart.render({"edge": {"ports": {"grpc": 50062}}})) != before


def test_policy_and_tenants_are_mounted_where_the_router_reads_them(chart):
    tenants = {"acme": {"key_sha256": "ab" * 32, "budget_per_day": 5.0, "budget_per_query": 1.0e-3}}
    objects = chart.render({"router": {"tenants": {"items": tenants}}})
    deployment = chart.one(objects, "Deployment", chart.ROUTER)
    spec = deployment["spec"]["template"]["spec"]
    args = spec["containers"][0]["args"]
    assert args[:2] == ["router", "serve"]
    assert args[args.index("--policy") + 1] == "/etc/tierlm/policy.yaml"
    assert args[args.index("--tenants") + 1] == "/etc/tierlm/tenants/tenants.yaml"
    (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["mountPath"] == "/etc/tierlm"]
    assert "subPath" not in mount  # subPath mounts never see ConfigMap updates: no hot reload
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    sources = volume["projected"]["sources"]
    config_map = chart.one(objects, "ConfigMap", sources[0]["configMap"]["name"])
    assert sources[0]["configMap"]["items"] == [{"key": "policy.yaml", "path": "policy.yaml"}]
    assert "tiers" in yaml.safe_load(config_map["data"]["policy.yaml"])
    secret = chart.one(objects, "Secret", sources[1]["secret"]["name"])
    assert sources[1]["secret"]["items"] == [{"key": "tenants.yaml", "path": "tenants/tenants.yaml"}]
    assert yaml.safe_load(base64.b64decode(secret["data"]["tenants.yaml"])) == tenants
    # Tenant changes roll the pods too.
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    default_annotations = chart.one(chart.render(), "Deployment", chart.ROUTER)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/tenants"] != default_annotations["checksum/tenants"]


def test_an_existing_tenants_secret_is_used_and_none_is_rendered(chart):
    objects = chart.render({"router": {"tenants": {"existingSecret": "prod-tenants", "existingSecretKey": "t.yaml"}}})
    assert chart.find(objects, "Secret") == []
    spec = chart.one(objects, "Deployment", chart.ROUTER)["spec"]["template"]["spec"]
    (config,) = [v for v in spec["volumes"] if v["name"] == "config"]
    assert {"secret": {"name": "prod-tenants", "items": [{"key": "t.yaml", "path": "tenants/tenants.yaml"}]}} in config["projected"]["sources"]


def test_router_hpa_owns_the_replica_count_and_pdb_keeps_capacity(chart):
    autoscaled = chart.render(chart.MATRIX["replicas-autoscaled-on-postgres"])
    deployment = chart.typed(chart.one(autoscaled, "Deployment", chart.ROUTER))
    assert deployment.spec.replicas is None  # the HPA sets it; a fixed count would fight it
    hpa = chart.typed(chart.one(autoscaled, "HorizontalPodAutoscaler", chart.ROUTER))
    assert hpa.spec.scale_target_ref.name == chart.ROUTER and hpa.spec.min_replicas >= 2
    pdb = chart.typed(chart.one(autoscaled, "PodDisruptionBudget", chart.ROUTER))
    assert pdb.spec.selector.match_labels.items() <= deployment.spec.template.metadata.labels.items()

    objects = chart.render({"router": {"autoscaling": {"enabled": False}, "replicas": 3, "podDisruptionBudget": {"enabled": True, "minAvailable": 2},
                               "store": {"type": "postgres", "postgres": {"existingSecret": "tierlm-store"}}}})
    assert chart.find(objects, "HorizontalPodAutoscaler") == []
    assert chart.one(objects, "Deployment", chart.ROUTER)["spec"]["replicas"] == 3
    assert chart.one(objects, "PodDisruptionBudget", chart.ROUTER)["spec"] == {
        "minAvailable": 2,
        "selector": chart.one(objects, "PodDisruptionBudget", chart.ROUTER)["spec"]["selector"],
    }


def test_edge_as_daemonset_lands_on_edge_nodes(chart):
    values = chart.MATRIX["edge-daemonset"]
    objects = chart.render(values)
    daemonset = chart.typed(chart.one(objects, "DaemonSet", chart.EDGE))
    assert chart.find(objects, "Deployment", chart.EDGE) == []
    pod = daemonset.spec.template.spec
    assert pod.node_selector == {"node-role.kubernetes.io/edge": ""}
    assert pod.tolerations[0].key == "node-role.kubernetes.io/edge"
    # Drains skip DaemonSet pods, so a PDB for them would only mislead.
    assert chart.find(objects, "PodDisruptionBudget", chart.EDGE) == []
    service = chart.typed(chart.one(objects, "Service", chart.EDGE))
    assert service.spec.selector.items() <= daemonset.spec.template.metadata.labels.items()


def test_edge_server_flags_come_from_values(chart):
    objects = chart.render({"edge": {"server": {"threads": 4, "maxBatch": 16, "maxQueue": 128}, "resources": {"requests": {"cpu": "4", "memory": "2Gi"}, "limits": {"cpu": "4", "memory": "3Gi"}}}})
    (container,) = chart.one(objects, "Deployment", chart.EDGE)["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    flags = {args[i]: args[i + 1] for i in range(2, len(args) - 1, 2)}
    assert args[:2] == ["edge", "serve"]
    assert flags == {
        "--model": "/models/edge",
        "--host": "0.0.0.0",
        "--port": "50061",
        "--threads": "4",
        "--max-batch": "16",
        "--max-queue": "128",
        "--metrics-port": "9090",
    }
    assert container["resources"]["limits"]["memory"] == "3Gi"


def test_edge_model_from_a_pvc_is_mounted_read_only(chart):
    objects = chart.render(chart.MATRIX["model-from-pvc"])
    spec = chart.one(objects, "Deployment", chart.EDGE)["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["args"][container["args"].index("--model") + 1] == "/models/edge-awq"
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/models"]
    assert mount["readOnly"] is True
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert volume["persistentVolumeClaim"] == {"claimName": "edge-models", "readOnly": True}


def test_edge_model_from_an_init_container_is_copied_into_the_pod(chart):
    objects = chart.render(chart.MATRIX["model-from-init-container"])
    spec = chart.one(objects, "Deployment", chart.EDGE)["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    assert init["image"] == "registry.local/tierlm-models:2026.11"
    assert init["command"][-2:] == ["/models/edge", "/models/edge"]
    (server,) = spec["containers"]
    init_mount = next(m for m in init["volumeMounts"] if m["mountPath"] == "/models")
    server_mount = next(m for m in server["volumeMounts"] if m["mountPath"] == "/models")
    assert init_mount["name"] == server_mount["name"] and server_mount["readOnly"] is True
    (volume,) = [v for v in spec["volumes"] if v["name"] == init_mount["name"]]
    assert "emptyDir" in volume


def test_edge_api_keys_come_from_a_secret(chart):
    objects = chart.render({"edge": {"apiKeys": {"existingSecret": "edge-keys", "existingSecretKey": "keys.yaml"}}})
    spec = chart.one(objects, "Deployment", chart.EDGE)["spec"]["template"]["spec"]
    args = spec["containers"][0]["args"]
    keys_file = args[args.index("--tenants") + 1]
    (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if keys_file.startswith(m["mountPath"] + "/")]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"] == {"secretName": "edge-keys", "items": [{"key": "keys.yaml", "path": keys_file.rsplit("/", 1)[1]}]}


def test_images_default_to_the_app_version_and_can_be_overridden(chart, defaults):
    images = {c["image"] for spec in chart.pod_specs(defaults).values() for c in spec["containers"]}
    assert images == {"tierlm:0.1.0"}
    objects = chart.render({"image": {"repository": "registry.local/tierlm", "tag": "1.2.3"}, "edge": {"image": {"tag": "1.2.4"}}})
    assert chart.one(objects, "Deployment", chart.ROUTER)["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.local/tierlm:1.2.3"
    assert chart.one(objects, "Deployment", chart.EDGE)["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.local/tierlm:1.2.4"


def test_names_fit_kubernetes_limits_for_the_longest_release_name(chart):
    release = "r" * 53  # Helm's maximum release name
    objects = chart.render(release=release)
    for obj in objects:
        assert len(obj["metadata"]["name"]) <= 63, obj["metadata"]["name"]
    (rayservice,) = chart.find(objects, "RayService")
    # KubeRay refuses RayService names over 47 characters (RayCluster name limit minus suffix).
    assert len(rayservice["metadata"]["name"]) <= 47
    assert len(rayservice["metadata"]["name"] + "-serve-svc") <= 63


def test_a_release_named_like_the_chart_is_not_repeated_in_names(chart):
    # The README's commands use release "tierlm": its router is "tierlm-router".
    objects = chart.render(release="tierlm")
    assert chart.one(objects, "Service", "tierlm-router")
    assert chart.one(objects, "RayService", "tierlm-cloud")


def test_selectors_stay_stable_across_upgrades_and_common_labels_reach_every_object(chart):
    """Selectors are immutable on Deployments and DaemonSets: they may hold only labels that never
    change between releases (no chart version, no user labels)."""
    objects = chart.render({"commonLabels": {"team": "ml-platform"}, "edge": {"podLabels": {"tier": "edge"}}})
    for obj in objects:
        assert obj["metadata"]["labels"]["team"] == "ml-platform", obj["metadata"]["name"]
    stable = {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component"}
    for obj in objects:
        if obj["kind"] in {"Deployment", "DaemonSet", "PodDisruptionBudget"}:
            assert set(obj["spec"]["selector"]["matchLabels"]) == stable
        if obj["kind"] == "Service":
            assert set(obj["spec"]["selector"]) == stable
    edge = chart.one(objects, "Deployment", chart.EDGE)
    assert edge["spec"]["template"]["metadata"]["labels"]["tier"] == "edge"
