"""The cloud tier as a KubeRay RayService: a Serve config Ray accepts, the gRPC ingress on the
serve Service, GPUs when asked, and KubeRay's own rules."""

from __future__ import annotations

import helm_python
import pytest
import yaml


def serve_config(rayservice: dict) -> dict:
    # Ray Serve reads serveConfigV2 with PyYAML.
    return yaml.safe_load(rayservice["spec"]["serveConfigV2"])


def groups(rayservice: dict) -> list[dict]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]


def test_serve_config_runs_the_tierlm_app_with_grpc_ingress(chart, defaults):
    rayservice = chart.one(defaults, "RayService")
    config = serve_config(rayservice)
    (app,) = config["applications"]
    assert app["import_path"] == "tierlm.cloud.app:build_app"
    assert app["args"] == chart.values["cloud"]["serve"]["config"]  # builder args, unchanged
    from tierlm.cloud.app import GRPC_SERVICER_FUNCTIONS
    from tierlm.cloud.config import CloudConfig

    CloudConfig.model_validate(app["args"])  # what build_app will accept
    assert config["grpc_options"] == {"port": 9000, "grpc_servicer_functions": GRPC_SERVICER_FUNCTIONS}
    assert config["http_options"] == {"host": "0.0.0.0", "port": 8000}
    head = groups(rayservice)[0]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    # KubeRay builds <name>-serve-svc from the head ports named "serve" and "serve-*".
    assert ports["serve"] == 8000 and ports["serve-grpc"] == 9000
    assert ports["dashboard"] == 8265 and ports["gcs-server"] == 6379


def test_serve_config_is_accepted_by_ray_serve(chart, case):
    """The config Ray Serve's own schema accepts (runs where the cloud extra brings ray)."""
    schema = pytest.importorskip("ray.serve.schema")
    _, values = case
    for rayservice in chart.find(chart.render(values), "RayService"):
        schema.ServeDeploySchema.model_validate(serve_config(rayservice))


def test_serve_deployment_overrides_pass_through(chart):
    overrides = [{"name": "Generator", "max_ongoing_requests": 32, "ray_actor_options": {"num_cpus": 2}}]
    rayservice = chart.one(chart.render({"cloud": {"serve": {"deployments": overrides}}}), "RayService")
    assert serve_config(rayservice)["applications"][0]["deployments"] == overrides


def test_gpu_workers_get_gpus_and_the_vllm_image(chart):
    objects = chart.render(chart.MATRIX["cloud-gpu"])
    rayservice = chart.one(objects, "RayService")
    head, worker = groups(rayservice)
    (container,) = worker["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 2
    assert worker["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    # Head and workers share one image: Serve imports the app on any node.
    images = {g["template"]["spec"]["containers"][0]["image"] for g in (head, worker)}
    assert images == {"tierlm:0.1.0-gpu"}
    assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"]["limits"]


def test_cpu_cloud_asks_for_no_gpus(chart, defaults):
    rayservice = chart.one(defaults, "RayService")
    for group in groups(rayservice):
        resources = group["template"]["spec"]["containers"][0]["resources"]
        assert not any("gpu" in key for key in {**resources["limits"], **resources["requests"]})


def test_kuberay_rules_hold(chart, case):
    """What KubeRay's validation (ray-operator/controllers/ray/utils/validation.go) refuses."""
    _, values = case
    for rayservice in chart.find(chart.render(values), "RayService"):
        assert len(rayservice["metadata"]["name"]) <= 47
        cluster = rayservice["spec"]["rayClusterConfig"]
        for group in groups(rayservice):
            params = group["rayStartParams"]
            assert all(isinstance(v, str) for v in params.values())  # map[string]string
            # Resources in both rayStartParams and the group's `resources` field are refused.
            assert not (set(params) & {"num-cpus", "num-gpus", "memory", "resources"} and group.get("resources"))
            assert "labels" not in params
            assert group["template"]["spec"]["containers"][0]["name"].startswith("ray-")
        for worker in cluster["workerGroupSpecs"]:
            assert 0 <= worker["minReplicas"] <= worker["replicas"] <= worker["maxReplicas"]
        assert rayservice["spec"]["upgradeStrategy"]["type"] in {"NewCluster", "None"}


def test_ray_pods_keep_the_autoscaler_rbac_away_from_the_chart_account(chart, defaults):
    """KubeRay binds the autoscaler's Role to the head pod's ServiceAccount: that must not be the
    account the router and edge pods share, and workers need no token at all."""
    rayservice = chart.one(defaults, "RayService")
    head, worker = groups(rayservice)
    assert "serviceAccountName" not in head["template"]["spec"]
    assert worker["template"]["spec"]["automountServiceAccountToken"] is False
    assert rayservice["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True


@pytest.mark.parametrize(
    ("worker", "message"),
    [
        ({"minReplicas": 3, "maxReplicas": 2, "replicas": 2}, r"cloud.worker.minReplicas \(3\) is greater than maxReplicas \(2\)"),
        ({"minReplicas": 1, "maxReplicas": 2, "replicas": 5}, r"cloud.worker.replicas \(5\) must lie between"),
    ],
)
def test_inconsistent_worker_counts_fail_the_install(chart, worker, message):
    with pytest.raises(helm_python.HelmRenderError, match=message):
        chart.render({"cloud": {"worker": worker}})


def test_router_min_replicas_above_max_fails_the_install(chart):
    with pytest.raises(helm_python.HelmRenderError, match=r"router.autoscaling.minReplicas \(5\) is greater than maxReplicas \(3\)"):
        chart.render({"router": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 3},
                                 "store": {"type": "postgres", "postgres": {"existingSecret": "tierlm-store"}}}})


def test_cloud_disabled_renders_no_ray_objects(chart):
    objects = chart.render(chart.MATRIX["cloud-disabled"])
    assert chart.find(objects, "RayService") == []
    assert all(o["metadata"]["labels"]["app.kubernetes.io/component"] != "cloud" for o in objects)
