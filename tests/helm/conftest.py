"""Render the tierlm chart with real Helm and check every object against real schemas.

Helm is the Go SDK bundled in `helm-python-sdk` (no helm binary, no cluster); built-in kinds are
checked by `kubernetes-validate` in strict mode against one pinned Kubernetes version; the
RayService against KubeRay's own CRD schema (fixtures/, see SOURCE.md) made as strict as the
API server's field validation; everything is parsed into the `kubernetes` client's typed models
for the assertions.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes.client import ApiClient

CHART = Path(__file__).resolve().parents[2] / "helm" / "tierlm"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
KUBE_VERSION = "1.30.0"
RELEASE = "demo"
NAMESPACE = "ml"

# The value sets users actually deploy; each must lint, render and validate.
MATRIX: dict[str, dict[str, Any]] = {
    "defaults": {},
    "edge-daemonset": {
        "edge": {
            "kind": "DaemonSet",
            "nodeSelector": {"node-role.kubernetes.io/edge": ""},
            "tolerations": [{"key": "node-role.kubernetes.io/edge", "operator": "Exists", "effect": "NoSchedule"}],
        }
    },
    "cloud-gpu": {
        "cloud": {
            "gpu": {"enabled": True, "count": 2},
            "worker": {"nodeSelector": {"nvidia.com/gpu.present": "true"}},
        }
    },
    "tls-networkpolicy-monitoring": {
        "tls": {"enabled": True, "secretName": "tierlm-tls"},
        "networkPolicy": {
            "enabled": True,
            "routerFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "apps"}}}],
            "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        },
        "metrics": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
            "podMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        },
    },
    "no-auth-no-networkpolicy": {"router": {"auth": {"enabled": False}}, "networkPolicy": {"enabled": False}},
    "ingress-and-gateway-routes": {
        "ingress": {
            "enabled": True, "className": "nginx",
            "hosts": [{"host": "llm.example.com", "paths": [{"path": "/v1", "pathType": "Prefix"}]}],
            "tls": [{"secretName": "llm-example-tls", "hosts": ["llm.example.com"]}],
        },
        "gateway": {
            "httpRoute": {"enabled": True, "parentRefs": [{"name": "public", "sectionName": "https"}], "hostnames": ["llm.example.com"]},
            "grpcRoute": {"enabled": True, "parentRefs": [{"name": "public", "sectionName": "grpc"}]},
        },
    },
    "extra-volumes-and-env": {
        "router": {
            "envFrom": [{"secretRef": {"name": "otel-exporter"}}],
            "extraVolumes": [{"name": "scorer", "persistentVolumeClaim": {"claimName": "scorers", "readOnly": True}}],
            "extraVolumeMounts": [{"name": "scorer", "mountPath": "/models/scorer-headlines", "readOnly": True}],
        },
        "edge": {
            "env": [{"name": "OMP_NUM_THREADS", "value": "2"}],
            "envFrom": [{"configMapRef": {"name": "edge-tuning"}}],
            "extraVolumes": [{"name": "cache", "emptyDir": {"sizeLimit": "1Gi"}}],
            "extraVolumeMounts": [{"name": "cache", "mountPath": "/var/cache/tierlm"}],
        },
    },
    "edge-autoscaling": {"edge": {"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6}}},
    "gcs-fault-tolerance": {
        "cloud": {"gcsFaultTolerance": {"enabled": True, "redisAddress": "redis.ml.svc:6379",
                                        "redisPassword": {"secretName": "redis-auth", "secretKey": "password"}}},
    },
    "cloud-disabled": {
        "cloud": {"enabled": False},
        "router": {
            "policy": {
                "tiers": [
                    {"name": "edge", "cost": {"per_call": 2.0e-6}, "timeout_s": 2.0},
                    {"name": "hosted", "address": "llm.example.internal:443", "cost": {"per_output_token": 1.0e-6}, "timeout_s": 20.0},
                ],
                "cascade": {"order": ["edge", "hosted"], "thresholds": {"edge": 0.8}},
            }
        },
    },
    "model-from-pvc": {"edge": {"model": {"source": "pvc", "path": "/models/edge-awq", "pvc": {"claimName": "edge-models"}}}},
    "model-from-init-container": {
        "edge": {"model": {"source": "initContainer", "initContainer": {"image": {"repository": "registry.local/tierlm-models", "tag": "2026.11"}}}}
    },
    "sqlite-on-a-volume": {"router": {"store": {"sqlite": {"existingClaim": "router-ledger"}}}},
    "replicas-autoscaled-on-postgres": {
        "router": {"store": {"type": "postgres", "postgres": {"existingSecret": "tierlm-store"}},
                   "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 10}},
    },
    "tenants-and-keys": {
        "router": {
            "store": {"type": "postgres", "postgres": {"existingSecret": "tierlm-store"}},
            "autoscaling": {"enabled": False},
            "replicas": 3,
            "podDisruptionBudget": {"enabled": True, "minAvailable": 2},
            "tenants": {"items": {"acme": {"key_sha256": "ab" * 32, "budget_per_day": 5.0, "budget_per_query": 1.0e-3}}},
        },
        "edge": {"apiKeys": {"existingSecret": "edge-keys"}},
    },
}


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `override` into a copy of `base` (lists are replaced, like Helm does)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


@functools.cache
def load_chart() -> helm_python.Chart:
    return helm_python.Chart.load(CHART)


def render_files(values: dict[str, Any] | None = None, *, release: str = RELEASE) -> dict[str, str]:
    """Template path -> rendered text, exactly as `helm template` would produce it."""
    return load_chart().render(values or {}, name=release, namespace=NAMESPACE, is_install=True)


def render(values: dict[str, Any] | None = None, *, release: str = RELEASE) -> list[dict[str, Any]]:
    """Every Kubernetes object the chart renders for `values`."""
    objects = []
    for path, text in render_files(values, release=release).items():
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def typed(obj: dict[str, Any], model: str | None = None) -> Any:
    """The object as a `kubernetes` client model, e.g. V1Deployment."""
    model = model or f"{obj['apiVersion'].split('/')[-1].capitalize()}{obj['kind']}"
    return ApiClient().deserialize(json.dumps(obj), model, "application/json")


def validate_builtin(obj: dict[str, Any]) -> None:
    """Strict schema validation of a built-in kind (unknown fields are errors)."""
    kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def _closed(schema: Any) -> Any:
    """The CRD schema with unknown fields rejected wherever the CRD does not preserve them,
    which is what the API server's strict field validation does."""
    if isinstance(schema, dict):
        schema = {k: _closed(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    return schema


# Custom resources with a vendored CRD (fixtures/SOURCE.md): (apiVersion, kind) -> file.
CRDS = {
    ("ray.io/v1", "RayService"): "ray.io_rayservices.yaml",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "gateway.networking.k8s.io_httproutes.yaml",
    ("gateway.networking.k8s.io/v1", "GRPCRoute"): "gateway.networking.k8s.io_grpcroutes.yaml",
}


@functools.cache
def crd_validator(api_version: str, kind: str) -> jsonschema.Draft7Validator:
    crd = yaml.safe_load((FIXTURES / CRDS[api_version, kind]).read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == api_version.split("/")[-1]]
    return jsonschema.Draft7Validator(_closed(version["schema"]["openAPIV3Schema"]))


def validate_custom(obj: dict[str, Any]) -> None:
    """A custom resource against its CRD's schema (as strict as the API server), its metadata as
    ObjectMeta."""
    errors = sorted(crd_validator(obj["apiVersion"], obj["kind"]).iter_errors(obj), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)
    validate_builtin({"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]})


def validate_rayservice(obj: dict[str, Any]) -> None:
    """The RayService against KubeRay's CRD, and its pod templates as real PodTemplates (the CRD
    copies their schema, the operator then creates real pods)."""
    validate_custom(obj)
    cluster = obj["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    for group in groups:
        validate_builtin(
            {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "ray-group"}, "template": group["template"]}
        )


def validate(obj: dict[str, Any]) -> None:
    if obj["kind"] == "RayService":
        validate_rayservice(obj)
    elif (obj["apiVersion"], obj["kind"]) in CRDS:
        validate_custom(obj)
    elif obj["apiVersion"].startswith("monitoring.coreos.com/"):
        # No Service/PodMonitor CRD schema is vendored; test_network.py checks what matters (it
        # selects the chart's Service or pods and scrapes a port that exists) and the metadata here.
        validate_builtin({"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]})
    else:
        validate_builtin(obj)


def pod_specs(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every pod spec the chart defines, keyed by where it lives, RayService groups included."""
    specs = {}
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] in {"Deployment", "DaemonSet"}:
            specs[name] = obj["spec"]["template"]["spec"]
        elif obj["kind"] == "Pod":
            specs[name] = obj["spec"]
        elif obj["kind"] == "RayService":
            cluster = obj["spec"]["rayClusterConfig"]
            specs[f"{name}/head"] = cluster["headGroupSpec"]["template"]["spec"]
            for group in cluster.get("workerGroupSpecs", []):
                specs[f"{name}/{group['groupName']}"] = group["template"]["spec"]
    return specs


class ChartUnderTest:
    """The helpers above, handed to tests as the `chart` fixture (tests cannot import conftest
    under --import-mode=importlib)."""

    MATRIX = MATRIX
    RELEASE = RELEASE
    NAMESPACE = NAMESPACE
    KUBE_VERSION = KUBE_VERSION
    # Object names for release "demo" of chart "tierlm".
    ROUTER = f"{RELEASE}-tierlm-router"
    EDGE = f"{RELEASE}-tierlm-edge"
    CLOUD = f"{RELEASE}-tierlm-cloud"
    path = CHART
    merge = staticmethod(merge)
    render_files = staticmethod(render_files)
    render = staticmethod(render)
    find = staticmethod(find)
    one = staticmethod(one)
    typed = staticmethod(typed)
    validate = staticmethod(validate)
    pod_specs = staticmethod(pod_specs)

    @property
    def values(self) -> dict[str, Any]:
        """The chart's default values."""
        return load_chart().values


@pytest.fixture(scope="session")
def chart() -> ChartUnderTest:
    return ChartUnderTest()


@pytest.fixture(scope="session")
def defaults() -> list[dict[str, Any]]:
    """The objects rendered with the default values."""
    return render()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`case` runs a test once per entry of MATRIX, with its values."""
    if "case" in metafunc.fixturenames:
        metafunc.parametrize("case", list(MATRIX.items()), ids=list(MATRIX))
